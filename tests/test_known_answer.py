"""Known answer: on synthetic cities, Grad-CAM of VGG11 and ResNet18 lands on the planted objects.

The demo's synthetic set goes through the real pipeline (train, CAMs, segmentation from the
set's own labels, statistics) and every city's planted objects must rank above every shared
object by R_p^c at the default threshold: the end-to-end check that masks, labels and eq. 1
line up.
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
        "--profile", "demo", "--archs", "vgg11,resnet18", "--seeds", "0",
        "--stages", "data,train,cams,segment,stats",
        "--cache", str(base / "cache"), "--data-dir", str(base / "data"), "--no-progress", "-q",
    ]  # fmt: skip
    assert main(args) == 0
    return Cache(base / "cache")


def test_models_learn_the_synthetic_cities(trained):
    for m in trained.models:
        assert m["test_accuracy"] >= 0.9, m


@pytest.mark.xfail(
    strict=True,
    reason="Open (README, Limits): with two cities VGG11's Grad-CAM for tokyo-like peaks on the "
    "road and sidewalk just below the fences, so road, car and sidewalk outrank the signboards",
)
def test_planted_objects_rank_above_every_shared_object(trained):
    disc = trained.manifest["dataset"]["discriminative"]
    rpc = trained.rpc()
    failures = {}
    for model_id in ("vgg11_s0", "resnet18_s0"):
        result = known_answer(rpc[rpc["model_id"] == model_id], disc)
        failures.update({(model_id, c): r for c, r in result.items() if not r["ok"]})
    assert not failures, failures
