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
# Rows per chunk when checking and projecting features (bounds temporary memory).
_ROW_CHUNK = 65_536
# Largest feature magnitude accepted: squares and sums of 1e15 stay far inside float64, and
# PCA coordinates inside float32 (masks are in [0, 1]; anything near this is a bug upstream).
MAX_ABS_FEATURE = 1e15
# Fewest distinct points that t-SNE / UMAP get; fewer are shown as their PCA layout. UMAP's
# spectral initialisation needs a graph larger than its 2-D target, t-SNE a perplexity >= 1.
MIN_DISTINCT = {"tsne": 5, "umap": 5}
# Up to this many points the nearest neighbours are exact (sklearn, brute force): O(N^2 D) but
# BLAS-fast, deterministic, and free of pynndescent's numba compilation.
EXACT_KNN_MAX = 50_000
# openTSNE settings (Policar et al. 2024, JMLR 25(224)): perplexity 30 and PCA initialisation
# as in openTSNE's defaults; 100 + 150 iterations instead of 250 + 500, and FFT grid cells two
# embedding units wide instead of one (``ints_in_interval``: a quarter of the grid points late
# in the optimisation). At 30 000 synthetic masks the map's 1-NN accuracy is unchanged and the
# fit takes half the CPU time (bench/embed.py).
TSNE_DEFAULTS = {
    "perplexity": 30,
    "early_exaggeration_iter": 100,
    "n_iter": 150,
    "ints_in_interval": 2,
}
# umap-learn settings (McInnes et al. 2018, arXiv:1802.03426): 15 neighbours as in its defaults,
# initialised from the first two principal components of its input (cheap: the input is already
# PCA-50) instead of a spectral embedding of the neighbour graph (ARPACK, a fifth of the fit at
# 30 000), and from UMAP_LARGE_AT points on UMAP_LARGE_EPOCHS epochs instead of 200. At 30 000
# synthetic masks the map's 1-NN accuracy is unchanged (bench/embed.py).
UMAP_DEFAULTS = {"n_neighbors": 15, "init": "pca"}
UMAP_LARGE_AT = 10_000
UMAP_LARGE_EPOCHS = 100
# Above this many masks a map is fitted on a seeded sample of SAMPLE_SIZE masks and the others
# are placed with the library's own ``transform`` (openTSNE ``TSNEEmbedding.transform``, UMAP
# ``transform``), in chunks of CHUNK_SIZE masks (issue 12 section 5).
SAMPLE_ABOVE = 50_000
SAMPLE_SIZE = 20_000
CHUNK_SIZE = 10_000
EXECUTORS = ("local", "ray")


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


def _unit_rms_params(Z: np.ndarray) -> tuple[np.ndarray, float]:
    """``(centre [D] float64, scale)``: the column means of ``Z`` and the RMS row norm of ``Z``
    around them; needs two distinct rows (else ``scale`` is 0)."""
    Z = Z.astype(np.float64)
    centre = Z.mean(axis=0)
    Z = Z - centre
    return centre, float(np.sqrt(np.mean(np.einsum("ij,ij->i", Z, Z))))


def _unit_rms(Z: np.ndarray) -> np.ndarray:
    """``Z`` (float64) centred and divided by its RMS row norm; needs two distinct rows."""
    centre, scale = _unit_rms_params(Z)
    return (Z.astype(np.float64) - centre) / scale


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
    from umap import layouts, umap_, utils

    for fn in (
        umap_.smooth_knn_dist,
        umap_.compute_membership_strengths,
        layouts._nb_optimize_layout_euclidean_single_epoch,
        # UMAP.transform of a small map (the sample route's tests, issue 12 section 5):
        utils.fast_knn_indices,
        utils.submatrix,
    ):
        if hasattr(fn, "enable_caching") and getattr(fn, "_cityviz_cached", False) is False:
            fn.enable_caching()
            fn._cityviz_cached = True


def library_transform(model, method: str, U: np.ndarray) -> np.ndarray:
    """Place the rows of ``U`` (float64 ``[M, d]``, scaled like the fitted points) on a fitted
    library map with the library's own ``transform``: float64 ``[M, 2]``.

    ``model``: an openTSNE ``TSNEEmbedding`` (``method="tsne"``; its ``transform`` optimises each
    new point against the fitted map alone, Policar et al. 2024; it centres the map in place,
    so it runs on a copy and the result is shifted back into the fitted map's frame) or a
    fitted umap-learn ``UMAP`` (``method="umap"``; McInnes et al. 2018, section 4). Both are
    deterministic for a fixed model and input."""
    if method == "tsne":
        import pickle

        # A writable copy with openTSNE's attributes (deepcopy drops them; Ray's may be read-only).
        emb = pickle.loads(pickle.dumps(model))
        arr = np.asarray(emb, dtype=np.float64)
        offset = (arr.max(axis=0) + arr.min(axis=0)) / 2
        return np.asarray(emb.transform(U), dtype=np.float64) + offset
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*n_jobs value.*")
        return np.asarray(model.transform(U), dtype=np.float64)


def _place_with_ray(model, method: str, U: np.ndarray, bounds: list[tuple[int, int]]) -> np.ndarray:
    """:func:`library_transform` of the chunks ``U[a:b]`` as a Ray Data ``map_batches`` (one
    chunk per batch); the model and ``U`` travel once through Ray's object store. Ray is
    imported only here."""
    try:
        import ray
        import ray.data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "executor='ray' needs Ray: pip install -r requirements-scale.txt"
        ) from exc
    model_ref, u_ref = ray.put(model), ray.put(U)

    def place(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        m, u = ray.get(model_ref), ray.get(u_ref)
        rows, xys = [], []
        for a, b in zip(batch["start"], batch["stop"], strict=True):
            rows.append(np.arange(a, b, dtype=np.int64))
            xys.append(library_transform(m, method, u[a:b]))
        xy = np.concatenate(xys)
        return {"row": np.concatenate(rows), "x": xy[:, 0], "y": xy[:, 1]}

    ds = ray.data.from_items([{"start": a, "stop": b} for a, b in bounds])
    placed = np.full((len(U), 2), np.nan)
    for batch in ds.map_batches(place, batch_size=1, batch_format="numpy").iter_batches(
        batch_format="numpy"
    ):
        placed[batch["row"], 0] = batch["x"]
        placed[batch["row"], 1] = batch["y"]
    return placed


# --------------------------------------------------------------------------- embedder


class MaskEmbedder:
    """PCA followed by a 2-D embedding (t-SNE via openTSNE, UMAP via umap-learn, or plain PCA).

    ``method``: "tsne" (the paper's choice; openTSNE with :data:`TSNE_DEFAULTS` - perplexity 30,
    PCA initialisation, FFT-accelerated gradients - unless ``method_kwargs`` say otherwise),
    "umap", or "pca" (first two principal components, for quick previews). ``n_pca`` is clipped
    to ``min(n_pca, N - 1, D)`` (at least 1). ``n_jobs`` and ``random_state`` go to the embedding
    (UMAP runs single-threaded when ``random_state`` is set, so that a seed gives one map).
    ``pca_solver``: scikit-learn's ``svd_solver`` for the PCA, or "auto": "covariance_eigh"
    (exact, deterministic, fastest) when there are at least twice as many masks as features,
    else "randomized" above 2 000 masks and "full" below.
    ``knn``: how t-SNE / UMAP find nearest neighbours - "exact" (sklearn brute force:
    deterministic, no numba compilation), "native" (the library's own approximate search:
    Annoy for openTSNE, pynndescent for UMAP) or "auto" (exact up to :data:`EXACT_KNN_MAX`
    points).

    Odd input: identical points are embedded once and share a position; fewer than
    :data:`MIN_DISTINCT` distinct points get their PCA layout (logged); a non-finite embedding
    falls back to the PCA layout too. So the fitted coordinates are always finite.

    Large maps (issue 12 section 5): above ``sample_above`` masks (:data:`SAMPLE_ABOVE`; None:
    never) PCA and the 2-D map are fitted on a seeded random sample of ``sample_size`` masks
    (:data:`SAMPLE_SIZE`, drawn with ``random_state``), exactly as a direct fit on those masks
    would be, and every other mask is placed with the library's own ``transform``
    (openTSNE ``TSNEEmbedding.transform``, which optimises each new point against the fitted
    map; umap-learn ``UMAP.transform``) in chunks of ``chunk_size`` masks, one after the other
    (``executor="local"``) or as a Ray Data ``map_batches`` over the chunks
    (``executor="ray"``; needs ``pip install -r requirements-scale.txt``; a running cluster is
    used, else Ray starts a local one). ``sample_`` holds the sample's indices (every index
    for a direct fit). For UMAP the sample fit keeps umap-learn's own neighbour search, whose
    index ``UMAP.transform`` needs. Identical masks outside the sample share one placement.

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
        sample_above: int | None = SAMPLE_ABOVE,
        sample_size: int = SAMPLE_SIZE,
        chunk_size: int = CHUNK_SIZE,
        executor: str = "local",
        pca_solver: str = "auto",
        **method_kwargs,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if knn not in KNN_MODES:
            raise ValueError(f"knn must be one of {KNN_MODES}, got {knn!r}")
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
        for name, value in (
            ("n_pca", n_pca),
            ("sample_size", sample_size),
            ("chunk_size", chunk_size),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if sample_above is not None and (
            int(sample_above) != sample_above or sample_above < sample_size
        ):
            raise ValueError(
                f"sample_above must be None or an integer >= sample_size ({sample_size}), "
                f"got {sample_above!r}"
            )
        self.sample_above = None if sample_above is None else int(sample_above)
        self.sample_size = int(sample_size)
        self.chunk_size = int(chunk_size)
        self.executor = executor
        self.pca_solver = pca_solver
        self.method = method
        self.n_pca = int(n_pca)
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.n_neighbors_transform = n_neighbors_transform
        self.knn = knn
        self.method_kwargs = method_kwargs
        self._model = None

    # -- fitting ------------------------------------------------------------------------------

    def fit(self, X: np.ndarray) -> MaskEmbedder:
        """Fit PCA and the 2-D map to features ``X`` (``[N, D]``, e.g. :func:`masks_to_features`).

        Sets ``embedding_`` (float32 ``[N, 2]``, always finite), ``fit_pca_``, ``pca_mean_``,
        ``pca_components_`` and ``sample_`` (int64 indices of the masks the map was fitted on;
        see the class docstring for maps above ``sample_above`` masks). Raises ``ValueError``
        when ``N = 0``, ``D = 0``, or ``X`` holds NaN, infinite or huge (above
        :data:`MAX_ABS_FEATURE`) values; ``ImportError`` with the command to run for
        ``executor="ray"`` without Ray.
        """
        X = self._check_features(X, fitted=False)
        n, d = X.shape
        if n == 0 or d == 0:
            raise ValueError(f"a map needs at least one mask with features, got shape {X.shape}")
        if self.method != "pca" and self.sample_above is not None and n > self.sample_above:
            return self._fit_sample(X)
        self._fit_pca(X, max(1, min(self.n_pca, n - 1, d)))
        self.fit_pca_ = self._project(X)
        self.embedding_ = self._embed(self.fit_pca_).astype(np.float32)
        self.sample_ = np.arange(n, dtype=np.int64)
        return self

    def _fit_sample(self, X: np.ndarray) -> MaskEmbedder:
        """Fit on a seeded sample of ``sample_size`` rows, place the others (class docstring)."""
        n = len(X)
        rng = np.random.default_rng(self.random_state)
        sample = np.sort(rng.choice(n, self.sample_size, replace=False)).astype(np.int64)
        direct = MaskEmbedder(
            self.method,
            self.n_pca,
            self.random_state,
            self.n_jobs,
            self.n_neighbors_transform,
            # UMAP.transform needs umap-learn's own neighbour index.
            knn="native" if self.method == "umap" else self.knn,
            sample_above=None,
            pca_solver=self.pca_solver,
            **self.method_kwargs,
        )
        direct._keep_model = True
        direct.fit(X[sample])
        self.pca_mean_, self.pca_components_ = direct.pca_mean_, direct.pca_components_
        self.fit_pca_ = self._project(X)
        rest = np.ones(n, dtype=bool)
        rest[sample] = False
        xy = np.empty((n, 2), dtype=np.float32)
        xy[sample] = direct.embedding_
        xy[rest] = direct._place(self.fit_pca_[rest], self.chunk_size, self.executor)
        self.embedding_ = xy
        self.sample_ = sample
        return self

    def _place(self, Z: np.ndarray, chunk_size: int, executor: str) -> np.ndarray:
        """float32 ``[M, 2]`` positions of PCA coordinates ``Z`` placed on this fitted map by the
        library's ``transform`` (kept by a fit with ``_keep_model``); identical rows are placed
        once. Without a library model (a map that fell back to the PCA layout) and for
        non-finite placements, the inverse-distance-weighted rule of :meth:`transform`."""
        out = np.empty((len(Z), 2), dtype=np.float32)
        if len(Z) == 0:
            return out
        first, inverse = _distinct_rows(Z)
        placed = np.full((len(first), 2), np.nan)
        if self._model is not None:
            U = (Z[first].astype(np.float64) - self._rms_centre) / self._rms_scale
            if U.shape[1] < 2:
                U = np.hstack([U, np.zeros((len(U), 1))])
            bounds = [(a, min(a + chunk_size, len(U))) for a in range(0, len(U), chunk_size)]
            if executor == "ray":
                placed = _place_with_ray(self._model, self.method, U, bounds)
            else:
                for a, b in bounds:
                    placed[a:b] = library_transform(self._model, self.method, U[a:b])
        bad = ~np.isfinite(placed).all(axis=1)
        if bad.any():
            placed[bad] = self._idw(Z[first][bad])
        out[:] = placed[inverse]
        return out

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
        n, d = X.shape
        if self.pca_solver != "auto":
            solver = self.pca_solver
        elif n >= 2 * d:
            # Many more masks than features: eigenvectors of the D x D covariance matrix, exact,
            # deterministic and the fastest (scikit-learn >= 1.5).
            solver = "covariance_eigh"
        elif n > 2000 and n_components < min(n, d) // 2:
            solver = "randomized"
        else:
            solver = "full"
        pca = PCA(n_components=n_components, svd_solver=solver, random_state=self.random_state)
        pca.fit(X)
        self.pca_mean_ = pca.mean_.astype(np.float64)
        self.pca_components_ = pca.components_.astype(np.float64)

    def _project(self, X: np.ndarray) -> np.ndarray:
        """PCA coordinates (float32); the same arithmetic for fitted and new points, in chunks of
        rows so that a million masks never need a float64 copy of all their features."""
        out = np.empty((len(X), len(self.pca_components_)), dtype=np.float32)
        for a in range(0, len(X), _ROW_CHUNK):
            x = X[a : a + _ROW_CHUNK].astype(np.float64)
            out[a : a + len(x)] = (x - self.pca_mean_) @ self.pca_components_.T
        return out

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
        self._rms_centre, self._rms_scale = _unit_rms_params(distinct)
        U = (distinct.astype(np.float64) - self._rms_centre) / self._rms_scale
        if U.shape[1] < 2:
            U = np.hstack([U, np.zeros((len(U), 1))])
        model = self._tsne(U) if self.method == "tsne" else self._umap(U)
        xy = np.asarray(model if self.method == "tsne" else model.embedding_, dtype=np.float64)
        if xy.shape != (len(U), 2) or not np.isfinite(xy).all():
            log.warning("%s gave non-finite coordinates; the map shows the PCA layout", self.method)
            return _pca_layout(distinct)[inverse]
        if getattr(self, "_keep_model", False):
            self._model = model
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
        return TSNE(n_components=2, **kwargs).fit(U)

    def _umap(self, U: np.ndarray):
        import umap

        _enable_umap_numba_cache()
        n = len(U)
        kwargs = {
            **UMAP_DEFAULTS,
            "n_epochs": UMAP_LARGE_EPOCHS if len(U) >= UMAP_LARGE_AT else None,
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
            return umap.UMAP(n_components=2, **kwargs).fit(U)

    # -- placing new points -------------------------------------------------------------------

    def _check_features(self, X: np.ndarray, fitted: bool = True) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {X.shape}")
        if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
            raise ValueError(f"features must be real numbers, got dtype {X.dtype}")
        finite, biggest = True, 0.0
        for a in range(0, len(X), _ROW_CHUNK):
            x = X[a : a + _ROW_CHUNK]
            finite = finite and bool(np.isfinite(x).all())
            if finite and x.size:
                biggest = max(biggest, float(np.abs(x).max()))
        if not finite:
            raise ValueError(
                "features contain NaN or infinite values; recompute or drop those masks first"
            )
        if biggest > MAX_ABS_FEATURE:
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
        return self._kneighbors(self._project(self._check_features(X_new)), k)

    def _kneighbors(self, Z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        Z = Z.astype(np.float64)
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
        return self._idw(self._check_features(X_new), projected=False)

    def _idw(self, X: np.ndarray, projected: bool = True) -> np.ndarray:
        """:meth:`transform`'s rule for checked features (``projected=False``) or for PCA
        coordinates (``projected=True``)."""
        dist, idx = self._kneighbors(
            X if projected else self._project(X), self.n_neighbors_transform
        )
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
