"""Known answer: on synthetic cities, Grad-CAM of VGG11 and ResNet18 lands on the planted objects.

A small set of the synthetic default (two cities, 224 px as the generator renders them, 30 spots
per city) goes through the real pipeline (train, CAMs, segmentation from the set's own labels,
statistics) and every city's planted objects must rank above every shared object by R_p^c at the
default threshold: the end-to-end check that masks, labels and eq. 1 line up.

At 224 px the Grad-CAM layers are 14×14 (VGG11) and 7×7 (ResNet18). The 96 px demo cannot show
this for every model (ResNet18's map is 3×3 there; README, Limits), so its summary prints the
check per model instead.
"""

from __future__ import annotations

import pytest

from cityviz.store import Cache
from precompute.__main__ import main
from precompute.summary import known_answer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("known")
    args = [
        "--profile", "demo", "--image-size", "224", "--spots-per-city", "30",
        "--archs", "vgg11,resnet18", "--seeds", "0",
        "--stages", "data,train,cams,segment,stats",
        "--cache", str(base / "cache"), "--data-dir", str(base / "data"), "--no-progress", "-q",
    ]  # fmt: skip
    assert main(args) == 0
    return Cache(base / "cache")


def test_models_learn_the_synthetic_cities(trained):
    # 48 test images: one image is 2 points (the demo's 90 % goal is measured on 128, README)
    for m in trained.models:
        assert m["test_accuracy"] >= 0.85, m


@pytest.mark.parametrize("model_id", ["vgg11_s0", "resnet18_s0"])
def test_planted_objects_rank_above_every_shared_object(trained, model_id):
    disc = trained.manifest["dataset"]["discriminative"]
    assert disc == {"tokyo-like": ["signboard", "fence"], "pittsburgh-like": ["skyscraper", "tree"]}
    rpc = trained.rpc()
    result = known_answer(rpc[rpc["model_id"] == model_id], disc)
    assert set(result) == {"tokyo-like", "pittsburgh-like"}
    failures = {city: r for city, r in result.items() if not r["ok"]}
    assert not failures, failures
