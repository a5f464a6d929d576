"""Training-step throughput per architecture: precisions × batch sizes, and cityviz vs bare PyTorch.

    python -m bench.train [--archs simple,vgg11] [--precisions fp32,bf16] [--batches 8,32]
                          [--sizes vgg11=128,resnet18=192] [--steps 3] [--repeats 3] [--bare]

Every architecture is fed its demo input size (``--sizes`` overrides, ``--size`` sets the rest).
For each architecture the settings (precision × batch size) are timed *interleaved* — repeat 1 of
every setting, then repeat 2, … — so a change in the machine's load hits every setting alike;
the table prints the best and the median images/s of the repeats and each setting's speed-up
over the first one (best over best). The load average (``os.getloadavg``) is printed before and
after: on a shared machine, figures taken under a load above the core count are inflated.
``--bare`` adds a bare PyTorch loop (same model, batch and fused Adam, float input already
normalised) at fp32 to show what ``train_step``'s uint8 → normalised input and bookkeeping cost.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

from cityviz.config import PROFILES
from cityviz.models.archs import build_model, get_arch
from cityviz.models.train import (
    PRECISIONS,
    make_optimizer,
    native_bf16,
    to_batch,
    train_step,
)


def bare_step(model, opt, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def one_step(model, arch, opt, prec, data) -> None:
    """One training step of ``prec`` ("bare" for the bare loop) on ``data`` = (uint8, y, float)."""
    imgs, y, x_float = data
    if prec == "bare":
        bare_step(model, opt, x_float, y)
    else:
        train_step(model, arch, opt, to_batch(imgs, torch.device("cpu")), y, prec)


def parse_sizes(text: str) -> dict[str, int]:
    """``"vgg11=128,resnet18=192"`` → ``{"vgg11": 128, "resnet18": 192}``."""
    out = {}
    for item in filter(None, text.split(",")):
        arch, _, px = item.partition("=")
        out[arch.strip()] = int(px)
    return out


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    demo = PROFILES["demo"]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=demo.image_size, help="input size (px)")
    p.add_argument(
        "--sizes",
        default=",".join(f"{a}={s}" for a, s in demo.input_sizes.items()),
        help="per-architecture input sizes, ARCH=PX,...",
    )
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--batches", default="8,32")
    p.add_argument("--steps", type=int, default=3, help="training steps per timing")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timings per setting")
    p.add_argument("--archs", default="simple,simpler,vgg11,resnet18")
    p.add_argument("--bare", action="store_true", help="also time a bare PyTorch loop (fp32)")
    a = p.parse_args(argv)
    try:
        sizes = parse_sizes(a.sizes)
        batches = [int(b) for b in a.batches.split(",")]
        precisions = a.precisions.split(",")
        archs = a.archs.split(",")
        for arch in archs:
            get_arch(arch)
    except ValueError as e:
        print(f"bench.train: {e}", file=sys.stderr)
        return 2
    if unknown := set(precisions) - set(PRECISIONS):
        print(
            f"bench.train: unknown precision {sorted(unknown)}; use {PRECISIONS}", file=sys.stderr
        )
        return 2
    cpu = torch.device("cpu")
    settings = list(itertools.product(precisions, batches))
    if a.bare:
        settings.append(("bare", batches[0]))
    print(
        f"training steps, {torch.get_num_threads()} threads, {a.steps} steps × {a.repeats} "
        f"interleaved repeats; native bf16: {native_bf16(cpu)}; {load()}"
    )
    print(f"{'arch':<9}{'px':>5}{'setting':>12}{'best img/s':>12}{'median':>9}{'speed-up':>10}")
    rng = np.random.default_rng(0)
    for arch in archs:
        spec, size = get_arch(arch), sizes.get(arch, a.size)
        torch.manual_seed(0)
        model = build_model(arch, 2).train()  # one model for all settings: speed, not accuracy
        opt = make_optimizer(model, 1e-4)
        mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(spec.std).view(1, 3, 1, 1)
        data = {}
        for prec, batch in settings:
            imgs = rng.integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
            y = torch.from_numpy(np.arange(batch) % 2)
            x_float = (to_batch(imgs, cpu).float() / 255 - mean) / std
            data[prec, batch] = imgs, y, x_float

        for s in settings:  # warm-up
            one_step(model, arch, opt, s[0], data[s])
        rates: dict[tuple[str, int], list[float]] = {s: [] for s in settings}
        for _ in range(a.repeats):
            for s in settings:
                t = time.perf_counter()
                for _ in range(a.steps):
                    one_step(model, arch, opt, s[0], data[s])
                rates[s].append(a.steps * s[1] / (time.perf_counter() - t))
        base = max(rates[settings[0]])
        for prec, batch in settings:
            r = rates[prec, batch]
            label = f"{prec} b{batch}"
            print(
                f"{arch:<9}{size:>5}{label:>12}{max(r):>12.1f}{statistics.median(r):>9.1f}"
                f"{max(r) / base:>9.2f}×"
            )
        sys.stdout.flush()
    print(load())
    return 0


if __name__ == "__main__":
    sys.exit(main())
