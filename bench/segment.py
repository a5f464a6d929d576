"""Throughput of ADE20K segmenters on this CPU, through :class:`cityviz.segment.HFSegmenter`.

    .venv/bin/python -m bench.segment [--models upernet-convnext-small segformer-b0 segformer-b2]
        [--fed 224 512] [--batches 1 8] [--rounds 3] [--threads 2]

Each candidate is built from its published architecture with random weights (no hub access; a
random-weight model costs the same arithmetic as the trained one), saved with
``save_pretrained`` next to a ``SegformerImageProcessor`` (the processor class of all three hub
checkpoints, 512x512 by default) and loaded by ``HFSegmenter(directory)``, so the timed call is
exactly cityviz's ``segment()``: the resize of each 224x224 crop to the model's input, the
processor's rescale and normalisation, the forward pass, the bilinear upsampling of the logits
to the crop and the argmax.

* ``--fed 512``: 224 px crops (the paper's and the cache's size) resized to 512x512, which is
  what the segmenter feeds the hub checkpoints (their processors say 512x512, the size they were
  trained at); ``--fed 224``: a processor of size 224, so the crops go in unresized.
* After one warm-up call per model and setting, the models run interleaved (model A, B, C,
  A, B, C, ...) for ``--rounds`` rounds, so a change in load hits all alike; compare ratios
  within one run. Printed per model and setting: images/s best and median, CPU seconds per image
  (process CPU time, all threads; median), the load average (1 min) over the rounds, the
  parameter count, and the peak RSS during the call (``/proc/self/clear_refs`` resets the peak
  before each call; the peak includes every model loaded in this process, so the rise over the
  RSS before the call is printed too).

Architectures (random weights, 150 ADE20K classes):

* ``upernet-convnext-small`` (cityviz's default, ``openmmlab/upernet-convnext-small``):
  ``ConvNextConfig(depths=[3, 3, 27, 3], hidden_sizes=[96, 192, 384, 768])`` inside
  ``UperNetConfig(hidden_size=512, auxiliary_in_channels=384, pool_scales=[1, 2, 3, 6])``, as
  in transformers' ``models/upernet/convert_convnext_upernet_to_pytorch.py`` (``get_upernet_config``
  for "small") and mmsegmentation's ``configs/convnext/upernet_convnext_small_fp16_512x512_160k_
  ade20k.py`` (ConvNeXt-S backbone, UPerHead channels 512, auxiliary FCN head on stage 3).
* ``upernet-convnext-tiny`` (``openmmlab/upernet-convnext-tiny``): the same with
  ``depths=[3, 3, 9, 3]`` (transformers' ``UperNetConfig``/``ConvNextConfig`` defaults, which the
  transformers docs say match that checkpoint).
* ``segformer-b0`` / ``segformer-b2`` (``nvidia/segformer-b{0,2}-finetuned-ade-512-512``):
  ``SegformerConfig`` defaults (MiT-B0: depths [2, 2, 2, 2], hidden sizes [32, 64, 160, 256],
  decoder 256) and, for B2, depths [3, 4, 6, 3], hidden sizes [64, 128, 320, 512], decoder 768;
  heads [1, 2, 5, 8], reduction ratios [8, 4, 2, 1] for both. Source: transformers'
  ``models/segformer/convert_segformer_original_to_pytorch.py`` (the sizes it sets per variant
  when converting the ADE20K checkpoints) and mmsegmentation's
  ``configs/segformer/segformer_mit-b2_8xb2-160k_ade20k-512x512.py`` (embed_dims 64,
  num_layers [3, 4, 6, 3], num_heads [1, 2, 5, 8]).

Published ADE20K val mIoU (single-scale), printed next to the figures: UperNet+ConvNeXt-S 48.56,
-T 46.11 (mmsegmentation, ``configs/convnext/README.md``, 512x512, 160k iterations; the ConvNeXt
paper, Liu et al. 2022, Table 3, reports 49.6 / 46.7 multi-scale); SegFormer-B0 37.4,
SegFormer-B2 46.5 (Xie et al. 2021, SegFormer, Table 1; mmsegmentation's
``configs/segformer/README.md`` reproduces 37.41 and 45.58, 46.53 for B2 with the original
``AlignedResize``). None was verified through cityviz's whole-crop resize (see
:mod:`cityviz.segment`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Published ADE20K val mIoU, single-scale (sources in the module docstring).
PUBLISHED_MIOU = {
    "upernet-convnext-small": 48.56,
    "upernet-convnext-tiny": 46.11,
    "segformer-b0": 37.4,
    "segformer-b2": 46.5,
}

HUB_ID = {
    "upernet-convnext-small": "openmmlab/upernet-convnext-small",
    "upernet-convnext-tiny": "openmmlab/upernet-convnext-tiny",
    "segformer-b0": "nvidia/segformer-b0-finetuned-ade-512-512",
    "segformer-b2": "nvidia/segformer-b2-finetuned-ade-512-512",
}

N_CLASSES = 150
CROP = 224


def _id2label() -> dict[int, str]:
    return {i: f"class_{i}" for i in range(N_CLASSES)}


def build_model(name: str):
    """A random-weight model of ``name``'s published architecture (see the module docstring)."""
    import torch
    from transformers import (
        ConvNextConfig,
        SegformerConfig,
        SegformerForSemanticSegmentation,
        UperNetConfig,
        UperNetForSemanticSegmentation,
    )

    torch.manual_seed(0)
    if name.startswith("upernet-convnext-"):
        depths = {"small": [3, 3, 27, 3], "tiny": [3, 3, 9, 3]}[name.rsplit("-", 1)[1]]
        backbone = ConvNextConfig(
            depths=depths,
            hidden_sizes=[96, 192, 384, 768],
            out_features=["stage1", "stage2", "stage3", "stage4"],
        )
        config = UperNetConfig(
            backbone_config=backbone,
            hidden_size=512,
            auxiliary_in_channels=384,
            pool_scales=[1, 2, 3, 6],
            num_labels=N_CLASSES,
            id2label=_id2label(),
        )
        return UperNetForSemanticSegmentation(config)
    if name in ("segformer-b0", "segformer-b2"):
        sizes = {
            "segformer-b0": dict(
                depths=[2, 2, 2, 2], hidden_sizes=[32, 64, 160, 256], decoder_hidden_size=256
            ),
            "segformer-b2": dict(
                depths=[3, 4, 6, 3], hidden_sizes=[64, 128, 320, 512], decoder_hidden_size=768
            ),
        }[name]
        config = SegformerConfig(
            **sizes,
            num_attention_heads=[1, 2, 5, 8],
            sr_ratios=[8, 4, 2, 1],
            num_labels=N_CLASSES,
            id2label=_id2label(),
        )
        return SegformerForSemanticSegmentation(config)
    raise ValueError(f"unknown model {name!r}; choose from {sorted(PUBLISHED_MIOU)}")


def save_candidate(name: str, root: Path, fed_sizes: list[int]) -> dict[int, Path]:
    """Save ``name``'s random model once and one processor per fed size; ``{fed: directory}``."""
    from transformers import SegformerImageProcessor

    model = build_model(name)
    weights = root / name / "weights"
    model.save_pretrained(weights)
    dirs = {}
    for fed in fed_sizes:
        directory = root / name / f"fed{fed}"
        directory.mkdir(parents=True)
        for item in weights.iterdir():
            (directory / item.name).symlink_to(item)
        SegformerImageProcessor(size={"height": fed, "width": fed}).save_pretrained(directory)
        dirs[fed] = directory
    return dirs


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class Sample:
    wall: float
    cpu: float
    load: float
    peak_mb: float
    rise_mb: float


def timed(fn: Callable[[], object]) -> Sample:
    """Wall and process CPU seconds of ``fn()``, the 1-min load average after it, peak RSS."""
    reset = _reset_peak()
    before = _status_kb("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = _status_kb("VmHWM") if reset else 0
    return Sample(wall, cpu, os.getloadavg()[0], peak / 1024, max(peak - before, 0) / 1024)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["upernet-convnext-small", "segformer-b0", "segformer-b2"]
    )
    parser.add_argument("--fed", nargs="+", type=int, default=[224, 512])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    from transformers.utils import logging as hf_logging

    from cityviz.segment import HFSegmenter

    hf_logging.disable_progress_bar()

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (max(args.batches), CROP, CROP, 3), dtype=np.uint8)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f} at start"
    )
    for name in args.models:
        print(f"  {name}: architecture of {HUB_ID[name]}, random weights")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-segment-") as tmp:
        segmenters: dict[tuple[str, int], HFSegmenter] = {}
        params: dict[str, float] = {}
        for name in args.models:
            dirs = save_candidate(name, Path(tmp), args.fed)
            for fed, directory in dirs.items():
                seg = HFSegmenter(directory, device="cpu", batch_size=max(args.batches))
                segmenters[(name, fed)] = seg
                params[name] = sum(p.numel() for p in seg.model.parameters()) / 1e6
        print(f"built and loaded {len(segmenters)} segmenters in {time.perf_counter() - t0:.1f} s")
        settings = [(fed, b) for fed in args.fed for b in args.batches]
        for name, fed in segmenters:  # warm-up: one batch-1 call each
            segmenters[(name, fed)].segment(crops[:1])
        samples: dict[tuple[str, int, int], list[Sample]] = {}
        for r in range(args.rounds):
            for fed, b in settings:
                for name in args.models:
                    seg = segmenters[(name, fed)]
                    s = timed(lambda seg=seg, b=b: seg.segment(crops[:b]))
                    samples.setdefault((name, fed, b), []).append(s)
                    print(
                        f"  {name} fed {fed} batch {b}: {s.wall:.2f} s wall, {s.cpu:.2f} s CPU, "
                        f"load {s.load:.1f}, peak RSS {s.peak_mb:.0f} MB (+{s.rise_mb:.0f})",
                        flush=True,
                    )
            print(
                f"round {r + 1}/{args.rounds} done at {time.perf_counter() - t0:.0f} s, "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )

    header = (
        f"{'model':24} {'params M':>8} {'mIoU':>5} {'fed':>4} {'batch':>5} {'img/s best':>10} "
        f"{'img/s med':>9} {'CPU s/img':>9} {'load':>9} {'peak RSS MB':>11} {'rise MB':>7}"
    )
    print(header)
    for fed, b in settings:
        for name in args.models:
            ss = samples[(name, fed, b)]
            loads = [s.load for s in ss]
            print(
                f"{name:24} {params[name]:8.1f} {PUBLISHED_MIOU[name]:5.1f} {fed:4d} {b:5d} "
                f"{b / min(s.wall for s in ss):10.3f} "
                f"{b / statistics.median(s.wall for s in ss):9.3f} "
                f"{statistics.median(s.cpu for s in ss) / b:9.2f} "
                f"{min(loads):4.0f}-{max(loads):<4.0f} "
                f"{max(s.peak_mb for s in ss):11.0f} {max(s.rise_mb for s in ss):7.0f}"
            )
    base = args.models[0]
    print(f"\nspeed relative to {base} (median img/s ratio, same setting, same run):")
    for fed, b in settings:
        ref = statistics.median(s.wall for s in samples[(base, fed, b)])
        ratios = ", ".join(
            f"{name} {ref / statistics.median(s.wall for s in samples[(name, fed, b)]):.1f}x"
            for name in args.models[1:]
        )
        print(f"  fed {fed}, batch {b}: {ratios}")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
