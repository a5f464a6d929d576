"""Distributed training (DistributedDataParallel, 2 gloo processes on this CPU) against one process.

Both runs draw the same seeded permutation and flips and use the same global batch, so they take
the same optimisation steps; only float summation order differs (the gradient of a batch of 8 is
summed as 2 × 4 across processes). Adam divides by the root of its second moment, which turns a
rounding-level difference in the gradient of a weight whose gradient is itself near zero into a
difference of up to ``lr`` per step: with lr 1e-4 the weights agree to ~1e-6 (measured 1.2e-6).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cityviz.models.distributed import train_distributed
from cityviz.models.train import train_model
from precompute.__main__ import main
from tests.helpers import smoke_args

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    base = tmp_path_factory.mktemp("ddp")
    x = rng.integers(0, 255, (48, 32, 32, 3), dtype=np.uint8)
    v = rng.integers(0, 255, (10, 32, 32, 3), dtype=np.uint8)
    np.save(base / "train.npy", x)
    np.save(base / "val.npy", v)
    return base, x, rng.integers(0, 2, 48), v, rng.integers(0, 2, 10)


def test_two_processes_train_the_same_weights_as_one(data):
    base, x, y, v, vy = data
    settings = dict(epochs=2, batch_size=8, lr=1e-4, progress=False)
    one = train_model("simple", 0, x, y, v, vy, 2, **settings)
    two = train_distributed(
        2, "simple", 0, base / "train.npy", y, base / "val.npy", vy, 2, **settings
    )
    a, b = one.model.state_dict(), two.model.state_dict()
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < 1e-5, diff
    moved = max(float((a[k] - build_init(k)).abs().max()) for k in a)
    assert moved > 100 * diff  # the weights did change: the agreement is not trivial
    assert not two.model.training
    for h1, h2 in zip(one.history, two.history, strict=True):
        assert h1["val_accuracy"] == h2["val_accuracy"]
        assert h1["train_accuracy"] == pytest.approx(h2["train_accuracy"])
        assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-5)
    assert one.best_epoch == two.best_epoch


def build_init(key: str) -> torch.Tensor:
    from cityviz.models.archs import build_model

    torch.manual_seed(0)
    return build_model("simple", 2).state_dict()[key]


def test_bad_process_counts_are_refused_before_any_work(tmp_path, caplog):
    assert main(smoke_args(tmp_path / "c", tmp_path / "d", "--nproc-per-node", "0")) == 2
    assert "--nproc-per-node must be at least 1" in caplog.text
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="at least 2 processes"):
        train_distributed(1, "simple", 0, "x.npy", np.zeros(1), "v.npy", np.zeros(1), 2, epochs=1)


@pytest.mark.scale  # `make test-slow`: the same 2-process gloo training as above, via the CLI
def test_the_train_stage_runs_distributed(tmp_path):
    cache = tmp_path / "cache"
    args = smoke_args(cache, tmp_path / "data", "--archs", "simple", "--seeds", "0",
                      "--stages", "data,train", "--nproc-per-node", "2")  # fmt: skip
    assert main(args) == 0
    from cityviz.store import Cache

    models = Cache(cache).models
    assert [m["model_id"] for m in models] == ["simple_s0"]
    assert 0.0 <= models[0]["test_accuracy"] <= 1.0
    assert (cache / "models" / "simple_s0.safetensors").exists()
