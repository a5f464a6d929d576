"""Explaining or predicting never modifies the caller's model (issue 9, fault 8).

Every public function that runs a model is exercised on every registered architecture (tiny
inputs): a model in training mode (all of it, or any one submodule) is refused with a clear
``ValueError`` and left as it was; a model in eval mode comes back bit-identical (mode flags,
parameters, buffers, ``requires_grad`` flags, gradients, hooks), its outputs do not depend on the
other images of a batch, repeated calls agree exactly (VGG11's dropout), and one model shared by
several threads gives each thread its serial answer while no thread ever sees it switched.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from cityviz import cam
from cityviz.cam import METHODS, Explainer, compute_cams
from cityviz.models import archs, train
from cityviz.models.archs import build_model, get_arch, list_archs, normalize, split_model
from cityviz.models.train import predict

N_CLASSES = 3


def size_of(arch: str) -> int:
    return max(get_arch(arch).min_size, 32)


def as_input(images: np.ndarray, arch: str) -> torch.Tensor:
    return normalize(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2), arch)


def run_compute_cams(method: str) -> Callable[[nn.Module, str, np.ndarray], np.ndarray]:
    def run(model: nn.Module, arch: str, images: np.ndarray) -> np.ndarray:
        res = compute_cams(*split_model(model, arch), as_input(images, arch), target=1,
                           method=method)  # fmt: skip
        return np.concatenate([res.cams.flatten(1).numpy(), res.logits.numpy()], 1)

    return run


def run_explainer(model: nn.Module, arch: str, images: np.ndarray) -> np.ndarray:
    res = Explainer(model, arch)(images, method="gradcam++")
    return np.concatenate([res.cams.flatten(1).numpy(), res.probs.numpy()], 1)


def run_predict(model: nn.Module, arch: str, images: np.ndarray) -> np.ndarray:
    return predict(model, arch, images, torch.device("cpu"), batch_size=3)


# Every public function of cam.py / train.py / archs.py that runs a model for inference.
RUNNERS: dict[str, Callable[[nn.Module, str, np.ndarray], np.ndarray]] = {
    **{f"compute_cams[{m}]": run_compute_cams(m) for m in METHODS},
    "Explainer": run_explainer,
    "predict": run_predict,
}
COVERED = {"compute_cams", "Explainer", "predict"}
# Public callables that take a model but are not inference: each with the reason.
EXEMPT = {
    "train_step": "one optimisation step: it updates the model in place by design",
    "make_optimizer": "no forward pass",
    "load_imagenet_weights": "no forward pass; loads weights into the model by design",
    "split_model": "no forward pass (exercised by every runner above)",
    "require_eval": "the check itself",
    "TrainResult": "a container",
}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    built = {}
    for arch in list_archs():
        model = build_model(arch, N_CLASSES)
        model.train()  # move BatchNorm running statistics away from their initial values
        with torch.no_grad():
            model(as_input(street(4, size_of(arch), seed=99), arch))
        built[arch] = model.eval()
    return built


def street(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def snapshot(model: nn.Module) -> dict[str, object]:
    """Everything about a model that running it must leave as it was."""
    hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                  "_backward_pre_hooks")  # fmt: skip
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "devices": [t.device for t in model.state_dict().values()],
        "hooks": sum(len(getattr(m, d, {})) for m in model.modules() for d in hook_dicts),
        "global_hooks": len(nn.modules.module._global_forward_hooks)
        + len(nn.modules.module._global_backward_hooks),
    }


def assert_unchanged(before: dict[str, object], model: nn.Module) -> None:
    after = snapshot(model)
    assert before["state"].keys() == after["state"].keys()
    changed = [k for k, v in before["state"].items() if not torch.equal(v, after["state"][k])]
    assert changed == []
    for key in ("training", "requires_grad", "devices", "hooks", "global_hooks"):
        assert before[key] == after[key], key
    assert all(g is None for g in after["grads"])


def some_submodule(model: nn.Module) -> str:
    """The model's first dropout or batch-norm layer (the mode-sensitive kinds), else its last
    leaf module."""
    named = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    for name, m in named:
        if isinstance(m, nn.Dropout | nn.modules.batchnorm._BatchNorm):
            return name
    return named[-1][0]


@pytest.mark.parametrize("arch", list_archs())
@pytest.mark.parametrize("runner", list(RUNNERS))
def test_training_mode_is_refused_and_nothing_changes(models, arch, runner) -> None:
    model = models[arch]
    before = snapshot(model)
    for part in (model, model.get_submodule(some_submodule(model))):
        part.train()
        flags = [m.training for m in model.modules()]
        try:
            with pytest.raises(ValueError, match=r"eval mode.*model\.eval\(\)"):
                RUNNERS[runner](model, arch, street(2, size_of(arch), seed=1))
            assert [m.training for m in model.modules()] == flags  # not switched, not restored
        finally:
            model.eval()
    assert_unchanged(before, model)  # a forward pass in training mode would move BN statistics


@pytest.mark.parametrize("arch", list_archs())
@pytest.mark.parametrize("runner", list(RUNNERS))
def test_eval_model_unchanged_and_outputs_independent_of_batch_and_call(models, arch, runner):
    model, run = models[arch], RUNNERS[runner]
    params = list(model.parameters())
    params[0].requires_grad_(False)  # a caller's frozen layer must stay frozen, the rest trainable
    try:
        before = snapshot(model)
        images = street(4, size_of(arch), seed=3)
        batch = run(model, arch, images)
        again = run(model, arch, images)
        alone = [run(model, arch, images[i : i + 1])[0] for i in (0, 3)]
        assert_unchanged(before, model)
        assert before["requires_grad"][:2] == [False, True]
    finally:
        params[0].requires_grad_(True)
    np.testing.assert_array_equal(again, batch)  # dropout (VGG11) inactive: bit-identical
    scale = float(np.abs(batch).max())
    assert np.isfinite(batch).all() and scale > 0
    for i, one in zip((0, 3), alone, strict=True):
        np.testing.assert_allclose(one, batch[i], rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("arch", list_archs())
def test_one_model_shared_by_threads(models, arch) -> None:
    model = models[arch]
    inputs = [street(2, size_of(arch), seed=10 + i) for i in range(2)]
    serial = {(name, i): run(model, arch, x) for name, run in RUNNERS.items()
              for i, x in enumerate(inputs)}  # fmt: skip
    before = snapshot(model)
    start, done = threading.Barrier(len(inputs) + 1), threading.Event()
    errors: list[BaseException] = []
    mismatches: list[tuple[str, int]] = []
    seen_training: list[bool] = []

    def work(i: int) -> None:
        try:
            start.wait()
            for name, run in RUNNERS.items():
                if not np.allclose(run(model, arch, inputs[i]), serial[(name, i)],
                                   rtol=1e-5, atol=0):  # fmt: skip
                    mismatches.append((name, i))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def watch() -> None:
        start.wait()
        while not done.is_set():
            seen_training.append(any(m.training for m in model.modules()))
            time.sleep(1e-3)  # let the workers run

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    watcher = threading.Thread(target=watch)
    for t in [*workers, watcher]:
        t.start()
    for t in workers:
        t.join()
    done.set()
    watcher.join()
    assert errors == [] and mismatches == []
    assert seen_training and not any(seen_training)
    assert_unchanged(before, model)


def test_explainer_never_moves_or_copies_needlessly(models) -> None:
    model = models["simple"]
    assert Explainer(model, "simple").model is model  # shared, not copied
    before = snapshot(model)
    elsewhere = Explainer(model, "simple", device="meta")
    assert elsewhere.model is not model
    assert all(p.device.type == "meta" for p in elsewhere.model.parameters())
    assert_unchanged(before, model)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_cams_inside_no_grad_and_inference_mode(models, context) -> None:
    model = models["resnet18"]
    x = as_input(street(2, size_of("resnet18"), seed=5), "resnet18")
    trunk, head = split_model(model, "resnet18")
    outside = compute_cams(trunk, head, x, method="gradcam++")
    with context():
        inside = compute_cams(trunk, head, x.clone(), method="gradcam++")
    assert outside.cams.amax() > 0
    torch.testing.assert_close(inside.cams, outside.cams)


def test_training_still_validates_in_eval_mode_and_returns_an_eval_model() -> None:
    torch.set_num_threads(2)
    x = street(16, 16, seed=6)
    y = np.arange(16) % 2
    result = train.train_model("simple", 0, x, y, x[:4], y[:4], 2, epochs=1, batch_size=8,
                               progress=False)  # fmt: skip
    assert not any(m.training for m in result.model.modules())
    assert 0.0 <= result.history[0]["val_accuracy"] <= 1.0


def test_every_public_function_that_takes_a_model_is_covered() -> None:
    """A new public function taking a model must join RUNNERS (or EXEMPT, with its reason)."""
    found = set()
    for module in (cam, train, archs):
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if not callable(obj):
                continue
            try:
                params = inspect.signature(obj).parameters.values()
            except (TypeError, ValueError):
                continue
            if any(str(p.annotation) == "nn.Module" for p in params):
                found.add(name)
    assert found == COVERED | set(EXEMPT)
    assert {r.split("[")[0] for r in RUNNERS} == COVERED
