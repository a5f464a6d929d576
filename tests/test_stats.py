"""Tests of cityviz.stats against hand-computed values."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from cityviz import stats as S

NAMES = ["road", "tree", "sky"]

# Two 3x3 images of one city. Classes: 0 road, 1 tree, 2 sky; -1 and 255 are unlabelled.
MASK_A = [[0.00, 0.10, 0.20], [0.30, 0.35, 0.50], [0.70, 0.90, 1.00]]
LAB_A = [[0, 0, 1], [1, 1, 2], [2, -1, 2]]
MASK_B = [[0.05, 0.40, 0.60], [0.60, 0.80, 0.20], [1.00, 0.15, 0.50]]
LAB_B = [[1, 1, 1], [0, 0, 0], [255, 2, 2]]
# By hand, t = 0.35 (pixels >= 0.35; 0.35 itself counts):
#   road: a {0.00, 0.10}       N=2 M=0 | b {0.60, 0.80, 0.20} N=3 M=2 -> R = 2/5 = 0.4
#   tree: a {0.20, 0.30, 0.35} N=3 M=1 | b {0.05, 0.40, 0.60} N=3 M=2 -> R = 3/6 = 0.5
#   sky:  a {0.50, 0.70, 1.00} N=3 M=3 | b {0.15, 0.50}       N=2 M=1 -> R = 4/5 = 0.8
#   city: sum M = 9, sum N = 16 (the unlabelled 0.90 and 1.00 count nowhere)
# t = 0.6: road M = 0 + 2 (0.60, 0.80) -> 0.4; tree M = 0 + 1 (0.60) -> 1/6;
#          sky M = 2 (0.70, 1.00) + 0 -> 0.4; sum M = 5
HAND = {
    0.35: {"M": [2, 3, 4], "N": [5, 6, 5], "sum_m": 9},
    0.6: {"M": [2, 1, 2], "N": [5, 6, 5], "sum_m": 5},
}


def hand_arrays() -> tuple[np.ndarray, np.ndarray]:
    masks = np.array([MASK_A, MASK_B], dtype=np.float32)
    labels = np.array([LAB_A, LAB_B], dtype=np.int16)
    return masks, labels


def hand_hist() -> pd.DataFrame:
    masks, labels = hand_arrays()
    return S.hist_frame(["a", "b"], *S.object_histograms(masks, labels, n_classes=3))


CITY_OF = pd.Series({"a": "X", "b": "X"})


def random_data(n_img: int, n_classes: int, size: int, seed: int):
    rng = np.random.default_rng(seed)
    masks = rng.random((n_img, size, size), dtype=np.float32)
    masks[:, 0, :4] = np.float32([0.25, 0.5, 0.35, 0.6])  # values exactly at bin edges
    labels = rng.integers(-2, n_classes + 2, (n_img, size, size))
    return masks, labels


# --------------------------------------------------------------------------- bins


@pytest.mark.parametrize("n_bins", [7, 10, 20, 100])
def test_bin_index_matches_threshold_comparison_at_edges(n_bins):
    edges = np.arange(n_bins + 1) / n_bins
    e32 = edges.astype(np.float32)
    near = [e32, np.nextafter(e32, np.float32(0)), np.nextafter(e32, np.float32(2))]
    near.append(np.nextafter(near[1], np.float32(0)))
    near.append(np.nextafter(near[2], np.float32(2)))
    values = np.clip(np.concatenate(near), 0, 1).astype(np.float32)
    values = np.concatenate([values, np.random.default_rng(0).random(5000, dtype=np.float32)])
    bins = S.bin_index(values, n_bins)
    for k in range(n_bins):
        assert np.array_equal(bins >= k, values >= np.float32(k / n_bins)), k
        # NumPy 2 compares a float32 array with a Python float in float32, too.
        assert np.array_equal(bins >= k, values >= float(edges[k])), k


def test_bin_index_hand_values():
    x = np.float32(0.35)
    values = np.array(
        [0.0, 0.05, x, np.nextafter(x, np.float32(0)), 0.6, 0.999999, 1.0], dtype=np.float32
    )
    assert S.bin_index(values, 20).tolist() == [0, 1, 7, 6, 12, 19, 19]
    assert S.bin_index(np.float32([-0.1, 1.2]), 20).tolist() == [0, 19]  # clipped
    with pytest.raises(ValueError, match="NaN"):
        S.bin_index(np.float32([0.5, np.nan]))


def test_threshold_off_grid_raises():
    counts = np.ones((2, 20), dtype=np.uint32)
    with pytest.raises(ValueError, match="multiple of 1/20"):
        S.explained_pixels(counts, 0.33)
    with pytest.raises(ValueError, match="out of range"):
        S.explained_pixels(counts, 1.0)
    with pytest.raises(ValueError, match="out of range"):
        S.explained_pixels(counts, -0.05)
    with pytest.raises(ValueError, match="grid"):
        S.rpc_table(hand_hist(), CITY_OF, 0.33, NAMES)
    # Float noise within the tolerance is accepted: 0.1 + 0.2 is bin 6 of 20.
    assert S.explained_pixels(counts, 0.1 + 0.2).tolist() == [14, 14]
    assert S.explained_pixels(counts, 0.0).tolist() == [20, 20]


# --------------------------------------------------------------------------- histograms


def test_object_histograms_hand():
    masks, labels = hand_arrays()
    image_row, class_id, counts = S.object_histograms(masks, labels, n_classes=3)
    assert image_row.tolist() == [0, 0, 0, 1, 1, 1]
    assert class_id.tolist() == [0, 1, 2, 0, 1, 2]
    assert counts.dtype == np.uint32 and image_row.dtype == np.int32
    # image a, tree: 0.20 -> bin 4, 0.30 -> bin 6, 0.35 -> bin 7
    expected = np.zeros(20, dtype=np.uint32)
    expected[[4, 6, 7]] = 1
    assert counts[1].tolist() == expected.tolist()
    # image a, sky: 0.50 -> 10, 0.70 -> 14, 1.00 -> 19 (last bin)
    assert np.nonzero(counts[2])[0].tolist() == [10, 14, 19]
    assert counts.sum(axis=1).tolist() == [2, 3, 3, 3, 3, 2]


def test_unlabelled_values_ignored():
    masks, labels = hand_arrays()
    labels[0, 0, 0] = 3  # == n_classes: unlabelled as well
    changed = masks.copy()
    changed[labels < 0] = 0.0
    changed[(labels >= 3)] = 0.0
    _, _, counts = S.object_histograms(masks, labels, n_classes=3)
    _, _, counts2 = S.object_histograms(changed, labels, n_classes=3)
    assert np.array_equal(counts, counts2)
    assert counts.sum() == 15  # 18 pixels - 3 unlabelled


def test_hist_frame_roundtrip():
    masks, labels = hand_arrays()
    image_row, class_id, counts = S.object_histograms(masks, labels, n_classes=3)
    hist = S.hist_frame(["a", "b"], image_row, class_id, counts)
    assert list(hist.columns[:3]) == ["image_id", "class_id", "n_pixels"]
    assert S.hist_bin_columns(hist) == [f"h{k:02d}" for k in range(20)]
    assert hist["image_id"].tolist() == ["a"] * 3 + ["b"] * 3
    assert hist["n_pixels"].tolist() == [2, 3, 3, 3, 3, 2]
    assert np.array_equal(S.hist_counts(hist), counts)


def test_concat_hists_rejects_repeated_rows():
    hist = hand_hist()
    with pytest.raises(ValueError, match="more than one shard"):
        S.concat_hists([hist, hist.iloc[:1]])


# --------------------------------------------------------------------------- R_p^c


@pytest.mark.parametrize("t", [0.35, 0.6])
def test_rpc_table_hand(t):
    table = S.rpc_table(hand_hist(), CITY_OF, t, NAMES, min_mean_pixels=2.6)
    hand = HAND[t]
    by_class = table.set_index("class_id").sort_index()
    assert by_class["M"].tolist() == hand["M"]
    assert by_class["N"].tolist() == hand["N"]
    rpc = [m / n for m, n in zip(hand["M"], hand["N"], strict=True)]
    np.testing.assert_allclose(by_class["rpc"], rpc)
    np.testing.assert_allclose(by_class["mean_pixels"], [2.5, 3.0, 2.5])  # N / 2 images
    assert by_class["kept"].tolist() == [False, True, False]
    np.testing.assert_allclose(by_class["share"], np.array(hand["M"]) / hand["sum_m"])
    np.testing.assert_allclose(by_class["lift"], np.array(rpc) / (hand["sum_m"] / 16))
    assert by_class["object"].tolist() == NAMES
    # sorted by rpc, descending (ties by class_id)
    assert table["rpc"].is_monotonic_decreasing
    masks, labels = hand_arrays()
    direct = S.rpc_direct(masks, labels, ["X", "X"], t, n_classes=3)
    assert direct == pytest.approx({("X", c): r for c, r in enumerate(rpc)}, abs=1e-15)


def test_rpc_table_hand_order_at_06():
    table = S.rpc_table(hand_hist(), CITY_OF, 0.6, NAMES)
    assert table["object"].tolist() == ["road", "sky", "tree"]  # 0.4, 0.4, 1/6


def test_rpc_table_counts_absent_images_in_mean_pixels():
    table = S.rpc_table(
        hand_hist(), CITY_OF, 0.35, NAMES, n_images_of=pd.Series({"X": 4})
    ).set_index("class_id")
    np.testing.assert_allclose(table.sort_index()["mean_pixels"], [5 / 4, 6 / 4, 5 / 4])


def test_rpc_shards_add_up_exactly():
    masks, labels = random_data(12, 5, 16, seed=1)
    ids = [f"img{i}" for i in range(12)]
    cities = ["P", "Q", "R"] * 4
    city_of = pd.Series(dict(zip(ids, cities, strict=True)))
    names = [f"obj{c}" for c in range(5)]
    whole = S.hist_frame(ids, *S.object_histograms(masks, labels, 5))
    parts = [
        S.hist_frame(ids[sl], *S.object_histograms(masks[sl], labels[sl], 5))
        for sl in (slice(0, 5), slice(5, 12))
    ]
    merged = S.concat_hists(parts)
    for t in (0.25, 0.35, 0.5):
        a = S.rpc_table(whole, city_of, t, names)
        b = S.rpc_table(merged, city_of, t, names)
        pd.testing.assert_frame_equal(a, b)
        direct = S.rpc_direct(masks, labels, cities, t, 5)
        got = {(r.city, r.class_id): r.rpc for r in a.itertuples()}
        assert got.keys() == direct.keys()
        for key, value in direct.items():
            assert got[key] == pytest.approx(value, abs=1e-15)


# --------------------------------------------------------------------------- bootstrap


def synthetic_hist(n_per_city: int, n_obj: int, seed: int) -> tuple[pd.DataFrame, pd.Series]:
    """Histogram rows drawn directly: N ~ Poisson, explained share ~ Binomial(N, p_obj)."""
    rng = np.random.default_rng(seed)
    rows, city_of = [], {}
    p = np.linspace(0.1, 0.9, n_obj)
    for city in ("P", "Q"):
        for i in range(n_per_city):
            image_id = f"{city}{i}"
            city_of[image_id] = city
            n = rng.poisson(200, n_obj) * (rng.random(n_obj) < 0.7)
            m = rng.binomial(n, rng.beta(p * 4, (1 - p) * 4))
            for c in np.nonzero(n)[0]:
                counts = np.zeros(20, dtype=np.uint32)
                counts[0], counts[10] = n[c] - m[c], m[c]
                rows.append((image_id, c, counts))
    hist = S.hist_frame(
        [r[0] for r in rows],
        np.arange(len(rows)),
        np.array([r[1] for r in rows]),
        np.stack([r[2] for r in rows]),
    )
    return hist, pd.Series(city_of)


def test_bootstrap_contains_estimate_and_shrinks():
    widths = []
    for n_per_city in (30, 480):
        hist, city_of = synthetic_hist(n_per_city, 6, seed=n_per_city)
        table = S.rpc_table(hist, city_of, 0.5, [f"o{c}" for c in range(6)])
        ci = S.rpc_bootstrap(hist, city_of, 0.5, n_boot=300, seed=0)
        merged = table.merge(ci, on=["city", "class_id"], validate="one_to_one")
        assert len(merged) == len(table) == 12
        assert (merged["ci_lo"] <= merged["rpc"]).all()
        assert (merged["rpc"] <= merged["ci_hi"]).all()
        widths.append((merged["ci_hi"] - merged["ci_lo"]).mean())
    # 16x more images: the width should shrink by about 4x; demand at least 2.5x.
    assert widths[1] < widths[0] / 2.5


def test_bootstrap_is_seeded():
    hist, city_of = synthetic_hist(20, 4, seed=3)
    a = S.rpc_bootstrap(hist, city_of, 0.5, n_boot=50, seed=7)
    b = S.rpc_bootstrap(hist, city_of, 0.5, n_boot=50, seed=7)
    c = S.rpc_bootstrap(hist, city_of, 0.5, n_boot=50, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["ci_lo"], c["ci_lo"])


def test_bootstrap_is_fast_for_6000_images():
    rng = np.random.default_rng(0)
    n_img, n_obj = 6000, 30
    image_row = np.repeat(np.arange(n_img), n_obj)
    class_id = np.tile(np.arange(n_obj), n_img)
    counts = rng.integers(0, 50, (n_img * n_obj, 20)).astype(np.uint32)
    ids = np.array([f"i{i}" for i in range(n_img)])
    hist = S.hist_frame(ids, image_row, class_id, counts)
    city_of = pd.Series(np.where(np.arange(n_img) % 2, "P", "Q"), index=ids)
    start = time.perf_counter()
    ci = S.rpc_bootstrap(hist, city_of, 0.5, n_boot=200)
    elapsed = time.perf_counter() - start
    assert len(ci) == 2 * n_obj
    assert elapsed < 3.0  # typically ~0.3 s; generous for a shared 2-core machine


# --------------------------------------------------------------------------- AR


def test_average_residual_hand():
    a = np.array([[[0.0, 1.0], [0.5, 0.25]], [[0.2, 0.2], [0.2, 0.2]]], dtype=np.float32)
    b = np.array([[[1.0, 1.0], [0.0, 0.25]], [[0.2, 0.2], [0.2, 0.2]]], dtype=np.float32)
    # image 0: |diff| = 1, 0, 0.5, 0 -> 1.5 / 4 = 0.375; image 1 identical -> 0
    ar = S.average_residual(a, b)
    assert ar.dtype == np.float64
    np.testing.assert_allclose(ar, [0.375, 0.0])
    np.testing.assert_allclose(S.average_residual(b, a), [0.375, 0.0])
    with pytest.raises(ValueError):
        S.average_residual(a, b[:, :1])


ARCH_OF = {"vgg_s0": "vgg11", "vgg_s1": "vgg11", "res_s0": "resnet18"}


def hand_ar() -> pd.DataFrame:
    rows = [
        ("vgg_s0", "vgg_s1", "i1", 0.1),
        ("vgg_s0", "vgg_s1", "i2", 0.3),  # seed pair: mean 0.2
        ("vgg_s0", "res_s0", "i1", 0.4),
        ("vgg_s0", "res_s0", "i2", 0.6),  # architecture pair: mean 0.5
        ("vgg_s1", "res_s0", "i1", 0.8),  # architecture pair, one image: mean 0.8
    ]
    return pd.DataFrame(rows, columns=["model_a", "model_b", "image_id", "ar"])


def test_ar_summary_hand():
    table = S.ar_summary(hand_ar(), ARCH_OF, n_boot=200).set_index(["model_a", "model_b"])
    assert table.loc[("vgg_s0", "vgg_s1"), "kind"] == "seed"
    assert table.loc[("vgg_s0", "res_s0"), "kind"] == "architecture"
    assert table.loc[("vgg_s0", "res_s0"), "arch_b"] == "resnet18"
    np.testing.assert_allclose(
        table.loc[[("vgg_s0", "vgg_s1"), ("vgg_s0", "res_s0"), ("vgg_s1", "res_s0")], "mean_ar"],
        [0.2, 0.5, 0.8],
    )
    assert table["n_images"].to_dict() == {
        ("vgg_s0", "res_s0"): 2,
        ("vgg_s1", "res_s0"): 1,
        ("vgg_s0", "vgg_s1"): 2,
    }
    # a one-image pair has a degenerate CI; two-image CIs lie within [min, max] of the values
    assert table.loc[("vgg_s1", "res_s0"), ["ci_lo", "ci_hi"]].tolist() == [0.8, 0.8]
    lo, hi = table.loc[("vgg_s0", "vgg_s1"), ["ci_lo", "ci_hi"]]
    assert 0.1 - 1e-12 <= lo <= 0.2 <= hi <= 0.3 + 1e-12
    out = S.ar_summary(hand_ar(), ARCH_OF, n_boot=10)
    assert out["kind"].tolist() == ["architecture", "architecture", "seed"]
    with pytest.raises(ValueError, match="no architecture"):
        S.ar_summary(hand_ar(), {"vgg_s0": "vgg11"})


def test_arch_vs_seed_hand_means():
    result = S.arch_vs_seed(hand_ar(), ARCH_OF, n_boot=200)
    # pair means: architecture 0.5 and 0.8 -> 0.65 (not the row mean 0.6); seed 0.2
    assert result["mean_arch"] == pytest.approx(0.65)
    assert result["mean_seed"] == pytest.approx(0.2)
    assert result["diff"] == pytest.approx(0.45)
    assert result["n_arch_pairs"] == 2 and result["n_seed_pairs"] == 1
    assert result["n_images"] == 2


def constructed_ar(arch_level: float, seed_level: float, noise: float) -> pd.DataFrame:
    """3 architectures x 2 seeds, all 15 pairs, 200 images."""
    rng = np.random.default_rng(0)
    models = [f"{a}_s{s}" for a in ("vgg", "res", "simple") for s in (0, 1)]
    base = rng.normal(0, 0.05, 200)  # per-image difficulty shared by all pairs
    rows = []
    for i, m1 in enumerate(models):
        for m2 in models[i + 1 :]:
            level = seed_level if m1.split("_")[0] == m2.split("_")[0] else arch_level
            ar = level + base + rng.normal(0, noise, 200)
            rows += [(m1, m2, f"img{j}", v) for j, v in enumerate(ar)]
    return pd.DataFrame(rows, columns=["model_a", "model_b", "image_id", "ar"])


def constructed_arch_of() -> dict[str, str]:
    return {f"{a}_s{s}": a for a in ("vgg", "res", "simple") for s in (0, 1)}


def test_arch_vs_seed_claim_true_and_false():
    arch_of = constructed_arch_of()
    holds = S.arch_vs_seed(constructed_ar(0.45, 0.25, 0.05), arch_of, n_boot=500)
    assert holds["claim_holds"] is True
    assert holds["n_arch_pairs"] == 12 and holds["n_seed_pairs"] == 3
    assert 0.15 < holds["ci_lo"] <= holds["diff"] <= holds["ci_hi"] < 0.25
    reverse = S.arch_vs_seed(constructed_ar(0.25, 0.45, 0.05), arch_of, n_boot=500)
    assert reverse["claim_holds"] is False and reverse["ci_hi"] < 0
    # identical AR for every pair: the difference is exactly 0, its CI is [0, 0]: not > 0
    same = S.arch_vs_seed(constructed_ar(0.3, 0.3, 0.0), arch_of, n_boot=200)
    assert same["diff"] == pytest.approx(0.0, abs=1e-12)
    assert same["claim_holds"] is False


def test_arch_vs_seed_missing_kind():
    ar = hand_ar()
    only_arch = ar[ar["model_a"] + ar["model_b"] != "vgg_s0vgg_s1"]
    result = S.arch_vs_seed(only_arch, ARCH_OF)
    assert result["mean_arch"] == pytest.approx(0.65)
    assert math.isnan(result["mean_seed"]) and math.isnan(result["diff"])
    assert math.isnan(result["ci_lo"]) and math.isnan(result["ci_hi"])
    assert result["claim_holds"] is None


# --------------------------------------------------------------------------- clusters


def test_dominant_object_hand():
    hist = hand_hist()
    # t = 0.35: a -> road 0, tree 1, sky 3: sky; b -> road 2, tree 2, sky 1: road (tie: lower id)
    assert S.dominant_object(hist, 0.35, NAMES).to_dict() == {"a": "sky", "b": "road"}
    # t = 0.95: a -> sky 1 (the 1.00); b -> nothing labelled is explained
    assert S.dominant_object(hist, 0.95, NAMES).to_dict() == {"a": "sky", "b": None}


def test_cluster_profiles_hand():
    hist = hand_hist()
    cluster_of = pd.Series({"a": 0, "b": 1, "c": 1})  # "c" has no histogram rows
    prof = S.cluster_profiles(hist, cluster_of, 0.35, NAMES, top=3).set_index("cluster")
    # cluster 0 = image a: sky 3, tree 1 (road has M=0 and is left out)
    assert prof.loc[0, "top_objects"] == ["sky", "tree"]
    assert prof.loc[0, "top_shares"] == [0.75, 0.25]
    assert prof.loc[0, "label"] == "sky · tree"
    # cluster 1 = images b, c: road 2, tree 2, sky 1 (ties by class id)
    assert prof.loc[1, "top_objects"] == ["road", "tree", "sky"]
    assert prof.loc[1, "top_shares"] == [0.4, 0.4, 0.2]
    assert prof["n_images"].tolist() == [1, 2]
    top2 = S.cluster_profiles(hist, cluster_of, 0.35, NAMES, top=2).set_index("cluster")
    assert top2.loc[1, "label"] == "road · tree"
    empty = S.cluster_profiles(hist, pd.Series({"c": 5}), 0.35, NAMES)
    assert empty["label"].tolist() == ["—"] and empty["top_objects"].tolist() == [[]]
