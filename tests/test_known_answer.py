"""Known answer: on synthetic cities, VGG11 and ResNet18 explanations land on the planted objects.

A small synthetic set with the demo's settings (96 px cache, VGG11 fed 128 px and ResNet18 192 px,
3 epochs, Grad-CAM++) goes through the real pipeline (train, CAMs, segmentation from the set's own
labels, statistics), and every city's planted objects must rank above every shared object by
R_p^c at the default threshold: the end-to-end check that masks, labels and eq. 1 line up.

The set adds a ``control`` city without planted objects to tokyo-like and pittsburgh-like (30
spots each). With two cities a network may learn one city's cues and call the rest the other
city, and then nothing can show that other city's cues (README, Limits); with the control city
both must be learnt, and the check has margins of 0.24 or more instead of a few hundredths.
``make demo`` prints the same check for all its models on its two-city set.
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
        "--profile", "demo", "--cities", "tokyo-like,pittsburgh-like,control",
        "--spots-per-city", "30",
        "--archs", "vgg11,resnet18", "--seeds", "0",
        "--stages", "data,train,cams,segment,stats",
        "--cache", str(base / "cache"), "--data-dir", str(base / "data"), "--no-progress", "-q",
    ]  # fmt: skip
    assert main(args) == 0
    return Cache(base / "cache")


def test_models_learn_the_synthetic_cities(trained):
    # 72 test images of 3 cities (chance: 33 %); the demo's 90 % goal is measured on its 96 (README)
    for m in trained.models:
        assert m["test_accuracy"] >= 0.75, m


@pytest.mark.parametrize("model_id", ["vgg11_s0", "resnet18_s0"])
def test_planted_objects_rank_above_every_shared_object(trained, model_id):
    disc = trained.manifest["dataset"]["discriminative"]
    assert disc == {
        "tokyo-like": ["signboard", "fence"],
        "pittsburgh-like": ["skyscraper", "tree"],
        "control": [],
    }
    rpc = trained.rpc()
    result = known_answer(rpc[rpc["model_id"] == model_id], disc)
    assert set(result) == {"tokyo-like", "pittsburgh-like"}
    failures = {city: r for city, r in result.items() if not r["ok"]}
    assert not failures, failures
