"""Checks and estimates made before any expensive work: fail in seconds, not after hours.

Everything that can be known before training is checked before training: the device, write
permission and free disk space for the cache, ImageNet weights for ``--pretrained``, and that the
segmenter loads (or that ``annotations``/``none`` fits the data). A short measured calibration
(a few training steps per architecture on this device) gives an estimate of the run's wall time.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cityviz.config import RunConfig, model_id
from cityviz.ui.overview import fmt_duration

log = logging.getLogger("precompute")

LONG_RUN_SECONDS = 30 * 60  # above this, the estimate comes with advice


def existing_ancestor(path: Path) -> Path:
    """``path`` itself or its nearest existing parent directory."""
    path = Path(path).absolute()
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path("/")


def check_writable(cache_dir: Path) -> None:
    """Raise ``PermissionError``/``OSError`` (one sentence) when the cache cannot be written."""
    base = existing_ancestor(cache_dir)
    if not base.is_dir():
        raise NotADirectoryError(f"--cache {cache_dir}: {base} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".cityviz-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot write in {base} ({exc.strerror})") from None


def estimate_cache_bytes(cfg: RunConfig, n_images: int) -> int:
    """A generous estimate of the bytes a full cache of ``n_images`` images takes (int)."""
    n_test = max(1, int(0.25 * n_images))  # 6:2:2 plus rounding
    s = cfg.image_size
    inputs = sum(n_images * p * p * 3 for p in cfg.decode_sizes)
    per_model = n_test * (64 * 64 * 4 + 2 * 3 * 4096) + 2 * 1024 * 1024 * 60  # cams+thumbs+weights
    labels = n_test * s * s * 2
    return int(1.3 * (inputs + labels + len(cfg.model_ids) * per_model + n_test * 4096))


def check_disk(cache_dir: Path, need: int) -> None:
    """Raise ``OSError(ENOSPC)`` when the cache's file system has less than ``need`` bytes free."""
    free = shutil.disk_usage(existing_ancestor(cache_dir)).free
    if free < need:
        base = existing_ancestor(cache_dir)
        raise OSError(
            errno.ENOSPC,
            f"{base} has {free / 1e9:.1f} GB free, but this run needs about {need / 1e9:.1f} GB; "
            "free some space or choose another --cache",
        )


def weights_path(arch: str) -> Path | None:
    """Where torchvision keeps ``arch``'s ImageNet weights, or None when it has none."""
    from torchvision.models import get_weight

    from cityviz.models.archs import get_arch

    name = get_arch(arch).imagenet_weights
    if name is None:
        return None
    url = get_weight(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def check_pretrained(cfg: RunConfig) -> None:
    """Raise ``WeightsUnavailable`` when ``--pretrained`` weights are not on this machine."""
    if not cfg.pretrained:
        return
    from cityviz.models.archs import WeightsUnavailable, get_arch

    for arch in cfg.archs:
        spec = get_arch(arch)
        if spec.imagenet_weights is None:
            continue
        path = weights_path(arch)
        if path is not None and not path.exists():
            raise WeightsUnavailable(
                f"--pretrained: the ImageNet weights for {spec.display} are not at {path}; "
                "copy the file there (it is downloaded on first use where there is internet) "
                "or drop --pretrained."
            )


@dataclass
class Estimate:
    """Estimated wall time per stage, in seconds, for the work not done yet."""

    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return float(sum(self.seconds.values()))

    def describe(self) -> str:
        parts = ", ".join(f"{k} {fmt_duration(v)}" for k, v in self.seconds.items() if v >= 1)
        return f"≈ {fmt_duration(self.total)}" + (f" ({parts})" if parts else "")


def time_train_step(
    arch: str, size: int, batch: int, n_classes: int, device, steps: int = 2, precision="fp32"
):
    """Measured seconds per training image of ``arch`` at ``size`` px on ``device`` (random
    weights and data; one warm-up step, then ``steps`` timed steps)."""
    from cityviz.models.archs import build_model
    from cityviz.models.train import make_optimizer, to_batch, train_step

    torch.manual_seed(0)
    model = build_model(arch, n_classes).to(device).train()
    opt = make_optimizer(model, 1e-4)
    images = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
    x = to_batch(images, device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    train_step(model, arch, opt, x, y, precision)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, arch, opt, x, y, precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / (steps * batch)


def time_inference(arch: str, size: int, batch: int, n_classes: int, device) -> float:
    """Measured seconds per image of ``arch``'s forward pass at ``size`` px without autograd (one
    warm-up batch, then one timed batch; random weights and data)."""
    from cityviz.models.archs import build_model
    from cityviz.models.train import to_batch

    model = build_model(arch, n_classes).to(device)
    images = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
    x = to_batch(images, device).float()
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        model(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / batch


def split_sizes(n_images: int, ratios) -> dict[str, int]:
    """Images per split expected from ``ratios`` (train, val, test shares of the spots, any
    positive scale: ``(36, 12, 126)`` is ``(0.21, 0.07, 0.72)``), for the time estimate before
    the data are split by spot.

    Raises ValueError when the ratios are not three non-negative numbers with a positive sum."""
    r = np.asarray(ratios, dtype=float)
    if r.shape != (3,) or (r < 0).any() or r.sum() <= 0:
        raise ValueError(f"need three non-negative split ratios with a positive sum, got {ratios}")
    counts = np.rint(n_images * r / r.sum()).astype(int)
    return dict(zip(("train", "val", "test"), counts.tolist(), strict=True))


def estimate_run(
    cfg: RunConfig, split_sizes: dict[str, int], n_classes: int, device, todo_models: list[str]
) -> Estimate:
    """Wall time of the models still to train and explain, from a short calibration (a few
    training steps and a forward pass per architecture, measured on ``device``).

    Training: epochs × (train images × seconds per training image + validation images × seconds
    per inference), then one prediction of every split; CAMs about two forward passes per test
    image and model. Other stages are small next to these on a CPU.
    """
    n_train, n_val, n_test = (split_sizes.get(s, 0) for s in ("train", "val", "test"))
    per_image: dict[str, float] = {}
    train = cams = 0.0
    for arch in cfg.archs:
        mids = [model_id(arch, s) for s in cfg.seeds]
        todo = [m for m in mids if m in todo_models]
        if not todo:
            continue
        if arch not in per_image:
            batch = min(cfg.batch_size, 32)  # the real batch: Adam's step is per batch
            per_image[arch] = time_train_step(
                arch, cfg.input_size(arch), batch, n_classes, device, precision=cfg.precision
            )
            per_image[arch + ":infer"] = time_inference(
                arch, cfg.input_size(arch), batch, n_classes, device
            )
        t, infer = per_image[arch], per_image[arch + ":infer"]
        # an epoch: a training step per training image, an evaluation of the validation split;
        # then every split is predicted once, and a CAM costs about two forward passes
        train += len(todo) * (
            cfg.epochs * (n_train * t + n_val * infer) + (n_train + n_val) * infer
        )
        cams += len(todo) * n_test * 2 * infer
    est = Estimate({"train": train, "cams": cams})
    est.seconds["embed"] = len(cfg.model_ids) * len(cfg.embed_methods) * (2 + n_test / 1000.0)
    return est


def advice(est: Estimate, cfg: RunConfig, device) -> str | None:
    """A suggestion when the run is long, or None."""
    if est.total < LONG_RUN_SECONDS:
        return None
    tips = []
    if device.type == "cpu":
        tips.append("--profile cpu" if cfg.archs != ("simple", "resnet18") else "fewer --epochs")
        tips.append("fewer --archs/--seeds")
        tips.append("a GPU (--device cuda)")
    else:
        tips.append("fewer --archs/--seeds or --epochs")
    where = "this CPU" if device.type == "cpu" else str(device)
    return f"{est.describe()} on {where}: consider {', '.join(tips)}."
