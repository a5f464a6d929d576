"""Training-step throughput per architecture: cityviz's loop vs a bare PyTorch loop.

    python -m bench.train [--size 224] [--batch 32] [--steps 3] [--archs simple,vgg11]

Both run the same model, batch and optimiser (fused Adam); ours adds the uint8 → normalised
input on the device and the bookkeeping of ``train_step``. Prints images/s and the overhead.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn

from cityviz.models.archs import build_model, get_arch
from cityviz.models.train import make_optimizer, to_batch, train_step


def bare_step(model, opt, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--archs", default="simple,simpler,vgg11,resnet18")
    a = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (a.batch, a.size, a.size, 3), dtype=np.uint8)
    y = torch.from_numpy(np.arange(a.batch) % 2)
    spec_x = to_batch(imgs, torch.device("cpu"))
    print(f"training step, {a.size}×{a.size}, batch {a.batch}, {torch.get_num_threads()} threads")
    print(f"{'arch':<10}{'bare img/s':>12}{'cityviz img/s':>15}{'overhead':>10}")
    for arch in a.archs.split(","):
        spec = get_arch(arch)
        model = build_model(arch, 2).train()
        opt = make_optimizer(model, 1e-4)
        mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(spec.std).view(1, 3, 1, 1)
        x_float = (spec_x.float() / 255 - mean) / std
        train_step(model, arch, opt, spec_x, y)  # warm-up
        bare_step(model, opt, x_float, y)
        bare, ours = [], []
        for _ in range(a.repeats):  # interleaved, medians
            t = time.perf_counter()
            for _ in range(a.steps):
                bare_step(model, opt, x_float, y)
            bare.append(a.steps * a.batch / (time.perf_counter() - t))
            t = time.perf_counter()
            for _ in range(a.steps):
                train_step(model, arch, opt, to_batch(imgs, torch.device("cpu")), y)
            ours.append(a.steps * a.batch / (time.perf_counter() - t))
        b, o = statistics.median(bare), statistics.median(ours)
        print(f"{arch:<10}{b:>12.1f}{o:>15.1f}{100 * (b - o) / b:>9.1f}%")


if __name__ == "__main__":
    main()
