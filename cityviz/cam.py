"""Batched class activation maps (Grad-CAM and variants) at about the cost of inference.

The model is cut at its Grad-CAM target layer by :func:`cityviz.models.archs.split_model` into a
``trunk`` (image → target activations ``A`` [B,K,h,w]) and a ``head`` (``A`` → logits). The trunk
runs under ``torch.no_grad()``, so no autograd graph is built before the target layer; only the
head is differentiated, and only with respect to ``A`` (``torch.autograd.grad``), so no parameter
gradient is computed or written. No hooks are registered, and nothing is stored between calls, so
one model can serve many threads (dashboard sessions) at once.

The caller's model is never modified: not its mode flags, parameters, buffers, ``requires_grad``
flags or hooks. A model (any submodule) in training mode is refused with a ``ValueError``
(:func:`~cityviz.models.archs.require_eval`) rather than switched to eval mode: in training mode
batch norm would normalise with the batch's statistics (an image's CAM would depend on the other
images of its batch) and overwrite its running statistics, and dropout would make two identical
calls disagree; switching the mode, even inside a context manager that restores it, would
mutate a model that another thread may be running at that moment.

With ``G = d score / dA`` (``score`` = the target class's logit, before softmax):

* ``gradcam``   (Selvaraju et al. 2017): ``w_k = mean_hw G_k``, ``cam = ReLU(Σ_k w_k A_k)``;
* ``hirescam``  (Draelos & Carin 2020): ``cam = ReLU(Σ_k G_k ⊙ A_k)``;
* ``layercam``  (Jiang et al. 2021): ``cam = ReLU(Σ_k ReLU(G_k) ⊙ A_k)``;
* ``gradcam++`` (Chattopadhay et al. 2018, WACV, eq. 19, for the exponential score
  ``Y = exp(S)`` the paper uses): ``alpha = G² / (2 G² + (Σ_hw A_k) G³)``,
  ``w_k = Σ_hw alpha ⊙ ReLU(G_k)``, ``cam = ReLU(Σ_k w_k A_k)``. Only ``G > 0`` contributes
  (``ReLU(G) = 0`` elsewhere), and there ``G²`` cancels exactly:
  ``alpha = 1 / (2 + (Σ_hw A_k) G)``, which is what is computed. The target layers are
  post-ReLU (``Σ_hw A_k >= 0``), so the denominator is at least 2 and needs no epsilon (where a
  non-ReLU layer makes it exactly 0, the paper's alpha is undefined and 0 is used).
  pytorch-grad-cam (and cityviz before) adds an absolute ``1e-6`` to the denominator
  ``2 G² + (Σ A) G³``; with logit gradients of 1e-3…1e-6, usual for random or freshly trained
  networks, that epsilon dominates ``2 G²`` and shrinks the alphas of small gradients towards 0,
  which moved normalised masks by up to 0.13 (random-init Simple) and 0.32 (trained models)
  from the paper's.

Mixed precision (``precision``, :func:`cityviz.models.train.amp_dtype`): only the trunk runs
under autocast (bfloat16 or float16 convolutions, the bulk of the cost); its activations are cast
to a float32 leaf, and the head, its gradient ``G``, the channel weights, Grad-CAM++'s alpha in
the exact form above, the ReLU and every later normalisation are float32. float16 would store
logit gradients of 1e-5…1e-7 (usual, see above) as subnormals with few or no significant digits,
and a bfloat16 ``G`` keeps only ~3 of them. The head is a small share of the work: its forward
and backward pass cost 3.2 % of the trunk's FLOPs for VGG11, 2.9 % for Simple, 1.3 % for Simpler
and 0.0001 % for ResNet18 at 224 px (``torch.utils.flop_counter``).

The scores of a batch are summed before differentiating: each image's logits depend only on its
own activations (models in eval mode, enforced), so each image's CAM equals its CAM computed
alone.

:func:`mask_norm` is the one definition of the normalised mask used everywhere else (statistics,
agreement rate, embeddings, thumbnails); :func:`explanation` is the paper's visual explanation.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cityviz.models.archs import normalize, require_eval, split_model
from cityviz.models.train import amp_dtype

METHODS = ("gradcam", "gradcam++", "hirescam", "layercam")
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiResCAM",
                "layercam": "LayerCAM"}  # fmt: skip

DEFAULT_THRESHOLD = 0.5
# Bumped whenever a method's maps change for the same model and image (2: Grad-CAM++ in the exact
# form of eq. 19, without the epsilon); part of the cams stage's identity in a cache.
CAM_VERSION = 2
"""Mask value at or above which a pixel belongs to the visual explanation.

The paper does not state its threshold; 0.5 keeps the top half of the range of each min-max
normalised mask (:func:`mask_norm`)."""


@dataclass
class CamResult:
    """CAMs of a batch and the predictions they come with (all detached, on the model's device).

    ``cams``: [B,h,w] float32 >= 0, raw (after the final ReLU, not normalised) at the target
    layer's resolution; ``logits`` and ``probs`` (softmax): [B,C]; ``target``: [B] int64, the class
    each CAM explains.
    """

    cams: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor
    target: torch.Tensor


def _target_index(target: int | torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """The [B] class index to explain: predicted (None), one class for all (int), or per image."""
    b, c = logits.shape
    if target is None:
        return logits.detach().argmax(1)
    if isinstance(target, int):
        idx = torch.full((b,), target, dtype=torch.long, device=logits.device)
    else:
        idx = torch.as_tensor(target).to(device=logits.device, dtype=torch.long).reshape(-1)
        if idx.numel() == 1 and b != 1:
            idx = idx.expand(b).contiguous()
        if idx.shape != (b,):
            raise ValueError(f"target has {idx.numel()} entries for a batch of {b}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= c):
        raise ValueError(f"target class out of range [0, {c})")
    return idx


def _combine(a: torch.Tensor, g: torch.Tensor, method: str) -> torch.Tensor:
    """Activations A and gradients G [B,K,h,w] (any float dtype) → CAM [B,h,w] float32, computed
    in float32 (formulas in the module docstring)."""
    a, g = a.float(), g.float()
    if method == "gradcam":
        cam = torch.einsum("bk,bkhw->bhw", g.mean((2, 3)), a)
    elif method == "hirescam":
        cam = (g * a).sum(1)
    elif method == "layercam":
        cam = (g.clamp_min(0) * a).sum(1)
    elif method == "gradcam++":
        g_pos = g.clamp_min(0)
        denom = 2 + a.sum((2, 3), keepdim=True) * g_pos  # = (2 G² + Σ A · G³) / G² for G > 0
        ok = (g > 0) & (denom != 0)
        alpha = torch.where(ok, 1 / torch.where(ok, denom, torch.ones_like(denom)), 0.0)
        weights = (alpha * g_pos).sum((2, 3))
        cam = torch.einsum("bk,bkhw->bhw", weights, a)
    else:
        raise ValueError(f"unknown CAM method {method!r}; known: {', '.join(METHODS)}")
    return cam.clamp_min(0)


def compute_cams(
    trunk: nn.Module,
    head: nn.Module,
    x: torch.Tensor,
    *,
    target: int | torch.Tensor | None = None,
    method: str = "gradcam",
    precision: str = "fp32",
) -> CamResult:
    """CAMs for a batch of normalised inputs ``x`` [B,3,H,W] (float, on the model's device).

    ``target``: None explains each image's predicted class, an int that class for every image, a
    LongTensor [B] one class per image (e.g. the true city). ``trunk`` and ``head`` come from
    :func:`~cityviz.models.archs.split_model`. ``precision``: the autocast policy of the trunk
    (:func:`cityviz.models.train.amp_dtype`; the default is plain float32); the head, gradients
    and CAMs are float32 whatever it is (module docstring). Formulas and sources: module
    docstring. The result's ``cams``, ``logits`` and ``probs`` are float32.

    Raises ``ValueError`` for an unknown ``method`` or ``precision``, a ``target`` of the wrong
    length or out of range, and a model in training mode (see the module docstring: the model is
    never switched, copied or otherwise modified, so one model may serve several threads at
    once). Works inside ``torch.no_grad()`` and ``torch.inference_mode()`` blocks as well.
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; known: {', '.join(METHODS)}")
    dtype = amp_dtype(x.device, precision)
    require_eval(trunk, head, what="Computing CAMs")
    with torch.inference_mode(False):
        amp = torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
        with torch.no_grad(), amp:
            acts = trunk(x)
        # a fresh float32 leaf: never the caller's input (identity trunk) or an inference-mode
        # tensor; the head below runs outside autocast, so G comes back float32
        acts = acts.detach().to(torch.float32, copy=True).requires_grad_()
        with torch.enable_grad():
            logits = head(acts).float()
            idx = _target_index(target, logits)
            score = logits.gather(1, idx[:, None]).sum()
            (grads,) = torch.autograd.grad(score, acts)
        with torch.no_grad():
            cams = _combine(acts.detach(), grads, method)
            logits = logits.detach()
            probs = logits.softmax(1)
    return CamResult(cams=cams, logits=logits, probs=probs, target=idx)


def _same_device(have: torch.device, want: torch.device) -> bool:
    """Whether a tensor on ``have`` is on ``want`` (``cuda`` means the current CUDA device)."""
    if have.type != want.type:
        return False
    if want.index is None and want.type == "cuda":
        return have.index == torch.cuda.current_device()
    return want.index is None or have.index == want.index


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def mask_norm(cams: torch.Tensor | np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Raw CAMs [B,h,w] → normalised masks [B,H,W] float32 in [0, 1] at ``size``.

    The pipeline asks for the cache's image size, which is the model input size unless a model
    was given its own (``--input-size``): all models' masks then share the label maps' grid, so
    R_p^c and AR compare like with like.

    Definition (used by every module that reads a mask):

    1. upsample each raw CAM to ``size`` (an int for square, or ``(H, W)``) with bilinear
       interpolation, ``align_corners=False`` (``torch.nn.functional.interpolate``), in float32;
    2. per image, min-max normalise: ``(m - min m) / (max m - min m)``, so the least attended
       pixel is 0 and the most attended is 1 whatever the CAM's scale;
    3. a constant map (``max m == min m``, e.g. an all-zero CAM) becomes all zeros, never NaN.

    Accepts a torch tensor (any device) or a numpy array; returns numpy.
    """
    if isinstance(cams, np.ndarray) and not cams.flags.writeable:
        cams = cams.copy()  # e.g. a memory-mapped cache array; raw CAMs are small
    t = torch.as_tensor(cams).detach().float()
    if t.ndim != 3:
        raise ValueError(f"cams must be [B,h,w], got shape {tuple(t.shape)}")
    up = F.interpolate(t[:, None], size=_hw(size), mode="bilinear", align_corners=False)[:, 0]
    lo = up.amin((1, 2), keepdim=True)
    span = up.amax((1, 2), keepdim=True) - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (up - lo) / safe, torch.zeros_like(up)).clamp_(0, 1)
    return out.cpu().numpy()


def explanation(
    image: np.ndarray, mask: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> np.ndarray:
    """The paper's visual explanation: ``image`` with every pixel where ``mask < threshold`` black.

    ``image`` uint8 [...,H,W,3], ``mask`` float [...,H,W] (from :func:`mask_norm`); leading axes
    broadcast, so a batch of images with a batch of masks works as well as a single pair.
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.shape[-1] != 3:
        raise ValueError(f"image must be [...,H,W,3], got shape {image.shape}")
    np.broadcast_shapes(image.shape[:-1], mask.shape)  # raises on mismatch
    return np.where(mask[..., None] >= threshold, image, 0).astype(np.uint8)


# Google's Turbo colormap (Anton Mikhailov, 2019, Apache-2.0) at 17 evenly spaced points, in
# 0-255 RGB; linear interpolation between them stays within 7/255 of the full 256-entry table.
_TURBO_KNOTS = np.array(
    [
        [48, 18, 59], [64, 64, 162], [70, 107, 227], [66, 148, 255], [40, 188, 235],
        [24, 221, 194], [50, 242, 152], [109, 254, 98], [164, 252, 60], [203, 237, 52],
        [236, 209, 58], [253, 174, 53], [251, 129, 34], [236, 83, 15], [210, 49, 5],
        [172, 23, 1], [122, 4, 3],
    ],
    dtype=np.float64,
)  # fmt: skip


def _turbo_lut() -> np.ndarray:
    """256×3 uint8 Turbo lookup table, interpolated from :data:`_TURBO_KNOTS`."""
    knots_x = np.linspace(0.0, 1.0, len(_TURBO_KNOTS))
    x = np.linspace(0.0, 1.0, 256)
    rgb = np.stack([np.interp(x, knots_x, _TURBO_KNOTS[:, c]) for c in range(3)], axis=1)
    return np.round(rgb).astype(np.uint8)


TURBO_LUT = _turbo_lut()


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` uint8 [...,H,W,3] blended with the Turbo heat map of ``mask`` [...,H,W] in [0,1].

    ``alpha`` is the heat map's weight (0 = the image, 1 = the heat map alone).
    """
    image = np.asarray(image)
    mask = np.asarray(mask, dtype=np.float32)
    if image.shape[-1] != 3:
        raise ValueError(f"image must be [...,H,W,3], got shape {image.shape}")
    np.broadcast_shapes(image.shape[:-1], mask.shape)
    heat = TURBO_LUT[np.round(np.clip(mask, 0, 1) * 255).astype(np.intp)]
    out = (1 - alpha) * image.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


class Explainer:
    """CAMs for raw images from one model; stateless between calls, so threads may share it.

    ``model`` must be in eval mode (``ValueError`` otherwise, here and at every call, since the
    caller may switch it later); it is split at its Grad-CAM target layer once and never
    modified. If its parameters and buffers are not all on ``device``, the explainer works on a
    copy moved there, so the caller's model is not moved either. ``precision``: the autocast
    policy of every call (:func:`compute_cams`; ``ValueError`` for an unknown one).
    """

    def __init__(
        self,
        model: nn.Module,
        arch: str,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ) -> None:
        self.arch = arch
        self.device = torch.device(device)
        amp_dtype(self.device, precision)  # an unknown precision fails here, not at a call
        self.precision = precision
        require_eval(model, what="An Explainer")
        tensors = itertools.chain(model.parameters(), model.buffers())
        on_device = all(_same_device(t.device, self.device) for t in tensors)
        self.model = model if on_device else copy.deepcopy(model).to(self.device)
        self.trunk, self.head = split_model(self.model, arch)

    def prepare(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [B,H,W,3] numpy (or one [H,W,3]) or a [B,3,H,W] tensor → normalised input."""
        if isinstance(images, np.ndarray):
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"numpy images must be [B,H,W,3], got shape {images.shape}")
            arr = np.ascontiguousarray(images)
            if not arr.flags.writeable:  # e.g. a slice of a read-only memory-mapped cache array
                arr = arr.copy()
            x = torch.from_numpy(arr).permute(0, 3, 1, 2)
        else:
            x = images[None] if images.ndim == 3 else images
            if x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"tensor images must be [B,3,H,W], got shape {tuple(x.shape)}")
        return normalize(x.to(self.device, non_blocking=True), self.arch)

    def __call__(
        self,
        images: np.ndarray | torch.Tensor,
        *,
        target: int | torch.Tensor | None = None,
        method: str = "gradcam",
    ) -> CamResult:
        """CAMs of ``images`` (see :meth:`prepare`); ``target`` and ``method`` as in
        :func:`compute_cams`, at the explainer's ``precision``."""
        return compute_cams(self.trunk, self.head, self.prepare(images), target=target,
                            method=method, precision=self.precision)  # fmt: skip
