"""Training and evaluation of city classifiers.

The paper's recipe: cross-entropy, Adam, lr 1e-4, multiplied by 0.1 every 10 epochs. Images come
in as uint8 arrays [N, S, S, 3] (usually memory-mapped from the cache) and are normalised on the
device, batch by batch, so the loop costs what a bare PyTorch loop costs (see bench/train.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cityviz.data.images import image_batches
from cityviz.models.archs import build_model, normalize, require_eval

log = logging.getLogger(__name__)


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda`` without a GPU is a clear error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but PyTorch sees no CUDA GPU here.")
    return torch.device(spec)


def to_batch(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [B,S,S,3] (numpy) → uint8 [B,3,S,S] on ``device`` (normalised later, on device)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return x.to(device, non_blocking=True)


def iter_batches(
    n: int, batch_size: int, *, shuffle: bool = False, generator: np.random.Generator | None = None
) -> Iterator[np.ndarray]:
    order = generator.permutation(n) if shuffle and generator is not None else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        # sorted indices read a memory-mapped array sequentially; the batch's order is irrelevant
        yield np.sort(idx) if shuffle else idx


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam (the paper's optimiser), fused where PyTorch supports it.

    The fused kernel is the same algorithm in one pass over the parameters; for VGG11, whose
    classifier holds 120 M parameters, it makes a small-batch training step ~1.8× faster on CPU.
    """
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.parameters(), lr=lr)


def random_hflip(x: torch.Tensor, flip: np.ndarray) -> torch.Tensor:
    """Mirror the images where ``flip`` is true (a mirrored street is still that city's street)."""
    mask = torch.from_numpy(flip).to(x.device).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(-1), x)


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    best_epoch: int = 0  # 1-based epoch whose weights ``model`` holds


def train_step(
    model: nn.Module,
    arch: str,
    optimizer: torch.optim.Optimizer,
    x_uint8: torch.Tensor,
    y: torch.Tensor,
    precision: str = "fp32",
    loss_scale: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, int]:
    """One optimisation step; returns (summed loss, number correct) for the batch.

    The loss is the batch's mean cross-entropy, or with ``loss_scale`` its *sum* times
    ``loss_scale``: distributed training (:mod:`cityviz.models.distributed`) passes
    ``world_size / global_batch`` so that DistributedDataParallel's gradient average over processes
    equals the gradient of the global batch's mean loss, even when the batch splits unevenly.

    Unlike the inference functions, this updates ``model`` in place (its parameters, and in
    training mode its batch-norm statistics), in whatever mode the caller has put it.
    ``precision`` (:func:`amp_dtype`) sets the autocast dtype of the forward pass (weights,
    gradients and the optimiser stay float32); ``"fp32"`` is plain float32. Where it means float16
    the loss goes through ``scaler`` (:func:`grad_scaler`; the caller keeps one for the whole run
    so its scale adapts); without one a fresh scaler serves this step alone.
    """
    with autocast(x_uint8.device, precision):
        logits = model(normalize(x_uint8, arch))
    # outside autocast, from float32 logits: the loss and its gradient are float32 whatever the
    # forward pass ran in (PyTorch's AMP recipe; bf16 log-softmax would lose ~3 digits)
    if loss_scale is None:
        loss = nn.functional.cross_entropy(logits.float(), y)
    else:
        loss = nn.functional.cross_entropy(logits.float(), y, reduction="sum") * loss_scale
    if scaler is None:
        scaler = grad_scaler(x_uint8.device, precision)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # unscales first; skips the step if a gradient is inf or NaN
        scaler.update()
    correct = int((logits.detach().argmax(1) == y).sum())
    value = float(loss.detach())
    summed = value * len(y) if loss_scale is None else value / loss_scale
    return summed, correct


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""Names of the precision policy (:func:`amp_dtype`); ``"auto"`` is :class:`RunConfig`'s default."""

_AMP_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def check_precision(precision: str) -> None:
    """Raise ``ValueError`` unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def amp_dtype(device: torch.device | str, precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``: the one precision policy of cityviz.

    Used for training steps, predictions (:func:`predict`), Grad-CAM (:mod:`cityviz.cam`) and the
    segmenter (:mod:`cityviz.segment`, on CUDA only). Returns ``None`` for plain float32:

    * ``"fp32"`` → ``None``; ``"bf16"`` → ``torch.bfloat16``; ``"fp16"`` → ``torch.float16``, on
      any device (bf16/fp16 on a CPU without native support is emulated, and slow);
    * ``"auto"`` → on a CUDA device (when PyTorch sees one) ``torch.bfloat16`` if
      ``torch.cuda.is_bf16_supported()`` (Ampere and later), else ``torch.float16``; on a CPU, or
      anything else, ``None``: this project's 2-core AVX-512 CPU has no native bfloat16, and bf16
      autocast measured 3.5–8× slower than float32 per training step there (bench/train.py),
      2–3× slower for inference and 1.5–1.6× for Grad-CAM (Simple and ResNet18, 224 px, batch
      32; bench/cam.py ``--precision fp32,bf16``; README, *On a GPU*).

    Autocast runs matrix products and convolutions in the returned dtype (PyTorch's autocast op
    lists); weights, gradients, optimiser state, losses and every returned array stay float32.
    Raises ``ValueError`` for an unknown ``precision``.
    """
    check_precision(precision)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def resolve_precision(device: torch.device | str, precision: str) -> str:
    """``precision`` with ``"auto"`` replaced by what :func:`amp_dtype` picks on ``device``
    (``"fp32"``, ``"bf16"`` or ``"fp16"``); the others are returned unchanged.

    The CLI stores the resolved name in a cache's config, so its identity says what ran (an
    ``auto`` run on a CPU is an ``fp32`` run). Raises ``ValueError`` for an unknown precision."""
    return _AMP_NAMES[amp_dtype(device, precision)]


def autocast(device: torch.device | str, precision: str):
    """A ``torch.autocast`` context for ``precision`` on ``device`` (:func:`amp_dtype`); a no-op
    where the policy gives float32.

    Raises ``ValueError`` for an unknown precision."""
    device = torch.device(device)
    dtype = amp_dtype(device, precision)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32,
                          enabled=dtype is not None)  # fmt: skip


def grad_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler | None:
    """A ``torch.amp.GradScaler`` when ``precision`` trains in float16 on ``device``, else None.

    float16 has 5 exponent bits: gradients below ~6e-5 lose digits and below ~6e-8 vanish, so
    PyTorch's AMP recipe multiplies the loss by a dynamic scale before ``backward`` and divides
    the gradients by it before the optimiser step (skipping steps whose gradients overflow).
    bfloat16 keeps float32's exponent range and needs no scaler."""
    device = torch.device(device)
    if amp_dtype(device, precision) != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    the AVX-512 BF16 or AMX-BF16 instructions (``torch.cpu.get_capabilities()``).

    Without them bf16 autocast is emulated: measured 3.5–8× *slower* than float32 per training
    step on this project's 2-core AVX-512 CPU (bench/train.py). oneDNN's own
    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` answers True on any AVX-512 CPU, where it
    runs bf16 through conversions, so it is not asked."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            caps = torch.cpu.get_capabilities()
        except (AttributeError, RuntimeError):
            return False
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    return False


@torch.no_grad()
def predict(
    model: nn.Module,
    arch: str,
    images: np.ndarray,
    device: torch.device,
    batch_size: int = 64,
    *,
    precision: str = "fp32",
    num_workers: int = 0,
) -> np.ndarray:
    """Class probabilities [N, C] float32 (softmax of the float32 logits) for uint8 images
    [N, S, S, 3] (a memory-mapped array is read batch by batch).

    ``precision``: the autocast policy of the forward pass (:func:`amp_dtype`; the default runs
    plain float32). Batches come through :func:`cityviz.data.images.image_batches`:
    ``num_workers`` loader processes, pinned memory and asynchronous copies on CUDA; the result
    does not depend on ``num_workers``.

    ``model`` must be in eval mode and on ``device``; it is never modified, so threads may share
    it. Raises ``ValueError`` for a model in training mode (see
    :func:`~cityviz.models.archs.require_eval`: batch norm would otherwise use each batch's
    statistics and overwrite its running ones, and dropout would make predictions random) or an
    unknown precision.
    """
    require_eval(model, what="Predicting")
    device = torch.device(device)
    check_precision(precision)
    out = [np.zeros((0, 0), np.float32)]
    batches = image_batches(images, batch_size, device=device, num_workers=num_workers)
    for batch in batches:
        x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2)
        with autocast(device, precision):
            logits = model(normalize(x, arch))
        out.append(torch.softmax(logits.float(), 1).cpu().numpy())
    return np.concatenate(out[1:]) if len(out) > 1 else out[0]


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum ``values`` over the processes of the default process group (float64)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def train_model(
    arch: str,
    seed: int,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    n_classes: int,
    *,
    epochs: int,
    batch_size: int = 32,
    lr: float = 1e-4,
    lr_step: int = 10,
    lr_gamma: float = 0.1,
    pretrained: bool = False,
    precision: str = "fp32",
    augment: bool = True,
    keep_best: bool = True,
    device: torch.device | str = "cpu",
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> TrainResult:
    """Train one model from seed ``seed``; deterministic for a given seed on a given device.

    With ``world_size > 1`` this is one process of a distributed run (the caller has initialised
    ``torch.distributed``, see :mod:`cityviz.models.distributed`): the model is wrapped in
    DistributedDataParallel, every process draws the same seeded permutation and flips, and
    process ``rank`` trains on items ``rank::world_size`` of each global batch of ``batch_size``
    (what DistributedSampler does per epoch, batch by batch), so the run follows the
    single-process one step for step; a last global batch smaller than ``world_size`` is
    skipped (at most ``world_size − 1`` images an epoch). Validation is split the same way and its
    counts summed across processes. Batch norm keeps per-process statistics on CPU (PyTorch's
    SyncBatchNorm needs a GPU); on CUDA it is converted to SyncBatchNorm.

    ``precision``: one of :data:`PRECISIONS`, the autocast policy of the forward pass
    (:func:`amp_dtype`; ``"auto"`` is float32 on a CPU); an unknown one raises ``ValueError``
    before anything is built. bf16 on a device without native bfloat16 (:func:`native_bf16`), and
    fp16 on a CPU, log a warning, since they are slower there, not faster. float16 steps go
    through one ``torch.amp.GradScaler`` for the whole run (:func:`grad_scaler`).
    ``augment`` adds random horizontal flips: label-preserving for street scenes, and a help
    to small training sets (the paper does not say whether it augmented).
    ``keep_best`` returns the weights of the epoch with the best validation accuracy (the
    latest on ties) instead of the last epoch's: with short schedules and small batches, batch
    norm models swing by several points from one epoch to the next.
    """
    check_precision(precision)
    device = torch.device(device)
    dtype = amp_dtype(device, precision)
    slow = (dtype == torch.bfloat16 and not native_bf16(device)) or (
        dtype == torch.float16 and device.type == "cpu"
    )
    if slow:
        log.warning(
            "%s was asked for, but this %s has no native %s arithmetic: training will likely be "
            "several times slower than with --precision fp32.",
            _AMP_NAMES[dtype],
            device.type.upper(),
            "bfloat16" if dtype == torch.bfloat16 else "float16",
        )
    scaler = grad_scaler(device, precision)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(arch, n_classes, pretrained=pretrained).to(device)
    net: nn.Module = model
    distributed = world_size > 1
    if distributed:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    optimizer = make_optimizer(model, lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=lr_step, gamma=lr_gamma)
    y_all = torch.from_numpy(np.array(train_labels, dtype=np.int64))
    result = TrainResult(model=model)
    t0 = time.perf_counter()
    best_acc, best_state = -1.0, None
    n = len(train_images)
    bar = tqdm(
        total=epochs * n,
        desc=f"train {arch} s{seed}",
        unit="img",
        disable=not progress or rank != 0,
        leave=False,
    )
    for epoch in range(epochs):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for idx in iter_batches(n, batch_size, shuffle=True, generator=rng):
            flip = rng.random(len(idx)) < 0.5 if augment else None
            scale = None
            bar.update(len(idx))
            if distributed:
                if len(idx) < world_size:
                    continue
                scale = world_size / len(idx)
                idx = idx[rank::world_size]
                flip = flip[rank::world_size] if flip is not None else None
            x = to_batch(train_images[idx], device)
            if flip is not None:
                x = random_hflip(x, flip)
            y = y_all[idx].to(device)
            batch_loss, batch_correct = train_step(
                net, arch, optimizer, x, y, precision, scale, scaler
            )
            loss_sum += batch_loss
            correct += batch_correct
            seen += len(idx)
        scheduler.step()
        model.eval()  # our own model: validate with running statistics and without dropout
        val_acc = float("nan")
        val_right, val_n = 0, len(val_images)
        if val_n:
            rows = slice(rank, None, world_size)  # a view: a memory-mapped set stays on disk
            if len(val_images[rows]):
                val_pred = predict(
                    model, arch, val_images[rows], device, precision=precision
                ).argmax(1)
                val_right = int((val_pred == np.asarray(val_labels)[rows]).sum())
        if distributed:
            loss_sum, correct, seen, val_right = _all_sum(
                [loss_sum, correct, seen, val_right], device
            )
        if val_n:
            val_acc = val_right / val_n
        epoch_stats = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "val_accuracy": val_acc,
            "lr": optimizer.param_groups[0]["lr"],
        }
        result.history.append(epoch_stats)
        if keep_best and len(val_images) and val_acc >= best_acc:
            best_acc, result.best_epoch = val_acc, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        bar.set_postfix(loss=f"{epoch_stats['loss']:.3f}", val=f"{val_acc:.3f}")
    bar.close()
    if best_state is not None and result.best_epoch != epochs:
        model.load_state_dict(best_state)
    else:
        result.best_epoch = epochs
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result
