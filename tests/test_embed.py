"""Tests of cityviz.embed: mask features, PCA -> t-SNE / UMAP maps, placing new masks."""

from __future__ import annotations

import numpy as np
import pytest

from cityviz.embed import MaskEmbedder, cluster_points, masks_to_features


def blob_masks(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Two families of normalised masks: a gaussian blob near the top-left or the bottom-right
    corner, with jittered centre and width plus noise. Returns (masks [n, size, size], family)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    family = np.arange(n) % 2
    masks = np.empty((n, size, size), dtype=np.float32)
    for i, f in enumerate(family):
        cy, cx = (np.array([0.25, 0.25]) if f == 0 else np.array([0.75, 0.75])) * size
        cy, cx = cy + rng.normal(0, 2), cx + rng.normal(0, 2)
        sigma = rng.uniform(3, 6)
        m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        m = m + 0.1 * rng.random((size, size))
        masks[i] = (m - m.min()) / (m.max() - m.min())
    return masks, family


def one_nn_accuracy(xy: np.ndarray, y: np.ndarray) -> float:
    d = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(d, np.inf)
    return float((y[d.argmin(axis=1)] == y).mean())


@pytest.fixture(scope="module")
def blobs():
    masks, family = blob_masks(300, seed=0)
    return masks_to_features(masks, res=16), family


@pytest.fixture(scope="module")
def tsne_fit(blobs):
    X, _ = blobs
    emb = MaskEmbedder("tsne", n_jobs=1)
    return emb, emb.fit_transform(X)


# --------------------------------------------------------------------------- features


def test_masks_to_features_block_mean():
    m = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    # 2x2 blocks of [[0,1,2,3],[4,5,6,7],...]: (0+1+4+5)/4 = 2.5, (2+3+6+7)/4 = 4.5, ...
    out = masks_to_features(m, res=2)
    assert out.dtype == np.float32 and out.shape == (1, 4)
    np.testing.assert_allclose(out[0], [2.5, 4.5, 10.5, 12.5])


def test_masks_to_features_fractional_area():
    # 3 columns -> 2 cells: cell 0 covers columns [0, 1.5), cell 1 covers [1.5, 3).
    # Columns (0, 3, 6): (0 + 0.5 * 3) / 1.5 = 1 and (0.5 * 3 + 6) / 1.5 = 5.
    m = np.tile(np.float32([0, 3, 6]), (3, 1))[None]
    np.testing.assert_allclose(masks_to_features(m, res=2)[0], [1, 5, 1, 5], rtol=1e-6)
    const = np.full((2, 7, 5), 0.3, dtype=np.float32)
    np.testing.assert_allclose(masks_to_features(const, res=4), 0.3, rtol=1e-6)


def test_masks_to_features_bilinear_upsampling():
    # 2 -> 4 with half-pixel centres: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped
    # to 1), so columns (0, 4) become (0, 1, 3, 4), as torch's bilinear align_corners=False.
    m = np.float32([[0, 4], [0, 4]])[None]
    out = masks_to_features(m, res=4).reshape(4, 4)
    np.testing.assert_allclose(out, np.tile([0, 1, 3, 4], (4, 1)), atol=1e-6)


def test_masks_to_features_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        masks_to_features(np.zeros((4, 4), dtype=np.float32))


# --------------------------------------------------------------------------- embeddings


def test_tsne_keeps_families_apart(blobs, tsne_fit):
    _, family = blobs
    emb, xy = tsne_fit
    assert xy.shape == (300, 2) and np.isfinite(xy).all()
    assert emb.pca_components_.shape == (50, 256) and emb.pca_mean_.shape == (256,)
    assert one_nn_accuracy(xy, family) > 0.95


def test_umap_keeps_families_apart(blobs):
    X, family = blobs
    xy = MaskEmbedder("umap", n_pca=20).fit_transform(X)
    assert xy.shape == (300, 2) and np.isfinite(xy).all()
    assert one_nn_accuracy(xy, family) > 0.95


def test_transform_of_fitted_points_returns_their_coordinates(blobs, tsne_fit):
    X, _ = blobs
    emb, xy = tsne_fit
    np.testing.assert_array_equal(emb.transform(X), xy)
    dist, idx = emb.kneighbors(X[:20], k=5)
    assert idx[:, 0].tolist() == list(range(20))
    assert (dist[:, 0] == 0).all() and (np.diff(dist, axis=1) >= 0).all()


def test_transform_places_new_masks_in_their_family(blobs, tsne_fit):
    _, family = blobs
    emb, xy = tsne_fit
    new_masks, new_family = blob_masks(60, seed=1)
    placed = emb.transform(masks_to_features(new_masks, res=16))
    d = ((placed[:, None, :] - xy[None, :, :]) ** 2).sum(axis=2)
    assert (family[d.argmin(axis=1)] == new_family).mean() > 0.95


def test_transform_is_inverse_distance_weighted_mean():
    # PCA map of 4 points on a line; a new point at 1/4 of the way between points 0 and 1.
    X = np.array([[0.0, 0.0], [4.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    emb = MaskEmbedder("pca", n_pca=2, n_neighbors_transform=2).fit(X)
    xy = emb.embedding_.astype(np.float64)
    new = emb.transform(np.array([[1.0, 0.0]]))
    # distances 1 and 3 -> weights 1 and 1/3 -> (3 * xy0 + xy1) / 4
    np.testing.assert_allclose(new[0], (3 * xy[0] + xy[1]) / 4, rtol=1e-5, atol=1e-5)


def test_state_dict_roundtrip_gives_identical_transform(tmp_path, blobs, tsne_fit):
    X, _ = blobs
    emb, _ = tsne_fit
    path = tmp_path / "embedder.npz"
    np.savez(path, **emb.state_dict())
    with np.load(path, allow_pickle=False) as state:
        loaded = MaskEmbedder.from_state(state)
    X_new = X[:25] + np.random.default_rng(2).normal(0, 0.02, X[:25].shape).astype(np.float32)
    np.testing.assert_array_equal(loaded.transform(X_new), emb.transform(X_new))
    for a, b in zip(loaded.kneighbors(X_new, 7), emb.kneighbors(X_new, 7), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.method == "tsne"
    with pytest.raises(ValueError, match="dimensions"):
        loaded.transform(X_new[:, :10])


def test_n_pca_is_clipped():
    X = np.random.default_rng(0).random((20, 16))
    assert MaskEmbedder("pca", n_pca=50).fit(X).pca_components_.shape == (16, 16)
    assert MaskEmbedder("pca", n_pca=50).fit(X[:10]).pca_components_.shape == (9, 16)


def test_unfitted_and_unknown_method_raise():
    with pytest.raises(ValueError, match="method"):
        MaskEmbedder("isomap")
    with pytest.raises(RuntimeError, match="not fitted"):
        MaskEmbedder().transform(np.zeros((1, 4)))


# --------------------------------------------------------------------------- clustering


def test_kmeans_finds_blobs_numbered_by_size():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]])
    sizes = [20, 50, 30]
    xy = np.concatenate(
        [c + rng.normal(0, 0.5, (n, 2)) for c, n in zip(centres, sizes, strict=True)]
    )
    labels = cluster_points(xy, "kmeans", n_clusters=3)
    assert labels.tolist() == [2] * 20 + [0] * 50 + [1] * 30


def test_hdbscan_marks_isolated_points_as_noise():
    rng = np.random.default_rng(0)
    dense = np.concatenate([rng.normal(0, 0.3, (60, 2)), rng.normal(10, 0.3, (40, 2))])
    outliers = np.array([[30.0, -30.0], [-30.0, 30.0], [50.0, 50.0]])
    labels = cluster_points(np.concatenate([dense, outliers]), "hdbscan")
    assert labels[:60].tolist() == [0] * 60 and labels[60:100].tolist() == [1] * 40
    assert labels[100:].tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="kmeans"):
        cluster_points(dense, "spectral")


# --------------------------------------------------------------------------- speed levers


def test_same_seed_gives_the_same_map(blobs, tsne_fit):
    X, _ = blobs
    _, xy = tsne_fit
    np.testing.assert_array_equal(MaskEmbedder("tsne", n_jobs=1).fit_transform(X), xy)
    a = MaskEmbedder("umap", n_pca=20).fit_transform(X)
    np.testing.assert_array_equal(MaskEmbedder("umap", n_pca=20).fit_transform(X), a)


def test_exact_knn_matches_brute_force_with_self_first():
    from cityviz.embed import exact_knn

    Z = np.random.default_rng(4).random((60, 5))
    idx, dist = exact_knn(Z, 7)
    assert idx.shape == dist.shape == (60, 8) and dist.dtype == np.float32
    assert idx[:, 0].tolist() == list(range(60)) and (dist[:, 0] == 0).all()
    d = np.sqrt(((Z[:, None] - Z[None]) ** 2).sum(axis=2))
    np.fill_diagonal(d, np.inf)
    np.testing.assert_array_equal(np.sort(idx[:, 1:], axis=1), np.sort(np.argsort(d)[:, :7], 1))
    np.testing.assert_allclose(dist[:, 1:], np.sort(d, axis=1)[:, :7], rtol=1e-6)


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_library_neighbours_still_available(blobs, method):
    X, family = blobs
    xy = MaskEmbedder(method, n_pca=20, n_jobs=1, knn="native").fit_transform(X)
    assert xy.shape == (300, 2) and one_nn_accuracy(xy, family) > 0.95


def test_umap_kernels_are_cached_on_disk(blobs):
    from numba.core.caching import NullCache
    from umap import layouts, umap_

    X, _ = blobs
    MaskEmbedder("umap", n_pca=20).fit(X[:50])
    for fn in (
        umap_.smooth_knn_dist,
        umap_.compute_membership_strengths,
        layouts._nb_optimize_layout_euclidean_single_epoch,
    ):
        assert not isinstance(fn._cache, NullCache), fn.__name__


def test_pca_of_many_masks_uses_the_covariance_eigenvectors():
    """N >= 2 D: PCA from the eigenvectors of the covariance (scikit-learn's covariance_eigh),
    checked against numpy's float64 eigendecomposition (up to each component's sign)."""
    rng = np.random.default_rng(7)
    X = rng.random((400, 12)) @ rng.random((12, 12))
    emb = MaskEmbedder("pca", n_pca=3).fit(X)
    w, v = np.linalg.eigh(np.cov(X, rowvar=False))
    ref = v[:, np.argsort(w)[::-1][:3]].T
    np.testing.assert_allclose(np.abs((emb.pca_components_ * ref).sum(axis=1)), 1.0, atol=1e-9)
    np.testing.assert_allclose(emb.pca_mean_, X.mean(axis=0), atol=1e-12)


# --------------------------------------------------------------------------- large maps


ROUTE = {"sample_above": 200, "sample_size": 150, "chunk_size": 64}


@pytest.fixture(scope="module", params=["tsne", "umap"])
def route_fit(request, blobs):
    """A map above ``sample_above``: 300 blob masks plus 30 exact duplicates of the first 30."""
    X, family = blobs
    X = np.concatenate([X, X[:30]])
    family = np.concatenate([family, family[:30]])
    emb = MaskEmbedder(request.param, n_pca=20, n_jobs=1, **ROUTE).fit(X)
    return request.param, X, family, emb


def test_large_map_fits_a_seeded_sample_like_a_direct_fit(route_fit):
    method, X, _, emb = route_fit
    s = emb.sample_
    assert emb.embedding_.shape == (330, 2) and np.isfinite(emb.embedding_).all()
    assert len(s) == 150 and (np.diff(s) > 0).all() and s.min() >= 0 and s.max() < 330
    assert emb.fit_pca_.shape == (330, 20)
    # The sample's coordinates are those of a direct fit on the sample's masks.
    direct = MaskEmbedder(
        method, n_pca=20, n_jobs=1, sample_above=None, knn="native" if method == "umap" else "auto"
    ).fit(X[s])
    np.testing.assert_array_equal(emb.embedding_[s], direct.embedding_)
    np.testing.assert_array_equal(direct.sample_, np.arange(150))


def test_large_map_places_the_rest_in_their_family(route_fit):
    """1-NN accuracy of the placed masks (their nearest fitted mask on the map) is close to the
    fitted masks' own leave-one-out 1-NN accuracy."""
    _, _, family, emb = route_fit
    s, xy = emb.sample_, emb.embedding_
    rest = np.setdiff1d(np.arange(len(xy)), s)
    fitted_acc = one_nn_accuracy(xy[s], family[s])
    d = ((xy[rest][:, None, :] - xy[s][None, :, :]) ** 2).sum(axis=2)
    placed_acc = float((family[s][d.argmin(axis=1)] == family[rest]).mean())
    assert fitted_acc > 0.9 and placed_acc >= fitted_acc - 0.05, (fitted_acc, placed_acc)


def test_large_map_places_identical_masks_once(route_fit):
    _, _, _, emb = route_fit
    in_sample = np.isin(np.arange(330), emb.sample_)
    both_placed = [i for i in range(30) if not in_sample[i] and not in_sample[300 + i]]
    assert both_placed, "the fixture should leave some duplicate pairs outside the sample"
    np.testing.assert_array_equal(
        emb.embedding_[both_placed], emb.embedding_[[300 + i for i in both_placed]]
    )


@pytest.mark.scale  # starting Ray takes 20 s to 2 min of both cores: `make test-slow`
def test_large_map_over_ray_equals_the_local_placement(route_fit):
    ray = pytest.importorskip("ray")
    method, X, _, emb = route_fit
    if method != "tsne":
        pytest.skip("one method is enough to check the Ray executor")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        xy = MaskEmbedder(method, n_pca=20, n_jobs=1, executor="ray", **ROUTE).fit_transform(X)
    finally:
        if started:
            ray.shutdown()
    np.testing.assert_array_equal(xy, emb.embedding_)
