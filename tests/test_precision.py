"""Precision policy (amp_dtype) and training precision: autocast for the forward pass (bf16, or
fp16 with a GradScaler), float32 everywhere else."""

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


@pytest.mark.parametrize("bad", ["float16", "BF16", "", "float32", None])
def test_unknown_precision_is_refused_before_anything_runs(bad, monkeypatch):
    built = []
    monkeypatch.setattr(train_mod, "build_model", lambda *a, **k: built.append(a))
    x, y = _separable(8)
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16"):
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


# ---- the one precision policy -----------------------------------------------------------------


def _fake_cuda(monkeypatch, available: bool, bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


@pytest.mark.parametrize(
    ("device", "available", "bf16", "want"),
    [
        ("cpu", True, True, None),  # auto never autocasts a CPU (slower here)
        ("cpu", False, False, None),
        ("cuda", True, True, torch.bfloat16),  # Ampere and later
        ("cuda:1", True, True, torch.bfloat16),
        ("cuda", True, False, torch.float16),  # older GPUs: fp16 (training with a GradScaler)
        ("cuda", False, False, None),  # no GPU seen after all
    ],
)
def test_auto_picks_what_the_docstring_says(device, available, bf16, want, monkeypatch):
    _fake_cuda(monkeypatch, available, bf16)
    assert train_mod.amp_dtype(device, "auto") == want
    assert (
        train_mod.resolve_precision(device, "auto")
        == {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[want]
    )
    # explicit names mean the same on every device
    assert train_mod.amp_dtype(device, "fp32") is None
    assert train_mod.amp_dtype(device, "bf16") == torch.bfloat16
    assert train_mod.amp_dtype(device, "fp16") == torch.float16
    assert train_mod.resolve_precision(device, "bf16") == "bf16"


def test_the_cli_stores_the_resolved_precision(monkeypatch):
    from precompute.__main__ import build_config_with_sources, parse_args

    _fake_cuda(monkeypatch, True, False)
    cfg, sources = build_config_with_sources(parse_args(["--profile", "smoke"]), cuda=True)
    assert (cfg.precision, sources["precision"]) == ("fp16", "default: auto on cuda")
    cfg, sources = build_config_with_sources(parse_args(["--profile", "smoke"]), cuda=False)
    assert cfg.precision == "fp32"  # what a CPU cache recorded before "auto" existed
    args = parse_args(["--profile", "smoke", "--precision", "bf16", "--num-workers", "2"])
    cfg, sources = build_config_with_sources(args, cuda=False)
    assert (cfg.precision, cfg.num_workers, sources["precision"]) == (
        2 and "bf16",
        2,
        "--precision",
    )


def test_fp16_training_steps_go_through_a_grad_scaler():
    """fp16 (CPU autocast supports it too) scales the loss by the scaler's 2¹⁶ before backward
    and divides the gradients by it before Adam's step: the same weights as doing that by hand."""
    assert train_mod.grad_scaler(CPU, "bf16") is None and train_mod.grad_scaler(CPU, "fp32") is None
    scaler = train_mod.grad_scaler(CPU, "fp16")
    assert isinstance(scaler, torch.amp.GradScaler)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(1), nn.Linear(3 * 8 * 8, 2)).train()
    ref, before = copy.deepcopy(model), copy.deepcopy(model)
    opt, ref_opt = make_optimizer(model, 1e-3), make_optimizer(ref, 1e-3)
    x, y = _batch(4, size=8)
    loss_sum, _ = train_step(model, "simpler", opt, x, y, "fp16", scaler=scaler)
    assert scaler.get_scale() == 65536.0  # no inf or NaN: the step was taken, the scale kept
    with autocast(CPU, "fp16"):
        logits = ref(normalize(x, "simpler"))
    assert logits.dtype == torch.float16
    ref_loss = nn.functional.cross_entropy(logits.float(), y)
    ref_opt.zero_grad(set_to_none=True)
    (ref_loss * 65536.0).backward()
    for p in ref.parameters():
        p.grad.mul_(1 / 65536.0)
    ref_opt.step()
    assert loss_sum == pytest.approx(float(ref_loss.detach()) * len(y), rel=1e-6)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for (name, p), q in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7, msg=name)
        assert not torch.equal(p, before.state_dict()[name]), name  # the step was taken


def test_predict_under_bf16_returns_float32_probabilities_close_to_fp32():
    torch.manual_seed(0)
    model = build_model("resnet18", 3).eval()
    x, _ = _separable(8, size=32)
    p32 = predict(model, "resnet18", x, CPU, batch_size=3)
    p16 = predict(model, "resnet18", x, CPU, batch_size=3, precision="bf16")
    assert p16.dtype == np.float32 and p16.shape == p32.shape == (8, 3)
    np.testing.assert_allclose(p16.sum(1), 1.0, rtol=1e-5)
    assert np.abs(p16 - p32).max() < 0.02
    assert not np.array_equal(p16, p32)  # autocast did run
    assert (p16.argmax(1) == p32.argmax(1)).mean() >= 0.75
    with pytest.raises(ValueError, match="precision must be one of"):
        predict(model, "resnet18", x, CPU, precision="half")
