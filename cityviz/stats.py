"""Statistics of visual explanations: R_p^c (eq. 1), AR (eq. 2) and cluster profiles.

Conventions
-----------
* A *mask* is ``mask_norm``: float32 in [0, 1], shape ``[B, H, W]``.
* A *label map* is an integer array ``[B, H, W]`` of segmenter class indices; values outside
  ``[0, n_classes)`` are "unlabelled" and ignored everywhere (they count neither in M nor in N).
* The visual explanation keeps the pixels with ``mask >= t``, compared in float32: that is what
  NumPy 2 does for ``mask >= 0.35`` with a float32 ``mask`` and a Python float, or with
  ``np.float32(t)``. Beware ``mask >= np.float64(t)``: it compares in float64 and differs at
  the bin edges (float32(0.7) < 0.7), so it would not match the histograms.

Threshold-free storage
----------------------
For every image and every object present in it we store a histogram of the mask values inside
that object (``N_BINS`` bins of width ``1 / N_BINS``). For a threshold on the bin grid,
``t = k / N_BINS``, the explained pixels are exactly the sum of bins ``>= k``, so R_p^c can be
recomputed for any such threshold without the masks, and histograms computed on separate shards
simply concatenate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

N_BINS = 20
_GRID_TOL = 1e-9
_BOOT_CHUNK = 256


# --------------------------------------------------------------------------- bins


def threshold_bin(threshold: float, n_bins: int = N_BINS) -> int:
    """Index ``k`` with ``threshold == k / n_bins``; ValueError when off the grid or out of range.

    ``k`` may be ``0 .. n_bins - 1``. ``t = 1.0`` is refused: mask values equal to 1.0 share the
    last bin with ``[(n-1)/n, 1)``, so "``mask >= 1``" cannot be read off the histogram.
    """
    t = float(threshold)
    k = round(t * n_bins)
    if not math.isfinite(t) or abs(t * n_bins - k) > _GRID_TOL * n_bins:
        raise ValueError(
            f"threshold {threshold!r} is not on the histogram grid: it must be a multiple of "
            f"1/{n_bins} = {1 / n_bins:g} (the histograms store {n_bins} bins)"
        )
    if not 0 <= k <= n_bins - 1:
        raise ValueError(
            f"threshold {threshold!r} is out of range: it must lie in "
            f"[0, {(n_bins - 1) / n_bins:g}] (multiples of 1/{n_bins})"
        )
    return k


def bin_edges(n_bins: int = N_BINS) -> np.ndarray:
    """Lower bin edges ``k / n_bins`` for ``k = 0 .. n_bins`` as float32 (the comparison dtype)."""
    return (np.arange(n_bins + 1, dtype=np.float64) / n_bins).astype(np.float32)


def bin_index(mask: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Histogram bin of every mask value: bin ``k`` is ``[k/n, (k+1)/n)``, 1.0 goes to the last.

    Guarantees ``bin >= k  <=>  mask >= np.float32(k / n)`` for float32 masks and every ``k``
    in ``0 .. n-1``: ``floor(mask * n)`` can be off by one next to an edge (float32 rounding of
    the product), so it is corrected with exact comparisons against the float32 edges. Values
    are clipped to [0, 1]; NaN raises ValueError. Returns uint8 (``n_bins <= 255``) or int16.
    """
    if not 1 <= n_bins <= 32767:
        raise ValueError(f"n_bins must be in [1, 32767], got {n_bins}")
    x = np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)
    if np.isnan(x).any():
        raise ValueError("mask contains NaN values")
    edges = bin_edges(n_bins)
    lower = edges  # lower[j]: first value of bin j (j = n only for x == 1.0)
    upper = np.append(edges[1:], np.float32(np.inf))  # upper[j]: first value of bin j + 1
    b = (x * np.float32(n_bins)).astype(np.uint8 if n_bins <= 255 else np.int16)
    b -= x < lower.take(b)
    b += x >= upper.take(b)
    np.minimum(b, n_bins - 1, out=b)
    return b


# --------------------------------------------------------------------------- histograms


def object_histograms(
    masks: np.ndarray, labels: np.ndarray, n_classes: int, n_bins: int = N_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image and per object present, a histogram of the mask values inside the object.

    Returns long-format ``(image_row int32[K], class_id int32[K], counts uint32[K, n_bins])``,
    one row per (image, labelled class with at least one pixel), ordered by image then class.
    ``image_row`` indexes the batch axis of ``masks``.
    """
    masks = np.asarray(masks)
    labels = np.asarray(labels)
    if masks.ndim == 2:
        masks, labels = masks[None], labels[None]
    if masks.shape != labels.shape or masks.ndim != 3:
        raise ValueError(
            f"masks and labels must both be [B, H, W]; got {masks.shape} and {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, got {labels.dtype}")
    n_img = masks.shape[0]
    n_cls = n_classes + 1
    size = n_img * n_cls * n_bins
    itype = np.int32 if size < 2**31 else np.int64
    # Unlabelled pixels go to an extra class ``n_classes`` that is dropped afterwards: cheaper
    # than compacting the arrays with a boolean index.
    valid = (labels >= 0) & (labels < n_classes)
    idx = np.where(valid, labels, n_classes).astype(itype)
    idx *= n_bins
    idx += bin_index(masks, n_bins)
    idx += (np.arange(n_img, dtype=itype) * (n_cls * n_bins))[:, None, None]
    full = np.bincount(idx.ravel(), minlength=size).reshape(n_img, n_cls, n_bins)[:, :n_classes]
    image_row, class_id = np.nonzero(full.sum(axis=2))
    counts = full[image_row, class_id].astype(np.uint32)
    return image_row.astype(np.int32), class_id.astype(np.int32), counts


def bin_columns(n_bins: int = N_BINS) -> list[str]:
    """Names of the histogram columns: ``h00 .. h{n-1}``."""
    width = max(2, len(str(n_bins - 1)))
    return [f"h{k:0{width}d}" for k in range(n_bins)]


def hist_frame(
    image_ids: Sequence | np.ndarray,
    image_row: np.ndarray,
    class_id: np.ndarray,
    counts: np.ndarray,
) -> pd.DataFrame:
    """Long table ``image_id, class_id, n_pixels, h00..`` from :func:`object_histograms` output.

    ``image_ids[image_row]`` is the id of each row (``image_ids`` has one entry per batch image).
    """
    ids = np.asarray(image_ids)[np.asarray(image_row)]
    counts = np.asarray(counts, dtype=np.uint32)
    frame = pd.DataFrame(
        {
            "image_id": ids,
            "class_id": np.asarray(class_id, dtype=np.int32),
            "n_pixels": counts.sum(axis=1, dtype=np.int64),
        }
    )
    bins = pd.DataFrame(counts, columns=bin_columns(counts.shape[1]), index=frame.index)
    return pd.concat([frame, bins], axis=1)


def hist_bin_columns(hist: pd.DataFrame) -> list[str]:
    """The histogram columns of a :func:`hist_frame` table, in bin order."""
    cols = [c for c in hist.columns if len(c) > 1 and c[0] == "h" and c[1:].isdigit()]
    cols.sort(key=lambda c: int(c[1:]))
    if not cols or [int(c[1:]) for c in cols] != list(range(len(cols))):
        raise ValueError("not a histogram table: expected columns h00 .. h{n-1}")
    return cols


def hist_counts(hist: pd.DataFrame) -> np.ndarray:
    """The ``[K, n_bins]`` count matrix of a histogram table (inverse of :func:`hist_frame`)."""
    return hist[hist_bin_columns(hist)].to_numpy(dtype=np.int64)


def concat_hists(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate histogram tables from shards; ValueError on mixed bins or repeated rows."""
    frames = list(frames)
    if not frames:
        raise ValueError("no histogram tables to concatenate")
    n = {len(hist_bin_columns(f)) for f in frames}
    if len(n) != 1:
        raise ValueError(f"histogram tables have different numbers of bins: {sorted(n)}")
    out = pd.concat(frames, ignore_index=True)
    dup = out.duplicated(["image_id", "class_id"])
    if dup.any():
        first = out.loc[dup, ["image_id", "class_id"]].iloc[0].tolist()
        raise ValueError(f"(image_id, class_id) {first} appears in more than one shard")
    return out


def explained_pixels(counts: np.ndarray, threshold: float) -> np.ndarray:
    """M: pixels with ``mask >= threshold`` per histogram row (sum of bins ``>= k``), int64."""
    counts = np.asarray(counts)
    k = threshold_bin(threshold, counts.shape[-1])
    return counts[..., k:].sum(axis=-1, dtype=np.int64)


# --------------------------------------------------------------------------- R_p^c


def _with_city(hist: pd.DataFrame, city_of: pd.Series, threshold: float) -> pd.DataFrame:
    """``image_id, city, class_id, M, N`` for the rows whose image has a city."""
    counts = hist_counts(hist)
    out = pd.DataFrame(
        {
            "image_id": hist["image_id"].to_numpy(),
            "class_id": hist["class_id"].to_numpy(dtype=np.int64),
            "M": explained_pixels(counts, threshold),
            "N": counts.sum(axis=1),
        }
    )
    out["city"] = out["image_id"].map(city_of)
    return out[out["city"].notna()].reset_index(drop=True)


def _object_names(class_id: pd.Series, class_names: Sequence[str]) -> list[str]:
    names = list(class_names)
    bad = class_id[(class_id < 0) | (class_id >= len(names))]
    if len(bad):
        raise ValueError(f"class_id {int(bad.iloc[0])} has no name ({len(names)} class names)")
    return [names[c] for c in class_id]


def rpc_table(
    hist: pd.DataFrame,
    city_of: pd.Series,
    threshold: float,
    class_names: Sequence[str],
    min_mean_pixels: float = 100.0,
    n_images_of: pd.Series | None = None,
) -> pd.DataFrame:
    """R_p^c (eq. 1) per city and object, with the paper's "average pixel count" filter.

    Columns:

    * ``M``, ``N``: explained and total pixels of the object over the city's images.
    * ``rpc = M / N`` (eq. 1).
    * ``mean_pixels = N / n_images(city)``: the average is over *all* images of the city,
      counting images where the object is absent as 0. This is our reading of the paper's
      criterion "the average number of pixels exceeds a certain threshold (set as 100)".
    * ``share = M / sum(M over the city's objects)``: the object's share of the explanation.
    * ``lift = rpc / (sum M / sum N over the city)``: how much more often a pixel of this object
      is explained than an average labelled pixel of the city.
    * ``kept = mean_pixels > min_mean_pixels``.

    ``city_of`` maps image_id -> city; images it does not list are ignored (pass a subset to
    restrict the analysis). ``n_images_of`` maps city -> number of images; by default it is the
    number of distinct images of the city in ``hist`` (an image with no labelled pixel at all
    does not appear there; pass ``n_images_of`` to count it). Sorted by city, then rpc desc.
    """
    rows = _with_city(hist, city_of, threshold)
    cols = ["city", "class_id", "object", "M", "N", "rpc", "mean_pixels", "share", "lift", "kept"]
    if rows.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    per = rows.groupby(["city", "class_id"], as_index=False, sort=True)[["M", "N"]].sum()
    if n_images_of is None:
        n_images_of = rows.groupby("city")["image_id"].nunique()
    n_img = per["city"].map(n_images_of).astype(float)
    if n_img.isna().any():
        missing = per.loc[n_img.isna(), "city"].iloc[0]
        raise ValueError(f"n_images_of has no entry for city {missing!r}")
    city_m = per.groupby("city")["M"].transform("sum").astype(float)
    city_n = per.groupby("city")["N"].transform("sum").astype(float)
    per["object"] = _object_names(per["class_id"], class_names)
    per["rpc"] = per["M"] / per["N"]
    per["mean_pixels"] = per["N"] / n_img
    per["share"] = (per["M"] / city_m).where(city_m > 0)
    per["lift"] = (per["rpc"] / (city_m / city_n)).where(city_m > 0)
    per["kept"] = per["mean_pixels"] > min_mean_pixels
    per = per.sort_values(["city", "rpc", "class_id"], ascending=[True, False, True])
    return per[cols].reset_index(drop=True)


def _percentiles(samples: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    q = [50 * (1 - ci), 50 * (1 + ci)]
    lo, hi = np.nanpercentile(samples, q, axis=0)
    return lo, hi


def _resample_weights(rng: np.random.Generator, n_boot: int, n: int) -> np.ndarray:
    """``[n_boot, n]`` multiplicities of a with-replacement resample of ``n`` items."""
    draws = rng.integers(0, n, size=(n_boot, n))
    draws += np.arange(n_boot)[:, None] * n
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def rpc_bootstrap(
    hist: pd.DataFrame,
    city_of: pd.Series,
    threshold: float,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Percentile bootstrap CIs of R_p^c, resampling images within each city.

    Per city the explained/total pixels form dense ``images x objects`` matrices M and N; each
    replicate is a vector of resampling multiplicities ``w`` and ``rpc_b = (w @ M) / (w @ N)``.
    Returns ``city, class_id, ci_lo, ci_hi`` (NaN bounds never occur unless the object is in a
    single image that every replicate misses, in which case that replicate is skipped).
    """
    rows = _with_city(hist, city_of, threshold)
    rng = np.random.default_rng(seed)
    out = []
    for city, grp in rows.groupby("city", sort=True):
        img_codes, images = pd.factorize(grp["image_id"])
        obj_codes, objects = pd.factorize(grp["class_id"], sort=True)
        shape = (len(images), len(objects))
        m = np.zeros(shape)
        n = np.zeros(shape)
        m[img_codes, obj_codes] = grp["M"].to_numpy()
        n[img_codes, obj_codes] = grp["N"].to_numpy()
        samples = np.empty((n_boot, shape[1]))
        for start in range(0, n_boot, _BOOT_CHUNK):
            w = _resample_weights(rng, min(_BOOT_CHUNK, n_boot - start), shape[0])
            with np.errstate(invalid="ignore", divide="ignore"):
                samples[start : start + len(w)] = (w @ m) / (w @ n)
        lo, hi = _percentiles(samples, ci)
        out.append(
            pd.DataFrame({"city": city, "class_id": np.asarray(objects), "ci_lo": lo, "ci_hi": hi})
        )
    if not out:
        return pd.DataFrame(columns=["city", "class_id", "ci_lo", "ci_hi"])
    return pd.concat(out, ignore_index=True)


def rpc_direct(
    masks: np.ndarray,
    labels: np.ndarray,
    cities: Sequence[str],
    threshold: float,
    n_classes: int,
) -> dict[tuple[str, int], float]:
    """Reference implementation of eq. 1 straight from masks and label maps (for tests).

    ``mask >= threshold`` is compared in float32, like the rest of this module.
    """
    masks = np.asarray(masks, dtype=np.float32)
    labels = np.asarray(labels)
    cities = np.asarray(cities)
    explained = masks >= np.float32(threshold)
    out: dict[tuple[str, int], float] = {}
    for city in np.unique(cities):
        sel = cities == city
        lab, exp = labels[sel], explained[sel]
        for c in range(n_classes):
            obj = lab == c
            n = int(obj.sum())
            if n:
                out[(str(city), c)] = int((obj & exp).sum()) / n
    return out


# --------------------------------------------------------------------------- AR


def average_residual(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Eq. 2: mean over the last two axes (H x W) of ``|a - b|`` in float64; ``[B]`` for [B,H,W]."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"a and b must have the same [..., H, W] shape; got {a.shape}, {b.shape}")
    return np.abs(a - b).mean(axis=(-2, -1))


def _arch(arch_of: Mapping[str, str], model: str) -> str:
    try:
        return arch_of[model]
    except KeyError:
        raise ValueError(f"arch_of has no architecture for model {model!r}") from None


def _pair_kinds(ar: pd.DataFrame, arch_of: Mapping[str, str]) -> pd.DataFrame:
    pairs = ar[["model_a", "model_b"]].drop_duplicates().reset_index(drop=True)
    pairs["arch_a"] = [_arch(arch_of, m) for m in pairs["model_a"]]
    pairs["arch_b"] = [_arch(arch_of, m) for m in pairs["model_b"]]
    pairs["kind"] = np.where(pairs["arch_a"] != pairs["arch_b"], "architecture", "seed")
    return pairs


class _PairMatrix:
    """AR as dense ``images x pairs`` sums and counts, for bootstrap replicates over images.

    A replicate is a vector ``w`` of resampling multiplicities over the image ids (shared by all
    pairs); each pair's mean AR in it is ``(w @ values) / (w @ present)``.
    """

    def __init__(self, ar: pd.DataFrame, pairs: pd.DataFrame) -> None:
        key = pd.MultiIndex.from_frame(ar[["model_a", "model_b"]])
        pair_code = pd.MultiIndex.from_frame(pairs[["model_a", "model_b"]]).get_indexer(key)
        img_code, images = pd.factorize(ar["image_id"])
        self.n_images = len(images)
        shape = (self.n_images, len(pairs))
        self.values = np.zeros(shape)
        self.present = np.zeros(shape)
        np.add.at(self.values, (img_code, pair_code), ar["ar"].to_numpy(dtype=np.float64))
        np.add.at(self.present, (img_code, pair_code), 1.0)

    def pair_means(self, weights: np.ndarray) -> np.ndarray:
        """``[R, n_pairs]`` mean AR per pair for ``[R, n_images]`` weights."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights @ self.values) / (weights @ self.present)

    def replicates(self, n_boot: int, seed: int):
        """Yield ``[chunk, n_pairs]`` bootstrap pair means (images resampled with replacement)."""
        rng = np.random.default_rng(seed)
        for start in range(0, n_boot, _BOOT_CHUNK):
            yield self.pair_means(
                _resample_weights(rng, min(_BOOT_CHUNK, n_boot - start), self.n_images)
            )


def ar_summary(
    ar: pd.DataFrame,
    arch_of: Mapping[str, str],
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Table 2: mean AR per model pair with a percentile bootstrap CI over images.

    ``ar`` has columns ``model_a, model_b, image_id, ar``; pairs are taken as given (order
    matters, so do not list both ``(a, b)`` and ``(b, a)``). ``kind`` is "architecture" when the
    two models' architectures differ, else "seed". The replicates resample image ids, shared by
    all pairs. Sorted by kind (architecture first), then pair.
    """
    pairs = _pair_kinds(ar, arch_of)
    mat = _PairMatrix(ar, pairs)
    pairs["mean_ar"] = mat.pair_means(np.ones((1, mat.n_images)))[0]
    samples = np.concatenate(list(mat.replicates(n_boot, seed)))
    pairs["ci_lo"], pairs["ci_hi"] = _percentiles(samples, ci)
    pairs["n_images"] = mat.present.sum(axis=0).astype(np.int64)
    return pairs.sort_values(["kind", "model_a", "model_b"]).reset_index(drop=True)


def arch_vs_seed(
    ar: pd.DataFrame,
    arch_of: Mapping[str, str],
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict:
    """Test the paper's claim "architectures affect masks more than initialisation".

    ``mean_arch`` is the mean over architecture pairs of each pair's mean AR, ``mean_seed`` the
    same over same-architecture/other-seed pairs (every pair weighs the same, like averaging the
    rows of Table 2). The CI of ``diff = mean_arch - mean_seed`` comes from resampling image ids
    (shared by all pairs) and recomputing both means. ``claim_holds`` is True when the whole CI
    is above 0, False otherwise, and None when either kind of pair is missing (then the missing
    mean, ``diff`` and the CI are NaN).
    """
    pairs = _pair_kinds(ar, arch_of)
    mat = _PairMatrix(ar, pairs)
    is_arch = (pairs["kind"] == "architecture").to_numpy()

    def kind_means(pair_means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nan = np.full(len(pair_means), np.nan)
        arch = pair_means[:, is_arch].mean(axis=1) if is_arch.any() else nan
        seed_ = pair_means[:, ~is_arch].mean(axis=1) if (~is_arch).any() else nan
        return arch, seed_

    arch, seed_ = kind_means(mat.pair_means(np.ones((1, mat.n_images))))
    mean_arch, mean_seed = float(arch[0]), float(seed_[0])
    result = {
        "mean_arch": mean_arch,
        "mean_seed": mean_seed,
        "diff": mean_arch - mean_seed,
        "ci_lo": math.nan,
        "ci_hi": math.nan,
        "ci": ci,
        "n_images": mat.n_images,
        "n_arch_pairs": int(is_arch.sum()),
        "n_seed_pairs": int((~is_arch).sum()),
        "claim_holds": None,
    }
    if not (is_arch.any() and (~is_arch).any()):
        return result
    diffs = np.concatenate([np.subtract(*kind_means(m)) for m in mat.replicates(n_boot, seed)])
    lo, hi = _percentiles(diffs[:, None], ci)
    result.update(ci_lo=float(lo[0]), ci_hi=float(hi[0]), claim_holds=bool(lo[0] > 0))
    return result


# --------------------------------------------------------------------------- clusters


def _explained_per_object(hist: pd.DataFrame, threshold: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": hist["image_id"].to_numpy(),
            "class_id": hist["class_id"].to_numpy(dtype=np.int64),
            "M": explained_pixels(hist_counts(hist), threshold),
        }
    )


def cluster_profiles(
    hist: pd.DataFrame,
    cluster_of: pd.Series,
    threshold: float,
    class_names: Sequence[str],
    top: int = 3,
) -> pd.DataFrame:
    """What each cluster of the map explains: its ``top`` objects by share of explained pixels.

    Columns ``cluster, n_images, top_objects, top_shares, label``. ``n_images`` counts the
    images ``cluster_of`` assigns to the cluster; ``top_shares`` are the objects' shares of the
    cluster's explained (labelled) pixels; ``label`` joins the names with " · " ("—" when
    nothing labelled is explained). Noise (cluster -1 from HDBSCAN) is profiled like any other.
    """
    rows = _explained_per_object(hist, threshold)
    rows["cluster"] = rows["image_id"].map(cluster_of)
    rows = rows[rows["cluster"].notna() & (rows["M"] > 0)]
    per = rows.groupby(["cluster", "class_id"], as_index=False)["M"].sum()
    per["share"] = per["M"] / per.groupby("cluster")["M"].transform("sum")
    per = per.sort_values(["cluster", "M", "class_id"], ascending=[True, False, True])
    names = list(class_names)
    sizes = cluster_of.value_counts().sort_index()
    out = []
    for cluster, n_images in sizes.items():
        best = per[per["cluster"] == cluster].head(top)
        objects = _object_names(best["class_id"], names)
        out.append(
            {
                "cluster": cluster,
                "n_images": int(n_images),
                "top_objects": objects,
                "top_shares": best["share"].round(6).tolist(),
                "label": " · ".join(objects) if objects else "—",
            }
        )
    return pd.DataFrame(out, columns=["cluster", "n_images", "top_objects", "top_shares", "label"])


LIFT_MIN_SHARE = 0.05
LIFT_COLUMNS = [
    "cluster",
    "class_id",
    "object",
    "M",
    "share_cluster",
    "share_all",
    "lift",
    "supported",
]


def cluster_lift(
    hist: pd.DataFrame,
    cluster_of: pd.Series,
    threshold: float,
    class_names: Sequence[str],
    min_share: float = LIFT_MIN_SHARE,
) -> pd.DataFrame:
    """Which objects each cluster's explanations hold *more* of than all images' explanations.

    With ``M_{p,k}`` the explained pixels (``mask >= threshold``) of object p over the images
    of cluster k, and ``M_p`` the same over every image ``cluster_of`` lists:

    * ``share_cluster = M_{p,k} / sum_q M_{q,k}``: the object's share of the cluster's
      explained (labelled) pixels;
    * ``share_all = M_p / sum_q M_q``: its share over all images;
    * ``lift = share_cluster / share_all`` (> 1: over-represented in the cluster; the lift of
      association rules, Brin et al. 1997, with pixels as transactions);
    * ``supported = share_cluster >= min_share``: the minimum support that keeps a rare object
      (a few pixels, a huge lift) from naming a cluster. Default 5 % of the cluster's explanation.

    ``cluster_of`` maps image_id -> cluster id; images it does not list are ignored. Objects
    with no explained pixel in the cluster are left out. Sorted by cluster, then supported
    objects first, then lift descending, then class_id. Columns :data:`LIFT_COLUMNS`; ``M``
    int64, shares and lift float64. ValueError for a class_id without a name.
    """
    rows = _explained_per_object(hist, threshold)
    rows["cluster"] = rows["image_id"].map(cluster_of)
    rows = rows[rows["cluster"].notna() & (rows["M"] > 0)]
    if rows.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in LIFT_COLUMNS})
    overall = rows.groupby("class_id")["M"].sum().astype(np.float64)
    overall /= overall.sum()
    per = rows.groupby(["cluster", "class_id"], as_index=False)["M"].sum()
    per["M"] = per["M"].astype(np.int64)
    per["object"] = _object_names(per["class_id"], class_names)
    per["share_cluster"] = per["M"] / per.groupby("cluster")["M"].transform("sum").astype(float)
    per["share_all"] = per["class_id"].map(overall).to_numpy(dtype=np.float64)
    per["lift"] = per["share_cluster"] / per["share_all"]
    per["supported"] = per["share_cluster"] >= min_share
    per = per.sort_values(
        ["cluster", "supported", "lift", "class_id"], ascending=[True, False, False, True]
    )
    return per[LIFT_COLUMNS].reset_index(drop=True)


def lift_labels(lift: pd.DataFrame, top: int = 2, min_lift: float = 1.0) -> pd.Series:
    """cluster -> name from :func:`cluster_lift`'s table: its ``top`` supported objects with
    ``lift > min_lift``, by lift, joined with " · "; "no stand-out object" when none qualifies
    (the cluster's explanations hold the same mix as everyone's)."""
    best = lift[lift["supported"].astype(bool) & (lift["lift"] > min_lift)]
    names = best.groupby("cluster", sort=True)["object"].apply(lambda s: " · ".join(s.head(top)))
    clusters = pd.Index(lift["cluster"].unique()).sort_values()
    return names.reindex(clusters).fillna("no stand-out object").rename("label")


def dominant_object(hist: pd.DataFrame, threshold: float, class_names: Sequence[str]) -> pd.Series:
    """image_id -> name of the object with the most explained pixels (ties: lowest class_id).

    Images whose explanation covers no labelled pixel map to None.
    """
    rows = _explained_per_object(hist, threshold)
    rows = rows.sort_values(["image_id", "M", "class_id"], ascending=[True, False, True])
    best = rows.drop_duplicates("image_id")
    names = [
        name if m > 0 else None
        for name, m in zip(_object_names(best["class_id"], class_names), best["M"], strict=True)
    ]
    return pd.Series(names, index=best["image_id"].to_numpy(), dtype=object, name="dominant_object")
