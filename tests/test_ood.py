"""The deep-nearest-neighbour OOD check on synthetic features with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cityviz import ood
from cityviz.store import load_arrays, save_arrays


def blob(n: int, dim: int = 16, seed: int = 0, centre: float = 3.0) -> np.ndarray:
    """Features around one direction (after L2 normalisation, a cap on the sphere)."""
    rng = np.random.default_rng(seed)
    mean = np.zeros(dim)
    mean[0] = centre
    return mean + rng.normal(size=(n, dim))


def test_in_distribution_points_are_flagged_about_one_percent_of_the_time():
    ref = ood.fit_reference(blob(3000, seed=0), k=5)
    _, percentile, flagged = ood.score(ref, blob(3000, seed=1))
    assert 0.002 < flagged.mean() < 0.03
    assert 40 < np.median(percentile) < 60


@pytest.mark.parametrize("k", [1, 5, 10])
def test_points_from_elsewhere_are_flagged(k):
    ref = ood.fit_reference(blob(500, seed=2, centre=10.0), k=k)
    far = blob(50, seed=3, centre=10.0)
    far[:, [0, 1]] = far[:, [1, 0]]  # the same cloud turned 90° on the sphere
    dist, percentile, flagged = ood.score(ref, far)
    assert flagged.all() and (percentile == 100).all()
    assert dist.min() > float(ref["threshold"])
    assert int(ref["k"]) == k


def test_scale_does_not_matter_and_a_reference_point_is_not_flagged():
    feats = blob(200, seed=4)
    ref = ood.fit_reference(feats)
    d1, _, f1 = ood.score(ref, feats[:20])
    d2, _, _ = ood.score(ref, 1000 * feats[:20])
    np.testing.assert_allclose(d1, d2, atol=1e-6)
    assert f1.mean() <= 0.1


def test_duplicates_do_not_collapse_the_threshold():
    feats = np.repeat(blob(12, seed=5), 10, axis=0)  # a pool of 12 photos, each 10 times
    ref = ood.fit_reference(feats, k=5)
    assert len(ref["features"]) == 12 and float(ref["threshold"]) > 0
    _, _, flagged = ood.score(ref, feats[:12])
    assert not flagged.any()


def test_reference_round_trips_through_save_arrays(tmp_path):
    ref = ood.fit_reference(blob(100, seed=6))
    save_arrays(tmp_path / "ood" / "m.npz", **ref)
    back = load_arrays(tmp_path / "ood" / "m.npz")
    new = blob(10, seed=7)
    for a, b in zip(ood.score(ref, new), ood.score(back, new), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: np.zeros((3, 4, 5)), "must be \\[N, D\\]"),
        (lambda: np.full((5, 3), np.nan), "NaN"),
        (lambda: np.ones((5, 3)), "at least 2 distinct"),
    ],
)
def test_bad_reference_features_raise_value_error(make, needle):
    with pytest.raises(ValueError, match=needle):
        ood.fit_reference(make())


def test_malformed_reference_and_wrong_width_raise_value_error():
    ref = ood.fit_reference(blob(50, seed=8))
    with pytest.raises(ValueError, match="lacks threshold"):
        ood.score({k: v for k, v in ref.items() if k != "threshold"}, blob(2))
    with pytest.raises(ValueError, match="do not fit"):
        ood.score({**ref, "loo": ref["loo"][:3]}, blob(2))
    with pytest.raises(ValueError, match="dimensions"):
        ood.score(ref, np.ones((2, 7)))
    with pytest.raises(ValueError, match="k must"):
        ood.fit_reference(blob(50), k=0)


def test_trunk_features_pool_over_space():
    trunk = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(5, 3, 8, 8)
    feats = ood.trunk_features(trunk, x, batch=2)
    with torch.no_grad():
        expected = trunk(x).mean(dim=(2, 3)).numpy()
    assert feats.shape == (5, 4) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)


def test_reference_from_images_uses_the_models_trunk():
    from cityviz.cam import Explainer
    from cityviz.models.archs import build_model

    torch.manual_seed(0)
    explainer = Explainer(build_model("simpler", 2), "simpler")
    images = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3)).astype(np.uint8)
    ref = ood.reference_from_images(explainer, images, batch=3)
    assert ref["features"].shape == (7, 96)  # Simpler's last convolution has 96 channels
    _, _, flagged = ood.score(ref, ref["features"])
    assert not flagged.any()
    with pytest.raises(ValueError, match="at least 2 distinct"):
        ood.reference_from_images(explainer, np.repeat(images[:1], 4, axis=0))
    with pytest.raises(ValueError, match="no test images"):
        ood.reference_from_images(explainer, images[:0])


def test_live_predict_features_match_the_reference_features():
    """The page scores a photo with the features of its own CAM pass: they must be the same
    features the reference is fitted on, or every photo would look out of distribution."""
    from cityviz.cam import Explainer
    from cityviz.data.images import resize_center_crop
    from cityviz.models.archs import build_model
    from cityviz.ui import live as ul

    torch.manual_seed(1)
    explainer = Explainer(build_model("simple", 2), "simple")
    photo = np.random.default_rng(1).integers(0, 256, (50, 70, 3)).astype(np.uint8)
    result = ul.predict(explainer, photo, 32, 32, ["a", "b"])
    crop = np.array(resize_center_crop(photo, 32))
    expected = ood.trunk_features(explainer.trunk, explainer.prepare(crop[None]))[0]
    np.testing.assert_allclose(result.features, expected, rtol=1e-5, atol=1e-6)
