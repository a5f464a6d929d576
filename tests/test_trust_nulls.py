"""Permutation null and city contrast of R_p^c (cityviz.trust.nulls), on small hand-built sets.

Images are 12-16 px label maps with blob masks; every check compares with a brute-force float64
computation or with a property that holds by construction (a mask that follows an object puts
it above its null; an object explained alike in every city does not distinguish any).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import false_discovery_control

from cityviz import stats
from cityviz.trust import nulls
from cityviz.ui import overview as uo
from precompute.summary import evidence_lines

N_BINS = stats.N_BINS


def _blob(rng: np.random.Generator, size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    return np.exp(-d2 / (2 * r * r)).astype(np.float32)


def _scenes(
    rng: np.random.Generator, n: int, size: int = 16, planted: int | None = None, follow=True
):
    """``n`` label maps of 4 background classes in random vertical bands, plus (optionally) a
    ``planted`` class in a random square; masks are a random blob, or a blob on the planted
    square when ``follow``. Returns labels int16 [n, size, size], masks float32 in [0, 1]."""
    labels = np.zeros((n, size, size), dtype=np.int16)
    masks = np.zeros((n, size, size), dtype=np.float32)
    for i in range(n):
        cuts = np.sort(rng.integers(1, size, 3))
        for c, (a, b) in enumerate(zip([0, *cuts], [*cuts, size], strict=True)):
            labels[i, a:b] = c
        cy, cx = rng.uniform(0, size, 2)
        if planted is not None:
            y, x = rng.integers(0, size - 5, 2)
            labels[i, y : y + 5, x : x + 5] = planted
            if follow:
                cy, cx = y + 2, x + 2
        m = _blob(rng, size, cy, cx, size / 6)
        masks[i] = (m - m.min()) / (m.max() - m.min())
    return labels, masks


def test_shuffled_histograms_match_brute_force_float64():
    rng = np.random.default_rng(3)
    labels, masks = _scenes(rng, 7, size=12, planted=4)
    labels[0, 0, :3] = -1  # unlabelled pixels count nowhere
    perms = nulls.mask_permutations(7, 6, np.random.default_rng(1))
    observed, null = nulls.shuffled_histograms(
        labels, stats.bin_index(masks, N_BINS), 5, N_BINS, perms
    )
    identity = np.arange(7)
    for t in nulls.grid_thresholds(N_BINS):
        k = stats.threshold_bin(t)
        ref = nulls.rpc_null_reference(labels, masks, identity, t, 5)
        for c, v in ref.items():
            assert observed[c, k:].sum() / observed[c].sum() == pytest.approx(v, abs=1e-12)
        for r in range(len(perms)):
            ref = nulls.rpc_null_reference(labels, masks, perms[r], t, 5)
            for c, v in ref.items():
                assert null[r, c, k:].sum() / null[r, c].sum() == pytest.approx(v, abs=1e-12)


def test_null_city_table_matches_brute_force_statistics():
    rng = np.random.default_rng(5)
    labels, masks = _scenes(rng, 8, size=12, planted=4)
    n_perm, seed = 30, 11
    table = nulls.rpc_null_city(labels, masks, 5, N_BINS, n_perm, seed=seed)
    perms = nulls.mask_permutations(8, n_perm, np.random.default_rng(seed))  # the same draw
    direct = stats.rpc_direct(masks, labels, ["x"] * 8, 0.5, 5)
    rows = table[table["threshold"] == 0.5].set_index("class_id")
    assert sorted(rows.index) == [0, 1, 2, 3, 4]
    for c in rows.index:
        null = np.array([nulls.rpc_null_reference(labels, masks, p, 0.5, 5)[c] for p in perms])
        obs = direct[("x", c)]
        row = rows.loc[c]
        assert row["rpc"] == pytest.approx(obs, abs=1e-12)
        assert row["null_mean"] == pytest.approx(null.mean(), abs=1e-12)
        assert row["null_lo"] == pytest.approx(np.percentile(null, 2.5), abs=1e-12)
        assert row["null_hi"] == pytest.approx(np.percentile(null, 97.5), abs=1e-12)
        hits = int((null >= obs - 1e-12).sum())
        assert row["p_value"] == pytest.approx((1 + hits) / (n_perm + 1))
    assert set(np.round(table["threshold"] * N_BINS)) == set(range(1, N_BINS))


def test_p_values_are_uniform_under_a_true_null():
    # masks are random blobs, independent of the labels: every image-mask pairing is as likely
    p = []
    for s in range(12):
        rng = np.random.default_rng(100 + s)
        labels, masks = _scenes(rng, 20, planted=4, follow=False)
        t = nulls.rpc_null_table(
            labels, masks, ["c"] * 20, list("abcde"), n_permutations=199, min_mean_pixels=0
        )
        p.extend(t.loc[t["threshold"] == 0.5, "p_value"])
    p = np.asarray(p)
    assert len(p) == 60
    assert 0.35 < p.mean() < 0.65
    assert (p <= 0.05).mean() <= 0.12
    assert (p <= 0.5).mean() == pytest.approx(0.5, abs=0.2)


def test_a_mask_that_follows_an_object_puts_it_above_its_null():
    rng = np.random.default_rng(7)
    labels, masks = _scenes(rng, 30, planted=4)
    cities = np.repeat(["a", "b"], 15)
    t = nulls.rpc_null_table(
        labels, masks, cities, list("vwxyz"), n_permutations=199, min_mean_pixels=0
    )
    at = t[t["threshold"] == 0.5].set_index(["city", "object"])
    for city in ("a", "b"):
        planted = at.loc[(city, "z")]
        assert planted["p_value"] == pytest.approx(1 / 200)
        assert planted["rpc"] > planted["null_hi"]
        assert bool(planted["above_null"])
        assert planted["n_images"] == 15 and planted["n_permutations"] == 199
    shared = at.drop(index="z", level="object")
    assert shared["above_null"].sum() <= 1


def test_bh_adjustment_over_the_kept_objects_only():
    rng = np.random.default_rng(9)
    labels, masks = _scenes(rng, 12, planted=4)
    labels[:, 0, 0] = 5  # a one-pixel object: below the pixel filter, outside the family
    t = nulls.rpc_null_table(
        labels, masks, ["c"] * 12, list("abcdef"), n_permutations=99, min_mean_pixels=10
    )
    for _, grp in t.groupby("threshold"):
        fam = grp["mean_pixels"] > 10
        assert not fam.all() and fam.any()
        expected = false_discovery_control(grp.loc[fam, "p_value"], method="bh")
        np.testing.assert_allclose(grp.loc[fam, "p_adjusted"], expected)
        assert grp.loc[~fam, "p_adjusted"].isna().all()
        assert not grp.loc[~fam, "above_null"].any()


def test_null_sample_caps_images_per_city():
    cities = np.array(["a"] * 10 + ["b"] * 3)
    rows = nulls.null_sample(cities, 4, seed=1)
    assert (np.diff(rows) > 0).all()
    assert (cities[rows] == "a").sum() == 4 and (cities[rows] == "b").sum() == 3
    assert np.array_equal(rows, nulls.null_sample(cities, 4, seed=1))
    with pytest.raises(ValueError, match="at least 2"):
        nulls.null_sample(cities, 1)


# --------------------------------------------------------------------------- contrast


def _contrast_set(seed: int = 0, n: int = 24, size: int = 16):
    """Two cities. terrain (class 0): the top band, explained in *every* image of both cities;
    signboard (4): only in city a, explained; sky (1): explained in a, not in b; road (2),
    wall (3): never targeted. Returns ``hist, city_of, names``."""
    rng = np.random.default_rng(seed)
    labels = np.full((2 * n, size, size), 2, dtype=np.int16)
    masks = np.zeros((2 * n, size, size), dtype=np.float32)
    cities = np.repeat(["a", "b"], n)
    for i in range(2 * n):
        top = rng.integers(3, 6)
        labels[i, :top] = 0
        labels[i, top : top + 3] = 1
        labels[i, top + 3 : top + 6, : size // 2] = 3
        masks[i, :top] = rng.uniform(0.8, 1.0)
        if cities[i] == "a":
            masks[i, top : top + 3] = rng.uniform(0.6, 1.0)
            if i % 2:
                y, x = rng.integers(top + 6, size - 4), rng.integers(0, size - 4)
                labels[i, y : y + 4, x : x + 4] = 4
                masks[i, y : y + 4, x : x + 4] = rng.uniform(0.7, 1.0)
        masks[i] += rng.uniform(0, 0.3, (size, size)).astype(np.float32)
        masks[i] = np.clip(masks[i], 0, 1)
    r, c, counts = stats.object_histograms(masks, labels, 5)
    ids = np.array([f"img{i:03d}" for i in range(2 * n)])
    hist = stats.hist_frame(ids, r, c, counts)
    names = ["terrain", "sky", "road", "wall", "signboard"]
    return hist, pd.Series(cities, index=ids), names, (masks, labels, cities)


@pytest.fixture(scope="module")
def contrast():
    hist, city_of, names, raw = _contrast_set()
    table = nulls.rpc_contrast_table(
        hist, city_of, names, n_permutations=199, n_boot=100, min_mean_pixels=5
    )
    return table, raw


def test_contrast_values_match_direct_computation(contrast):
    table, (masks, labels, cities) = contrast
    for t in (0.25, 0.5, 0.75):
        direct = stats.rpc_direct(masks, labels, cities, t, 5)
        rows = table[np.isclose(table["threshold"], t)]
        for r in rows.itertuples():
            other = "b" if r.city == "a" else "a"
            assert r.rpc_city == pytest.approx(direct[(r.city, r.class_id)], abs=1e-12)
            assert r.rpc_others == pytest.approx(direct.get((other, r.class_id), 0.0), abs=1e-12)
            assert r.difference == pytest.approx(r.rpc_city - r.rpc_others, abs=1e-12)
            assert r.absent_elsewhere == ((other, r.class_id) not in direct)
    assert set(np.round(table["threshold"] * N_BINS)) == set(range(1, N_BINS))


def test_an_object_that_tops_every_city_does_not_distinguish_any(contrast):
    table, _ = contrast
    at = table[table["threshold"] == 0.5].set_index(["city", "object"])
    for city in ("a", "b"):
        terrain = at.loc[(city, "terrain")]
        assert terrain["rpc_city"] > 0.9  # it tops the city...
        assert terrain["diff_lo"] <= 0 <= terrain["diff_hi"]  # ...and every other city
        assert not terrain["distinguishes"]
    for obj in ("sky", "signboard"):
        row = at.loc[("a", obj)]
        assert row["distinguishes"] and row["p_adjusted"] < 0.05 and row["diff_lo"] > 0
    assert at.loc[("a", "signboard"), "absent_elsewhere"]
    assert at.loc[("a", "signboard"), "rpc_others"] == 0
    assert not at.loc[("b", "sky"), "distinguishes"]  # looked at less in b, not more
    assert at.loc[("b", "sky"), "p_value"] > 0.5
    assert ("b", "signboard") not in at.index


def test_contrast_p_values_uniform_when_cities_are_exchangeable():
    # the same generator for both cities: nothing distinguishes them
    rng = np.random.default_rng(21)
    p, flagged = [], []
    for s in range(6):
        labels, masks = _scenes(rng, 24, planted=4, follow=s % 2 == 0)
        r, c, counts = stats.object_histograms(masks, labels, 5)
        ids = np.arange(24)
        hist = stats.hist_frame(ids, r, c, counts)
        city_of = pd.Series(np.tile(["a", "b"], 12), index=ids)
        t = nulls.rpc_contrast_table(hist, city_of, list("vwxyz"), 199, 20, min_mean_pixels=0)
        p.extend(t.loc[t["threshold"] == 0.5, "p_value"])
        flagged.extend(t["distinguishes"])
    p = np.asarray(p)
    # BH at 5 % per city and threshold: false discoveries stay rare over 19 thresholds
    assert np.mean(flagged) <= 0.05
    assert 0.3 < p.mean() < 0.7
    assert (p <= 0.05).mean() <= 0.15


def test_contrast_with_one_city_is_empty():
    hist, city_of, names, _ = _contrast_set(n=4)
    one = pd.Series("a", index=city_of.index)
    t = nulls.rpc_contrast_table(hist, one, names, 19, 5)
    assert t.empty and list(t.columns) == nulls.CONTRAST_COLUMNS


# --------------------------------------------------------------------------- headline findings


def _evidence_tables():
    """Two models, two cities, hand-set flags. In a: signboard distinguishes for both models,
    terrain tops both cities for m1 but distinguishes nowhere, fence distinguishes only for m1
    (m2 disagrees). In b: nothing distinguishes."""
    rows = [  # model, city, object, rpc, above_null, distinguishes, difference
        ("m1", "a", "terrain", 0.9, True, False, 0.01),
        ("m1", "a", "signboard", 0.8, True, True, 0.80),
        ("m1", "a", "fence", 0.6, True, True, 0.30),
        ("m2", "a", "terrain", 0.5, True, False, 0.00),
        ("m2", "a", "signboard", 0.7, True, True, 0.70),
        ("m2", "a", "fence", 0.4, False, True, 0.10),
        ("m1", "b", "terrain", 0.9, True, False, -0.01),
        ("m2", "b", "terrain", 0.5, True, False, 0.00),
    ]
    frame = pd.DataFrame(
        rows, columns=["model_id", "city", "object", "rpc", "above", "dist", "difference"]
    )
    frame["class_id"] = frame["object"].map({"terrain": 0, "signboard": 1, "fence": 2})
    frame["threshold"] = 0.5
    frame["null_hi"] = frame["rpc"] - 0.1
    frame["rpc_others"] = frame["rpc"] - frame["difference"]
    frame["diff_lo"] = frame["difference"] - 0.05
    frame["diff_hi"] = frame["difference"] + 0.05
    null = frame.rename(columns={"above": "above_null"}).drop(columns=["dist", "difference"])
    contrast = frame.rename(columns={"dist": "distinguishes", "rpc": "rpc_city"})
    contrast = contrast.drop(columns=["above"])
    other = null.copy()
    other["threshold"] = 0.25  # another threshold's rows must be ignored
    other["above_null"] = ~other["above_null"]
    return pd.concat([null, other], ignore_index=True), contrast


def test_headline_findings_rank_by_evidence_and_flag_disagreement():
    null, contrast = _evidence_tables()
    head = uo.headline_findings(null, contrast, threshold=0.5)
    a = head[head["city"] == "a"].set_index("object")
    assert list(a.index) == ["signboard", "fence"]  # terrain (tops a) is not there
    assert list(a["rank"]) == [1, 2]
    assert a.loc["signboard", "n_models"] == 2 and a.loc["signboard", "n_evidence"] == 2
    assert not a.loc["signboard", "models_disagree"]
    assert a.loc["fence", "models_disagree"]
    assert a.loc["fence", "evidence"] == {"m1": True, "m2": False}
    assert a.loc["fence", "models_with"] == ("m1",)
    assert a.loc["fence", "models_without"] == ("m2",)
    assert head[head["city"] == "b"].empty
    lines = uo.evidence_findings(head, cities=["a", "b"], planted={"a": ["signboard"]})
    assert "**signboard** (planted)" in lines[0] and "2 of 2 models" in lines[0]
    assert "fence" in lines[0] and "m2" in lines[0]
    assert lines[1].startswith("No object distinguishes **b**")


def test_headline_findings_escape_names():
    null, contrast = _evidence_tables()
    for t in (null, contrast):
        t["object"] = t["object"].replace("signboard", "*sign*")
    head = uo.headline_findings(null, contrast, threshold=0.5)
    lines = uo.evidence_findings(head, cities=["a", "b"])
    assert r"\*sign\*" in lines[0]


def test_summary_lines_name_distinguishing_objects_and_disagreement():
    null, contrast = _evidence_tables()
    null["n_permutations"] = 999
    lines = evidence_lines(null, contrast, 0.5, ["m1", "m2"], ["a", "b"])
    body = {tuple(line.split()[:2]): line for line in lines[2:] if len(line.split()) > 2}
    assert "999 permutations" in lines[1]
    assert "signboard +0.80" in body[("m1", "a")] and "fence +0.30" in body[("m1", "a")]
    assert "fence" not in body[("m2", "a")] and "signboard +0.70" in body[("m2", "a")]
    assert body[("m1", "b")].endswith("none") and "terrain" not in " ".join(lines)
    assert lines[-2].strip() == "models disagree:"
    assert lines[-1].strip() == "a: fence for m1; not for m2"
