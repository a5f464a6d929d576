"""Trust checks: is an explanation faithful to the model, and is an object causal for a city?

``sanity`` (model-parameter randomisation, Adebayo et al. 2018; other-city test, Sixt et al.
2020), ``faithfulness`` (deletion/insertion curves, Petsiuk et al. 2018), ``removal`` (object
removal by inpainting against an equal-area random region), ``verdict`` (a plain-language verdict
per model with its rule), ``bootstrap`` (percentile CIs over images). The ``trust`` precompute
stage (``precompute/trust.py``) runs them and writes ``trust/*.parquet`` and
``trust/verdict.json``.
"""

# Bumped whenever a check's results change for the same model and settings; part of the trust
# stage's identity in a cache (precompute/identity.py).
TRUST_VERSION = 1
