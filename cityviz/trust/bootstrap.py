"""Percentile bootstrap confidence intervals over images, shared by the trust checks."""

from __future__ import annotations

import numpy as np

DEFAULT_CI = 0.95


def bootstrap_mean_ci(
    values: np.ndarray, n_boot: int = 200, *, ci: float = DEFAULT_CI, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (1-d, one value per image; NaNs dropped).

    Resamples the images with replacement ``n_boot`` times (Efron & Tibshirani 1993, the
    percentile interval) and returns the ``(1 - ci) / 2`` and ``(1 + ci) / 2`` quantiles of the
    replicate means, in float64. No finite value: ``(nan, nan)``; one value: ``(v, v)``.
    Raises ``ValueError`` for ``ci`` outside (0, 1) or ``n_boot < 1``.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi)
