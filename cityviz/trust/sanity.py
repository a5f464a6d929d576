"""Sanity checks of an explanation method on a model: does the mask depend on the model and class?

* **Model-parameter randomisation test (MPRT)**, Adebayo et al. 2018, *Sanity checks for
  saliency maps* (NeurIPS), section 3, "cascading randomization": the model's layers are
  re-initialised one group at a time from the logits down, and after each step the masks of the
  partly random model are compared with the original model's, for the same images and the same
  explained class, by the Spearman rank correlation and the SSIM (Wang et al. 2004) of the
  normalised masks. An explanation that reflects the model loses its similarity once the layers
  above the CAM's target layer (the *head*) are random; one that stays similar shows the image
  (edges, texture), not the model.
* **Other-city (random-logit) test**, Sixt, Granz & Landgraf 2020, *When explanations lie: why
  many modified BP attributions fail* (ICML): the mask for the predicted city against the mask
  for the runner-up city, compared by the average residual AR (paper eq. 2) and the Spearman
  rank correlation. Near-identical masks mean the explanation does not depend on the class.

Layers are grouped for the cascade by their first two name components (``layer4.1``,
``classifier.6``, ``features.18``, ``fc``): one ResNet basic block, one VGG convolution, one
linear layer per step. A group is re-initialised with each module's own ``reset_parameters()``
(PyTorch's default initialisation; batch norm also resets its running statistics), under a
fixed seed, in a private copy of the model: the caller's model is never changed.

Masks are :func:`cityviz.cam.mask_norm` at the given size. A randomised model whose map is
constant (e.g. all zero after the final ReLU) has no ranking to share with the original: its
Spearman correlation is counted as 0 (undefined otherwise), its SSIM is computed as usual.
Images whose *original* mask is constant are left out of both measures (NaN).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata
from skimage.metrics import structural_similarity
from torch import nn

from cityviz.cam import compute_cams, mask_norm
from cityviz.models.archs import require_eval, split_model
from cityviz.stats import average_residual


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of masks: [B,H,W] × [B,H,W] → float64 [B].

    Average ranks for ties (``scipy.stats.rankdata``), then Pearson's r of the ranks, which is
    Spearman's rho. NaN where ``a``'s mask is constant; 0 where only ``b``'s is (module
    docstring). Raises ``ValueError`` for mismatched shapes.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"a and b must both be [B,H,W]; got {a.shape}, {b.shape}")
    ra = rankdata(a.reshape(len(a), -1), axis=1)
    rb = rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    na = np.sqrt((ra**2).sum(1))
    nb = np.sqrt((rb**2).sum(1))
    num = (ra * rb).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(nb > 0, num / (na * nb), 0.0)
    return np.where(na > 0, np.clip(rho, -1.0, 1.0), np.nan)


def ssim_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM (Wang et al. 2004, ``skimage.metrics.structural_similarity``, data range 1) of each
    pair of masks in [0,1]: [B,H,W] × [B,H,W] → float64 [B]; NaN where ``a``'s mask is constant.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"a and b must both be [B,H,W]; got {a.shape}, {b.shape}")
    win = min(7, *a.shape[1:]) | 1
    if win > min(a.shape[1:]):
        win -= 2
    out = np.array([structural_similarity(x, y, data_range=1.0, win_size=win)
                    for x, y in zip(a, b, strict=True)], dtype=np.float64)  # fmt: skip
    flat = a.reshape(len(a), -1)
    return np.where(flat.max(1) > flat.min(1), out, np.nan)


def randomisation_groups(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The cascade's steps: ``(group name, modules)`` from the logits down (module docstring).

    Modules with parameters of their own, grouped by the first two components of their name,
    in reverse order of definition (the forward order for every cityviz architecture).
    """
    groups: dict[str, list[nn.Module]] = {}
    for name, mod in model.named_modules():
        if name and any(True for _ in mod.parameters(recurse=False)):
            groups.setdefault(".".join(name.split(".")[:2]), []).append(mod)
    return list(reversed(groups.items()))


def head_steps(model: nn.Module, arch: str) -> int:
    """How many cascade steps re-initialise the layers above the CAM target layer (the head)."""
    _, head = split_model(model, arch)
    head_params = {id(p) for p in head.parameters()}
    n = 0
    for _, mods in randomisation_groups(model):
        if all(id(p) in head_params for m in mods for p in m.parameters(recurse=False)):
            n += 1
        else:
            break
    return n


@torch.no_grad()
def _reinitialise(name: str, modules: list[nn.Module]) -> None:
    """Re-initialise ``modules`` in place with their own ``reset_parameters()``."""
    for m in modules:
        if not hasattr(m, "reset_parameters"):
            raise ValueError(
                f"{type(m).__name__} in layer group {name!r} has no reset_parameters(): the "
                "randomisation test cannot re-initialise it"
            )
        m.reset_parameters()


@dataclass
class MprtResult:
    """MPRT of one model: per step (0 = original), the group re-initialised last and the
    per-image similarities to the original masks, float64 [steps+1, B]."""

    layers: list[str]
    spearman: np.ndarray
    ssim: np.ndarray
    head_steps: int


def cam_masks(
    model: nn.Module,
    arch: str,
    x: torch.Tensor,
    target: torch.Tensor,
    method: str,
    size: int,
    batch_size: int = 32,
) -> np.ndarray:
    """:func:`cityviz.cam.mask_norm` masks [B,size,size] float32 of ``model``'s CAMs for the
    normalised inputs ``x`` [B,3,H,W] and the classes ``target`` [B] (LongTensor)."""
    trunk, head = split_model(model, arch)
    out = []
    for s in range(0, len(x), batch_size):
        res = compute_cams(
            trunk, head, x[s : s + batch_size], target=target[s : s + batch_size], method=method
        )
        out.append(mask_norm(res.cams, size))
    return np.concatenate(out)


def mprt(
    model: nn.Module,
    arch: str,
    x: torch.Tensor,
    target: np.ndarray | torch.Tensor,
    *,
    method: str = "gradcam",
    size: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    max_steps: int | None = None,
) -> MprtResult:
    """Cascading model-parameter randomisation (Adebayo et al. 2018; module docstring).

    ``model`` in eval mode (``ValueError`` otherwise; it is copied, never changed), ``x`` the
    normalised inputs [B,3,H,W], ``target`` [B] the class explained (the original model's, kept
    for every step), ``size`` the side of the compared masks (default: the input's ``H``).
    ``max_steps`` stops the cascade early (default: every group, down to the first layer).
    """
    require_eval(model, what="The randomisation test")
    size = int(size or x.shape[-1])
    target = torch.as_tensor(np.asarray(target), dtype=torch.long, device=x.device)
    original = cam_masks(model, arch, x, target, method, size, batch_size)
    work = copy.deepcopy(model)
    groups = randomisation_groups(work)[:max_steps]
    layers, spear, ssim = [""], [spearman_rows(original, original)], [ssim_rows(original, original)]
    devices = []
    if x.device.type == "cuda":
        devices = [x.device.index if x.device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for name, mods in groups:
            _reinitialise(name, mods)
            masks = cam_masks(work, arch, x, target, method, size, batch_size)
            layers.append(name)
            spear.append(spearman_rows(original, masks))
            ssim.append(ssim_rows(original, masks))
    return MprtResult(layers=layers, spearman=np.stack(spear), ssim=np.stack(ssim),
                      head_steps=head_steps(model, arch))  # fmt: skip


@dataclass
class OtherCityResult:
    """Per image: AR (eq. 2) and Spearman between the predicted city's and the runner-up's
    masks (float64 [B]), and the two classes explained (int64 [B])."""

    ar: np.ndarray
    spearman: np.ndarray
    pred: np.ndarray
    other: np.ndarray


def other_city(
    model: nn.Module,
    arch: str,
    x: torch.Tensor,
    *,
    method: str = "gradcam",
    size: int | None = None,
    batch_size: int = 32,
) -> OtherCityResult:
    """Other-city test (Sixt et al. 2020; module docstring) on normalised inputs ``x``
    [B,3,H,W]: the mask of each image's predicted city against the mask of its runner-up (the
    second most probable city), both at ``size`` (default the input's side).
    ``ValueError`` for a model in training mode or with fewer than 2 classes."""
    require_eval(model, what="The other-city test")
    size = int(size or x.shape[-1])
    trunk, head = split_model(model, arch)
    ars, rhos, preds, others = [], [], [], []
    for s in range(0, len(x), batch_size):
        xb = x[s : s + batch_size]
        first = compute_cams(trunk, head, xb, method=method)
        if first.logits.shape[1] < 2:
            raise ValueError("the other-city test needs at least 2 classes")
        runner_up = first.logits.topk(2, dim=1).indices[:, 1]
        second = compute_cams(trunk, head, xb, target=runner_up, method=method)
        m1, m2 = mask_norm(first.cams, size), mask_norm(second.cams, size)
        ars.append(average_residual(m1, m2))
        rhos.append(spearman_rows(m1, m2))
        preds.append(first.target.cpu().numpy())
        others.append(runner_up.cpu().numpy())
    return OtherCityResult(ar=np.concatenate(ars), spearman=np.concatenate(rhos),
                           pred=np.concatenate(preds), other=np.concatenate(others))  # fmt: skip
