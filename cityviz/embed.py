"""Maps of Grad-CAM masks: PCA-50 -> t-SNE / UMAP, and placing new masks on an existing map.

The paper clusters the weighted masks themselves (not the explanations): masks are downsampled
to a small fixed grid (:func:`masks_to_features`), reduced with PCA to 50 dimensions and
embedded in 2-D with t-SNE. :class:`MaskEmbedder` wraps that in a scikit-learn-like object whose
fitted state is a handful of plain arrays (:meth:`MaskEmbedder.state_dict`), so the dashboard
can place an uploaded image on the precomputed map without pickles.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

log = logging.getLogger(__name__)

METHODS = ("tsne", "umap", "pca")
_STATE_VERSION = 1
_NN_CHUNK = 256


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
    shorter, so any mask size maps to the same feature space.
    """
    masks = np.asarray(masks, dtype=np.float32)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
    n, h, w = masks.shape
    if h >= res and w >= res and h % res == 0 and w % res == 0:
        blocks = masks.reshape(n, res, h // res, res, w // res)
        out = blocks.mean(axis=(2, 4), dtype=np.float64)
    else:
        a_h = _resample_matrix(h, res)
        a_w = _resample_matrix(w, res)
        out = np.einsum("ih,nhw,jw->nij", a_h, masks, a_w, optimize=True)
    return out.reshape(n, res * res).astype(np.float32)


# --------------------------------------------------------------------------- embedder


class MaskEmbedder:
    """PCA followed by a 2-D embedding (t-SNE via openTSNE, UMAP via umap-learn, or plain PCA).

    ``method``: "tsne" (the paper's choice; openTSNE, perplexity 30 and its PCA initialisation
    unless ``method_kwargs`` say otherwise), "umap", or "pca" (first two principal components,
    for quick previews). ``n_pca`` is clipped to ``min(n_pca, N - 1, D)``. ``n_jobs`` and
    ``random_state`` go to the embedding (UMAP runs single-threaded when ``random_state`` is set).

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
        **method_kwargs,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.n_pca = n_pca
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.n_neighbors_transform = n_neighbors_transform
        self.method_kwargs = method_kwargs

    # -- fitting ------------------------------------------------------------------------------

    def fit(self, X: np.ndarray) -> MaskEmbedder:
        X = self._check_features(X, fitted=False)
        n, d = X.shape
        if n < 3:
            raise ValueError(f"need at least 3 points to embed, got {n}")
        self._fit_pca(X, min(self.n_pca, n - 1, d))
        self.fit_pca_ = self._project(X)
        self.embedding_ = self._embed(self.fit_pca_).astype(np.float32)
        return self

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).embedding_

    def _fit_pca(self, X: np.ndarray, n_components: int) -> None:
        from sklearn.decomposition import PCA

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
            out = np.zeros((len(Z), 2), dtype=np.float32)
            out[:, : min(2, Z.shape[1])] = Z[:, :2]
            return out
        if self.method == "tsne":
            from openTSNE import TSNE

            kwargs = {"perplexity": 30, "n_jobs": self.n_jobs, "random_state": self.random_state}
            kwargs.update(self.method_kwargs)
            return np.asarray(TSNE(n_components=2, **kwargs).fit(Z.astype(np.float64)))
        import umap

        kwargs = {
            "n_neighbors": min(15, len(Z) - 1),
            # umap-learn is single-threaded when seeded, and warns unless told so.
            "n_jobs": self.n_jobs if self.random_state is None else 1,
            "random_state": self.random_state,
        }
        kwargs.update(self.method_kwargs)
        return umap.UMAP(n_components=2, **kwargs).fit_transform(Z)

    # -- placing new points -------------------------------------------------------------------

    def _check_features(self, X: np.ndarray, fitted: bool = True) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("features contain NaN or infinite values")
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
        k = max(1, min(k, len(ref)))
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
        points' coordinates (see the class docstring). float32 ``[M, 2]``."""
        dist, idx = self.kneighbors(X_new, self.n_neighbors_transform)
        exact = dist == 0.0
        with np.errstate(divide="ignore"):
            weights = np.where(exact.any(axis=1, keepdims=True), exact, 1.0 / dist)
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
    """Cluster 2-D map coordinates; int64 labels numbered by decreasing cluster size.

    "kmeans": sklearn KMeans with ``min(n_clusters, N)`` clusters. "hdbscan":
    sklearn.cluster.HDBSCAN (``n_clusters`` unused), noise labelled -1; ``min_cluster_size``
    defaults to ``max(5, N // 50)`` so that large maps do not shatter into tiny clusters.
    Extra keyword arguments go to the estimator.
    """
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or len(xy) == 0:
        raise ValueError(f"xy must be a non-empty [N, 2] array, got shape {xy.shape}")
    if method == "kmeans":
        from sklearn.cluster import KMeans

        km = KMeans(
            n_clusters=min(n_clusters, len(xy)), n_init=10, random_state=random_state, **kwargs
        )
        labels = km.fit_predict(xy)
    elif method == "hdbscan":
        from sklearn.cluster import HDBSCAN

        kwargs.setdefault("min_cluster_size", max(5, len(xy) // 50))
        kwargs.setdefault("copy", True)
        labels = HDBSCAN(**kwargs).fit_predict(xy)
    else:
        raise ValueError(f"method must be 'kmeans' or 'hdbscan', got {method!r}")
    return _relabel_by_size(np.asarray(labels))
