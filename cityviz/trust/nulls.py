"""Is an R_p^c above chance, and does it tell a city apart? Permutation null and city contrast.

Two checks of the paper's R_p^c (eq. 1: ``R_p^c = sum_i M_p,i / sum_i N_p,i`` over the test
images i of city c, M the object's pixels inside the visual explanation ``mask >= t``, N all its
pixels), from issue 11:

**Permutation null** (:func:`rpc_null_table`). A high R_p^c may only mean that masks usually sit
where the object usually is (signboards high on the wall, masks high in the frame). Null
hypothesis: the link between an image and its own mask does not matter. Within each city the
masks are shuffled among the city's images (each mask kept whole, its shape and layout intact;
image i is scored with the mask of image ``pi(i)``) and R_p^c is recomputed, ``n_permutations``
times. Per city, object and threshold: R_p^c, the null mean, the null's 2.5 / 97.5 % quantiles,
and the one-sided permutation p-value ``(1 + #{null >= observed}) / (n_permutations + 1)``
(Phipson & Smyth 2010, *Permutation p-values should never be zero*, Stat. Appl. Genet. Mol.
Biol. 9(1): random permutations drawn with replacement, the observed labelling counted once).
999 permutations give p-values down to 0.001, so Benjamini–Hochberg can reject with a few dozen
objects in the family (199 give 0.005, which BH at 5 % over more than 10 objects can never reject
on its own). The null keeps N (the object's pixels do not move), so comparing M is exact integer
arithmetic.

Cost: per city with n tested images of P pixels, ``n^2 * P`` histogram increments (every image's
labels against every mask of its city, :func:`shuffled_histograms`) plus ``n * n_permutations *
objects * bins`` additions. Measured (CPU seconds, one city, 999 permutations): 0.5 s for 48
images of 96 px (the demo), 12 s for 150 images of 224 px with 40 classes present; it grows
with n^2, so about 21 s at the default cap of 200 images (``RunConfig.null_images``). Cities
with more images are tested on a random sample of that many (:func:`null_sample`; ``n_images``
says how many); R_p^c in this table is then the sample's, so that it is compared with its own
null (``stats/rpc.parquet`` keeps the R_p^c of all test images).

**Contrast between cities** (:func:`rpc_contrast_table`). An object that tops every city (the
issue's "terrain", first or second in both cities) shows where networks look, not what tells
cities apart. Per city c, object and threshold: ``rpc_city`` = R_p^c over c's images,
``rpc_others`` = R_p over the other cities' images pooled (``sum M / sum N``), ``difference``
= rpc_city - rpc_others, a percentile bootstrap 95 % CI of the difference (images resampled
with replacement within each city), and a one-sided permutation p-value of the difference
(city labels permuted among all test images, group sizes kept; alternative: larger in c).
An object with no pixel in the other cities (a planted synthetic object) has ``rpc_others = 0``
by convention ("never explained elsewhere": with no pixels, none is explained) and
``absent_elsewhere`` True; the same convention holds inside every bootstrap and permutation
replicate, so the test statistic is always defined.

**Multiple testing.** p-values are adjusted with Benjamini–Hochberg
(``scipy.stats.false_discovery_control``) per city and threshold across the objects the paper's
filter keeps (mean pixels per image of the city > ``min_mean_pixels``, 100 by default); other
objects get ``p_adjusted`` NaN and are never flagged. ``above_null`` = p_adjusted < alpha and
rpc > null_hi; ``distinguishes`` = p_adjusted < alpha and diff_lo > 0 (alpha = 0.05).

**Thresholds.** Both tables hold one row per object for every threshold of the histogram grid
``k / n_bins``, ``k = 1 .. n_bins - 1`` (t = 0 explains every pixel, R_p^c = 1): the Objects
page's threshold slider moves on the same grid, so every slider position has its row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control

from cityviz import stats
from cityviz.store import REQUIRED_COLUMNS

N_PERMUTATIONS = 999
NULL_MAX_IMAGES = 200
ALPHA = 0.05
CI = 0.95
_TIE_TOL = 1e-12  # relative slack for float ties of the contrast statistic
_CHUNK = 128  # permutation / bootstrap replicates per matrix product

NULL_COLUMNS = [c for c in REQUIRED_COLUMNS["stats/rpc_null.parquet"] if c != "model_id"]
NULL_COLUMNS.append("mean_pixels")
"""Columns of :func:`rpc_null_table`: the cache's contract for ``stats/rpc_null.parquet``
(:data:`cityviz.store.REQUIRED_COLUMNS`, the one list), less ``model_id`` (the stage adds it),
plus ``mean_pixels``."""
CONTRAST_COLUMNS = [c for c in REQUIRED_COLUMNS["stats/rpc_contrast.parquet"] if c != "model_id"]
CONTRAST_COLUMNS += ["absent_elsewhere", "mean_pixels"]
"""Columns of :func:`rpc_contrast_table`, likewise from ``stats/rpc_contrast.parquet``'s
contract, plus ``absent_elsewhere`` and ``mean_pixels``."""


# --------------------------------------------------------------------------- shared helpers


def grid_thresholds(n_bins: int = stats.N_BINS) -> np.ndarray:
    """The thresholds both tables hold: ``k / n_bins`` for ``k = 1 .. n_bins - 1`` (float64)."""
    return np.arange(1, n_bins, dtype=np.float64) / n_bins


def _from_top(counts: np.ndarray) -> np.ndarray:
    """``[..., n_bins]`` bin counts -> ``[..., n_bins - 1]`` pixels with ``bin >= k``, k >= 1."""
    return np.cumsum(counts[..., ::-1], axis=-1)[..., ::-1][..., 1:]


def permutation_p_value(null: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """One-sided permutation p-value ``(1 + #{null >= observed}) / (R + 1)`` along axis 0.

    ``null`` is ``[R, ...]``, ``observed`` broadcasts against ``null[0]``. Phipson & Smyth
    (2010): with R random permutations (drawn with replacement) this is the exact-valid
    p-value; it is never 0. Compare integers where the statistic allows (exact ties).
    """
    null = np.asarray(null)
    hits = (null >= np.asarray(observed)[None]).sum(axis=0)
    return (1.0 + hits) / (null.shape[0] + 1.0)


def bh_adjust(p_values: np.ndarray, in_family: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values over the entries where ``in_family`` is True.

    ``scipy.stats.false_discovery_control(method="bh")`` (Benjamini & Hochberg 1995); entries
    outside the family, and NaN p-values, give NaN. float64 like ``p_values``.
    """
    p = np.asarray(p_values, dtype=np.float64)
    fam = np.asarray(in_family, dtype=bool) & np.isfinite(p)
    out = np.full(p.shape, np.nan)
    if fam.any():
        out[fam] = false_discovery_control(p[fam], method="bh")
    return out


def _bh_by_group(frame: pd.DataFrame, keys: list[str], in_family: pd.Series) -> np.ndarray:
    out = np.full(len(frame), np.nan)
    p = frame["p_value"].to_numpy(dtype=np.float64)
    fam = in_family.to_numpy(dtype=bool)
    for idx in frame.groupby(keys, sort=False).indices.values():
        out[idx] = bh_adjust(p[idx], fam[idx])
    return out


def _names(class_ids: np.ndarray, class_names: Sequence[str]) -> list[str]:
    names = list(class_names)
    bad = [c for c in class_ids if not 0 <= c < len(names)]
    if bad:
        raise ValueError(f"class_id {int(bad[0])} has no name ({len(names)} class names)")
    return [names[c] for c in class_ids]


# --------------------------------------------------------------------------- permutation null


def null_sample(
    cities: Sequence[str] | np.ndarray, max_images: int = NULL_MAX_IMAGES, seed: int = 0
) -> np.ndarray:
    """Rows tested by the permutation null: every row of a city with at most ``max_images``
    images, else a uniform random sample of ``max_images`` of them (seeded). Sorted int64."""
    if max_images < 2:
        raise ValueError(f"max_images must be at least 2, got {max_images}")
    cities = np.asarray(cities)
    rng = np.random.default_rng(seed)
    keep = []
    for city in sorted(set(cities.tolist())):
        rows = np.flatnonzero(cities == city)
        if len(rows) > max_images:
            rows = rng.choice(rows, size=max_images, replace=False)
        keep.append(rows)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def mask_permutations(n: int, n_permutations: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_permutations, n]`` int64: row r gives image i the mask of image ``perm[r, i]``.

    Uniform random permutations drawn independently (with replacement, so the identity may
    recur), as Phipson & Smyth's p-value assumes.
    """
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be at least 1, got {n_permutations}")
    return rng.permuted(np.tile(np.arange(n, dtype=np.int64), (n_permutations, 1)), axis=1)


def shuffled_histograms(
    labels: np.ndarray,
    bins: np.ndarray,
    n_classes: int,
    n_bins: int,
    perms: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Object x mask-bin histograms of one city, with each image's own mask and shuffled.

    ``labels``: integer ``[n, H, W]`` (or ``[n, P]``) class indices, values outside
    ``[0, n_classes)`` unlabelled; ``bins``: ``[n, H, W]`` histogram bins of the masks
    (:func:`cityviz.stats.bin_index`); ``perms``: ``[R, n]`` from :func:`mask_permutations`.

    Returns ``observed`` ``[n_classes, n_bins]`` (sum over images of the histogram of
    ``mask_i`` inside each object of ``labels_i``) and ``null`` ``[R, n_classes, n_bins]``
    (the same with ``mask_perm[r, i]`` in place of ``mask_i``), int32 (int64 from 2^31 pixels
    on). For every image i the histograms of its labels against all n masks of the city are
    counted in one ``bincount``; each permutation then picks one of them per image (``n^2 * P``
    plus ``n * R * n_classes * n_bins`` work): pass only the classes present (compact indices,
    as :func:`rpc_null_city` does).
    """
    labels = np.asarray(labels)
    bins = np.asarray(bins)
    n = labels.shape[0]
    if bins.shape != labels.shape:
        raise ValueError(f"labels and bins must have one shape; got {labels.shape}, {bins.shape}")
    perms = np.asarray(perms)
    if perms.ndim != 2 or perms.shape[1] != n:
        raise ValueError(f"perms must be [R, {n}], got {perms.shape}")
    lab = labels.reshape(n, -1)
    width = (n_classes + 1) * n_bins
    itype = np.int32 if n * width < 2**31 else np.int64
    base = bins.reshape(n, -1).astype(itype)
    base += (np.arange(n, dtype=itype) * width)[:, None]
    valid = (lab >= 0) & (lab < n_classes)
    lab_off = (np.where(valid, lab, n_classes).astype(itype)) * n_bins
    acc = np.int32 if lab.size < 2**31 else np.int64
    observed = np.zeros((n_classes, n_bins), dtype=acc)
    null = np.zeros((perms.shape[0], n_classes, n_bins), dtype=acc)
    for i in range(n):
        idx = base + lab_off[i][None, :]
        pair = np.bincount(idx.ravel(), minlength=n * width).reshape(n, n_classes + 1, n_bins)
        pair = pair[:, :n_classes].astype(acc)
        observed += pair[i]
        null += pair[perms[:, i]]
    return observed, null


def rpc_null_city(
    labels: np.ndarray,
    masks: np.ndarray,
    n_classes: int,
    n_bins: int = stats.N_BINS,
    n_permutations: int = N_PERMUTATIONS,
    seed: int | Sequence[int] = 0,
    ci: float = CI,
) -> pd.DataFrame:
    """The permutation null of R_p^c for one city's images, every object and grid threshold.

    ``labels`` integer ``[n, H, W]``; ``masks`` float mask_norm ``[n, H, W]`` in [0, 1] (or
    their uint8 bins from :func:`cityviz.stats.bin_index`, any integer dtype). Returns one row
    per object present (N > 0) and threshold ``k / n_bins`` (k >= 1): ``class_id, threshold,
    rpc, null_mean, null_lo, null_hi, p_value, n_pixels`` (float64 except ``class_id`` and
    ``n_pixels``). ``null_lo`` / ``null_hi`` are the ``(1 - ci) / 2`` and ``(1 + ci) / 2``
    quantiles of the permuted R_p^c (linear interpolation).
    """
    masks = np.asarray(masks)
    bins = masks if np.issubdtype(masks.dtype, np.integer) else stats.bin_index(masks, n_bins)
    labels = np.asarray(labels)
    # only the classes present in the city: the permutations' work scales with their number
    valid = (labels >= 0) & (labels < n_classes)
    lab = np.where(valid, labels, n_classes).astype(np.int64)
    present = np.flatnonzero(np.bincount(lab.ravel(), minlength=n_classes + 1)[:n_classes])
    lut = np.full(n_classes + 1, len(present), dtype=np.int32)
    lut[present] = np.arange(len(present), dtype=np.int32)
    rng = np.random.default_rng(seed)
    perms = mask_permutations(len(labels), n_permutations, rng)
    observed, null = shuffled_histograms(lut[lab], bins, len(present), n_bins, perms)
    n_pix = observed.sum(axis=1, dtype=np.int64)
    obs_m = _from_top(observed.astype(np.int64))  # [C, K]
    null_m = _from_top(null.astype(np.int64))  # [R, C, K]
    denom = n_pix.astype(np.float64)[:, None]
    null_r = null_m / denom
    lo, hi = np.percentile(null_r, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    thresholds = grid_thresholds(n_bins)
    n_c, n_k = obs_m.shape
    return pd.DataFrame(
        {
            "class_id": np.repeat(present, n_k).astype(np.int64),
            "threshold": np.tile(thresholds, n_c),
            "rpc": (obs_m / denom).ravel(),
            "null_mean": null_r.mean(axis=0).ravel(),
            "null_lo": lo.ravel(),
            "null_hi": hi.ravel(),
            "p_value": permutation_p_value(null_m, obs_m).ravel(),
            "n_pixels": np.repeat(n_pix, n_k).astype(np.int64),
        }
    )


def rpc_null_table(
    labels: np.ndarray,
    masks: np.ndarray,
    cities: Sequence[str] | np.ndarray,
    class_names: Sequence[str],
    n_bins: int = stats.N_BINS,
    n_permutations: int = N_PERMUTATIONS,
    min_mean_pixels: float = 100.0,
    seed: int = 0,
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """Permutation null of R_p^c per city, object and grid threshold, BH-adjusted.

    ``labels`` ``[n, H, W]`` and ``masks`` ``[n, H, W]`` (mask_norm or its bins) are the tested
    images (:func:`null_sample`), ``cities[i]`` the city of image i. Masks are shuffled only
    among images of the same city. Columns :data:`NULL_COLUMNS` (``mean_pixels = N /
    n_images``, the paper's filter, decides the BH family), sorted by city, threshold, rpc
    descending. Cities are seeded independently (``[seed, city index]``).
    """
    cities = np.asarray(cities)
    if len(cities) != len(labels) or len(masks) != len(labels):
        raise ValueError("labels, masks and cities must have one entry per image")
    frames = []
    for j, city in enumerate(sorted(set(cities.tolist()))):
        rows = np.flatnonzero(cities == city)
        table = rpc_null_city(
            np.asarray(labels[rows]),
            np.asarray(masks[rows]),
            len(class_names),
            n_bins,
            n_permutations,
            seed=[seed, j],
        )
        table.insert(0, "city", city)
        table["n_images"] = len(rows)
        frames.append(table)
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in NULL_COLUMNS})
    out = pd.concat(frames, ignore_index=True)
    out["object"] = _names(out["class_id"].to_numpy(), class_names)
    out["mean_pixels"] = out["n_pixels"] / out["n_images"]
    out["n_permutations"] = int(n_permutations)
    out["p_adjusted"] = _bh_by_group(
        out, ["city", "threshold"], out["mean_pixels"] > min_mean_pixels
    )
    out["above_null"] = (out["p_adjusted"] < alpha) & (out["rpc"] > out["null_hi"])
    out = out.sort_values(["city", "threshold", "rpc", "class_id"], ascending=[1, 1, 0, 1])
    return out[NULL_COLUMNS].reset_index(drop=True)


def rpc_null_reference(
    labels: np.ndarray, masks: np.ndarray, perm: np.ndarray, threshold: float, n_classes: int
) -> dict[int, float]:
    """Brute-force float64 R_p^c of one city's images under one mask permutation (for tests):
    class_id -> ``sum_i #(labels_i == p and mask_perm[i] >= t) / #(labels_i == p)``."""
    masks = np.asarray(masks, dtype=np.float32)[np.asarray(perm)]
    labels = np.asarray(labels)
    explained = masks >= np.float32(threshold)
    out = {}
    for c in range(n_classes):
        obj = labels == c
        n = float(obj.sum(dtype=np.float64))
        if n:
            out[c] = float((obj & explained).sum(dtype=np.float64)) / n
    return out


# --------------------------------------------------------------------------- city contrast


def _dense(hist: pd.DataFrame, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``M [n, O, K]`` explained pixels per image, object and grid threshold (k >= 1), ``N [n,
    O]`` object pixels, and the object class ids ``[O]``, float64, for the given images."""
    img = pd.Index(image_ids).get_indexer(hist["image_id"])
    keep = img >= 0
    counts = stats.hist_counts(hist)[keep]
    img = img[keep]
    cls_codes, classes = pd.factorize(hist["class_id"].to_numpy()[keep], sort=True)
    n_bins = counts.shape[1]
    m = np.zeros((len(image_ids), len(classes), n_bins - 1))
    n = np.zeros((len(image_ids), len(classes)))
    m[img, cls_codes] = _from_top(counts)
    n[img, cls_codes] = counts.sum(axis=1)
    return m, n, np.asarray(classes, dtype=np.int64)


def _ratio(m: np.ndarray, n: np.ndarray) -> np.ndarray:
    """``m / n`` with 0 where ``n == 0`` (no pixels: none explained). ``n`` broadcasts over the
    last (threshold) axis of ``m``."""
    n = n[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, m / np.where(n > 0, n, 1.0), 0.0)


def _wsum(weights: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``[R, O, K]`` weighted sums over images of ``m [n, O, K]`` for ``[R, n]`` weights (one
    matrix product)."""
    n, o, k = m.shape
    return (weights @ m.reshape(n, o * k)).reshape(len(weights), o, k)


def _group_difference(
    weights: np.ndarray, m: np.ndarray, n: np.ndarray, tot_m: np.ndarray, tot_n: np.ndarray
) -> np.ndarray:
    """``[R, O, K]`` R(in group) - R(rest) for ``[R, n_images]`` 0/1 group weights."""
    gm = _wsum(weights, m)
    gn = weights @ n
    return _ratio(gm, gn) - _ratio(tot_m[None] - gm, tot_n[None] - gn)


def _stratified_weights(rng: np.random.Generator, codes: np.ndarray, n_boot: int) -> np.ndarray:
    """``[n_boot, n]`` multiplicities: images resampled with replacement within each city."""
    w = np.zeros((n_boot, len(codes)))
    for c in np.unique(codes):
        rows = np.flatnonzero(codes == c)
        draws = rng.integers(0, len(rows), size=(n_boot, len(rows)))
        np.add.at(w, (np.arange(n_boot)[:, None], rows[draws]), 1.0)
    return w


def rpc_contrast_table(
    hist: pd.DataFrame,
    city_of: pd.Series,
    class_names: Sequence[str],
    n_permutations: int = N_PERMUTATIONS,
    n_boot: int = 200,
    min_mean_pixels: float = 100.0,
    seed: int = 0,
    alpha: float = ALPHA,
    ci: float = CI,
) -> pd.DataFrame:
    """R_p^c in each city against the other cities pooled, per object and grid threshold.

    ``hist`` is one model's histogram table (:func:`cityviz.stats.hist_frame`), ``city_of``
    image_id -> city (its index lists every test image, also those without labelled pixels).
    Per city c and object present in c, at every threshold ``k / n_bins`` (k >= 1):
    ``rpc_city``, ``rpc_others``, ``difference`` (module docstring), the percentile bootstrap CI
    ``diff_lo, diff_hi`` (``n_boot`` replicates, images resampled within each city; replicates
    where the object has no pixel in c are skipped), the one-sided permutation ``p_value``
    (``n_permutations`` shuffles of the city labels among all images), ``p_adjusted`` (BH per
    city and threshold over the objects with ``mean_pixels > min_mean_pixels``),
    ``distinguishes`` (p_adjusted < alpha and diff_lo > 0), ``absent_elsewhere``,
    ``mean_pixels`` (N over c's image count), ``n_images`` (c's images). Columns
    :data:`CONTRAST_COLUMNS`; empty with one city.
    """
    ids = np.asarray(city_of.index)
    codes, cities = pd.factorize(pd.Series(city_of.to_numpy()), sort=True)
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in CONTRAST_COLUMNS})
    if len(cities) < 2:
        return empty
    m, n, classes = _dense(hist, ids)
    if not len(classes):
        return empty
    tot_m, tot_n = m.sum(axis=0), n.sum(axis=0)
    rng = np.random.default_rng(seed)
    onehot = (codes[None, :] == np.arange(len(cities))[:, None]).astype(np.float64)  # [C, n]
    observed = [_group_difference(onehot[[c]], m, n, tot_m, tot_n)[0] for c in range(len(cities))]
    hits = [np.zeros_like(o) for o in observed]
    done = 0
    while done < n_permutations:
        r = min(_CHUNK, n_permutations - done)
        shuffled = rng.permuted(np.tile(codes, (r, 1)), axis=1)
        for c in range(len(cities)):
            d = _group_difference((shuffled == c).astype(np.float64), m, n, tot_m, tot_n)
            hits[c] += (d >= observed[c] - _TIE_TOL * np.abs(observed[c])).sum(axis=0)
        done += r
    boot = [[] for _ in cities]
    for start in range(0, n_boot, _CHUNK):
        w = _stratified_weights(rng, codes, min(_CHUNK, n_boot - start))
        for c in range(len(cities)):
            in_c = w * onehot[c]
            cm, cn = _wsum(in_c, m), in_c @ n
            om, on = _wsum(w - in_c, m), (w - in_c) @ n
            with np.errstate(invalid="ignore", divide="ignore"):
                city_r = np.where(cn[..., None] > 0, cm / cn[..., None], np.nan)
            boot[c].append(city_r - _ratio(om, on))
    thresholds = grid_thresholds(m.shape[2] + 1)
    frames = []
    for c, city in enumerate(cities):
        n_c = onehot[c] @ n
        present = np.flatnonzero(n_c > 0)
        if not len(present):
            continue
        samples = np.concatenate(boot[c])[:, present]
        lo, hi = np.nanpercentile(samples, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
        city_m = _wsum(onehot[[c]], m)[0, present]
        rpc_city = _ratio(city_m, n_c[present])
        others_n = (tot_n - n_c)[present]
        rpc_others = _ratio(tot_m[present] - city_m, others_n)
        n_k = len(thresholds)
        n_images = int(onehot[c].sum())
        frames.append(
            pd.DataFrame(
                {
                    "city": city,
                    "class_id": np.repeat(classes[present], n_k),
                    "threshold": np.tile(thresholds, len(present)),
                    "rpc_city": rpc_city.ravel(),
                    "rpc_others": rpc_others.ravel(),
                    "difference": observed[c][present].ravel(),
                    "diff_lo": lo.ravel(),
                    "diff_hi": hi.ravel(),
                    "p_value": ((1.0 + hits[c][present]) / (n_permutations + 1.0)).ravel(),
                    "absent_elsewhere": np.repeat(others_n == 0, n_k),
                    "mean_pixels": np.repeat(n_c[present] / n_images, n_k),
                    "n_images": n_images,
                }
            )
        )
    if not frames:
        return empty
    out = pd.concat(frames, ignore_index=True)
    out["object"] = _names(out["class_id"].to_numpy(), class_names)
    out["n_permutations"] = int(n_permutations)
    out["p_adjusted"] = _bh_by_group(
        out, ["city", "threshold"], out["mean_pixels"] > min_mean_pixels
    )
    out["distinguishes"] = (out["p_adjusted"] < alpha) & (out["diff_lo"] > 0)
    out = out.sort_values(["city", "threshold", "difference", "class_id"], ascending=[1, 1, 0, 1])
    return out[CONTRAST_COLUMNS].reset_index(drop=True)
