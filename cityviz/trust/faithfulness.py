"""Deletion and insertion curves: does the mask rank pixels by how much the model needs them?

Petsiuk, Das & Saenko 2018, *RISE: Randomized Input Sampling for Explanation of Black-box
Models* (BMVC), section 4.1. Pixels are taken in the order of the mask, most attended first:

* **deletion** starts from the image and replaces more and more of its pixels with a *fill*;
  the probability of the explained city should fall fast, so a faithful mask gives a small area
  under the curve;
* **insertion** starts from the fill and reveals more and more of the image's pixels; the
  probability should rise fast, so a faithful mask gives a large area under the curve.

The same curves for a **random order** of the pixels are the baseline: a mask is informative
about the model only where its deletion AUC is below, and its insertion AUC above, the random
order's. Ties in the mask (e.g. the zero plateau of a Grad-CAM map) are broken in a fixed random
order, never in raster order, which would delete the image's top rows first.

**Fill: a Gaussian-blurred copy of the image**, for both curves. RISE inserts into a blurred
canvas and deletes to black; a constant (black, grey) region is itself a strong feature, unlike
any street photo, so deletion to a constant measures how the network reacts to black patches as
much as which pixels it needs. ROAD (Rong et al. 2022, *A consistent and efficient evaluation
strategy for attribution methods*, ICML) goes further: it fills with noisy linear imputation from
the neighbours, because the *shape* of a constant or blurred hole can leak the class. We keep the
blur: ROAD's imputation needs a sparse linear solve per image and step (about 100× the cost of
a forward pass at 224 px on a CPU), our masks are smooth upsampled CAMs whose holes have no
class-specific shapes, and the random-order baseline, filled the same way, absorbs what a hole's
mere presence does. The blur's kernel follows RISE's code (11 px, σ = 5 at 224 px), scaled with
the image. ``fill="mean"`` (each channel's mean) and ``fill="zero"`` (0 in the normalised input:
the normalisation's mean colour) are offered for comparison.

The area under a curve (:func:`auc`) is the trapezoid rule over the fraction of pixels, so it is
the mean probability over fractions in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch import nn

from cityviz.models.archs import require_eval

CURVES = ("deletion", "insertion")
ORDERS = ("mask", "random")
FILLS = ("blur", "mean", "zero")
DEFAULT_STEPS = 20


def auc(fractions: np.ndarray, probs: np.ndarray) -> float | np.ndarray:
    """Area under a deletion/insertion curve by the trapezoid rule (RISE, section 4.1).

    ``fractions`` [K] increasing in [0, 1], ``probs`` [K] (or [..., K]: one area per row).
    With ``fractions`` spanning [0, 1] the area is the curve's mean height, in [0, 1] for
    probabilities. Raises ``ValueError`` for fewer than 2 points or mismatched lengths.
    """
    f = np.asarray(fractions, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if f.ndim != 1 or f.size < 2 or p.shape[-1] != f.size:
        raise ValueError(f"need [K] fractions (K >= 2), [..., K] probs; got {f.shape}, {p.shape}")
    out = np.trapezoid(p, f, axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def fractions_of(steps: int) -> np.ndarray:
    """The ``steps + 1`` fractions of pixels removed/revealed: 0, 1/steps, …, 1 (float64)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return np.linspace(0.0, 1.0, steps + 1)


def fill_image(x: torch.Tensor, fill: str | torch.Tensor = "blur") -> torch.Tensor:
    """The canvas that deleted pixels take, same shape as ``x`` [B,3,H,W] (normalised input).

    ``"blur"``: Gaussian blur, kernel ``11·H/224`` px (odd, at least 3), σ = ``5·H/224`` (RISE's
    code, scaled to the image); ``"mean"``: each image's per-channel mean; ``"zero"``: zeros; a
    tensor broadcastable to ``x`` is used as given. Raises ``ValueError`` for another name.
    """
    if isinstance(fill, torch.Tensor):
        return fill.to(device=x.device, dtype=x.dtype).expand_as(x)
    if fill == "blur":
        side = min(x.shape[-2:])
        k = max(3, round(11 * side / 224) | 1)
        sigma = max(0.5, 5.0 * side / 224)
        return TF.gaussian_blur(x, [k, k], [sigma, sigma])
    if fill == "mean":
        return x.mean((2, 3), keepdim=True).expand_as(x)
    if fill == "zero":
        return torch.zeros_like(x)
    raise ValueError(f"unknown fill {fill!r}; known: {', '.join(FILLS)} or a tensor")


def pixel_ranks(mask: np.ndarray, order: str = "mask", seed: int = 0) -> np.ndarray:
    """Rank of every pixel [H,W] int64 in the order it is removed (0 = first).

    ``order="mask"``: highest mask value first, ties in a random order drawn from ``seed``;
    ``"random"``: a random permutation drawn from ``seed``. Raises ``ValueError`` otherwise.
    """
    m = np.asarray(mask, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"mask must be [H,W], got shape {m.shape}")
    rng = np.random.default_rng(seed)
    tie = rng.permutation(m.size)
    if order == "mask":
        seq = np.lexsort((tie, -m.ravel()))  # last key sorts first: mask descending, then tie
    elif order == "random":
        seq = tie
    else:
        raise ValueError(f"unknown order {order!r}; known: {', '.join(ORDERS)}")
    ranks = np.empty(m.size, np.int64)
    ranks[seq] = np.arange(m.size)
    return ranks.reshape(m.shape)


@torch.no_grad()
def curve_probs(
    model: nn.Module,
    x: torch.Tensor,
    masks: np.ndarray,
    targets: np.ndarray | list[int],
    *,
    curve: str = "deletion",
    order: str = "mask",
    steps: int = DEFAULT_STEPS,
    fill: str | torch.Tensor = "blur",
    seed: int = 0,
    batch_size: int = 64,
) -> np.ndarray:
    """Probability of ``targets`` along a deletion or insertion curve, for a batch of images.

    ``model``: the whole network (eval mode: ``ValueError`` otherwise; never modified), taking
    ``x`` float [B,3,H,W] already normalised as it expects; ``masks`` [B,H,W] float in [0,1] at
    the input's size; ``targets`` [B] class indices. Returns float64 [B, steps+1]: softmax
    probability of the target after removing (``curve="deletion"``) or revealing
    (``"insertion"``) :func:`fractions_of` ``(steps)`` of the pixels in ``order`` (module
    docstring). Image ``i``'s tie-break/random order uses seed ``seed + i``.
    """
    require_eval(model, what="A deletion/insertion curve")
    if curve not in CURVES:
        raise ValueError(f"unknown curve {curve!r}; known: {', '.join(CURVES)}")
    masks = np.asarray(masks)
    b, _, h, w = x.shape
    if masks.shape != (b, h, w):
        raise ValueError(f"masks must be [B,H,W] = {(b, h, w)}, got {masks.shape}")
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if targets.shape != (b,):
        raise ValueError(f"targets must have {b} entries, got {targets.shape}")
    canvas = fill_image(x, fill)
    counts = np.round(fractions_of(steps) * h * w).astype(np.int64)
    out = np.empty((b, steps + 1), np.float64)
    for i in range(b):
        ranks = torch.from_numpy(pixel_ranks(masks[i], order, seed + i)).to(x.device)
        removed = ranks[None] < torch.from_numpy(counts).to(x.device)[:, None, None]  # [K,H,W]
        if curve == "insertion":
            removed = ~removed
        batch = torch.where(removed[:, None], canvas[i : i + 1], x[i : i + 1])  # [K,3,H,W]
        probs = []
        for start in range(0, len(batch), batch_size):
            logits = model(batch[start : start + batch_size])
            probs.append(logits.float().softmax(1)[:, int(targets[i])].double().cpu())
        out[i] = torch.cat(probs).numpy()
    return out


def deletion_curve(
    model: nn.Module,
    x: torch.Tensor,
    mask: np.ndarray,
    target: int,
    *,
    steps: int = DEFAULT_STEPS,
    fill: str | torch.Tensor = "blur",
    order: str = "mask",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """One image's deletion curve (RISE): ``(fractions, probs)``, both float64 [steps+1].

    ``x``: float tensor [1,3,H,W], normalised as ``model`` expects; ``mask``: [H,W] float in
    [0,1] at the input's size (e.g. :func:`cityviz.cam.mask_norm` at ``H``); ``target``: the
    class whose probability is followed (usually the predicted city). ``fill`` and ``order``:
    module docstring. ``ValueError`` for a model in training mode or mismatched shapes.
    """
    return _one_curve("deletion", model, x, mask, target, steps, fill, order, seed)


def insertion_curve(
    model: nn.Module,
    x: torch.Tensor,
    mask: np.ndarray,
    target: int,
    *,
    steps: int = DEFAULT_STEPS,
    fill: str | torch.Tensor = "blur",
    order: str = "mask",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """One image's insertion curve (RISE), arguments and result as :func:`deletion_curve`."""
    return _one_curve("insertion", model, x, mask, target, steps, fill, order, seed)


def _one_curve(curve, model, x, mask, target, steps, fill, order, seed):
    """One image's ``curve`` through the batched :func:`curve_probs`."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be [1,3,H,W], got shape {tuple(x.shape)}")
    probs = curve_probs(model, x, np.asarray(mask)[None], [int(target)], curve=curve,
                        order=order, steps=steps, fill=fill, seed=seed)  # fmt: skip
    return fractions_of(steps), probs[0]
