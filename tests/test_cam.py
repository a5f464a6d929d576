"""Tests for cityviz.cam: known answers by hand, a hook-based reference, masks, threads."""

from __future__ import annotations

import copy
import threading
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from cityviz.cam import (
    DEFAULT_THRESHOLD,
    METHODS,
    TURBO_LUT,
    CamResult,
    Explainer,
    compute_cams,
    explanation,
    mask_norm,
    overlay,
)
from cityviz.models.archs import build_model, get_arch, normalize, split_model

# ---------------------------------------------------------------------------------------------
# A tiny network whose CAMs can be worked out by hand.
#
# trunk = identity, so the target activations A are the input: 2 channels, 2×2 pixels
#   A_0 = [[1, 2], [0, 3]]   (Σ_hw A_0 = 6)
#   A_1 = [[2, 3], [1, 1]]   (Σ_hw A_1 = 7)
# head = flatten + linear (no bias), so dlogit_c/dA is the weight row of class c, reshaped:
#   class 0: G_0 = [[1, -1], [2, 0]],  G_1 = [[0.5, 1], [-1, 0.5]]
#   class 1: G_0 = [[-2, 0], [0, 0]],  G_1 = [[0, 0], [0, 1]]
# logits(A) = Σ G⊙A: class 0 = 1 - 2 + 0 + 0 + 1 + 3 - 1 + 0.5 = 2.5; class 1 = -2 + 1 = -1.

A = torch.tensor([[[1.0, 2.0], [0.0, 3.0]], [[2.0, 3.0], [1.0, 1.0]]])
W = torch.tensor(
    [
        [1.0, -1.0, 2.0, 0.0, 0.5, 1.0, -1.0, 0.5],
        [-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
    ]
)


def tiny_net() -> tuple[nn.Module, nn.Module]:
    head = nn.Sequential(nn.Flatten(1), nn.Linear(8, 2, bias=False))
    with torch.no_grad():
        head[1].weight.copy_(W)
    return nn.Identity().eval(), head.eval()


def fr(*rows: tuple) -> torch.Tensor:
    return torch.tensor([[float(Fraction(v)) for v in row] for row in rows])


# Class 0, Grad-CAM: w = (mean G_0, mean G_1) = (2/4, 1/4) = (0.5, 0.25);
#   0.5·A_0 + 0.25·A_1 = [[0.5+0.5, 1+0.75], [0+0.25, 1.5+0.25]].
# Class 0, HiResCAM: G_0⊙A_0 = [[1,-2],[0,0]], G_1⊙A_1 = [[1,3],[-1,0.5]]; sum [[2,1],[-1,0.5]].
# Class 0, LayerCAM: ReLU(G_0)⊙A_0 = [[1,0],[0,0]], ReLU(G_1)⊙A_1 = [[1,3],[0,0.5]].
# Class 0, Grad-CAM++: alpha = g²/(2g² + S_k g³) where g ≠ 0, w_k = Σ alpha·ReLU(g):
#   k=0 (S=6): g=1 → 1/8; g=-1 → ReLU 0; g=2 → 4/(8+48)=1/14, ×2 = 1/7; w_0 = 1/8+1/7 = 15/56
#   k=1 (S=7): g=.5 → .25/(.5+.875) = 2/11, ×.5 = 1/11 (twice); g=1 → 1/9; w_1 = 2/11+1/9 = 29/99
#   cam = 15/56·A_0 + 29/99·A_1.
# Class 1, Grad-CAM: w = (-0.5, 0.25); -0.5·A_0 + 0.25·A_1 = [[0, -0.25], [0.25, -1.25]] → ReLU.
# Class 1, HiResCAM and LayerCAM: G_0⊙A_0 = [[-2,0],[0,0]] (ReLU(G_0) = 0), G_1⊙A_1 = [[0,0],[0,1]].
# Class 1, Grad-CAM++: w_0 = 0 (only g = -2), w_1 = 1/(2+7) = 1/9 → A_1/9.
w0, w1 = Fraction(15, 56), Fraction(29, 99)
KNOWN = {
    ("gradcam", 0): fr((1, "1.75"), ("0.25", "1.75")),
    ("hirescam", 0): fr((2, 1), (0, "0.5")),
    ("layercam", 0): fr((2, 3), (0, "0.5")),
    ("gradcam++", 0): fr((w0 + 2 * w1, 2 * w0 + 3 * w1), (w1, 3 * w0 + w1)),
    ("gradcam", 1): fr((0, 0), ("0.25", 0)),
    ("hirescam", 1): fr((0, 0), (0, 1)),
    ("layercam", 1): fr((0, 0), (0, 1)),
    ("gradcam++", 1): fr(("2/9", "3/9"), ("1/9", "1/9")),
}


@pytest.mark.parametrize(("method", "cls"), list(KNOWN))
def test_known_answer(method: str, cls: int) -> None:
    trunk, head = tiny_net()
    res = compute_cams(trunk, head, A[None], target=cls, method=method)
    assert res.cams.dtype == torch.float32
    torch.testing.assert_close(res.cams[0], KNOWN[(method, cls)], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.logits, torch.tensor([[2.5, -1.0]]))


def test_target_options() -> None:
    # Batch [A, -A]: logits (2.5, -1) and (-2.5, 1), so the predicted classes are 0 and 1.
    # Class 1 for -A, Grad-CAM: ReLU(0.5·A_0 - 0.25·A_1) = ReLU([[0, 0.25], [-0.25, 1.25]]).
    # Class 0 for -A, Grad-CAM: ReLU(-(0.5·A_0 + 0.25·A_1)) = 0 everywhere.
    trunk, head = tiny_net()
    x = torch.stack([A, -A])
    neg_a_cls1 = torch.tensor([[0.0, 0.25], [0.0, 1.25]])

    pred = compute_cams(trunk, head, x)
    assert pred.target.tolist() == [0, 1]
    torch.testing.assert_close(pred.cams, torch.stack([KNOWN[("gradcam", 0)], neg_a_cls1]))
    torch.testing.assert_close(pred.logits, torch.tensor([[2.5, -1.0], [-2.5, 1.0]]))
    torch.testing.assert_close(pred.probs, pred.logits.softmax(1))

    one = compute_cams(trunk, head, x, target=1)
    assert one.target.tolist() == [1, 1]
    torch.testing.assert_close(one.cams, torch.stack([KNOWN[("gradcam", 1)], neg_a_cls1]))

    per = compute_cams(trunk, head, x, target=torch.tensor([1, 0]))
    assert per.target.tolist() == [1, 0]
    torch.testing.assert_close(per.cams, torch.stack([KNOWN[("gradcam", 1)], torch.zeros(2, 2)]))

    with pytest.raises(ValueError, match="out of range"):
        compute_cams(trunk, head, x, target=2)
    with pytest.raises(ValueError, match="entries"):
        compute_cams(trunk, head, x, target=torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="unknown CAM method"):
        compute_cams(trunk, head, x, method="scorecam")


# ---------------------------------------------------------------------------------------------
# Real architectures (random weights, 64 px)

SIZE = 64


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {arch: build_model(arch, 5) for arch in ("resnet18", "simple")}


def images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)


def hook_reference(model: nn.Module, arch: str, x: torch.Tensor, target: torch.Tensor, method: str):
    """Textbook Grad-CAM: hooks on the target layer, autograd from the input through a copy of
    the model (its parameters frozen, which only spares their unused gradients)."""
    model = copy.deepcopy(model).requires_grad_(False)
    x = x.clone().requires_grad_()
    store: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, out):
        store["a"] = out
        out.register_hook(lambda g: store.__setitem__("g", g))

    layer = model.get_submodule(get_arch(arch).target_layer)
    handle = layer.register_forward_hook(keep)
    try:
        model(x).gather(1, target[:, None]).sum().backward()
    finally:
        handle.remove()
    a, g = store["a"].detach(), store["g"]
    if method == "gradcam":
        return (g.mean((2, 3))[:, :, None, None] * a).sum(1).clamp_min(0)
    return (g * a).sum(1).clamp_min(0)


@pytest.mark.parametrize("arch", ["resnet18", "simple"])
@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_matches_hook_reference(models, arch: str, method: str) -> None:
    model = models[arch]
    x = normalize(images(3, seed=1), arch)
    target = torch.tensor([0, 3, 1])
    ref = hook_reference(model, arch, x, target, method)
    assert ref.amax() > 0
    trunk, head = split_model(model, arch)
    ours = compute_cams(trunk, head, x, target=target, method=method)
    assert ours.cams.shape == ref.shape
    torch.testing.assert_close(ours.cams, ref, rtol=1e-4, atol=1e-5 * float(ref.amax()))
    torch.testing.assert_close(ours.logits, model(x).detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_batch_independent(models, method: str) -> None:
    model = models["resnet18"]  # BatchNorm: must use running statistics, not the batch's
    trunk, head = split_model(model, "resnet18")
    x = normalize(images(3, seed=2), "resnet18")
    batch = compute_cams(trunk, head, x, target=torch.tensor([4, 0, 2]), method=method)
    assert batch.cams.amax() > 0
    for i, cls in enumerate([4, 0, 2]):
        alone = compute_cams(trunk, head, x[i : i + 1], target=cls, method=method)
        scale = float(alone.cams.amax()) + 1e-12
        torch.testing.assert_close(batch.cams[i : i + 1], alone.cams, rtol=1e-4, atol=1e-5 * scale)


class ScaledHead(nn.Module):
    """``head`` with its logits multiplied by ``scale``: every gradient G scales with it."""

    def __init__(self, head: nn.Module, scale: float) -> None:
        super().__init__()
        self.head, self.scale = head, scale

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.head(a) * self.scale


def paper_reference_f64(model, arch, x, target, method, scale) -> torch.Tensor:
    """Raw CAMs in float64, each written straight from its paper (module docstring of cam.py).

    Grad-CAM++ is Chattopadhay et al. 2018, eq. 19, as printed: alpha = G² / (2 G² + Σ_ab A · G³)
    and w_k = Σ alpha · ReLU(G); float64 holds G³ down to |G| ~ 1e-100, so this form is exact at
    every gradient scale tested. Where the printed denominator is 0 (G = 0) alpha is 0.
    """
    model = copy.deepcopy(model).double()
    trunk, head = split_model(model, arch)
    with torch.no_grad():
        a = trunk(x.double())
    return _paper_cam_f64(a, head, target, method, scale)


@pytest.mark.parametrize("arch", ["simple", "resnet18"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e-6])
def test_matches_float64_paper_formulas_at_every_gradient_scale(models, arch, method, scale):
    """Random-init networks have logit gradients of 1e-3…1e-7 already; ×1e-3 and ×1e-6 go far
    below, where an absolute epsilon in Grad-CAM++'s denominator (pytorch-grad-cam's 1e-6)
    moved masks by up to 0.13 from the paper's."""
    model = models[arch]
    x = normalize(images(3, seed=7), arch)
    target = torch.tensor([0, 2, 4])
    ref = paper_reference_f64(model, arch, x, target, method, scale)
    assert ref.amax() > 0
    trunk, head = split_model(model, arch)
    ours = compute_cams(trunk, ScaledHead(head, scale).eval(), x, target=target, method=method)
    peak = float(ref.amax())
    torch.testing.assert_close(ours.cams.double(), ref, rtol=1e-4, atol=1e-5 * peak)
    diff = np.abs(mask_norm(ours.cams, SIZE) - mask_norm(ref.float(), SIZE))
    assert diff.max() < 1e-4


def _paper_cam_f64(a64, head64, target, method, scale) -> torch.Tensor:
    """:func:`paper_reference_f64` from given float64 activations ``a64`` and a float64 head."""
    a = a64.clone().requires_grad_()
    (g,) = torch.autograd.grad((head64(a) * scale).gather(1, target[:, None]).sum(), a)
    a = a.detach()
    if method == "gradcam":
        cam = torch.einsum("bk,bkhw->bhw", g.mean((2, 3)), a)
    elif method == "hirescam":
        cam = (g * a).sum(1)
    elif method == "layercam":
        cam = (torch.relu(g) * a).sum(1)
    else:
        g2, g3 = g**2, g**3
        denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g3
        alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, 1.0), 0.0)
        cam = torch.einsum("bk,bkhw->bhw", (alpha * torch.relu(g)).sum((2, 3)), a)
    return torch.relu(cam)


@pytest.mark.parametrize("arch", ["simple", "resnet18"])
@pytest.mark.parametrize("method", METHODS)
def test_under_bf16_everything_after_the_trunk_is_float32_and_exact(models, arch, method):
    """bf16 autocast changes only the trunk's activations: from those (cast to float64), the
    paper's formulas in float64 — Grad-CAM++'s alpha in the printed form of eq. 19 — give our
    CAMs to float32 accuracy, with gradients scaled ×1e-6 (~1e-10…1e-13 here: float16 would
    flush them to zero, bfloat16 keep ~3 digits)."""
    scale = 1e-6
    model = models[arch]
    x = normalize(images(3, seed=7), arch)
    target = torch.tensor([0, 2, 4])
    trunk, head = split_model(model, arch)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a16 = trunk(x)
    assert a16.dtype == torch.bfloat16
    head64 = split_model(copy.deepcopy(model).double(), arch)[1]
    ref = _paper_cam_f64(a16.double(), head64, target, method, scale)
    assert ref.amax() > 0
    scaled = ScaledHead(head, scale).eval()
    ours = compute_cams(trunk, scaled, x, target=target, method=method, precision="bf16")
    assert ours.cams.dtype == torch.float32
    torch.testing.assert_close(ours.cams.double(), ref, rtol=1e-4, atol=1e-5 * float(ref.amax()))


# Stated tolerances of bf16 against fp32 (random-weight networks, 64 px): largest per-pixel
# difference of the normalised masks. ResNet18's head is linear, so G does not depend on the
# activations and every method stays within 0.05 (0.02 measured). Simple's head is a 4096-unit
# ReLU classifier whose gradient flips with the bf16 rounding of its input (rounding A alone
# moves G by 7 %): Grad-CAM++ stays within 0.1 (0.04 measured); Grad-CAM, HiResCAM and LayerCAM
# moved by up to 0.25, 0.47 and 0.21 on random-weight Simple networks, so they are not bounded
# here (README, *On a GPU*).
BF16_MASK_TOLERANCE = {("resnet18", m): 0.05 for m in METHODS} | {("simple", "gradcam++"): 0.1}


@pytest.mark.parametrize(("arch", "method"), sorted(BF16_MASK_TOLERANCE))
def test_bf16_masks_stay_near_fp32_masks_and_predictions_agree(models, arch, method) -> None:
    model = models[arch]
    trunk, head = split_model(model, arch)
    x = normalize(images(8, seed=5), arch)
    fp32 = compute_cams(trunk, head, x, method=method)
    bf16 = compute_cams(trunk, head, x, target=fp32.target, method=method, precision="bf16")
    assert not torch.equal(fp32.cams, bf16.cams)  # autocast did run
    diff = np.abs(mask_norm(fp32.cams, SIZE) - mask_norm(bf16.cams, SIZE))
    assert diff.max() <= BF16_MASK_TOLERANCE[arch, method], diff.max()
    own = compute_cams(trunk, head, x, method=method, precision="bf16")
    assert (own.target == fp32.target).float().mean() >= 0.75
    assert float((own.probs - fp32.probs).abs().max()) < 0.02


def test_explainer_precision_is_used_and_checked(models) -> None:
    chw = images(2, seed=4)
    fp32 = Explainer(models["resnet18"], "resnet18")(chw, method="gradcam++")
    bf16 = Explainer(models["resnet18"], "resnet18", precision="bf16")(chw, method="gradcam++")
    assert bf16.cams.dtype == torch.float32 and not torch.equal(bf16.cams, fp32.cams)
    assert np.abs(mask_norm(bf16.cams, SIZE) - mask_norm(fp32.cams, SIZE)).max() < 0.05
    with pytest.raises(ValueError, match="precision must be one of"):
        Explainer(models["resnet18"], "resnet18", precision="half")


def test_gradcampp_where_activations_sum_below_zero() -> None:
    """A non-ReLU target layer: Σ_hw A_k < 0. Channel 0 (Σ A = -1) with G = 1 everywhere has
    alpha = 1 / (2 - 1) = 1 per pixel, w_0 = 4; channel 1 (Σ A = -0.5) with G = 4 has
    2 + (-0.5)·4 = 0, where the paper's alpha is undefined: w_1 = 0 (no inf, no NaN)."""
    a = torch.tensor([[[[-1.0, 0.5], [0.0, -0.5]], [[0.5, -1.0], [0.0, 0.0]]]])
    head = nn.Sequential(nn.Flatten(1), nn.Linear(8, 1, bias=False)).eval()
    with torch.no_grad():
        head[1].weight.copy_(torch.tensor([[1.0] * 4 + [4.0] * 4]))
    res = compute_cams(nn.Identity().eval(), head, a, target=0, method="gradcam++")
    expected = torch.relu(4 * a[0, 0])
    torch.testing.assert_close(res.cams[0], expected)


class GradModeRecorder(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.training = False  # a wrapper only; the wrapped model's own flags stay as they are
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.inner(x)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["resnet18", "simple"])
def test_no_parameter_grads_and_no_trunk_graph(models, arch: str, precision: str) -> None:
    """The speed trick (the trunk without autograd, only the head differentiated, and only
    with respect to its input) holds under autocast too, and every output is float32."""
    model = models[arch]
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    trunk, head = split_model(model, arch)
    recorder = GradModeRecorder(trunk)
    for method in METHODS:
        x = normalize(images(2, seed=3), arch)
        res = compute_cams(recorder, head, x, method=method, precision=precision)
        assert res.cams.grad_fn is None and res.logits.grad_fn is None
        assert res.cams.dtype == res.logits.dtype == res.probs.dtype == torch.float32
    assert recorder.grad_enabled == [False] * len(METHODS)
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


def test_explainer_inputs(models) -> None:
    explainer = Explainer(models["simple"], "simple")
    chw = images(2, seed=4)
    hwc = chw.permute(0, 2, 3, 1).numpy()
    from_tensor = explainer(chw, target=1)
    from_numpy = explainer(hwc, target=1)
    single = explainer(hwc[1], target=1)
    assert isinstance(from_numpy, CamResult)
    assert from_tensor.cams.shape == (2, 8, 8)
    torch.testing.assert_close(from_numpy.cams, from_tensor.cams)
    torch.testing.assert_close(single.cams[0], from_tensor.cams[1], rtol=1e-4, atol=1e-8)
    direct = compute_cams(*split_model(models["simple"], "simple"), normalize(chw, "simple"),
                          target=1)  # fmt: skip
    torch.testing.assert_close(from_tensor.cams, direct.cams)
    with pytest.raises(ValueError, match=r"\[B,H,W,3\]"):
        explainer(np.zeros((2, 3, 8, 8), np.uint8))


def test_explainer_thread_safe(models) -> None:
    explainer = Explainer(models["resnet18"], "resnet18")
    batches = [images(2, seed=10).numpy().transpose(0, 2, 3, 1), images(2, seed=11)]
    expected = [explainer(b, method="hirescam") for b in batches]
    assert not torch.allclose(expected[0].cams, expected[1].cams)
    barrier = threading.Barrier(2)
    mismatches: list[int] = []
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(12):
                got = explainer(batches[i], method="hirescam")
                if not (
                    torch.allclose(got.cams, expected[i].cams, rtol=1e-6, atol=0)
                    and torch.equal(got.target, expected[i].target)
                ):
                    mismatches.append(i)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert mismatches == []


# ---------------------------------------------------------------------------------------------
# Masks and pictures


def test_mask_norm_known_values() -> None:
    # Bilinear 2→4 with align_corners=False samples source x = (i + 0.5)/2 - 0.5 =
    # -0.25, 0.25, 0.75, 1.25, clamped to [0, 1]: each row of [[0, 1], [0, 1]] becomes
    # [0, 0.25, 0.75, 1]; min-max leaves it so. An affine rescaling of the CAM changes nothing.
    cams = torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[3.0, 10.0], [3.0, 10.0]]])
    out = mask_norm(cams, 4)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 4, 4)
    np.testing.assert_allclose(out[0], np.tile([0.0, 0.25, 0.75, 1.0], (4, 1)), atol=1e-7)
    np.testing.assert_allclose(out[1], out[0], atol=1e-6)
    np.testing.assert_array_equal(mask_norm(cams.numpy().astype(np.float64), (4, 4)), out)


def test_mask_norm_range_shape_and_constant_maps() -> None:
    rng = np.random.default_rng(0)
    cams = rng.random((3, 7, 5)).astype(np.float32) * [[[1.0]], [[1e-6]], [[50.0]]]
    cams[1, 2:4, 1:3] = 0
    out = mask_norm(torch.from_numpy(cams), (30, 20))
    assert out.shape == (3, 30, 20)
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(out.min((1, 2)), 0, atol=0)
    np.testing.assert_allclose(out.max((1, 2)), 1, atol=1e-6)

    flat = mask_norm(np.stack([np.zeros((4, 4)), np.full((4, 4), 2.5)]), 8)
    assert not np.isnan(flat).any()
    np.testing.assert_array_equal(flat, np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"\[B,h,w\]"):
        mask_norm(np.zeros((4, 4)), 8)


def test_explanation_blacks_out_below_threshold() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(1, 256, (2, 2, 3), dtype=np.uint8)
    mask = np.array([[0.2, 0.5], [0.49999, 0.9]], np.float32)
    out = explanation(image, mask)
    assert out.dtype == np.uint8 and DEFAULT_THRESHOLD == 0.5
    keep = np.array([[False, True], [False, True]])
    np.testing.assert_array_equal(out[keep], image[keep])
    np.testing.assert_array_equal(out[~keep], 0)
    np.testing.assert_array_equal(explanation(image, mask, threshold=0.1), image)
    np.testing.assert_array_equal(explanation(image, mask, threshold=0.95), 0)

    batch_img = rng.integers(1, 256, (4, 6, 5, 3), dtype=np.uint8)
    batch_mask = rng.random((4, 6, 5)).astype(np.float32)
    batch = explanation(batch_img, batch_mask, threshold=0.3)
    for i in range(4):
        np.testing.assert_array_equal(batch[i], explanation(batch_img[i], batch_mask[i], 0.3))
    assert ((batch == 0).all(-1) == (batch_mask < 0.3)).all()
    with pytest.raises(ValueError):
        explanation(batch_img, batch_mask[:, :5])


def test_overlay() -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    mask = np.array([[0.0, 0.25, 0.5, 1.0]] * 3, np.float32)
    np.testing.assert_array_equal(overlay(image, mask, alpha=0.0), image)
    heat = overlay(image, mask, alpha=1.0)
    np.testing.assert_array_equal(heat[0], TURBO_LUT[[0, 64, 128, 255]])
    r, g, b = heat[0].T.astype(int)
    assert b[1] > r[1]  # Turbo: blue at the low end,
    assert g[2] > r[2] and g[2] > b[2]  # green in the middle,
    assert r[3] > g[3] and r[3] > b[3]  # red at the top
    half = overlay(image, mask)
    expected = np.round((image.astype(np.float32) + heat.astype(np.float32)) / 2)
    np.testing.assert_array_equal(half, expected)
    assert TURBO_LUT.shape == (256, 3) and TURBO_LUT.dtype == np.uint8
    # Turbo's published end points: dark blue-violet (48, 18, 59) and dark red (122, 4, 3).
    assert TURBO_LUT[0].tolist() == [48, 18, 59] and TURBO_LUT[255].tolist() == [122, 4, 3]
