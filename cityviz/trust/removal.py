"""Object removal, a causal test: does the network need an object to recognise the city?

Per city and object, the object's segmented pixels are painted out of the test images of that
city where it covers at least ``min_pixels`` pixels, and the images are predicted again. The
accuracy and the true city's mean probability before and after are compared with painting out
an **equal-area random region** of the same images: the object's own region shifted cyclically
by a random offset (``np.roll``; drawn per image from a seeded generator), so area, shape and
fragmentation are exactly the object's and only the place differs. An object is called
*causal* for a city when its removal drops the accuracy more than the random region's does,
with the percentile bootstrap 95 % CI (over images) of ``drop − drop_random`` above 0.

**Fill: OpenCV inpainting** (``cv2.inpaint``, Telea 2004, *An image inpainting technique based
on the fast marching method*, radius 3 px), which continues the surrounding colours and edges
into the hole, so what the network sees is the street without the object rather than a
coloured patch (a flat patch would be a new, strong feature of its own). Regions are dilated
by one pixel (3×3) first, so the segmentation's edge pixels do not leave the object's outline
behind. Label maps are at the cache's size; the region is resized (nearest neighbour) to the
model's input size, where the painting happens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import pandas as pd

from cityviz.trust.bootstrap import bootstrap_mean_ci

INPAINT_RADIUS = 3
COLUMNS = ("model_id", "city", "object", "class_id", "n_images", "area", "acc_before",
           "acc_after", "acc_random", "prob_before", "prob_after", "prob_random", "drop",
           "drop_random", "drop_lo", "drop_hi", "causal")  # fmt: skip


def paint_out(image: np.ndarray, region: np.ndarray, radius: int = INPAINT_RADIUS) -> np.ndarray:
    """``image`` uint8 [H,W,3] with the pixels of ``region`` (bool [H,W]) inpainted by
    ``cv2.inpaint`` (Telea). An empty region returns a copy of the image unchanged."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    region = np.asarray(region, dtype=bool)
    if image.ndim != 3 or image.shape[2] != 3 or region.shape != image.shape[:2]:
        raise ValueError(f"need image [H,W,3] and region [H,W]; got {image.shape}, {region.shape}")
    if not region.any():
        return image.copy()
    return cv2.inpaint(image, region.astype(np.uint8), radius, cv2.INPAINT_TELEA)


def grow(region: np.ndarray, size: int | None = None) -> np.ndarray:
    """``region`` bool [h,w] resized (nearest) to ``size`` × ``size`` when given, then dilated
    by one pixel (3×3 square), as a bool array."""
    r = np.asarray(region, dtype=np.uint8)
    if size is not None and r.shape != (size, size):
        r = cv2.resize(r, (size, size), interpolation=cv2.INTER_NEAREST)
    return cv2.dilate(r, np.ones((3, 3), np.uint8)).astype(bool)


def random_region(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The equal-area control: ``region`` shifted cyclically by a uniform random (dy, dx)."""
    h, w = region.shape
    return np.roll(region, (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1))


def removal_table(
    predict: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    truth: np.ndarray,
    cities: Sequence[str],
    class_names: Sequence[str],
    *,
    min_pixels: float = 100.0,
    max_images: int | None = 32,
    n_boot: int = 200,
    seed: int = 0,
    model_id: str = "",
    probs_before: np.ndarray | None = None,
) -> pd.DataFrame:
    """The object-removal table (:data:`COLUMNS`; module docstring) for one model.

    ``predict``: uint8 images [N,P,P,3] → class probabilities [N,C]; ``images``: the test
    images at the model's input size P, uint8 [N,P,P,3]; ``labels``: label maps at the cache's
    size, int [N,S,S]; ``truth``: true city index [N]; ``cities`` and ``class_names``: names of
    the indices. Per city and object, at most ``max_images`` images are used (a seeded random
    choice when more qualify). ``drop = acc_before − acc_after``; ``drop_lo``/``drop_hi``: the
    bootstrap CI of ``drop − drop_random``. Objects in no image at ``min_pixels`` get no row.
    ``probs_before`` [N,C]: the unaltered images' probabilities when already known (the cache's
    predictions), which saves a third of the forward passes; predicted here otherwise.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    truth = np.asarray(truth, dtype=np.int64)
    if not (len(images) == len(labels) == len(truth)):
        raise ValueError("images, labels and truth must have one entry per test image")
    size = images.shape[1]
    rng = np.random.default_rng(seed)
    rows = []
    for c, city in enumerate(cities):
        idx_city = np.flatnonzero(truth == c)
        if not len(idx_city):
            continue
        counts = np.stack([np.bincount(labels[i].ravel(), minlength=len(class_names))
                           [: len(class_names)] for i in idx_city])  # fmt: skip
        for k, name in enumerate(class_names):
            sel = idx_city[counts[:, k] >= min_pixels]
            if not len(sel):
                continue
            if max_images is not None and len(sel) > max_images:
                sel = np.sort(rng.choice(sel, max_images, replace=False))
            after, rand, areas = [], [], []
            for i in sel:
                region = grow(labels[i] == k, size)
                after.append(paint_out(images[i], region))
                rand.append(paint_out(images[i], random_region(region, rng)))
                areas.append(region.mean())
            n = len(sel)
            if probs_before is None:
                p = predict(np.concatenate([images[sel], np.stack(after + rand)]))
                pb, pa, pr = p[:n], p[n : 2 * n], p[2 * n :]
            else:
                p = predict(np.stack(after + rand))
                pb, pa, pr = np.asarray(probs_before)[sel], p[:n], p[n:]
            cb, ca, cr = (q.argmax(1) == c for q in (pb, pa, pr))
            lo, hi = bootstrap_mean_ci(cr.astype(float) - ca.astype(float), n_boot, seed=seed)
            drop, drop_random = cb.mean() - ca.mean(), cb.mean() - cr.mean()
            rows.append({
                "model_id": model_id, "city": str(city), "object": str(name), "class_id": k,
                "n_images": n, "area": float(np.mean(areas)),
                "acc_before": float(cb.mean()), "acc_after": float(ca.mean()),
                "acc_random": float(cr.mean()), "prob_before": float(pb[:, c].mean()),
                "prob_after": float(pa[:, c].mean()), "prob_random": float(pr[:, c].mean()),
                "drop": float(drop), "drop_random": float(drop_random),
                "drop_lo": lo, "drop_hi": hi, "causal": bool(drop > drop_random and lo > 0),
            })  # fmt: skip
    return pd.DataFrame(rows, columns=list(COLUMNS))
