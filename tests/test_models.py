"""Model registry, checkpoints and the training loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cityviz.models import archs
from cityviz.models.archs import WeightsUnavailable, build_model, get_arch, list_archs, split_model
from cityviz.models.checkpoint import load_checkpoint, read_meta, save_checkpoint
from cityviz.models.train import confusion, iter_batches, predict, train_model

# expected Grad-CAM target map size at a 64 px input (the last conv layer's resolution)
TARGET_HW_AT_64 = {"simple": 8, "simpler": 16, "vgg11": 4, "resnet18": 2}


def test_registry_lists_the_four_paper_architectures():
    assert set(list_archs()) >= {"simple", "simpler", "vgg11", "resnet18"}
    with pytest.raises(ValueError, match="unknown architecture"):
        get_arch("alexnet")


@pytest.mark.parametrize("arch", ["simple", "simpler", "vgg11", "resnet18"])
def test_output_shape_split_and_target_layer(arch):
    torch.manual_seed(0)
    model = build_model(arch, 3)
    x = torch.randn(2, 3, 64, 64)
    trunk, head = split_model(model, arch)
    with torch.no_grad():
        logits = model(x)
        acts = trunk(x)
        assert logits.shape == (2, 3)
        assert torch.allclose(head(acts), logits, atol=1e-5)
    hw = TARGET_HW_AT_64[arch]
    assert acts.shape[-2:] == (hw, hw)
    # the registry's dotted target-layer name is the module whose output the trunk returns
    spec = get_arch(arch)
    captured = {}
    layer = dict(model.named_modules())[spec.target_layer]
    handle = layer.register_forward_hook(lambda m, i, o: captured.setdefault("out", o.clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert torch.allclose(captured["out"], acts)


def test_split_shares_parameters():
    model = build_model("resnet18", 2)
    trunk, head = split_model(model, "resnet18")
    ids = {id(p) for p in model.parameters()}
    assert {id(p) for p in trunk.parameters()} | {id(p) for p in head.parameters()} == ids


def test_shallow_nets_follow_table_1():
    simple = build_model("simple", 2)
    convs = [m for m in simple.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size[0], c.out_channels) for c in convs] == [
        (5, 20),
        (7, 64),
        (5, 96),
        (7, 128),
    ]
    simpler = build_model("simpler", 2)
    convs = [m for m in simpler.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size[0], c.out_channels) for c in convs] == [(9, 20), (9, 64), (9, 96)]
    fcs = [m.out_features for m in simple.classifier if isinstance(m, torch.nn.Linear)]
    assert fcs == [4096, 100, 2]


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(1)
    model = build_model("resnet18", 2)
    model.train()
    with torch.no_grad():  # move BatchNorm running stats away from their defaults
        model(torch.randn(4, 3, 64, 64))
    model.eval()
    meta = {"arch": "resnet18", "classes": ["a", "b"], "input_size": 64, "seed": 1}
    save_checkpoint(tmp_path / "m", model, meta)
    loaded, meta2 = load_checkpoint(tmp_path / "m")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta2["classes"] == ["a", "b"] and meta2["mean"] == list(archs.IMAGENET_MEAN)
    assert json.loads((tmp_path / "m.json").read_text())["arch"] == "resnet18"
    assert read_meta(tmp_path / "m")["seed"] == 1
    # weights are safetensors, not a pickle
    assert (tmp_path / "m.safetensors").read_bytes()[8:9] == b"{"


def test_pretrained_weights_clear_error_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailable, match="hub/checkpoints"):
        build_model("resnet18", 2, pretrained=True)
    with pytest.raises(WeightsUnavailable, match="no ImageNet weights"):
        build_model("simple", 2, pretrained=True)


def test_pretrained_weights_load_from_local_torch_cache(tmp_path, monkeypatch):
    """The real torchvision loading path, fed by a checkpoint file placed in TORCH_HOME."""
    from torchvision.models import ResNet18_Weights, resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(3)
    reference = resnet18()
    fname = ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    ckpt_dir = tmp_path / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    torch.save(reference.state_dict(), ckpt_dir / fname)
    model = build_model("resnet18", 3, pretrained=True)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert model.fc.out_features == 3


def test_iter_batches_cover_everything_once():
    rng = np.random.default_rng(0)
    seen = np.concatenate(list(iter_batches(103, 10, shuffle=True, generator=rng)))
    assert sorted(seen.tolist()) == list(range(103))


def test_confusion_matrix():
    cm = confusion(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0]), 2)
    assert cm.tolist() == [[1, 1], [1, 2]]


def _toy_images(n, size=32, seed=0):
    """Class 1 has a bright square, class 0 does not: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 80, (n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % 2
    x[y == 1, 8:20, 8:20] = 250
    return x, y


def test_training_learns_a_toy_task_and_is_deterministic():
    torch.set_num_threads(2)
    x, y = _toy_images(64)
    kw = dict(epochs=3, batch_size=16, lr=1e-3, progress=False)
    r1 = train_model("simple", 0, x, y, x[:16], y[:16], 2, **kw)
    r2 = train_model("simple", 0, x, y, x[:16], y[:16], 2, **kw)
    probs = predict(r1.model, "simple", x, torch.device("cpu"))
    assert probs.shape == (64, 2)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == y).mean() >= 0.95
    assert [h["loss"] for h in r1.history] == [h["loss"] for h in r2.history]
    assert r1.history[-1]["loss"] < r1.history[0]["loss"]
    assert len(r1.history) == 3 and r1.history[-1]["val_accuracy"] >= 0.9


def test_training_keeps_the_epoch_with_the_best_validation_accuracy():
    torch.set_num_threads(2)
    x, y = _toy_images(64)
    # validation labels are the opposite of the truth, so validation accuracy falls as the
    # model learns and the best epoch is not the last one
    kw = dict(epochs=3, batch_size=16, lr=1e-3, progress=False)
    best = train_model("simple", 0, x, y, x[:32], 1 - y[:32], 2, **kw)
    last = train_model("simple", 0, x, y, x[:32], 1 - y[:32], 2, keep_best=False, **kw)
    val = [h["val_accuracy"] for h in best.history]
    assert val == [h["val_accuracy"] for h in last.history]
    want = max(range(3), key=lambda i: (val[i], i)) + 1
    assert want < 3 and best.best_epoch == want and last.best_epoch == 3
    cpu = torch.device("cpu")
    acc = {
        name: (predict(r.model, "simple", x[:32], cpu).argmax(1) == 1 - y[:32]).mean()
        for name, r in (("best", best), ("last", last))
    }
    assert acc["best"] == val[want - 1] and acc["last"] == val[-1] < acc["best"]
