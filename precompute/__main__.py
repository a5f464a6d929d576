"""``python -m precompute``: build or refresh a cityviz cache.

Examples::

    python -m precompute                                  # the demo profile on synthetic cities
    python -m precompute --data ~/photos --cache cache/mine --profile paper --device cuda
    python -m precompute --stages stats,embed             # rerun only some stages
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path

from cityviz.config import PROFILE_HELP, PROFILES, STAGES, RunConfig


def _csv(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def _sizes(s: str) -> dict[str, int]:
    """``resnet18=192,vgg11=128`` → ``{"resnet18": 192, "vgg11": 128}``."""
    out = {}
    for item in _csv(s):
        arch, sep, size = item.partition("=")
        if not sep or not size.strip().isdigit() or int(size) < 16:
            raise argparse.ArgumentTypeError(f"expected ARCH=PIXELS (16 or more), got {item!r}")
        out[arch.strip()] = int(size)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m precompute",
        description="Run models, Grad-CAM masks, segmentation, statistics, embeddings and "
        "thumbnails into a cache directory that the dashboard reads.",
    )
    p.add_argument(
        "--profile",
        default="demo",
        choices=sorted(PROFILES),
        help="; ".join(f"{k}: {v}" for k, v in PROFILE_HELP.items()),
    )
    p.add_argument(
        "--data",
        help="'synthetic' (default) or a folder root/<city>/**/*.jpg, a CSV "
        "(path,city[,spot][,label_path]) or a directory with manifest.csv",
    )
    p.add_argument("--cache", help="cache directory (default: cache/<profile>)")
    p.add_argument(
        "--stages",
        type=_csv,
        default=STAGES,
        help=f"comma-separated subset of {','.join(STAGES)} (default: all)",
    )
    p.add_argument("--force", action="store_true", help="rerun the chosen stages even if done")
    p.add_argument("--fresh", action="store_true", help="delete the cache directory first")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--cities", type=_csv, help="synthetic city names (2-8), e.g. a,b,c")
    p.add_argument("--spots-per-city", type=int, help="synthetic spots per city")
    p.add_argument("--archs", type=_csv, help="e.g. simple,simpler,vgg11,resnet18")
    p.add_argument("--seeds", type=lambda s: tuple(int(x) for x in _csv(s)), help="e.g. 0,1")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int, help="cache resolution and default model input")
    p.add_argument(
        "--input-size",
        type=_sizes,
        metavar="ARCH=PIXELS,...",
        help="model input size per architecture, e.g. resnet18=192 (default: --image-size)",
    )
    p.add_argument("--lr", type=float)
    p.add_argument(
        "--pretrained",
        action="store_true",
        default=None,
        help="initialise vgg11/resnet18 from torchvision's ImageNet weights",
    )
    p.add_argument("--segmenter", help="auto | annotations | hf | hf:<hub-id-or-dir> | none")
    p.add_argument("--cam-method", choices=["gradcam", "gradcam++", "hirescam", "layercam"])
    p.add_argument("--threshold", type=float, help="explanation threshold (default 0.5)")
    p.add_argument("--max-images-per-city", type=int)
    p.add_argument("--data-dir", default="data", help="where the synthetic set is generated")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-q", "--quiet", action="store_true")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> RunConfig:
    cfg = PROFILES[args.profile]
    overrides = {
        "data": args.data,
        "archs": args.archs,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "input_sizes": {**cfg.input_sizes, **args.input_size} if args.input_size else None,
        "lr": args.lr,
        "pretrained": args.pretrained,
        "segmenter": args.segmenter,
        "cam_method": args.cam_method,
        "threshold": args.threshold,
        "max_images_per_city": args.max_images_per_city,
        "synth_cities": args.cities,
        "synth_spots_per_city": args.spots_per_city,
    }
    cfg = cfg.replace(**{k: v for k, v in overrides.items() if v is not None})
    if cfg.data != "synthetic":
        cfg = cfg.replace(data=str(Path(cfg.data).expanduser().resolve()))
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    log = logging.getLogger("precompute")
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        log.error("unknown stage(s) %s; stages are %s", unknown, ", ".join(STAGES))
        return 2
    # imported late so that --help is instant
    from cityviz.models.archs import WeightsUnavailable, list_archs
    from cityviz.models.train import resolve_device
    from cityviz.segment import SegmenterUnavailable
    from cityviz.store import Cache, CacheError, CacheStore
    from precompute.stages import Context, dataset_info, resolve_dataset, run_stages
    from precompute.summary import format_summary

    cfg = build_config(args)
    bad = sorted(set(cfg.input_sizes) - set(list_archs()))
    if bad:
        log.error("--input-size names unknown architecture(s) %s; known: %s", bad, list_archs())
        return 2
    cache_dir = Path(args.cache or f"cache/{args.profile}")
    if args.fresh and cache_dir.exists():
        shutil.rmtree(cache_dir)
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 2
    progress = not args.no_progress
    t0 = time.perf_counter()
    try:
        dataset = resolve_dataset(cfg, Path(args.data_dir), progress)
        data_seconds = time.perf_counter() - t0
        store = CacheStore(cache_dir)
        store.init(cfg.to_dict(), dataset_info(cfg, dataset))
        ctx = Context(cfg=cfg, store=store, dataset=dataset, device=device, progress=progress)
        ctx.timings["generate"] = data_seconds
        order = [s for s in STAGES if s in args.stages]
        run_stages(ctx, order, force=args.force)
    except (CacheError, SegmenterUnavailable, WeightsUnavailable, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 1
    except ValueError as exc:  # bad input data or options: a message, not a traceback
        log.error("%s", exc)
        return 1
    print(format_summary(Cache(cache_dir), ctx.timings))
    print(f"\nTotal precompute time: {time.perf_counter() - t0:.1f} s on {device}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
