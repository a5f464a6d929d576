"""The model-side trust checks' maths (cityviz.trust): hand-computed and float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from cityviz.cam import compute_cams, mask_norm
from cityviz.models.archs import build_model, normalize, split_model
from cityviz.stats import average_residual
from cityviz.trust import faithfulness as F
from cityviz.trust import removal as R
from cityviz.trust import sanity as S
from cityviz.trust import verdict as V
from cityviz.trust.bootstrap import bootstrap_mean_ci
from precompute.trust import sample_rows


class RegionModel(nn.Module):
    """Logits ``[gain · mean of channel 0 over region R, 0]``: only R's pixels matter."""

    def __init__(self, region: np.ndarray, gain: float = 4.0) -> None:
        super().__init__()
        self.register_buffer("region", torch.from_numpy(region.astype(np.float32)))
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x[:, 0] * self.region).sum((1, 2)) / self.region.sum()
        return torch.stack([self.gain * s, torch.zeros_like(s)], 1)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


# ------------------------------------------------------------------------- deletion / insertion


def test_auc_is_the_trapezoid_rule():
    f = F.fractions_of(10)
    assert F.auc(f, 1 - f) == pytest.approx(0.5, abs=1e-12)
    # trapezoid of f²: 0.1 · (Σ_i (i/10)² − (0 + 1)/2) = 0.1 · (3.85 − 0.5)
    assert F.auc(f, f**2) == pytest.approx(0.1 * (3.85 - 0.5), abs=1e-12)
    rows = F.auc(f, np.stack([f, 1 - f]))
    assert rows.shape == (2,) and np.allclose(rows, [0.5, 0.5])
    with pytest.raises(ValueError):
        F.auc([0.0], [1.0])


def test_pixel_ranks_follow_the_mask_and_break_ties_randomly():
    rng = np.random.default_rng(1)
    mask = rng.random((6, 7))
    ranks = F.pixel_ranks(mask)
    assert sorted(ranks.ravel()) == list(range(42))
    assert np.array_equal(np.argsort(ranks.ravel()), np.argsort(-mask.ravel(), kind="stable"))
    flat = np.zeros((8, 8))
    flat[0, 0] = 1.0
    r = F.pixel_ranks(flat, seed=3)
    assert r[0, 0] == 0
    # the zero plateau is not taken in raster order
    assert not np.array_equal(np.argsort(r.ravel())[1:], np.arange(1, 64))
    assert not np.array_equal(
        F.pixel_ranks(flat, "random", seed=0), F.pixel_ranks(flat, "random", seed=1)
    )


def test_deletion_curve_of_a_model_that_reads_one_region():
    h = w = 10
    region = np.zeros((h, w), bool)
    region[2:5, 3:7] = True  # 12 pixels
    model = RegionModel(region).eval()
    x = torch.ones(1, 3, h, w)
    steps = 20
    f, p = F.deletion_curve(model, x, region.astype(float), 0, steps=steps, fill="zero")
    n_removed = np.minimum(np.round(f * h * w), region.sum())
    want = _sigmoid(4.0 * (region.sum() - n_removed) / region.sum())
    assert f.dtype == np.float64 and p.dtype == np.float64 and p.shape == (steps + 1,)
    assert np.allclose(p, want, atol=1e-6)
    _, p_rand = F.deletion_curve(model, x, region.astype(float), 0, steps=steps, fill="zero",
                                 order="random")  # fmt: skip
    assert F.auc(f, p) < F.auc(f, p_rand)
    _, p_ins = F.insertion_curve(model, x, region.astype(float), 0, steps=steps, fill="zero")
    n_shown = np.minimum(np.round(f * h * w), region.sum())
    assert np.allclose(p_ins, _sigmoid(4.0 * n_shown / region.sum()), atol=1e-6)


def test_curves_refuse_a_model_in_training_mode():
    model = RegionModel(np.ones((4, 4), bool)).train()
    with pytest.raises(ValueError, match="eval mode"):
        F.deletion_curve(model, torch.ones(1, 3, 4, 4), np.ones((4, 4)), 0)


def test_fills():
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(F.fill_image(x, "mean")[:, :, 5, 7], x.mean((2, 3)))
    const = torch.full((1, 3, 32, 32), 0.25)
    assert torch.allclose(F.fill_image(const, "blur"), const, atol=1e-6)
    blurred = F.fill_image(x, "blur")
    assert blurred.shape == x.shape and blurred.std() < x.std()
    with pytest.raises(ValueError):
        F.fill_image(x, "paint")


# ------------------------------------------------------------------------- MPRT, other city


def test_spearman_rows_match_scipy():
    rng = np.random.default_rng(0)
    a = rng.random((5, 9, 9))
    b = a + rng.normal(0, 0.3, a.shape)
    b[1] = rng.random((9, 9))
    b[2] = np.round(b[2], 1)  # ties
    got = S.spearman_rows(a, b)
    want = [spearmanr(a[i].ravel(), b[i].ravel()).statistic for i in range(5)]
    assert np.allclose(got, want, atol=1e-12)
    assert np.allclose(S.spearman_rows(a, a), 1.0)
    assert np.allclose(S.spearman_rows(a, -a), -1.0)
    const = np.zeros_like(a)
    assert np.all(S.spearman_rows(a, const) == 0)
    assert np.all(np.isnan(S.spearman_rows(const, a)))


def test_ssim_rows_identical_and_unrelated():
    rng = np.random.default_rng(0)
    a = rng.random((3, 32, 32))
    assert np.allclose(S.ssim_rows(a, a), 1.0)
    assert np.all(S.ssim_rows(a, rng.random((3, 32, 32))) < 0.2)


@pytest.fixture(scope="module")
def tiny_simple():
    torch.manual_seed(0)
    return build_model("simple", 3), normalize(torch.rand(3, 3, 32, 32), "simple")


def test_mprt_cascade(tiny_simple):
    model, x = tiny_simple
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = S.mprt(model, "simple", x, np.array([0, 1, 2]), method="gradcam", size=32)
    names = [n for n, _ in S.randomisation_groups(model)]
    assert names[:3] == ["classifier.4", "classifier.2", "classifier.0"]
    assert names[-1] == "features.0"
    assert res.layers == ["", *names]
    assert res.spearman.shape == res.ssim.shape == (len(names) + 1, 3)
    assert np.allclose(res.spearman[0], 1.0) and np.allclose(res.ssim[0], 1.0)
    assert res.head_steps == 3 == S.head_steps(model, "simple")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = S.mprt(model, "simple", x, np.array([0, 1, 2]), method="gradcam", size=32, max_steps=2)
    assert np.array_equal(res.spearman[:3], again.spearman, equal_nan=True)


def test_head_steps_resnet():
    model = build_model("resnet18", 2)
    assert S.head_steps(model, "resnet18") == 1
    assert [n for n, _ in S.randomisation_groups(model)][:2] == ["fc", "layer4.1"]


def test_other_city_compares_the_runner_up(tiny_simple):
    model, x = tiny_simple
    res = S.other_city(model, "simple", x, method="gradcam", size=32)
    trunk, head = split_model(model, "simple")
    first = compute_cams(trunk, head, x, method="gradcam")
    second_target = first.logits.topk(2, 1).indices[:, 1]
    second = compute_cams(trunk, head, x, target=second_target, method="gradcam")
    m1, m2 = mask_norm(first.cams, 32), mask_norm(second.cams, 32)
    assert np.array_equal(res.pred, first.target.numpy())
    assert np.all(res.other != res.pred)
    assert np.allclose(res.ar, average_residual(m1, m2))
    assert np.allclose(res.spearman, S.spearman_rows(m1, m2), equal_nan=True)


# ------------------------------------------------------------------------- object removal


def test_paint_out_continues_the_surroundings():
    img = np.full((24, 24, 3), 120, np.uint8)
    img[8:12, 8:12] = (250, 0, 0)
    region = np.zeros((24, 24), bool)
    region[8:12, 8:12] = True
    out = R.paint_out(img, R.grow(region))
    assert np.abs(out.astype(int) - 120).max() <= 2
    assert np.array_equal(R.paint_out(img, np.zeros((24, 24), bool)), img)
    rolled = R.random_region(region, np.random.default_rng(0))
    assert rolled.sum() == region.sum()


def test_removal_of_the_only_region_the_model_reads():
    """City 0 shows a red square (label 1) at the top left; the toy classifier says city 0 iff
    that corner is red. Painting the square out must flip city 0's images; an equal-area random
    region rarely does; the shared background (label 0) is never causal."""
    rng = np.random.default_rng(0)
    n, size = 16, 32
    images = rng.integers(100, 140, (n, size, size, 3)).astype(np.uint8)
    truth = np.array([0, 1] * (n // 2))
    labels = np.zeros((n, size, size), np.int64)
    for i in np.flatnonzero(truth == 0):
        images[i, 2:10, 2:10] = (240, 20, 20)
        labels[i, 2:10, 2:10] = 1

    def predict(imgs):
        red = imgs[:, 3:9, 3:9, 0].mean((1, 2)) > 200
        return np.stack([red, ~red], 1).astype(np.float64)

    table = R.removal_table(predict, images, labels, truth, ["a", "b"], ["wall", "panel"],
                            min_pixels=10, max_images=None, n_boot=200)  # fmt: skip
    assert list(table.columns) == list(R.COLUMNS)
    panel = table[(table["city"] == "a") & (table["object"] == "panel")].iloc[0]
    assert panel["n_images"] == 8
    assert panel["acc_before"] == 1.0 and panel["acc_after"] == 0.0
    assert panel["drop"] == 1.0 and panel["drop"] > panel["drop_random"]
    assert panel["drop_lo"] > 0 and bool(panel["causal"])
    assert panel["area"] == pytest.approx(100 / size**2)  # 8×8 grown by one pixel: 10×10
    walls = table[table["object"] == "wall"]
    assert not walls["causal"].any()
    assert "panel" not in set(table.loc[table["city"] == "b", "object"])


# ------------------------------------------------------------------------- verdict, sampling


def test_verdict_rules():
    good = np.array([[1.0, 1.0, 1.0], [0.1, 0.2, 0.0], [0.0, 0.1, -0.1]])
    assert V.mprt_check(good, 1)["passed"] and V.mprt_check(good, 1)["value"] == 0.1
    bad = np.array([[1.0, 1.0, 1.0], [0.9, 0.8, 0.95], [0.0, 0.1, -0.1]])
    assert not V.mprt_check(bad, 1)["passed"]
    assert V.other_city_check(np.array([0.2, -0.5, 0.4]))["passed"]
    assert not V.other_city_check(np.array([0.95, 0.97, 0.99]))["passed"]
    rng = np.random.default_rng(0)
    random_auc = rng.uniform(0.5, 0.7, 30)
    assert V.deletion_check(random_auc - 0.3, random_auc)["passed"]
    assert not V.deletion_check(random_auc, random_auc)["passed"]
    checks = {"mprt": V.mprt_check(good, 1), "other_city": V.other_city_check(np.array([0.2])),
              "deletion": V.deletion_check(random_auc - 0.3, random_auc)}  # fmt: skip
    assert V.model_verdict("gradcam", checks)["verdict"] == "pass"
    warn = {**checks, "other_city": V.other_city_check(np.array([0.99]))}
    assert V.model_verdict("gradcam", warn)["verdict"] == "warn"
    fail = {**checks, "mprt": V.mprt_check(bad, 1)}
    out = V.model_verdict("gradcam", fail)
    assert out["verdict"] == "fail" and "randomised" in out["sentence"]


def test_bootstrap_mean_ci():
    assert bootstrap_mean_ci(np.full(7, 0.3)) == pytest.approx((0.3, 0.3))
    v = np.random.default_rng(0).normal(1.0, 1.0, 200)
    lo, hi = bootstrap_mean_ci(v, 500)
    se = v.std(ddof=1) / np.sqrt(len(v))
    assert lo < v.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert np.isnan(bootstrap_mean_ci(np.array([np.nan]))[0])


def test_sample_rows_are_balanced_over_cities():
    city = np.array([0] * 10 + [1] * 5 + [2] * 2)
    rows = sample_rows(city, 9)
    assert len(set(rows)) == 9 and np.all(np.diff(rows) > 0)
    assert np.bincount(city[rows]).tolist() == [4, 3, 2]
    assert len(sample_rows(city, 100)) == 17
