"""A plain-language verdict per model: can its explanations be trusted, and by which rule?

Three checks, each a number against a stated threshold:

* ``mprt`` (Adebayo et al. 2018): the median Spearman correlation between the original masks
  and those of the model with its head (the layers above the CAM's target layer) re-initialised
  must fall below :data:`MPRT_MAX` (0.5: the two masks share less than half their ranking; the
  paper's "near zero" needs a number, and Adebayo et al.'s Grad-CAM curves fall below 0.5 at the
  logits). A model without head steps is judged at the first step.
* ``other_city`` (Sixt et al. 2020): the median Spearman correlation between the masks for the
  predicted and the runner-up city must stay below :data:`OTHER_CITY_MAX` (0.9): at or above it
  the masks are near-identical and the explanation does not depend on the class.
* ``deletion`` (Petsiuk et al. 2018): the deletion AUC in the mask's order must be lower than
  in a random order, by a mean paired difference whose bootstrap 95 % CI lies above 0: removing
  the pixels the mask points at must hurt the prediction more than removing random pixels.

Verdict: **pass** when all three pass; **fail** when the randomisation test or the deletion
test fails (the mask does not reflect the model, or does not point at what the model uses);
**warn** when only the other-city test fails (faithful masks that hardly differ between cities).
A check without data (e.g. a single test image) counts as failed, with its reason.
"""

from __future__ import annotations

import math

import numpy as np

from cityviz.trust.bootstrap import bootstrap_mean_ci

MPRT_MAX = 0.5
OTHER_CITY_MAX = 0.9

MPRT_RULE = (f"median Spearman correlation of the masks after the layers above the CAM layer are "
             f"re-initialised < {MPRT_MAX} (Adebayo et al. 2018)")  # fmt: skip
OTHER_CITY_RULE = (f"median Spearman correlation of the masks for the predicted and the runner-up "
                   f"city < {OTHER_CITY_MAX} (Sixt et al. 2020)")  # fmt: skip
DELETION_RULE = ("deletion AUC in the mask's order below the random order's, paired bootstrap "
                 "95% CI of the difference above 0 (Petsiuk et al. 2018)")  # fmt: skip


def _finite(v: float) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def mprt_check(spearman: np.ndarray, head_steps: int) -> dict:
    """``spearman``: float64 [steps+1, B] from :func:`cityviz.trust.sanity.mprt`; judged at step
    ``max(head_steps, 1)`` (the last head layer), by the median over images (NaNs ignored)."""
    step = min(max(int(head_steps), 1), len(spearman) - 1)
    row = np.asarray(spearman, dtype=np.float64)[step] if step >= 1 else np.array([np.nan])
    value = float(np.nanmedian(row)) if np.isfinite(row).any() else float("nan")
    return {"passed": bool(_finite(value) and value < MPRT_MAX), "rule": MPRT_RULE,
            "value": value, "step": step}  # fmt: skip


def other_city_check(spearman: np.ndarray) -> dict:
    """``spearman``: float64 [B] between the predicted and runner-up city's masks."""
    s = np.asarray(spearman, dtype=np.float64)
    value = float(np.nanmedian(s)) if np.isfinite(s).any() else float("nan")
    return {"passed": bool(_finite(value) and value < OTHER_CITY_MAX), "rule": OTHER_CITY_RULE,
            "value": value}  # fmt: skip


def deletion_check(auc_mask: np.ndarray, auc_random: np.ndarray, n_boot: int = 200) -> dict:
    """Per-image deletion AUCs (float [B] each, paired by image): ``value`` is the mean of
    ``auc_random − auc_mask`` with its bootstrap CI as ``lo``/``hi``."""
    diff = np.asarray(auc_random, dtype=np.float64) - np.asarray(auc_mask, dtype=np.float64)
    value = float(np.nanmean(diff)) if np.isfinite(diff).any() else float("nan")
    lo, hi = bootstrap_mean_ci(diff, n_boot)
    passed = _finite(value) and value > 0 and _finite(lo) and lo > 0
    return {"passed": bool(passed), "rule": DELETION_RULE, "value": value, "lo": lo, "hi": hi}


def model_verdict(method: str, checks: dict[str, dict]) -> dict:
    """``{"method", "verdict", "sentence", "checks"}`` for one model (rules: module docstring).

    ``checks`` holds ``mprt``, ``other_city`` and ``deletion`` as made by the functions above.
    """
    ok = {name: bool(c.get("passed")) for name, c in checks.items()}
    failed = [n for n in ("mprt", "other_city", "deletion") if not ok.get(n, False)]
    if not failed:
        verdict = "pass"
        sentence = (
            "The explanations pass every check: they change when the model is "
            "randomised, differ between cities, and point at pixels the model needs."
        )
    elif "mprt" in failed or "deletion" in failed:
        verdict = "fail"
        reasons = []
        if "mprt" in failed:
            reasons.append(
                "they stay similar when the model's top layers are randomised, so "
                "they show the image more than the model"
            )
        if "deletion" in failed:
            reasons.append(
                "removing the pixels they point at hurts the prediction no more than "
                "removing random pixels"
            )
        sentence = "Do not trust these explanations: " + "; and ".join(reasons) + "."
    else:
        verdict = "warn"
        sentence = (
            "Read with care: the explanations reflect the model and point at pixels it "
            "needs, but the masks for the predicted and the runner-up city are nearly "
            "the same, so they say where the model looks more than what tells the "
            "cities apart."
        )
    return {"method": method, "verdict": verdict, "sentence": sentence, "checks": checks}
