"""Is a new photo unlike the test photos a model was evaluated on? A deep-nearest-neighbour check.

Method (Sun, Ming, Zhu & Li 2022, "Out-of-distribution detection with deep nearest neighbors",
ICML, PMLR 162): take a network's penultimate features, L2-normalise them,
``z = f / ||f||``, and score a new sample by the distance to its k-th nearest neighbour among the
in-distribution features, ``d_k(z) = ||z - z_(k)||``; a large distance means out-of-distribution.
The paper sets the threshold so that 95 % of in-distribution data is kept; here the reference is
the test split itself, scored leave-one-out (each test photo against the others), and a photo is
flagged when its distance is beyond their ``quantile`` (default the 99th percentile), so about
1 % of photos like the test photos are flagged by chance.

The feature is the model's trunk output (:func:`cityviz.models.archs.split_model`, the Grad-CAM
target layer) averaged over space: [B, K] for K channels.

Everything here is a plain function of arrays except :func:`trunk_features`, which runs the
trunk; :func:`fit_reference` returns plain arrays, savable with :func:`cityviz.store.save_arrays`
(e.g. ``ood/<model_id>.npz``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

DEFAULT_K = 5
DEFAULT_QUANTILE = 0.99
REFERENCE_KEYS = ("features", "loo", "k", "threshold", "quantile")


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows of ``features`` [N, D] scaled to unit L2 norm (float64); all-zero rows stay zero.

    Raises ``ValueError`` for anything but a finite 2-D array.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def fit_reference(
    features: np.ndarray, k: int = DEFAULT_K, quantile: float = DEFAULT_QUANTILE
) -> dict[str, np.ndarray]:
    """The reference of in-distribution ``features`` [N, D] (e.g. a model's test split).

    Duplicate rows are dropped (a data set may repeat a photo, which would make leave-one-out
    distances zero). ``k`` (1..10 in Sun et al.) is lowered to the number of other points when
    there are few. Returns plain arrays: ``features`` float32 [M, D] (unit rows), ``loo``
    float32 [M] (each point's k-th nearest neighbour distance among the others), ``k`` int64
    scalar, ``quantile`` and ``threshold`` float64 scalars (the ``quantile`` of ``loo``).

    Raises ``ValueError`` with fewer than 2 distinct rows, ``k < 1`` or ``quantile`` not in (0, 1).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    z = np.unique(l2_normalise(features).astype(np.float32), axis=0)
    if len(z) < 2:
        raise ValueError("the reference needs at least 2 distinct feature rows")
    k = min(int(k), len(z) - 1)
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)
    loo = dist[:, k].astype(np.float32)  # column 0 is the point itself (distance 0)
    return {
        "features": z,
        "loo": loo,
        "k": np.asarray(k, dtype=np.int64),
        "quantile": np.asarray(quantile, dtype=np.float64),
        "threshold": np.asarray(np.quantile(loo.astype(np.float64), quantile)),
    }


def check_reference(reference: Mapping[str, np.ndarray]) -> None:
    """Raise ``ValueError`` (one sentence) unless ``reference`` looks like :func:`fit_reference`'s
    output (e.g. after loading it from a file)."""
    missing = [key for key in REFERENCE_KEYS if key not in reference]
    if missing:
        raise ValueError(f"the OOD reference lacks {', '.join(missing)}")
    feats, loo = np.asarray(reference["features"]), np.asarray(reference["loo"])
    k = int(np.asarray(reference["k"]))
    if feats.ndim != 2 or loo.shape != (len(feats),) or not 1 <= k < len(feats):
        raise ValueError("the OOD reference's arrays do not fit together")


def score(
    reference: Mapping[str, np.ndarray], features: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(distance, percentile, is_ood)`` of new ``features`` [B, D] against ``reference``.

    ``distance`` float64 [B]: the k-th nearest neighbour distance of each L2-normalised row to
    the reference features (unit-free, in [0, 2]); ``percentile`` float64 [B] in [0, 100]: the
    share of the reference's leave-one-out distances below it; ``is_ood`` bool [B]: distance
    above the reference's threshold. Raises ``ValueError`` for a malformed reference or features
    of another width.
    """
    check_reference(reference)
    ref = np.asarray(reference["features"], dtype=np.float32)
    z = l2_normalise(features).astype(np.float32)
    if z.shape[1] != ref.shape[1]:
        raise ValueError(f"features have {z.shape[1]} dimensions, the reference {ref.shape[1]}")
    k = int(np.asarray(reference["k"]))
    dist, _ = NearestNeighbors(n_neighbors=k).fit(ref).kneighbors(z)
    d = dist[:, k - 1].astype(np.float64)
    loo = np.sort(np.asarray(reference["loo"], dtype=np.float64))
    percentile = 100.0 * np.searchsorted(loo, d, side="left") / len(loo)
    return d, percentile, d > float(np.asarray(reference["threshold"]))


def reference_from_images(explainer, images: np.ndarray, batch: int = 32) -> dict[str, np.ndarray]:
    """:func:`fit_reference` of a model's features of uint8 test images [N,S,S,3] (already at
    the model's input size), for a :class:`cityviz.cam.Explainer` ``explainer`` (its ``trunk``
    and ``prepare``). What a precompute step would save as ``ood/<model_id>.npz``.

    Raises ``ValueError`` with fewer than 2 distinct images.
    """
    feats = [
        trunk_features(explainer.trunk, explainer.prepare(np.asarray(images[i : i + batch])))
        for i in range(0, len(images), batch)
    ]
    if not feats:
        raise ValueError("no test images to compare photos with")
    return fit_reference(np.concatenate(feats))


def trunk_features(trunk: torch.nn.Module, x: torch.Tensor, batch: int = 32) -> np.ndarray:
    """Spatially averaged trunk activations [B, K] float32 of normalised inputs ``x`` [B,3,H,W].

    Run without autograd, ``batch`` images at a time; ``trunk`` is the first half of
    :func:`cityviz.models.archs.split_model` (in eval mode).
    """
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch):
            acts = trunk(x[start : start + batch])
            out.append(acts.float().mean(dim=(2, 3)).cpu().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)
