"""CAM throughput against plain inference (and pytorch-grad-cam, when installed).

    .venv/bin/python -m bench.cam [--archs resnet18 vgg11] [--size 224] [--batch 32] [--repeats 5]
                                  [--precision fp32,bf16]

Random-weight models in eval mode, one fixed random batch, ``torch.set_num_threads(--threads)``
(2 by default). After one warm-up call of each, the contenders run interleaved
(inference, ours, theirs, inference, ours, ...) ``--repeats`` times; the table shows medians.

* inference: ``model(x)`` under ``torch.no_grad()`` (and the precision's autocast,
  :func:`cityviz.models.train.autocast`: what :func:`cityviz.models.train.predict` runs);
* ours: :func:`cityviz.cam.compute_cams` at that precision (raw low-resolution CAMs, logits,
  probabilities);
  ``+mask`` adds :func:`cityviz.cam.mask_norm` to the input size, timed separately;
* theirs: ``pytorch_grad_cam`` (e.g. ``GradCAM``) on the same target layer, which returns masks
  already resized and min-max normalised to the input size (float32 only).

``--precision fp32,bf16`` times each precision in turn (one table row per architecture and
precision), to see whether autocast pays on this machine's CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

from cityviz.cam import METHODS, compute_cams, mask_norm
from cityviz.models.archs import build_model, get_arch, list_archs, split_model
from cityviz.models.train import PRECISIONS, autocast

THEIR_CLASSES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
}


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _theirs(
    model: torch.nn.Module, arch: str, method: str
) -> Callable[[torch.Tensor], object] | None:
    """A pytorch-grad-cam call for ``model``, or None when the package is not installed."""
    try:
        import pytorch_grad_cam
    except ImportError:
        return None
    layer = model.get_submodule(get_arch(arch).target_layer)
    cam = getattr(pytorch_grad_cam, THEIR_CLASSES[method])(model=model, target_layers=[layer])
    return lambda x: cam(input_tensor=x, targets=None)


def bench_arch(
    arch: str, size: int, batch: int, repeats: int, method: str, precision: str = "fp32"
) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(arch, 10)
    trunk, head = split_model(model, arch)
    x = torch.randn(batch, 3, size, size)

    def inference() -> None:
        with torch.no_grad(), autocast(x.device, precision):
            model(x)

    def ours() -> None:
        compute_cams(trunk, head, x, method=method, precision=precision)

    cams = compute_cams(trunk, head, x, method=method, precision=precision).cams
    theirs_fn = _theirs(model, arch, method) if precision == "fp32" else None
    runs: dict[str, Callable[[], object]] = {"inference": inference, "ours": ours}
    if theirs_fn is not None:
        runs["theirs"] = lambda: theirs_fn(x)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(_seconds(fn))
    mask_s = statistics.median(_seconds(lambda: mask_norm(cams, size)) for _ in range(repeats))
    med = {name: statistics.median(t) for name, t in times.items()}
    out = {f"{name}_ips": batch / t for name, t in med.items()}
    out["ours_mask_ips"] = batch / (med["ours"] + mask_s)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list_archs(), choices=list_archs())
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--method", default="gradcam", choices=METHODS)
    parser.add_argument("--precision", default="fp32", help="comma-separated, e.g. fp32,bf16")
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if unknown := sorted(set(precisions) - set(PRECISIONS)):
        parser.error(f"unknown precision {unknown}; use {', '.join(PRECISIONS)}")
    torch.set_num_threads(args.threads)

    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.size}x{args.size}, batch "
        f"{args.batch}, {args.repeats} interleaved repeats, method {args.method}; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    header = f"{'arch':<9} {'prec':<5} {'infer img/s':>11} {'ours img/s':>10} {'ratio':>6}"
    header += f" {'+mask':>6} {'theirs img/s':>12} {'ratio':>6}"
    print(header)
    for arch in args.archs:
        for precision in precisions:
            r = bench_arch(arch, args.size, args.batch, args.repeats, args.method, precision)
            _print_row(arch, precision, r)
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def _print_row(arch: str, precision: str, r: dict[str, float]) -> None:
    inf = r["inference_ips"]
    line = (
        f"{arch:<9} {precision:<5} {inf:>11.1f} {r['ours_ips']:>10.1f} {r['ours_ips'] / inf:>6.2f} "
        f"{r['ours_mask_ips'] / inf:>6.2f}"
    )
    if "theirs_ips" in r:
        line += f" {r['theirs_ips']:>12.1f} {r['theirs_ips'] / inf:>6.2f}"
    else:
        line += f" {'n/a':>12} {'':>6}"
    print(line, flush=True)


if __name__ == "__main__":
    main()
