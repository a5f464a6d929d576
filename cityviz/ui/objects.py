"""Objects page logic: R_p^c at any threshold from the threshold-free histograms, in milliseconds.

:class:`RpcCube` sums one model's histogram table once per (city, object) and stores, for every
bin threshold ``k / n_bins``, the explained pixels ``M`` (sum of the bins ``>= k``) and the
bootstrap interval bounds. A threshold change is then a column slice plus a few vector operations
on a table with one row per (city, object), and gives exactly the numbers of
:func:`cityviz.stats.rpc_table` and :func:`cityviz.stats.rpc_bootstrap` at that threshold.

:class:`ObjectIndex` keeps the per-image cumulative histograms of one model for the drill-down
("which images does this object dominate?").
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cityviz import stats
from cityviz.ui.safe_text import csv_safe

RPC_COLUMNS = [
    "city", "class_id", "object", "M", "N", "rpc", "mean_pixels", "share", "lift", "kept",
]  # fmt: skip
"""The columns of :func:`cityviz.stats.rpc_table`, in its order."""

TABLE_COLUMNS = [*RPC_COLUMNS, "ci_lo", "ci_hi"]

_DENSE_BYTES = 64 << 20  # cap on the dense image x object x bin block of the bootstrap


def reverse_cumsum(counts: np.ndarray) -> np.ndarray:
    """``out[..., k] = counts[..., k:].sum()``: explained pixels at threshold bin ``k``, int64."""
    c = np.asarray(counts, dtype=np.int64)
    return np.flip(np.flip(c, axis=-1).cumsum(axis=-1), axis=-1)


def _city_rows(hist: pd.DataFrame, city_of: pd.Series | Mapping) -> tuple[np.ndarray, pd.Series]:
    """Boolean mask of the histogram rows whose image has a city, and those rows' cities."""
    city = hist["image_id"].map(city_of)
    ok = city.notna().to_numpy()
    return ok, city[ok]


def _resample_all(seed: int, n_boot: int, sizes: tuple[int, ...]) -> list[np.ndarray]:
    """``rpc_bootstrap``'s resampling weights, city after city, from one generator."""
    rng = np.random.default_rng(seed)
    out = []
    for n_img in sizes:
        chunks = [
            stats._resample_weights(rng, min(stats._BOOT_CHUNK, n_boot - start), n_img)
            for start in range(0, n_boot, stats._BOOT_CHUNK)
        ]
        out.append(np.concatenate(chunks))
    return out


def _percentiles(samples: np.ndarray, q: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Percentiles over axis 0 ignoring NaN; the NaN-aware (slow) path only where needed."""
    lo, hi = np.percentile(samples, q, axis=0)
    nan = np.isnan(samples).any(axis=0)
    if nan.any():
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo[nan], hi[nan] = np.nanpercentile(samples[:, nan], q, axis=0)
    return lo, hi


@dataclass(frozen=True)
class RpcCube:
    """One model's R_p^c inputs for every bin threshold: one row ``g`` per (city, object).

    ``cum[g, k]`` is M at threshold ``k / n_bins`` (so ``cum[g, 0]`` is N);
    ``ci_lo[g, k]``/``ci_hi[g, k]`` the percentile bootstrap bounds (NaN when not computed).
    Rows are ordered by city, then class_id, like ``rpc_table``'s group-by.
    """

    cities: tuple[str, ...]
    city_code: np.ndarray
    class_id: np.ndarray
    cum: np.ndarray
    n_images: np.ndarray
    class_names: tuple[str, ...]
    ci_lo: np.ndarray
    ci_hi: np.ndarray

    @property
    def n_bins(self) -> int:
        return int(self.cum.shape[1])

    @classmethod
    def build(
        cls,
        hist: pd.DataFrame,
        city_of: pd.Series | Mapping,
        class_names: Sequence[str],
        n_images_of: pd.Series | Mapping | None = None,
        n_boot: int = 200,
        ci: float = 0.95,
        seed: int = 0,
        weights_cache: dict | None = None,
    ) -> RpcCube:
        """Sum ``hist`` per (city, object) once; ``n_boot=0`` skips the bootstrap.

        Arguments mean what they mean for ``rpc_table`` / ``rpc_bootstrap``; the bootstrap draws
        the same resamples as ``rpc_bootstrap(..., n_boot, ci, seed)`` in the same order, so its
        bounds equal that function's at every threshold. Drawing them is the slow part and
        depends only on the seed and the number of images per city, so models built with the
        same ``weights_cache`` dict share the draws.
        """
        counts = stats.hist_counts(hist)
        ok, city = _city_rows(hist, city_of)
        counts = counts[ok]
        class_id = hist["class_id"].to_numpy(dtype=np.int64)[ok]
        image_id = hist["image_id"].to_numpy()[ok]
        cities = tuple(sorted(str(c) for c in city.unique()))
        city_code = pd.Categorical(city.astype(str), categories=cities).codes.astype(np.int64)
        n_cls = int(class_id.max()) + 1 if len(class_id) else 1
        key = city_code * n_cls + class_id
        uniq, inv = np.unique(key, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])
        if len(order):
            sums = np.add.reduceat(counts[order], starts, axis=0)
        else:
            sums = np.zeros((0, counts.shape[1]), dtype=np.int64)
        g_city, g_class = np.divmod(uniq, n_cls)
        if n_images_of is None:
            per_city = pd.Series(image_id).groupby(city_code).nunique()
            n_images = np.array([per_city.get(i, 0) for i in range(len(cities))], dtype=float)
        else:
            n_map = dict(n_images_of)
            missing = [c for c in cities if c not in n_map]
            if missing:
                raise ValueError(f"n_images_of has no entry for city {missing[0]!r}")
            n_images = np.array([float(n_map[c]) for c in cities])
        cube = cls(
            cities=cities,
            city_code=g_city,
            class_id=g_class,
            cum=reverse_cumsum(sums),
            n_images=n_images,
            class_names=tuple(class_names),
            ci_lo=np.full(sums.shape, np.nan),
            ci_hi=np.full(sums.shape, np.nan),
        )
        if n_boot > 0 and len(uniq):
            cube._bootstrap(
                counts, city_code, class_id, image_id, n_boot, ci, seed, n_cls, uniq,
                {} if weights_cache is None else weights_cache,
            )  # fmt: skip
        return cube

    def _bootstrap(
        self,
        counts: np.ndarray,
        city_code: np.ndarray,
        class_id: np.ndarray,
        image_id: np.ndarray,
        n_boot: int,
        ci: float,
        seed: int,
        n_cls: int,
        uniq: np.ndarray,
        weights_cache: dict,
    ) -> None:
        """Fill ci_lo/ci_hi for every threshold bin, replaying ``rpc_bootstrap``'s resamples.

        The explained pixel counts and resampling weights are integers, so every float64
        product ``w @ m`` is exact whatever the summation order: each bound is bit-identical to
        ``rpc_bootstrap``'s at the same threshold.
        """
        if not 0 < ci < 1:
            raise ValueError(f"ci must be in (0, 1), got {ci}")
        q = [50 * (1 - ci), 50 * (1 + ci)]
        cum_rows = reverse_cumsum(counts)
        n_bins = self.n_bins
        per_city = []
        for code in range(len(self.cities)):
            sel = np.flatnonzero(city_code == code)
            img_codes, images = pd.factorize(image_id[sel])
            obj_codes, objects = pd.factorize(class_id[sel], sort=True)
            per_city.append((sel, img_codes, obj_codes, len(images), np.asarray(objects)))
        key = (seed, n_boot, tuple(p[3] for p in per_city))
        if key not in weights_cache:
            weights_cache[key] = _resample_all(seed, n_boot, key[2])
        for code, (sel, img_codes, obj_codes, n_img, objects) in enumerate(per_city):
            w = weights_cache[key][code]
            n_obj = len(objects)
            wm = np.empty((n_boot, n_obj, n_bins))
            step = max(1, min(n_bins, _DENSE_BYTES // max(1, n_img * n_obj * 8)))
            for k0 in range(0, n_bins, step):
                k1 = min(n_bins, k0 + step)
                dense = np.zeros((n_img, n_obj, k1 - k0))
                dense[img_codes, obj_codes] = cum_rows[sel, k0:k1]
                wm[:, :, k0:k1] = (w @ dense.reshape(n_img, -1)).reshape(n_boot, n_obj, -1)
            with np.errstate(invalid="ignore", divide="ignore"):
                samples = wm / wm[:, :, :1]
            lo, hi = _percentiles(samples, q)
            rows = np.searchsorted(uniq, code * n_cls + objects.astype(np.int64))
            self.ci_lo[rows] = lo
            self.ci_hi[rows] = hi

    def columns(self, threshold: float, min_mean_pixels: float = 100.0) -> dict[str, np.ndarray]:
        """The columns of :meth:`table` as arrays (cheaper to stack for many models)."""
        k = stats.threshold_bin(threshold, self.n_bins)
        m = self.cum[:, k]
        n = self.cum[:, 0]
        n_cities = len(self.cities)
        city_m = np.bincount(self.city_code, weights=m, minlength=n_cities).astype(float)
        city_n = np.bincount(self.city_code, weights=n, minlength=n_cities).astype(float)
        cm, cn = city_m[self.city_code], city_n[self.city_code]
        rpc = m / n
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(cm > 0, m / cm, np.nan)
            lift = np.where(cm > 0, rpc / (cm / cn), np.nan)
        mean_pixels = n / self.n_images[self.city_code]
        order = np.lexsort((self.class_id, -rpc, self.city_code))
        city_names = np.asarray(self.cities, dtype=object)
        names = np.asarray(self.class_names, dtype=object)
        return {
            "city": city_names[self.city_code[order]],
            "class_id": self.class_id[order],
            "object": names[self.class_id[order]],
            "M": m[order],
            "N": n[order],
            "rpc": rpc[order],
            "mean_pixels": mean_pixels[order],
            "share": share[order],
            "lift": lift[order],
            "kept": mean_pixels[order] > min_mean_pixels,
            "ci_lo": self.ci_lo[order, k],
            "ci_hi": self.ci_hi[order, k],
        }

    def table(self, threshold: float, min_mean_pixels: float = 100.0) -> pd.DataFrame:
        """``rpc_table`` at ``threshold`` (same columns, order and values) plus ci_lo, ci_hi."""
        return pd.DataFrame(self.columns(threshold, min_mean_pixels))


def rpc_long_table(
    cubes: Mapping[str, RpcCube], threshold: float, min_mean_pixels: float = 100.0
) -> pd.DataFrame:
    """All models' tables stacked: ``model_id`` first, then :data:`TABLE_COLUMNS`."""
    parts = [(m, cube.columns(threshold, min_mean_pixels)) for m, cube in cubes.items()]
    if not parts:
        return pd.DataFrame(columns=["model_id", *TABLE_COLUMNS])
    data = {"model_id": np.concatenate([np.full(len(c["city"]), m, dtype=object)
                                        for m, c in parts])}  # fmt: skip
    for col in TABLE_COLUMNS:
        data[col] = np.concatenate([c[col] for _, c in parts])
    return pd.DataFrame(data)


def with_value(table: pd.DataFrame, value: str) -> pd.DataFrame:
    """Add ``value, lo, hi`` for the chart: R_p^c and its CI, or lift over the city average.

    The lift's bounds are the R_p^c bounds divided by the city's average rate (held fixed), so
    they are the CI of R_p^c expressed in lift units.
    """
    if value not in ("rpc", "lift"):
        raise ValueError(f"value must be 'rpc' or 'lift', got {value!r}")
    out = table.copy()
    if value == "rpc":
        out["value"], out["lo"], out["hi"] = out["rpc"], out["ci_lo"], out["ci_hi"]
        return out
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(out["rpc"] > 0, out["lift"] / out["rpc"], np.nan)
    out["value"] = out["lift"]
    out["lo"] = out["ci_lo"] * scale
    out["hi"] = out["ci_hi"] * scale
    return out


def chart_objects(table: pd.DataFrame, top: int | None = None) -> dict[str, list[str]]:
    """Per city, the kept objects to chart, best first (mean over models of ``value``).

    Ties keep alphabetical order.
    """
    kept = table[table["kept"].to_numpy(dtype=bool)]
    out: dict[str, list[str]] = {}
    if kept.empty:
        return out
    city_codes, cities = pd.factorize(kept["city"], sort=True)
    obj_codes, objects = pd.factorize(kept["object"], sort=True)
    n_obj = len(objects)
    key = city_codes * n_obj + obj_codes
    value = kept["value"].to_numpy(dtype=float)
    sums = np.bincount(key, weights=np.nan_to_num(value), minlength=len(cities) * n_obj)
    counts = np.bincount(key, weights=~np.isnan(value), minlength=len(cities) * n_obj)
    present = np.bincount(key, minlength=len(cities) * n_obj) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (sums / counts).reshape(len(cities), n_obj)
    present = present.reshape(len(cities), n_obj)
    for c, city in enumerate(cities):
        idx = np.flatnonzero(present[c])
        order = idx[np.argsort(-np.nan_to_num(mean[c, idx], nan=-np.inf), kind="stable")]
        names = [str(objects[i]) for i in order]
        out[str(city)] = names[:top] if top else names
    return out


def display_table(table: pd.DataFrame, display: Mapping[str, str]) -> pd.DataFrame:
    """The long table for people: model names, rounded rates, kept objects only."""
    kept = table[table["kept"]].copy()
    kept.insert(0, "model", kept["model_id"].map(display).fillna(kept["model_id"]))
    cols = ["model", "city", "object", "rpc", "ci_lo", "ci_hi", "lift", "share", "mean_pixels"]
    # trust badges (cityviz.ui.trust.badge_table), when the page added them
    cols += [c for c in ("above null", "distinguishes", "removal drops accuracy") if c in kept]
    out = kept[cols].rename(
        columns={
            "rpc": "R_p^c",
            "ci_lo": "CI low",
            "ci_hi": "CI high",
            "share": "share of explanation",
            "mean_pixels": "mean pixels / image",
        }
    )
    return out.sort_values(["city", "object", "model"], kind="stable").reset_index(drop=True)


def csv_bytes(table: pd.DataFrame, threshold: float) -> bytes:
    """The full long table (every object, kept or not) as CSV, with the threshold as a column."""
    out = table.copy()
    out.insert(1, "threshold", float(threshold))
    return csv_safe(out).to_csv(index=False).encode()


def selected_bar(selection: Mapping | None) -> tuple[str, str, str] | None:
    """``(city, object, model_id)`` of the first clicked bar in a plotly_chart selection event.

    The bars carry ``customdata = [city, object, model_id]`` (see figures.rpc_bars).
    """
    if not selection:
        return None
    points = (selection.get("selection") or {}).get("points") or []
    for point in points:
        data = point.get("customdata")
        if isinstance(data, list | tuple) and len(data) >= 3:
            return str(data[0]), str(data[1]), str(data[2])
    return None


# --------------------------------------------------------------------------- drill-down


@dataclass(frozen=True)
class ObjectIndex:
    """One model's per-image cumulative histograms, for ranking images by one object.

    ``image_city[i]`` is the city of image code ``i`` (None when ``city_of`` does not list it).
    """

    image_ids: np.ndarray
    image_code: np.ndarray
    image_city: np.ndarray
    class_id: np.ndarray
    cum: np.ndarray

    @classmethod
    def build(cls, hist: pd.DataFrame, city_of: pd.Series | Mapping | None = None) -> ObjectIndex:
        codes, images = pd.factorize(hist["image_id"])
        cum = reverse_cumsum(stats.hist_counts(hist)).astype(np.uint32)
        city = pd.Series(images).map(city_of) if city_of is not None else pd.Series(
            [None] * len(images)
        )
        return cls(
            image_ids=np.asarray(images, dtype=object),
            image_code=codes.astype(np.int64),
            image_city=city.to_numpy(dtype=object),
            class_id=hist["class_id"].to_numpy(dtype=np.int64),
            cum=cum,
        )

    def top_images(
        self, class_id: int, threshold: float, city: str | None = None, n: int = 12
    ) -> pd.DataFrame:
        """Images where ``class_id`` takes the largest share of the explanation.

        ``share = M_{p,i} / sum_q M_{q,i}`` (explained pixels of the object over all explained
        labelled pixels of image i), ties broken by M then image id; images where the object
        has no explained pixel are left out. ``city`` restricts to that city's images.
        Columns ``image_id, M, N, share, rate`` (``rate = M / N``, the object's own R in i).
        """
        k = stats.threshold_bin(threshold, self.cum.shape[1])
        rows = np.flatnonzero(self.class_id == class_id)
        if city is not None:
            rows = rows[self.image_city[self.image_code[rows]] == city]
        m = self.cum[rows, k].astype(np.int64)
        rows, m = rows[m > 0], m[m > 0]
        codes = self.image_code[rows]
        # Totals only for the candidate images: the rows of those images, all objects.
        wanted = np.zeros(len(self.image_ids), dtype=bool)
        wanted[codes] = True
        sel = wanted[self.image_code]
        totals = np.bincount(
            self.image_code[sel],
            weights=self.cum[sel, k].astype(np.float64),
            minlength=len(self.image_ids),
        )
        n_pix = self.cum[rows, 0].astype(np.int64)
        out = pd.DataFrame(
            {
                "image_id": self.image_ids[codes],
                "M": m,
                "N": n_pix,
                "share": m / totals[codes],
                "rate": m / n_pix,
            }
        )
        out = out.sort_values(["share", "M", "image_id"], ascending=[False, False, True])
        return out.head(n).reset_index(drop=True)
