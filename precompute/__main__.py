"""``python -m precompute``: build or refresh a cityviz cache.

Examples::

    python -m precompute                                  # the demo profile on synthetic cities
    python -m precompute --data ~/photos --cache cache/mine --profile paper --device cuda
    python -m precompute --stages stats,embed             # rerun only some stages
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.util
import logging
import os
import signal
import time
from pathlib import Path

from cityviz.config import PROFILE_HELP, PROFILES, STAGES, RunConfig, default_profile


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


def _split(s: str) -> tuple[float, float, float]:
    """``6:2:2`` → ``(0.6, 0.2, 0.2)``: train/val/test shares of each city's spots."""
    parts = s.split(":")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 0 or values[0] <= 0 or values[2] <= 0:
        raise argparse.ArgumentTypeError(
            f"expected TRAIN:VAL:TEST shares with train and test above 0, e.g. 6:2:2; got {s!r}"
        )
    total = sum(values)
    return (values[0] / total, values[1] / total, values[2] / total)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m precompute",
        description="Run models, Grad-CAM masks, segmentation, statistics, embeddings and "
        "thumbnails into a cache directory that the dashboard reads.",
    )
    p.add_argument(
        "--profile",
        default=None,
        choices=sorted(PROFILES),
        help="(default: demo for the synthetic set; for --data, paper on a GPU, else cpu) "
        + "; ".join(f"{k}: {v}" for k, v in PROFILE_HELP.items()),
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
    p.add_argument(
        "--fresh",
        action="store_true",
        help="delete what cityviz wrote in the cache first (only a cityviz cache; after checks)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything and print the time estimate, then stop before any training",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="who runs the per-image stages (cams, segment): this process, or Ray actors "
        "(pip install -r requirements-scale.txt)",
    )
    p.add_argument(
        "--ray-address",
        metavar="auto|HOST:PORT",
        help="join a running Ray cluster (default: start a local one on this machine)",
    )
    p.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        metavar="N",
        help="train each model with N processes (DistributedDataParallel: gloo on CPU, one GPU "
        "each with NCCL on CUDA); the global batch stays --batch-size",
    )
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
    p.add_argument(
        "--reduce-labels",
        action="store_true",
        default=None,
        help="label PNGs are 1-based with 0 = 'other' (ADE20K's own release): shift them down",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="autocast of training, predictions, Grad-CAM and (on CUDA) the segmenter; auto "
        "(default): bf16 on a GPU that supports it, else fp16; fp32 on a CPU",
    )
    p.add_argument(
        "--num-workers",
        type=int,
        metavar="N",
        help="DataLoader processes that decode and read image batches (default 0: this process; "
        "the results do not depend on it)",
    )
    p.add_argument("--cam-method", choices=["gradcam", "gradcam++", "hirescam", "layercam"])
    p.add_argument("--threshold", type=float, help="explanation threshold (default 0.5)")
    p.add_argument("--max-images-per-city", type=int)
    p.add_argument(
        "--split",
        type=_split,
        metavar="TRAIN:VAL:TEST",
        help="shares of each city's spots per split (default 6:2:2, the paper's)",
    )
    p.add_argument(
        "--trust-sample",
        type=int,
        metavar="N",
        help="test images for the randomisation, other-city and deletion checks (default 32)",
    )
    p.add_argument(
        "--trust-removal-max",
        type=int,
        metavar="N",
        help="test images per city and object for the object-removal check (default 32)",
    )
    p.add_argument(
        "--spot-radius",
        type=float,
        metavar="METRES",
        help="photos with coordinates closer than this share a spot (default 25)",
    )
    p.add_argument("--data-dir", default="data", help="where the synthetic set is generated")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-q", "--quiet", action="store_true")
    return p.parse_args(argv)


# flag name -> RunConfig field, for the flags that override a profile's value
_OVERRIDES = {
    "data": "data",
    "archs": "archs",
    "seeds": "seeds",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "image_size": "image_size",
    "input_size": "input_sizes",
    "lr": "lr",
    "pretrained": "pretrained",
    "segmenter": "segmenter",
    "reduce_labels": "reduce_labels",
    "precision": "precision",
    "num_workers": "num_workers",
    "cam_method": "cam_method",
    "threshold": "threshold",
    "max_images_per_city": "max_images_per_city",
    "trust_sample": "trust_sample",
    "trust_removal_max": "trust_removal_max",
    "spot_radius": "spot_radius_m",
    "split": "split_ratios",
    "cities": "synth_cities",
    "spots_per_city": "synth_spots_per_city",
}


def profile_name(args: argparse.Namespace, cuda: bool | None = None) -> str:
    """The profile named by ``--profile``, else the default for the data (see default_profile)."""
    if args.profile:
        return args.profile
    if cuda is None:
        cuda = args.device != "cpu" and _cuda_available()
    return default_profile(args.data, cuda)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


def build_config(args: argparse.Namespace, cuda: bool | None = None) -> RunConfig:
    """The run's config: the profile, then every flag given on the command line on top.

    Explicit flags always win: ``--image-size`` alone sets every model's input size (a profile's
    per-architecture sizes are dropped), ``--input-size`` adds to or replaces the profile's.
    """
    return build_config_with_sources(args, cuda)[0]


def build_config_with_sources(
    args: argparse.Namespace, cuda: bool | None = None
) -> tuple[RunConfig, dict[str, str]]:
    """:func:`build_config` and, per setting that differs from the defaults, where it came from
    (``"--flag"`` or ``"profile NAME"``)."""
    name = profile_name(args, cuda)
    cfg = PROFILES[name]
    base = RunConfig().to_dict()
    sources = {k: f"profile {name}" for k, v in cfg.to_dict().items() if base.get(k) != v}
    overrides = {}
    for flag, key in _OVERRIDES.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        overrides[key] = value
        sources[key] = "--" + flag.replace("_", "-")
    if "input_sizes" in overrides:
        overrides["input_sizes"] = {**cfg.input_sizes, **overrides["input_sizes"]}
    elif "image_size" in overrides and cfg.input_sizes:
        overrides["input_sizes"] = {}
        sources["input_sizes"] = "--image-size"
    cfg = cfg.replace(**overrides)
    if cfg.precision == "auto":  # stored resolved: a cache's identity says what ran
        from cityviz.models.train import resolve_precision

        if cuda is None:
            cuda = args.device != "cpu" and _cuda_available()
        where = "cuda" if cuda else "cpu"
        cfg = cfg.replace(precision=resolve_precision(where, "auto"))
        sources["precision"] = f"{sources.get('precision', 'default')}: auto on {where}"
    if cfg.data != "synthetic":
        cfg = cfg.replace(data=str(Path(cfg.data).expanduser().resolve()))
    return cfg, sources


class Interrupted(BaseException):
    """Raised from the SIGTERM handler so that a terminated run ends like a Ctrl-C (a
    BaseException, as KeyboardInterrupt is, so no ``except Exception`` swallows it)."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 bad data or options, 2 environment or
    cache-ownership problems, 3 a bug (its traceback saved to a file), 130 interrupted). Never
    ends in a traceback."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    # openTSNE logs its choice of gradient method at INFO for every map: noise in a run's output
    logging.getLogger("openTSNE").setLevel(logging.WARNING)
    log = logging.getLogger("precompute")
    run = _Run(args, log)
    previous = signal.getsignal(signal.SIGTERM)
    with contextlib.suppress(ValueError):  # not the main thread: leave SIGTERM alone
        signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        return run()
    except (KeyboardInterrupt, Interrupted):
        log.error("%s", run.interrupted_message())
        return 130
    finally:
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted


class _Run:
    def __init__(self, args: argparse.Namespace, log: logging.Logger) -> None:
        self.args = args
        self.log = log
        self.cache_dir = Path(args.cache or default_cache_dir(args))
        self.store = None
        self.stage = None

    def interrupted_message(self) -> str:
        if self.store is None or not self.store.exists():
            return "Interrupted before anything was written to the cache."
        done = {
            name: len(st.get("units", {}))
            for name, st in self.store.manifest.get("stages", {}).items()
        }
        kept = ", ".join(f"{k} {v}" for k, v in done.items() if v) or "nothing yet"
        return (
            f"Interrupted{f' during stage {self.stage}' if self.stage else ''}: finished units "
            f"are kept in {self.cache_dir} ({kept}); rerun the same command to resume."
        )

    def __call__(self) -> int:
        from cityviz.models.archs import WeightsUnavailable, list_archs
        from cityviz.models.distributed import DistributedError
        from cityviz.models.train import resolve_device
        from cityviz.segment import SegmenterUnavailable
        from cityviz.store import CacheError
        from precompute.executors import ExecutorUnavailable

        args, log = self.args, self.log
        unknown = [s for s in args.stages if s not in STAGES]
        if unknown:
            log.error("unknown stage(s) %s; stages are %s", unknown, ", ".join(STAGES))
            return 2
        try:
            device = resolve_device(args.device)
        except RuntimeError as exc:
            log.error("%s", exc)
            return 2
        if args.nproc_per_node < 1:
            log.error("--nproc-per-node must be at least 1, got %d", args.nproc_per_node)
            return 2
        if device.type == "cuda" and args.nproc_per_node > _cuda_count():
            log.error(
                "--nproc-per-node %d on CUDA needs as many GPUs; this machine has %d.",
                args.nproc_per_node,
                _cuda_count(),
            )
            return 2
        cfg, sources = build_config_with_sources(args, cuda=device.type == "cuda")
        bad = sorted((set(cfg.input_sizes) | set(cfg.archs)) - set(list_archs()))
        if bad:
            log.error(
                "unknown architecture(s) %s (--archs/--input-size); known: %s", bad, list_archs()
            )
            return 2
        if not args.profile:
            log.info(
                "profile %s (the default for %s)",
                profile_name(args, device.type == "cuda"),
                "the synthetic set"
                if cfg.data == "synthetic"
                else "your photos on " + ("a GPU" if device.type == "cuda" else "a CPU"),
            )
        try:
            return self._run(cfg, sources, device)
        except (CacheError, NotADirectoryError, DistributedError, ExecutorUnavailable) as exc:
            log.error("%s", exc)
            return 2
        except (SegmenterUnavailable, WeightsUnavailable, FileNotFoundError, ValueError) as exc:
            log.error("%s", exc)  # bad input data or options: a message, not a traceback
            return 1
        except OSError as exc:
            log.error("%s", environment_message(exc, self.cache_dir))
            return 2
        except Exception as exc:
            if _is_safetensors_error(exc):
                log.error("%s", environment_message(exc, self.cache_dir))
                return 2
            where = self._save_traceback()
            log.error(
                "Unexpected error: %s: %s. This is a bug in cityviz; the traceback is in %s. "
                "Finished work is kept; rerun the same command to resume.",
                type(exc).__name__,
                " ".join(str(exc).split())[:300],
                where,
            )
            return 3

    def _save_traceback(self) -> Path:
        """Write the current exception's traceback under the cache's ``parts/`` (a folder
        cityviz owns), or to a temporary file when there is no cache yet; returns the path."""
        import tempfile
        import traceback

        text = traceback.format_exc()
        if self.store is not None and self.store.exists():
            path = self.cache_dir / "parts" / "last-error.txt"
            with contextlib.suppress(OSError):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                return path
        fd, name = tempfile.mkstemp(prefix="cityviz-error-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return Path(name)

    def _run(self, cfg: RunConfig, sources: dict[str, str], device) -> int:
        from cityviz.store import Cache, CacheStore, check_cache_dir
        from precompute import preflight
        from precompute.executors import ExecutorUnavailable, make_executor
        from precompute.identity import Identities
        from precompute.stages import (
            Context,
            build_segmenter,
            dataset_info,
            resolve_dataset,
            run_stages,
        )
        from precompute.summary import format_summary

        args, log = self.args, self.log
        if args.executor == "ray" and importlib.util.find_spec("ray") is None:
            raise ExecutorUnavailable(
                "--executor ray needs Ray, which is not installed: "
                "pip install -r requirements-scale.txt"
            )
        check_cache_dir(self.cache_dir)
        preflight.check_writable(self.cache_dir)
        preflight.check_pretrained(cfg)
        progress = not args.no_progress
        t0 = time.perf_counter()
        self.stage = "data"
        dataset = resolve_dataset(cfg, Path(args.data_dir), progress)
        data_seconds = time.perf_counter() - t0
        warn_unknown_spots(dataset, log)
        order = [s for s in STAGES if s in args.stages]
        segmenter, checked = None, False
        if "segment" in order:  # load it now: a missing model fails before any training
            segmenter, checked = build_segmenter(cfg, dataset, device), True
        preflight.check_disk(self.cache_dir, preflight.estimate_cache_bytes(cfg, len(dataset)))
        store = CacheStore(self.cache_dir)
        info = dataset_info(cfg, dataset)
        if args.dry_run:  # touches nothing: no lock file, no --fresh, no manifest
            ids = Identities(cfg, info["fingerprint"])
            old = store if store.exists() and not args.fresh else None
            todo = [m for m in cfg.model_ids if old is None or not old.unit_done(
                "train", m, ids.model(m))]  # fmt: skip
            self._estimate(cfg, dataset, device, order, todo)
            print("Dry run: every check passed; nothing was written or trained.")
            return 0
        executor = make_executor(args.executor, args.ray_address, progress=progress)
        with contextlib.closing(executor), store.lock():
            self.store = store
            if args.fresh:
                kept = store.clear()
                if kept:
                    log.warning(
                        "--fresh left %d file(s) cityviz did not write in %s: %s",
                        len(kept),
                        self.cache_dir,
                        ", ".join(kept[:5]),
                    )
            changed = store.init(cfg.to_dict(), info, owned=args.fresh)
            if changed:
                log.info(
                    "settings changed since this cache was built: %s; only the stages "
                    "that depend on them are redone",
                    ", ".join(changed),
                )
            store.manifest["config_sources"] = sources
            ctx = Context(
                cfg=cfg,
                store=store,
                dataset=dataset,
                device=device,
                progress=progress,
                nproc=args.nproc_per_node,
                executor=executor,
            )
            ctx.segmenter, ctx.segmenter_checked = segmenter, checked
            ctx.timings["generate"] = data_seconds
            todo = [m for m in cfg.model_ids if not ctx.done("train", m)]
            est = self._estimate(cfg, dataset, device, order, todo)
            if est is not None:
                store.manifest["estimate"] = {k: round(v, 1) for k, v in est.seconds.items()}
                store.save_manifest()
            run_stages(ctx, order, force=args.force, on_stage=self._entered)
            self.stage = None
        print(format_summary(Cache(self.cache_dir), ctx.timings))
        print(f"\nTotal precompute time: {time.perf_counter() - t0:.1f} s on {device}.")
        return 0

    def _entered(self, stage: str) -> None:
        self.stage = stage

    def _estimate(self, cfg: RunConfig, dataset, device, order: list[str], todo: list[str]):
        """Log the estimated wall time of the models still to train (with advice when long);
        returns the :class:`~precompute.preflight.Estimate` or None when nothing is to train."""
        from precompute import preflight

        if "train" not in order or not todo:
            return None
        sizes = preflight.split_sizes(len(dataset), cfg.split_ratios)
        est = preflight.estimate_run(cfg, sizes, len(dataset.cities), device, todo)
        tip = preflight.advice(est, cfg, device)
        if tip:
            self.log.warning("%s", tip)
        else:
            self.log.info("estimated time: %s on %s", est.describe(), device)
        return est


def default_cache_dir(args: argparse.Namespace) -> str:
    """``cache/<profile>``, ``cache/synthetic-demo`` for the demo, ``cache/<folder>`` for photos."""
    if args.profile:
        return f"cache/{args.profile}"
    if args.data in (None, "synthetic"):
        return "cache/synthetic-demo"
    return f"cache/{Path(args.data).expanduser().name.removesuffix('.csv') or 'photos'}"


def warn_unknown_spots(dataset, log: logging.Logger) -> None:
    """Warn when photos carry no spot information (each is its own spot: nearby photos may sit
    in train and test)."""
    sources = getattr(dataset, "spot_sources", None) or {}
    unknown = int(sources.get("file", 0))
    if unknown:
        log.warning(
            "%d of %d photos have no spot information (no spot column, no Pittsburgh or VPR file "
            "name): each is its own spot, so nearby photos may sit in train and test.",
            unknown,
            len(dataset),
        )


def _is_safetensors_error(exc: BaseException) -> bool:
    return type(exc).__name__ == "SafetensorError"


def environment_message(exc: BaseException, cache_dir: Path) -> str:
    """One sentence for a failure of the machine rather than the data (full disk, permissions,
    read-only file system, a file where a directory should be)."""
    text = getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0]
    if text == os.strerror(errno.ENOSPC) or "StorageFull" in str(exc):
        text = "the disk is full"
    where = getattr(exc, "filename", None)
    return (
        f"Cannot write the cache at {cache_dir}: {text}"
        + (f" ({where})" if where else "")
        + ". Finished work is kept; fix this and rerun the same command to resume."
    )


if __name__ == "__main__":
    raise SystemExit(main())
