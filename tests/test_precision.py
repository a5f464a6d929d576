"""Training precision: bf16 autocast for the forward pass, float32 everywhere else."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from torch import nn

from cityviz.models import train as train_mod
from cityviz.models.archs import build_model, normalize
from cityviz.models.train import (
    autocast,
    make_optimizer,
    predict,
    to_batch,
    train_model,
    train_step,
)

CPU = torch.device("cpu")


def _separable(n: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class 1 images carry a bright square at a random place; class 0 images do not."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 90, (n, size, size, 3), dtype=np.uint8)
    y = rng.permutation(np.arange(n) % 2)
    for i in np.flatnonzero(y):
        r, c = rng.integers(0, size - 6, 2)
        x[i, r : r + 6, c : c + 6] = rng.integers(200, 256)
    return x, y


def _batch(n: int = 6, size: int = 16, seed: int = 1):
    x, y = _separable(n, size, seed)
    return to_batch(x, CPU), torch.from_numpy(y.astype(np.int64))


def test_fp32_step_is_bit_identical_to_a_plain_pytorch_step():
    torch.manual_seed(0)
    model = build_model("resnet18", 2).train()
    ref = copy.deepcopy(model)
    opt, ref_opt = make_optimizer(model, 1e-3), make_optimizer(ref, 1e-3)
    x, y = _batch()
    for _ in range(2):
        loss_sum, _ = train_step(model, "resnet18", opt, x, y, "fp32")
        ref_loss = nn.functional.cross_entropy(ref(normalize(x, "resnet18")), y)
        ref_opt.zero_grad(set_to_none=True)
        ref_loss.backward()
        ref_opt.step()
        assert loss_sum == float(ref_loss.detach()) * len(y)
    for (name, p), q in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_bf16_runs_the_forward_in_bf16_and_keeps_float32_weights_grads_and_loss():
    torch.manual_seed(0)
    model = build_model("simple", 2).train()
    before = copy.deepcopy(model)
    opt = make_optimizer(model, 1e-3)
    x, y = _batch()
    with torch.no_grad(), autocast(CPU, "bf16"):
        logits = before(normalize(x, "simple"))
    assert logits.dtype == torch.bfloat16
    # the loss train_step reports is the float32 cross-entropy of those bf16 logits
    want = nn.functional.cross_entropy(logits.float(), y).item() * len(y)
    loss_sum, _ = train_step(model, "simple", opt, x, y, "bf16")
    assert loss_sum == pytest.approx(want, rel=1e-6)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    states = [t for st in opt.state.values() for t in st.values() if t.is_floating_point()]
    assert states and all(t.dtype == torch.float32 for t in states if t.dim() > 0)
    assert not torch.equal(model.classifier[-1].weight, before.classifier[-1].weight)
    with torch.no_grad(), autocast(CPU, "fp32"):  # fp32 is no autocast at all
        assert before(normalize(x, "simple")).dtype == torch.float32


@pytest.mark.slow
def test_bf16_training_reaches_the_accuracy_of_fp32_on_a_separable_problem():
    torch.set_num_threads(2)
    # small: bf16 is emulated, and slow, on CPUs without native bf16 (see native_bf16)
    x, y = _separable(64)
    xv, yv = _separable(32, seed=5)
    kw = dict(epochs=3, batch_size=16, lr=1e-3, progress=False)
    acc = {}
    for prec in ("fp32", "bf16"):
        r = train_model("simple", 0, x, y, xv, yv, 2, precision=prec, **kw)
        acc[prec] = float((predict(r.model, "simple", xv, CPU).argmax(1) == yv).mean())
        assert all(p.dtype == torch.float32 for p in r.model.parameters())
    assert acc["fp32"] >= 0.9, acc
    assert acc["bf16"] >= acc["fp32"] - 0.05, acc


@pytest.mark.parametrize("bad", ["fp16", "BF16", "", "float32", None])
def test_unknown_precision_is_refused_before_anything_runs(bad, monkeypatch):
    built = []
    monkeypatch.setattr(train_mod, "build_model", lambda *a, **k: built.append(a))
    x, y = _separable(8)
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        train_model("simple", 0, x, y, x, y, 2, epochs=1, precision=bad, progress=False)
    assert built == []
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast(CPU, bad)
    model = build_model("simpler", 2)
    w = model.classifier[-1].weight.clone()
    with pytest.raises(ValueError, match="precision must be one of"):
        train_step(model, "simpler", make_optimizer(model, 1e-3), *_batch(2), bad)
    assert torch.equal(model.classifier[-1].weight, w)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_without_native_support_warns_that_it_is_slower(native, monkeypatch, caplog):
    monkeypatch.setattr(train_mod, "native_bf16", lambda device: native)
    x, y = _separable(4, size=16)
    with caplog.at_level(logging.WARNING, logger="cityviz.models.train"):
        train_model("simple", 0, x, y, x[:0], y[:0], 2, epochs=1, precision="bf16",
                    progress=False)  # fmt: skip
    warned = [r for r in caplog.records if "no native bfloat16" in r.getMessage()]
    assert len(warned) == (0 if native else 1)


def test_native_bf16_answers_a_bool_for_every_device_kind():
    assert isinstance(train_mod.native_bf16(CPU), bool)
    assert train_mod.native_bf16(torch.device("meta")) is False
