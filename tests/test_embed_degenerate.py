"""Degenerate, tiny and constant inputs into cityviz.embed never reach the third-party embedders
as NaN: every call gives finite output of the right shape or cityviz's own one-sentence
ValueError (issue 9, fault 9: 96 identical masks gave 96 NaN t-SNE coordinates, then KMeans
failed on them)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

from cityviz.embed import MAX_ABS_FEATURE, MaskEmbedder, cluster_points, masks_to_features

D = 16  # feature dimension of the generated cases (a 4 x 4 mask grid)


def odd_features() -> dict[str, np.ndarray]:
    """Feature matrices ``[N, D]`` that a map must survive: tiny, constant, rank-deficient,
    duplicated, huge- or tiny-valued, fewer points than perplexity / n_neighbors."""
    rng = np.random.default_rng(7)
    cases = {f"n={n}": rng.random((n, D)) for n in (1, 2, 3, 4, 5, 6, 12)}
    cases["96 identical"] = np.full((96, D), 0.37)
    cases["96 all-zero masks"] = masks_to_features(np.zeros((96, 8, 8)), res=4)
    cases["two distinct values"] = np.repeat(rng.random((2, D)), 48, axis=0)
    cases["three distinct values"] = np.repeat(rng.random((3, D)), [40, 30, 26], axis=0)
    cases["six distinct values"] = np.repeat(rng.random((6, D)), 16, axis=0)
    cases["rank 1"] = rng.random((80, 1)) * rng.random((1, D))
    cases["constant but one"] = np.vstack([np.zeros((59, D)), np.ones((1, D))])
    cases["near duplicates"] = 0.5 + 1e-7 * rng.random((40, D))
    cases["huge values"] = MAX_ABS_FEATURE * rng.random((40, D))
    cases["tiny values"] = 1e-30 * rng.random((40, D))
    cases["one feature"] = rng.random((30, 1))
    cases["fewer than perplexity"] = rng.random((25, D))
    cases["duplicated real data"] = np.repeat(rng.random((20, D)), 5, axis=0)
    return cases


CASES = odd_features()


@pytest.fixture(autouse=True)
def _quiet_third_party():
    # UMAP / openTSNE / sklearn warn about tiny graphs; only the outcome is under test here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.parametrize("method", ["tsne", "umap", "pca"])
@pytest.mark.parametrize("case", list(CASES))
def test_odd_features_give_a_finite_map_and_finite_placements(method, case):
    X = CASES[case]
    emb = MaskEmbedder(method, n_jobs=1)
    xy = emb.fit_transform(X)
    assert xy.shape == (len(X), 2) and xy.dtype == np.float32
    assert np.isfinite(xy).all()
    # Identical inputs share one position.
    _, first, inverse = np.unique(X, axis=0, return_index=True, return_inverse=True)
    np.testing.assert_array_equal(xy, xy[first][inverse.reshape(-1)])
    # New points after a degenerate fit: random ones, the fitted ones, none at all.
    new = np.random.default_rng(1).random((7, X.shape[1])) * (np.abs(X).max() or 1.0)
    placed = emb.transform(new)
    assert placed.shape == (7, 2) and np.isfinite(placed).all()
    np.testing.assert_array_equal(emb.transform(X), xy)
    assert emb.transform(np.empty((0, X.shape[1]))).shape == (0, 2)
    dist, idx = emb.kneighbors(new, k=50)
    k = min(50, len(X))
    assert dist.shape == idx.shape == (7, k) and np.isfinite(dist).all()
    # The map clusters without complaint.
    for cluster_method in ("kmeans", "hdbscan"):
        labels = cluster_points(xy, cluster_method)
        assert labels.shape == (len(X),) and labels.dtype == np.int64


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_ninety_six_identical_masks_share_one_point(method, caplog):
    masks = np.full((96, 32, 32), 0.5, dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="cityviz.embed"):
        xy = MaskEmbedder(method, n_jobs=1).fit_transform(masks_to_features(masks))
    assert np.isfinite(xy).all() and (xy == xy[0]).all()
    assert "too few" in caplog.text
    assert (cluster_points(xy, n_clusters=8) == 0).all()


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_duplicated_masks_land_on_their_originals(method):
    X = np.random.default_rng(3).random((40, D))
    xy = MaskEmbedder(method, n_jobs=1).fit_transform(np.vstack([X, X[:10], X[:10]]))
    assert np.isfinite(xy).all() and len(np.unique(xy[:40], axis=0)) == 40
    np.testing.assert_array_equal(xy[40:50], xy[:10])
    np.testing.assert_array_equal(xy[50:], xy[:10])


def bad_features() -> dict[str, tuple[np.ndarray, str]]:
    """``(features, message pattern)`` that fit/transform must refuse with a ValueError."""
    x = np.random.default_rng(0).random((20, D))
    nan, inf, huge = x.copy(), x.copy(), x.copy()
    nan[3, 2] = np.nan
    inf[5, 0] = -np.inf
    huge[1, 1] = 1e300
    return {
        "no points": (np.empty((0, D)), "at least one"),
        "no features": (np.empty((5, 0)), "at least one"),
        "NaN": (nan, "NaN"),
        "inf": (inf, "infinite"),
        "huge": (huge, "normalise"),
        "1-D": (x[0], r"\[N, D\]"),
        "text": (np.array([["a", "b"], ["c", "d"]]), "real numbers"),
    }


@pytest.mark.parametrize("case", list(bad_features()))
def test_bad_features_raise_one_clear_value_error(case):
    X, pattern = bad_features()[case]
    with pytest.raises(ValueError, match=pattern) as err:
        MaskEmbedder("tsne", n_jobs=1).fit(X)
    assert "\n" not in str(err.value)
    fitted = MaskEmbedder("pca").fit(np.random.default_rng(0).random((10, D)))
    if X.ndim == 2 and X.shape[0] > 0 and X.shape[1] == D:
        with pytest.raises(ValueError, match=pattern):
            fitted.transform(X)


def test_bad_constructor_arguments_raise():
    with pytest.raises(ValueError, match="knn"):
        MaskEmbedder("umap", knn="faiss")
    with pytest.raises(ValueError, match="n_pca"):
        MaskEmbedder("tsne", n_pca=0)


# --------------------------------------------------------------------------- masks


def odd_masks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "no masks": np.empty((0, 32, 32)),
        "all zero": np.zeros((4, 32, 32)),
        "1x1 masks": rng.random((3, 1, 1)),
        "1x50 masks": rng.random((3, 1, 50)),
        "constant": np.full((2, 7, 9), 3.0),
        "float32 extremes": np.full((2, 8, 8), np.finfo(np.float32).max),
    }


@pytest.mark.parametrize("case", list(odd_masks()))
def test_odd_masks_give_finite_features(case):
    masks = odd_masks()[case]
    out = masks_to_features(masks, res=4)
    assert out.shape == (len(masks), 16) and out.dtype == np.float32
    assert np.isfinite(out).all()


def bad_masks() -> dict[str, tuple[np.ndarray, str]]:
    m = np.random.default_rng(6).random((5, 8, 8))
    nan, inf, over = m.copy(), m.copy(), m.copy()
    nan[2, 3, 3] = np.nan
    inf[4, 0, 0] = np.inf
    over[1, 1, 1] = 1e300  # finite in float64, infinite as float32
    return {
        "NaN": (nan, "index 2"),
        "inf": (inf, "index 4"),
        "beyond float32": (over, "index 1"),
        "empty rows": (np.zeros((2, 0, 8)), "H, W >= 1"),
        "2-D": (m[0], r"\[N, H, W\]"),
    }


@pytest.mark.parametrize("case", list(bad_masks()))
def test_bad_masks_raise_one_clear_value_error(case):
    masks, pattern = bad_masks()[case]
    with pytest.raises(ValueError, match=pattern) as err:
        masks_to_features(masks, res=4)
    assert "\n" not in str(err.value)


def test_bad_resolution_raises():
    with pytest.raises(ValueError, match="res"):
        masks_to_features(np.zeros((1, 4, 4)), res=0)


# --------------------------------------------------------------------------- clustering


def odd_points() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(9)
    return {
        "n=1": rng.random((1, 2)),
        "n=2": rng.random((2, 2)),
        "n=3": rng.random((3, 2)),
        "fewer than n_clusters": rng.random((5, 2)),
        "identical": np.full((50, 2), 4.0),
        "two distinct": np.repeat([[0.0, 0.0], [1.0, 2.0]], 30, axis=0),
        "collinear": np.c_[np.arange(40.0), np.zeros(40)],
        "huge": 1e300 * rng.random((60, 2)),
        "tiny": 1e-300 * rng.random((60, 2)),
    }


@pytest.mark.parametrize("method", ["kmeans", "hdbscan"])
@pytest.mark.parametrize("case", list(odd_points()))
def test_odd_points_cluster(method, case):
    xy = odd_points()[case]
    labels = cluster_points(xy, method, n_clusters=8)
    assert labels.shape == (len(xy),) and labels.dtype == np.int64
    n_distinct = len(np.unique(xy, axis=0))
    assert labels.max() < min(8, n_distinct)
    if method == "kmeans":
        assert labels.min() == 0
    if n_distinct == 1 and len(xy) >= 5:
        assert (labels == 0).all()


def test_huge_coordinates_cluster_like_small_ones():
    rng = np.random.default_rng(0)
    xy = np.concatenate([rng.normal(0, 0.3, (40, 2)), rng.normal(10, 0.3, (40, 2))])
    for method in ("kmeans", "hdbscan"):
        small = cluster_points(xy, method, n_clusters=2)
        np.testing.assert_array_equal(cluster_points(xy * 1e290, method, n_clusters=2), small)
        assert len(set(small.tolist()) - {-1}) == 2


def test_clustering_no_points_and_bad_points():
    assert cluster_points(np.empty((0, 2))).shape == (0,)
    with pytest.raises(ValueError, match="NaN"):
        cluster_points(np.array([[0.0, 1.0], [np.nan, 2.0]]))
    with pytest.raises(ValueError, match="n_clusters"):
        cluster_points(np.zeros((4, 2)), n_clusters=0)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        cluster_points(np.zeros(4))


def test_bad_large_map_arguments_raise():
    with pytest.raises(ValueError, match="executor"):
        MaskEmbedder("tsne", executor="dask")
    with pytest.raises(ValueError, match="sample_above"):
        MaskEmbedder("umap", sample_above=100, sample_size=200)
    with pytest.raises(ValueError, match="chunk_size"):
        MaskEmbedder("umap", chunk_size=0)
