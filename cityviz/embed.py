"""Maps of Grad-CAM masks: PCA-50 -> t-SNE / UMAP, and placing new masks on an existing map.

The paper clusters the weighted masks themselves (not the explanations): masks are downsampled
to a small fixed grid (:func:`masks_to_features`), reduced with PCA to 50 dimensions and
embedded in 2-D with t-SNE. :class:`MaskEmbedder` wraps that in a scikit-learn-like object whose
fitted state is a handful of plain arrays (:meth:`MaskEmbedder.state_dict`), so the dashboard
can place an uploaded image on the precomputed map without pickles.

Odd input never reaches the third-party embedders: identical masks are embedded once and share
one position, too few distinct masks for a neighbour graph get their PCA layout, and the
coordinates handed to openTSNE / UMAP are centred and scaled to unit RMS norm, so that huge or
tiny values neither overflow nor underflow there (both methods are invariant to that scale).
Anything that cannot be mapped raises ``ValueError`` with one sentence saying what to do.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping

import numpy as np

log = logging.getLogger(__name__)

METHODS = ("tsne", "umap", "pca")
KNN_MODES = ("auto", "exact", "native")
_STATE_VERSION = 1
_NN_CHUNK = 256
# Largest feature magnitude accepted: squares and sums of 1e15 stay far inside float64, and
# PCA coordinates inside float32 (masks are in [0, 1]; anything near this is a bug upstream).
MAX_ABS_FEATURE = 1e15
# Fewest distinct points that t-SNE / UMAP get; fewer are shown as their PCA layout. UMAP's
# spectral initialisation needs a graph larger than its 2-D target, t-SNE a perplexity >= 1.
MIN_DISTINCT = {"tsne": 5, "umap": 5}
# Up to this many points the nearest neighbours are exact (sklearn, brute force): O(N^2 D) but
# BLAS-fast, deterministic, and free of pynndescent's numba compilation.
EXACT_KNN_MAX = 50_000
# openTSNE settings (Policar et al. 2024, JMLR 25(224)): the defaults with half the
# iterations of each phase; at 30 000 synthetic masks the map's 1-NN accuracy is unchanged
# (bench/embed.py) and the fit takes half the time.
TSNE_DEFAULTS = {"perplexity": 30, "early_exaggeration_iter": 125, "n_iter": 250}


# --------------------------------------------------------------------------- features


def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` matrix that resamples one axis.

    Downsampling (``n_in >= n_out``) is an exact area average: output cell ``i`` covers input
    coordinates ``[i * s, (i + 1) * s)`` with ``s = n_in / n_out``, and each input pixel weighs
    by its overlap with that interval. Upsampling is bilinear with half-pixel centres (the same as
    ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``).
    """
    a = np.zeros((n_out, n_in))
    if n_in >= n_out:
        scale = n_in / n_out
        for i in range(n_out):
            lo, hi = i * scale, (i + 1) * scale
            for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
                a[i, j] = min(hi, j + 1) - max(lo, j)
        a /= scale
    else:
        src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
        j0 = np.floor(src).astype(int)
        j1 = np.minimum(j0 + 1, n_in - 1)
        frac = src - j0
        np.add.at(a, (np.arange(n_out), j0), 1 - frac)
        np.add.at(a, (np.arange(n_out), j1), frac)
    return a


def masks_to_features(masks: np.ndarray, res: int = 32) -> np.ndarray:
    """Flattened ``res x res`` versions of ``[N, H, W]`` masks: float32 ``[N, res * res]``.

    Each axis is area-averaged when it is at least ``res`` long (a plain block mean when it
    divides evenly, fractional-overlap weights otherwise) and bilinearly upsampled when it is
    shorter, so any mask size maps to the same feature space. ``N = 0`` gives ``[0, res * res]``.

    Raises ``ValueError`` when ``masks`` is not ``[N, H, W]`` with ``H, W >= 1``, when ``res < 1``,
    or when a mask holds NaN or infinite values (or values beyond float32's range).
    """
    if int(res) != res or res < 1:
        raise ValueError(f"res must be a positive integer, got {res!r}")
    res = int(res)
    with np.errstate(over="ignore", invalid="ignore"):
        masks = np.asarray(masks, dtype=np.float32)
    if masks.ndim != 3 or masks.shape[1] == 0 or masks.shape[2] == 0:
        raise ValueError(f"masks must be [N, H, W] with H, W >= 1, got shape {masks.shape}")
    n, h, w = masks.shape
    bad = ~np.isfinite(masks).all(axis=(1, 2))
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {n} masks (first: index {int(np.argmax(bad))}) contain NaN or "
            "infinite values; recompute or drop them before building a map."
        )
    if h >= res and w >= res and h % res == 0 and w % res == 0:
        blocks = masks.reshape(n, res, h // res, res, w // res)
        out = blocks.mean(axis=(2, 4), dtype=np.float64)
    else:
        a_h = _resample_matrix(h, res)
        a_w = _resample_matrix(w, res)
        out = np.einsum("ih,nhw,jw->nij", a_h, masks, a_w, optimize=True)
    return out.reshape(n, res * res).astype(np.float32)


# --------------------------------------------------------------------------- helpers


def _distinct_rows(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, inverse)``: indices of the first occurrence of each distinct row of ``Z``, in
    their original order, and for every row the position of its distinct row in ``first``
    (``Z[first][inverse] == Z``). Without duplicates ``first`` is ``arange(N)``."""
    _, first, inverse = np.unique(Z, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty(len(first), dtype=np.int64)
    rank[order] = np.arange(len(first))
    return first[order], rank[np.asarray(inverse).reshape(-1)]


def _pca_layout(Z: np.ndarray) -> np.ndarray:
    """The first two PCA coordinates as float64 ``[N, 2]`` (a zero column when ``Z`` has one)."""
    out = np.zeros((len(Z), 2))
    out[:, : min(2, Z.shape[1])] = Z[:, :2]
    return out


def _unit_rms(Z: np.ndarray) -> np.ndarray:
    """``Z`` (float64) centred and divided by its RMS row norm; needs two distinct rows."""
    Z = Z.astype(np.float64)
    Z = Z - Z.mean(axis=0)
    return Z / np.sqrt(np.mean(np.einsum("ij,ij->i", Z, Z)))


def exact_knn(Z: np.ndarray, k: int, n_jobs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean ``k`` nearest neighbours of each row of ``Z`` among the others, with the
    row itself prepended (UMAP's ``precomputed_knn`` convention): ``(idx [N, k + 1] int64,
    dist [N, k + 1] float32)``, nearest first. sklearn ``NearestNeighbors`` (brute force)."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k, algorithm="brute", n_jobs=n_jobs).fit(Z)
    dist, idx = nn.kneighbors()
    self_idx = np.arange(len(Z), dtype=np.int64)[:, None]
    idx = np.hstack([self_idx, idx.astype(np.int64)])
    dist = np.hstack([np.zeros((len(Z), 1)), dist]).astype(np.float32)
    return idx, dist


def _enable_umap_numba_cache() -> None:
    """Let numba cache umap-learn's uncached kernels on disk, so that only the first process
    compiles them (about 20 s) instead of every one. numba keeps its cache beside the module or,
    where that is read-only, in the user's cache directory (``NUMBA_CACHE_DIR`` overrides)."""
    from umap import layouts, umap_

    for fn in (
        umap_.smooth_knn_dist,
        umap_.compute_membership_strengths,
        layouts._nb_optimize_layout_euclidean_single_epoch,
    ):
        if hasattr(fn, "enable_caching") and getattr(fn, "_cityviz_cached", False) is False:
            fn.enable_caching()
            fn._cityviz_cached = True


# --------------------------------------------------------------------------- embedder


class MaskEmbedder:
    """PCA followed by a 2-D embedding (t-SNE via openTSNE, UMAP via umap-learn, or plain PCA).

    ``method``: "tsne" (the paper's choice; openTSNE with :data:`TSNE_DEFAULTS` - perplexity 30,
    PCA initialisation, FFT-accelerated gradients - unless ``method_kwargs`` say otherwise),
    "umap", or "pca" (first two principal components, for quick previews). ``n_pca`` is clipped
    to ``min(n_pca, N - 1, D)`` (at least 1). ``n_jobs`` and ``random_state`` go to the embedding
    (UMAP runs single-threaded when ``random_state`` is set, so that a seed gives one map).
    ``knn``: how t-SNE / UMAP find nearest neighbours - "exact" (sklearn brute force:
    deterministic, no numba compilation), "native" (the library's own approximate search:
    Annoy for openTSNE, pynndescent for UMAP) or "auto" (exact up to :data:`EXACT_KNN_MAX`
    points).

    Odd input: identical points are embedded once and share a position; fewer than
    :data:`MIN_DISTINCT` distinct points get their PCA layout (logged); a non-finite embedding
    falls back to the PCA layout too. So the fitted coordinates are always finite.

    :meth:`transform` places new points without re-running the embedding: it projects them into
    the PCA space, finds the ``n_neighbors_transform`` nearest fitted points there and returns
    the inverse-distance-weighted mean of their 2-D coordinates (an exact duplicate of a fitted
    point lands exactly on it). openTSNE's own ``transform`` re-optimises the new points against
    the full affinity object, which is slow, random and cannot be stored as plain arrays; this
    rule is deterministic, takes milliseconds and needs only the arrays in :meth:`state_dict`.
    """

    def __init__(
        self,
        method: str = "tsne",
        n_pca: int = 50,
        random_state: int | None = 0,
        n_jobs: int = -1,
        n_neighbors_transform: int = 10,
        *,
        knn: str = "auto",
        **method_kwargs,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if knn not in KNN_MODES:
            raise ValueError(f"knn must be one of {KNN_MODES}, got {knn!r}")
        if int(n_pca) != n_pca or n_pca < 1:
            raise ValueError(f"n_pca must be a positive integer, got {n_pca!r}")
        self.method = method
        self.n_pca = int(n_pca)
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.n_neighbors_transform = n_neighbors_transform
        self.knn = knn
        self.method_kwargs = method_kwargs

    # -- fitting ------------------------------------------------------------------------------

    def fit(self, X: np.ndarray) -> MaskEmbedder:
        """Fit PCA and the 2-D map to features ``X`` (``[N, D]``, e.g. :func:`masks_to_features`).

        Sets ``embedding_`` (float32 ``[N, 2]``, always finite), ``fit_pca_``, ``pca_mean_`` and
        ``pca_components_``. Raises ``ValueError`` when ``N = 0``, ``D = 0``, or ``X`` holds NaN,
        infinite or huge (above :data:`MAX_ABS_FEATURE`) values.
        """
        X = self._check_features(X, fitted=False)
        n, d = X.shape
        if n == 0 or d == 0:
            raise ValueError(f"a map needs at least one mask with features, got shape {X.shape}")
        self._fit_pca(X, max(1, min(self.n_pca, n - 1, d)))
        self.fit_pca_ = self._project(X)
        self.embedding_ = self._embed(self.fit_pca_).astype(np.float32)
        return self

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        """:meth:`fit`, then the fitted map's coordinates: float32 ``[N, 2]``."""
        return self.fit(X).embedding_

    def _fit_pca(self, X: np.ndarray, n_components: int) -> None:
        from sklearn.decomposition import PCA

        X = X.astype(np.float64)
        if (X[0] == X).all():
            # One distinct point: no variance to explain; any orthonormal basis projects it to 0.
            self.pca_mean_ = X[0].copy()
            self.pca_components_ = np.eye(n_components, X.shape[1])
            return
        solver = "randomized" if X.shape[0] > 2000 and n_components < min(X.shape) // 2 else "full"
        pca = PCA(n_components=n_components, svd_solver=solver, random_state=self.random_state)
        pca.fit(X)
        self.pca_mean_ = pca.mean_.astype(np.float64)
        self.pca_components_ = pca.components_.astype(np.float64)

    def _project(self, X: np.ndarray) -> np.ndarray:
        """PCA coordinates (float32); the same arithmetic for fitted and new points."""
        return ((X.astype(np.float64) - self.pca_mean_) @ self.pca_components_.T).astype(np.float32)

    def _embed(self, Z: np.ndarray) -> np.ndarray:
        if self.method == "pca":
            return _pca_layout(Z)
        first, inverse = _distinct_rows(Z)
        distinct = Z[first]
        if len(distinct) < MIN_DISTINCT[self.method]:
            log.warning(
                "%d distinct masks are too few for %s; the map shows their PCA layout",
                len(distinct),
                self.method,
            )
            return _pca_layout(distinct)[inverse]
        U = _unit_rms(distinct)
        if U.shape[1] < 2:
            U = np.hstack([U, np.zeros((len(U), 1))])
        xy = self._tsne(U) if self.method == "tsne" else self._umap(U)
        xy = np.asarray(xy, dtype=np.float64)
        if xy.shape != (len(U), 2) or not np.isfinite(xy).all():
            log.warning("%s gave non-finite coordinates; the map shows the PCA layout", self.method)
            xy = _pca_layout(distinct)
        return xy[inverse]

    def _use_exact_knn(self, n: int) -> bool:
        return self.knn == "exact" or (self.knn == "auto" and n <= EXACT_KNN_MAX)

    def _tsne(self, U: np.ndarray) -> np.ndarray:
        from openTSNE import TSNE

        n = len(U)
        kwargs = {**TSNE_DEFAULTS, "n_jobs": self.n_jobs, "random_state": self.random_state}
        if self._use_exact_knn(n):
            kwargs.update(neighbors="exact", knn_kwargs={"algorithm": "brute"})
        kwargs.update(self.method_kwargs)
        # openTSNE needs 3 * perplexity < N neighbours; it would lower it itself, with a warning.
        kwargs["perplexity"] = min(float(kwargs["perplexity"]), (n - 1) / 3)
        return np.asarray(TSNE(n_components=2, **kwargs).fit(U))

    def _umap(self, U: np.ndarray) -> np.ndarray:
        import umap

        _enable_umap_numba_cache()
        n = len(U)
        kwargs = {
            "n_neighbors": 15,
            # umap-learn is single-threaded when seeded, and warns unless told so.
            "n_jobs": self.n_jobs if self.random_state is None else 1,
            "random_state": self.random_state,
        }
        kwargs.update(self.method_kwargs)
        kwargs["n_neighbors"] = max(2, min(int(kwargs["n_neighbors"]), n - 1))
        if self._use_exact_knn(n) and "precomputed_knn" not in self.method_kwargs:
            n_jobs = None if self.n_jobs == 1 else self.n_jobs
            kwargs["precomputed_knn"] = exact_knn(U, kwargs["n_neighbors"] - 1, n_jobs)
        with warnings.catch_warnings():
            # Without pynndescent's index UMAP.transform is unavailable; cityviz never uses it.
            warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]")
            return umap.UMAP(n_components=2, **kwargs).fit_transform(U)

    # -- placing new points -------------------------------------------------------------------

    def _check_features(self, X: np.ndarray, fitted: bool = True) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {X.shape}")
        if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
            raise ValueError(f"features must be real numbers, got dtype {X.dtype}")
        if not np.isfinite(X).all():
            raise ValueError(
                "features contain NaN or infinite values; recompute or drop those masks first"
            )
        if X.size and np.abs(X).max() > MAX_ABS_FEATURE:
            raise ValueError(
                f"features exceed {MAX_ABS_FEATURE:g} in magnitude; normalise the masks "
                "(cam.mask_norm) before embedding them"
            )
        if fitted:
            if not hasattr(self, "embedding_"):
                raise RuntimeError("MaskEmbedder is not fitted: call fit() or from_state() first")
            if X.shape[1] != self.pca_mean_.shape[0]:
                raise ValueError(
                    f"features have {X.shape[1]} dimensions, the map was fitted on "
                    f"{self.pca_mean_.shape[0]}"
                )
        return X

    def kneighbors(self, X_new: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest fitted points in PCA space: ``(dist [M, k], idx [M, k])``, nearest
        first (ties by index). ``k`` is clipped to the number of fitted points."""
        Z = self._project(self._check_features(X_new)).astype(np.float64)
        ref = self.fit_pca_.astype(np.float64)
        k = max(1, min(int(k), len(ref)))
        ref_sq = np.einsum("ij,ij->i", ref, ref)
        dist = np.empty((len(Z), k))
        idx = np.empty((len(Z), k), dtype=np.int64)
        for start in range(0, len(Z), _NN_CHUNK):
            z = Z[start : start + _NN_CHUNK]
            approx = ref_sq[None, :] - 2.0 * (z @ ref.T)  # + |z|^2, constant per row
            cand = np.argpartition(approx, k - 1, axis=1)[:, :k] if k < len(ref) else None
            if cand is None:
                cand = np.broadcast_to(np.arange(len(ref)), (len(z), len(ref)))
            # Exact distances for the candidates, so that duplicates are at distance 0.
            d = np.sqrt(((ref[cand] - z[:, None, :]) ** 2).sum(axis=2))
            order = np.lexsort((cand, d), axis=1)
            dist[start : start + len(z)] = np.take_along_axis(d, order, axis=1)
            idx[start : start + len(z)] = np.take_along_axis(cand, order, axis=1)
        return dist, idx

    def transform(self, X_new: np.ndarray) -> np.ndarray:
        """2-D positions of new points: inverse-distance-weighted mean of their nearest fitted
        points' coordinates (see the class docstring). float32 ``[M, 2]``, finite; ``M = 0``
        gives ``[0, 2]``. Raises ``ValueError`` for features the fit would reject."""
        dist, idx = self.kneighbors(X_new, self.n_neighbors_transform)
        exact = dist == 0.0
        # Weights d_min / d (the same ratios as 1 / d, but in (0, 1], so never inf / inf).
        with np.errstate(divide="ignore", invalid="ignore"):
            weights = np.where(exact.any(axis=1, keepdims=True), exact, dist[:, :1] / dist)
        weights /= weights.sum(axis=1, keepdims=True)
        xy = self.embedding_.astype(np.float64)[idx]
        return np.einsum("mk,mkc->mc", weights, xy).astype(np.float32)

    # -- plain-array state --------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """The fitted state as plain arrays (``np.savez`` without pickles), enough for
        :meth:`transform` and :meth:`kneighbors`."""
        if not hasattr(self, "embedding_"):
            raise RuntimeError("MaskEmbedder is not fitted")
        return {
            "version": np.asarray(_STATE_VERSION, dtype=np.int64),
            "method": np.asarray(self.method),
            "n_neighbors_transform": np.asarray(self.n_neighbors_transform, dtype=np.int64),
            "pca_mean": self.pca_mean_,
            "pca_components": self.pca_components_,
            "fit_pca": self.fit_pca_,
            "embedding": self.embedding_,
        }

    @classmethod
    def from_state(cls, d: Mapping[str, np.ndarray]) -> MaskEmbedder:
        """Rebuild a fitted embedder from :meth:`state_dict` (or an ``np.load``-ed .npz)."""
        version = int(np.asarray(d["version"]))
        if version != _STATE_VERSION:
            raise ValueError(f"embedder state version {version}, expected {_STATE_VERSION}")
        comps = np.asarray(d["pca_components"], dtype=np.float64)
        obj = cls(
            method=str(np.asarray(d["method"])),
            n_pca=comps.shape[0],
            n_neighbors_transform=int(np.asarray(d["n_neighbors_transform"])),
        )
        obj.pca_mean_ = np.asarray(d["pca_mean"], dtype=np.float64)
        obj.pca_components_ = comps
        obj.fit_pca_ = np.asarray(d["fit_pca"], dtype=np.float32)
        obj.embedding_ = np.asarray(d["embedding"], dtype=np.float32)
        if len(obj.fit_pca_) != len(obj.embedding_):
            raise ValueError("embedder state is inconsistent: fit_pca and embedding lengths differ")
        return obj


# --------------------------------------------------------------------------- clusters


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters 0, 1, ... by decreasing size (ties: first appearance); -1 stays."""
    out = np.full(labels.shape, -1, dtype=np.int64)
    valid = labels >= 0
    if not valid.any():
        return out
    uniq, first, counts = np.unique(labels[valid], return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    out[valid] = rank[np.searchsorted(uniq, labels[valid])]
    return out


def cluster_points(
    xy: np.ndarray,
    method: str = "kmeans",
    n_clusters: int = 8,
    random_state: int | None = 0,
    **kwargs,
) -> np.ndarray:
    """Cluster 2-D map coordinates ``xy [N, 2]``; int64 labels ``[N]`` numbered by decreasing
    cluster size.

    "kmeans": sklearn KMeans with ``min(n_clusters, distinct points)`` clusters. "hdbscan":
    sklearn.cluster.HDBSCAN (``n_clusters`` unused), noise labelled -1; ``min_cluster_size``
    defaults to ``max(5, N // 50)`` so that large maps do not shatter into tiny clusters; with
    fewer than ``min_cluster_size`` points every point is noise, and identical points form one
    cluster. Coordinates are centred and scaled to at most 1 in magnitude first (both methods
    are invariant to that). Extra keyword arguments go to the estimator. ``N = 0`` gives an
    empty array. Raises ``ValueError`` for a non-2-D array, NaN or infinite coordinates,
    ``n_clusters < 1`` or an unknown method.
    """
    if method not in ("kmeans", "hdbscan"):
        raise ValueError(f"method must be 'kmeans' or 'hdbscan', got {method!r}")
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] == 0:
        raise ValueError(f"xy must be an [N, 2] array of map coordinates, got shape {xy.shape}")
    n = len(xy)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if not np.isfinite(xy).all():
        raise ValueError(
            "map coordinates contain NaN or infinite values; rebuild the map before clustering"
        )
    xy = xy - xy.mean(axis=0)
    scale = np.abs(xy).max()
    if scale > 0:
        xy = xy / scale
    n_distinct = len(np.unique(xy, axis=0))
    if method == "kmeans":
        if n_clusters < 1:
            raise ValueError(f"n_clusters must be at least 1, got {n_clusters}")
        k = min(int(n_clusters), n_distinct)
        if k == 1:
            return np.zeros(n, dtype=np.int64)
        from sklearn.cluster import KMeans

        labels = KMeans(n_clusters=k, n_init=10, random_state=random_state, **kwargs).fit_predict(
            xy
        )
    else:
        from sklearn.cluster import HDBSCAN

        kwargs.setdefault("min_cluster_size", max(5, n // 50))
        kwargs.setdefault("copy", True)
        if n < max(2, kwargs["min_cluster_size"]):
            return np.full(n, -1, dtype=np.int64)
        if n_distinct == 1:
            return np.zeros(n, dtype=np.int64)
        if kwargs.get("min_samples") is not None:
            kwargs["min_samples"] = min(int(kwargs["min_samples"]), n)
        labels = HDBSCAN(**kwargs).fit_predict(xy)
    return _relabel_by_size(np.asarray(labels))
