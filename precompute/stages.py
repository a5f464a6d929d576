"""The precompute stages: data → train → cams → segment → stats → embed → thumbs.

Each stage reads what earlier stages wrote to the cache and writes its own outputs there. Work is
cut into units (a model, a shard of test rows) that are written atomically under ``parts/`` and
recorded in the manifest, so a killed run picks up at its last finished unit and ends with the
same files as an uninterrupted one. ``stats`` runs before ``embed`` because the map's cluster
labels ("signboard · fence") come from the object histograms.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cityviz import cam, embed, ood, stats, thumbs
from cityviz.config import RunConfig, model_id
from cityviz.data import synth
from cityviz.data.datasets import CityDataset, grouped_split, load_dataset
from cityviz.data.images import image_batches
from cityviz.models.archs import get_arch
from cityviz.models.checkpoint import load_checkpoint, save_checkpoint
from cityviz.models.distributed import train_distributed
from cityviz.models.train import confusion, predict, train_model
from cityviz.segment import AnnotationSegmenter, Segmenter, segmenter_from_spec
from cityviz.store import (
    THUMBS_PER_ROW,
    THUMBS_PER_SHEET,
    CacheStore,
    inputs_rel,
    load_arrays,
    predictions_frame,
    save_arrays,
    save_table,
    thumb_sheet_rel,
)
from cityviz.trust import nulls
from precompute import workers
from precompute.executors import LocalExecutor, RayExecutor
from precompute.identity import Identities, digest
from precompute.trust import stage_trust

log = logging.getLogger("precompute")
SPLITS = ("train", "val", "test")


@dataclass
class Context:
    cfg: RunConfig
    store: CacheStore
    dataset: CityDataset
    device: torch.device
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)
    ids: Identities | None = None
    # the segmenter built (and so checked) before any training; None: build it in its stage
    segmenter: Segmenter | None = None
    segmenter_checked: bool = False
    # processes per model in the train stage (cityviz.models.distributed); 1 = this process
    nproc: int = 1
    # who runs the per-image stages' units (precompute.executors)
    executor: LocalExecutor | RayExecutor = field(default_factory=LocalExecutor)

    def __post_init__(self) -> None:
        if self.ids is None:
            self.ids = Identities(self.cfg, self.store.manifest["dataset"]["fingerprint"])

    def done(self, stage: str, unit: str) -> bool:
        """Whether ``unit`` of ``stage`` is finished with the current settings."""
        return self.store.unit_done(stage, unit, self.ids.unit(stage, unit))

    def mark(self, stage: str, unit: str) -> None:
        """Record ``unit`` of ``stage`` as finished with the current settings (and where the run
        is, for a dashboard opened early)."""
        progress = self.store.manifest.get("progress")
        if isinstance(progress, dict) and progress.get("stage") == stage:
            done = progress["units_done"] = progress.get("units_done", 0) + 1
            progress["now_done"] = progress.get("now_done", 0) + 1
            elapsed = time.time() - progress.get("started", time.time())
            left = max(0, progress.get("units_total", done) - done)
            progress["eta_seconds"] = round(elapsed / progress["now_done"] * left, 1)
        self.store.mark_unit_done(stage, unit, self.ids.unit(stage, unit))

    def units_total(self, stage: str) -> int:
        """How many units ``stage`` has for this run (for progress reports)."""
        n_models = len(self.cfg.model_ids)
        n_shards = -(-sum(self.store.manifest["dataset"].get("split_counts", {}).get(c, {}).get(
            "test", 0) for c in self.dataset.cities) // self.cfg.shard_size)  # fmt: skip
        return {
            "data": 3 * len(self.cfg.decode_sizes),
            "train": n_models,
            "cams": n_models * (max(n_shards, 1) + 1),  # shards + the OOD reference
            "segment": max(n_shards, 1),
            # shards + one permutation-null unit per model (object statistics need labels)
            "stats": max(n_shards, 1) + (n_models if self.cfg.segmenter != "none" else 0),
            "trust": n_models,
            "embed": n_models,
            "thumbs": max(1, -(-n_shards * self.cfg.shard_size // THUMBS_PER_SHEET)),
        }.get(stage, 1)

    def unit_finished(self, stage: str) -> Callable[[str], None]:
        """The executor's callback for ``stage``: record a finished unit (and the kill tests'
        delay)."""

        def finished(unit: str) -> None:
            self.mark(stage, unit)
            _test_delay()

        return finished

    def units_done(self, stage: str) -> int:
        units = self.store.stage(stage)["units"]
        return sum(1 for u, ident in units.items() if ident == self.ids.unit(stage, u))

    @property
    def size(self) -> int:
        return self.cfg.image_size

    def bar(self, total: int, desc: str, unit: str = "img") -> tqdm:
        return tqdm(total=total, desc=desc, unit=unit, disable=not self.progress, leave=False)

    def images(self) -> pd.DataFrame:
        return self.store.read_table("images.parquet")

    def inputs(self, split: str, size: int | None = None) -> np.ndarray:
        return self.store.load_array(inputs_rel(split, size or self.size, self.size))

    def n_test(self) -> int:
        return len(self.inputs("test"))

    def shards(self) -> Iterator[tuple[int, slice]]:
        n, size = self.n_test(), self.cfg.shard_size
        for k, start in enumerate(range(0, n, size)):
            yield k, slice(start, min(start + size, n))

    def models(self) -> list[dict]:
        return list(self.store.manifest.get("models", []))


def _test_delay() -> None:
    """Test hook: ``CITYVIZ_TEST_UNIT_DELAY`` seconds of sleep after each unit (kill tests)."""
    delay = float(os.environ.get("CITYVIZ_TEST_UNIT_DELAY", "0") or 0)
    if delay:
        time.sleep(delay)


# ---------------------------------------------------------------------------------------------
# data set resolution (before the cache is opened: its fingerprint is part of the cache identity)


def resolve_dataset(cfg: RunConfig, data_dir: Path, progress: bool) -> CityDataset:
    """The run's images: the synthetic set (rendered once into ``data_dir``) or the user's."""
    if cfg.data == "synthetic":
        scene = synth_scene(cfg)
        # a render of the same scenes at a larger size serves too: dropping a model that needed
        # the larger input must not re-render (and so change) the data set
        size = max([cfg.render_size, *_rendered_sizes(data_dir, scene)])
        sc = synth.SynthConfig(**scene, size=size)
        key = hashlib.sha256(json.dumps(sc.__dict__, sort_keys=True, default=list).encode())
        out = data_dir / f"synthetic-{key.hexdigest()[:10]}"
        synth.generate(out, sc, progress=progress)
        ds = load_dataset(out, check_images=False)
        ds.scene_fingerprint = digest([scene, synth.GENERATOR_VERSION])
        return ds
    return load_dataset(cfg.data, progress=progress, spot_radius_m=cfg.spot_radius_m)


def synth_scene(cfg: RunConfig) -> dict:
    """What the synthetic set shows, whatever the size it is rendered at."""
    return {
        "cities": tuple(cfg.synth_cities),
        "spots_per_city": cfg.synth_spots_per_city,
        "views_per_spot": cfg.synth_views_per_spot,
        "seed": cfg.synth_seed,
    }


def _rendered_sizes(data_dir: Path, scene: dict) -> list[int]:
    """Sizes at which complete renders of ``scene`` already exist under ``data_dir``."""
    sizes = []
    for meta_path in Path(data_dir).glob("synthetic-*/synth.json"):
        try:
            meta = json.loads(meta_path.read_text())
            conf = dict(meta["config"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        size = conf.pop("size", None)
        ok = meta.get("generator_version") == synth.GENERATOR_VERSION
        want = {k: list(v) if isinstance(v, tuple) else v for k, v in scene.items()}
        same = all(conf.get(k) == v for k, v in want.items())
        if ok and same and isinstance(size, int) and (meta_path.parent / "manifest.csv").is_file():
            sizes.append(size)
    return sizes


def dataset_info(cfg: RunConfig, ds: CityDataset) -> dict:
    kind = (
        "synthetic"
        if cfg.data == "synthetic"
        else ("csv" if str(cfg.data).endswith(".csv") else "folder")
    )
    return {
        "source": str(ds.root),
        "kind": kind,
        # the synthetic set is identified by its scenes, not by the size they were rendered at
        "fingerprint": getattr(ds, "scene_fingerprint", None) or ds.fingerprint(),
        "spot_sources": dict(getattr(ds, "spot_sources", {}) or {}),
        "n_images": len(ds),
        "cities": list(ds.cities),
        "discriminative": ds.discriminative,
        "has_annotations": any(r.label_path for r in ds.records),
        "class_names": list(ds.class_names) if ds.class_names else None,
        "skipped": [list(s) for s in ds.skipped[:100]],
        "n_skipped": len(ds.skipped),
        # where each photo's lat/lon came from (csv, name, exif, none), and unusable CSV values
        "geo_sources": dict(getattr(ds, "geo_sources", {}) or {}),
        "geo_warnings": [list(w) for w in (getattr(ds, "geo_warnings", None) or [])[:100]],
        "n_geo_warnings": len(getattr(ds, "geo_warnings", None) or []),
    }


# ---------------------------------------------------------------------------------------------
# stages


def stage_data(ctx: Context) -> None:
    """Split by spot (``split_ratios`` per city, 6:2:2 by default) and decode every image once per
    size that a stage reads."""
    cfg, store = ctx.cfg, ctx.store
    df = ctx.dataset.to_frame()
    if cfg.max_images_per_city:
        df = (
            df.groupby("city", group_keys=False)
            .apply(lambda g: g.sample(min(len(g), cfg.max_images_per_city), random_state=0))
            .sort_values("image_id")
            .reset_index(drop=True)
        )
    df["split"] = grouped_split(
        df["spot"].tolist(),
        ratios=tuple(cfg.split_ratios),
        seed=cfg.split_seed,
        strata=df["city"].tolist(),
    )
    df["split_row"] = -1
    for split in SPLITS:
        mask = df["split"] == split
        df.loc[mask, "split_row"] = np.arange(int(mask.sum()))
    df["row"] = np.where(df["split"] == "test", df["split_row"], -1)
    df["path"] = df["path"].astype(str)
    df["label_path"] = df["label_path"].astype("string")
    for size in cfg.decode_sizes:
        for split in SPLITS:
            rel = inputs_rel(split, size, ctx.size)
            if ctx.done("data", rel):
                continue
            paths = df.loc[df["split"] == split].sort_values("split_row")["path"].tolist()
            arr = np.zeros((len(paths), size, size, 3), np.uint8)
            bar = ctx.bar(len(paths), f"decode {split} {size} px")
            start = 0
            for batch in image_batches(paths, 256, size=size, num_workers=cfg.num_workers):
                arr[start : start + len(batch)] = batch.numpy()
                start += len(batch)
                bar.update(len(batch))
            bar.close()
            store.save_array(rel, arr)
            ctx.mark("data", rel)
    counts = df.groupby(["city", "split"]).size().unstack(fill_value=0)
    split_counts = {c: {s: int(counts.loc[c].get(s, 0)) for s in SPLITS} for c in counts.index}
    store.save_table("images.parquet", df)
    store.manifest["dataset"]["split_counts"] = split_counts
    for split in SPLITS:
        if not (df["split"] == split).any():
            raise ValueError(
                f"The {split} split is empty: the data set has too few spots per city for a "
                f"{':'.join(f'{r:g}' for r in cfg.split_ratios)} split, or one spot holds most "
                "of a city's photos (photos within --spot-radius metres of each other share a "
                "spot). Add images (or spots) per city, or lower --spot-radius."
            )


def stage_train(ctx: Context) -> None:
    cfg, store = ctx.cfg, ctx.store
    df = ctx.images()
    cities = ctx.dataset.cities
    labels = {
        s: df.loc[df["split"] == s].sort_values("split_row")["city_idx"].to_numpy() for s in SPLITS
    }
    models = {m["model_id"]: m for m in ctx.models()}
    for arch in cfg.archs:
        get_arch(arch)  # fail early on a typo
    for arch in cfg.archs:
        size = cfg.input_size(arch)
        for seed in cfg.seeds:
            mid = model_id(arch, seed)
            if ctx.done("train", mid) and mid in models:
                continue
            settings = dict(
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                lr_step=cfg.lr_step,
                lr_gamma=cfg.lr_gamma,
                pretrained=cfg.pretrained,
                precision=cfg.precision,
                device=ctx.device,
                progress=ctx.progress,
            )
            if ctx.nproc > 1:
                result = train_distributed(
                    ctx.nproc,
                    arch,
                    seed,
                    store.path(inputs_rel("train", size, ctx.size)),
                    labels["train"],
                    store.path(inputs_rel("val", size, ctx.size)),
                    labels["val"],
                    len(cities),
                    **settings,
                )
            else:
                result = train_model(
                    arch,
                    seed,
                    ctx.inputs("train", size),
                    labels["train"],
                    ctx.inputs("val", size),
                    labels["val"],
                    len(cities),
                    **settings,
                )
            acc, cms = {}, {}
            for split in SPLITS:
                pred = predict(
                    result.model,
                    arch,
                    ctx.inputs(split, size),
                    ctx.device,
                    precision=cfg.precision,
                    num_workers=cfg.num_workers,
                ).argmax(1)
                acc[split] = float((pred == labels[split]).mean()) if len(pred) else float("nan")
                cms[split] = confusion(labels[split], pred, len(cities)).tolist()
            meta = {
                "arch": arch,
                "seed": seed,
                "classes": list(cities),
                "input_size": size,
                "epochs": cfg.epochs,
                "lr": cfg.lr,
                "batch_size": cfg.batch_size,
                "pretrained": cfg.pretrained,
                "precision": cfg.precision,
                "accuracy": acc,
                "confusion": cms,
                "history": result.history,
                "best_epoch": result.best_epoch,
                "train_seconds": round(result.seconds, 2),
                "data_fingerprint": store.manifest["dataset"]["fingerprint"],
            }
            save_checkpoint(store.path(f"models/{mid}"), result.model, meta)
            models[mid] = {
                "model_id": mid,
                "arch": arch,
                "seed": seed,
                "display": f"{get_arch(arch).display} · seed {seed}",
                "input_size": size,
                "test_accuracy": acc["test"],
                "val_accuracy": acc["val"],
                "train_accuracy": acc["train"],
                "checkpoint": f"models/{mid}",
                "train_seconds": round(result.seconds, 2),
            }
            store.manifest["models"] = [models[m] for m in cfg.model_ids if m in models]
            ctx.mark("train", mid)
            log.info("%s: test accuracy %.2f%% (%.0f s)", mid, 100 * acc["test"], result.seconds)
            _test_delay()
    # models dropped from --archs/--seeds leave the manifest (their files stay until --fresh)
    store.manifest["models"] = [models[m] for m in cfg.model_ids if m in models]


def stage_cams(ctx: Context) -> None:
    """Grad-CAM maps and predictions for every test image and model, shard by shard (on
    ``ctx.executor``: this process or a Ray cluster), then each model's OOD reference here."""
    cfg, store = ctx.cfg, ctx.store
    df = ctx.images()
    truth = df[df["row"] >= 0].sort_values("row")["city_idx"].to_numpy()
    shards = list(ctx.shards())
    jobs = [
        {
            "unit": f"{m['model_id']}:{k}",
            "model_id": m["model_id"],
            "checkpoint": m["checkpoint"],
            "start": sl.start,
            "stop": sl.stop,
            "out": str(store.part_path("cams", f"{m['model_id']}-{k:05d}", ".npz")),
        }
        for m in ctx.models()
        for k, sl in shards
        if not ctx.done("cams", f"{m['model_id']}:{k}")
    ]
    worker = {"root": str(store.root), "cfg": cfg, "device": str(ctx.device)}
    ctx.executor.map(workers.CamWorker, worker, jobs, ctx.unit_finished("cams"), desc="cams")
    for m in ctx.models():
        mid = m["model_id"]
        ood_rel = f"ood/{mid}.npz"
        if not ctx.done("cams", f"{mid}:ood") or not store.path(ood_rel).exists():
            # the live page's "unlike the test photos" caveat compares a photo's features with
            # these (cityviz.ood: k-NN distance, Sun et al. 2022)
            model, meta = load_checkpoint(store.path(m["checkpoint"]), ctx.device)
            explainer = cam.Explainer(model, meta["arch"], ctx.device)
            test = ctx.inputs("test", int(meta["input_size"]))
            try:
                save_arrays(store.path(ood_rel), **ood.reference_from_images(explainer, test))
            except ValueError as exc:  # fewer than 2 distinct test images
                log.warning("%s: no out-of-distribution reference (%s)", mid, exc)
            ctx.mark("cams", f"{mid}:ood")
    # consolidate
    rows = []
    test_df = df[df["row"] >= 0].sort_values("row")
    for m in ctx.models():
        mid = m["model_id"]
        parts = [load_arrays(store.part_path("cams", f"{mid}-{k:05d}", ".npz")) for k, _ in shards]
        store.save_array(f"cams/{mid}.npy", np.concatenate([p["cams"] for p in parts]))
        probs = np.concatenate([p["probs"] for p in parts])
        explained = np.concatenate([p["target"] for p in parts])
        rows.append(predictions_frame(mid, test_df, truth, probs, explained))
    store.save_table("predictions.parquet", pd.concat(rows, ignore_index=True))


def resolve_segmenter_spec(cfg: RunConfig, ds: CityDataset) -> str:
    if cfg.segmenter != "auto":
        return cfg.segmenter
    return "annotations" if any(r.label_path for r in ds.records) else "hf"


def build_segmenter(
    cfg: RunConfig, ds: CityDataset, device: torch.device, *, check: bool = True
) -> Segmenter | None:
    """The configured segmenter, loaded (so a missing model fails here, before training).
    ``check=False`` skips reading every label map (a worker whose run has checked them).

    Raises ``SegmenterUnavailable`` (no weights here) or ``ValueError`` (a spec that does not fit
    this data set, such as ``annotations`` for photos without label maps).
    """
    label_paths = {r.image_id: r.label_path for r in ds.records if r.label_path is not None}
    segmenter = segmenter_from_spec(
        resolve_segmenter_spec(cfg, ds),
        label_paths=label_paths,
        image_paths={r.image_id: r.path for r in ds.records},
        class_names=ds.class_names,
        device=str(device),
        reduce_labels=cfg.reduce_labels,
        precision=cfg.precision,
    )
    if check and isinstance(segmenter, AnnotationSegmenter):
        segmenter.check_labels()  # every label map fits the class names, before any training
    return segmenter


def stage_segment(ctx: Context) -> None:
    store = ctx.store
    spec = resolve_segmenter_spec(ctx.cfg, ctx.dataset)
    if ctx.segmenter_checked:
        segmenter = ctx.segmenter
    else:
        segmenter = build_segmenter(ctx.cfg, ctx.dataset, ctx.device)
    if segmenter is None:
        store.manifest["segmenter"] = None
        for rel in ("labels.npy", "classes.json"):  # a previous segmenter's output is stale now
            store.path(rel).unlink(missing_ok=True)
        return
    shards = list(ctx.shards())
    jobs = [
        {
            "unit": f"labels:{k}",
            "start": sl.start,
            "stop": sl.stop,
            "out": str(store.part_path("segment", f"labels-{k:05d}")),
        }
        for k, sl in shards
        if not ctx.done("segment", f"labels:{k}")
    ]
    worker = {"root": str(store.root), "cfg": ctx.cfg, "dataset": ctx.dataset,
              "device": str(ctx.device)}  # fmt: skip
    if ctx.executor.name == "local":
        worker["segmenter"] = segmenter  # already loaded (and checked) in this process
    ctx.executor.map(workers.SegmentWorker, worker, jobs, ctx.unit_finished("segment"),
                     desc="segment")  # fmt: skip
    labels = np.concatenate(
        [np.load(store.part_path("segment", f"labels-{k:05d}")) for k, _ in shards]
    )
    store.save_array("labels.npy", labels)
    store.save_json("classes.json", list(segmenter.class_names))
    store.manifest["segmenter"] = {
        "spec": spec,
        "name": segmenter.name,
        "n_classes": len(segmenter.class_names),
    }


def stage_stats(ctx: Context) -> None:
    """Object histograms (threshold-free R_p^c), R_p^c with CIs, per-image AR for every pair."""
    cfg, store = ctx.cfg, ctx.store
    models = [m["model_id"] for m in ctx.models()]
    arch_of = {m["model_id"]: m["arch"] for m in ctx.models()}
    df = ctx.images()
    test_df = df[df["row"] >= 0].sort_values("row")
    ids = test_df["image_id"].to_numpy()
    has_labels = bool(store.manifest.get("segmenter")) and store.path("labels.npy").exists()
    labels = store.load_array("labels.npy") if has_labels else None
    class_names = store.read_json("classes.json") if has_labels else None
    if not has_labels:  # statistics of an earlier segmenter would be stale
        store.path("stats/rpc.parquet").unlink(missing_ok=True)
        store.path("stats/rpc_null.parquet").unlink(missing_ok=True)
        store.path("stats/rpc_contrast.parquet").unlink(missing_ok=True)
        for mid in models:
            store.path(f"hist/{mid}.parquet").unlink(missing_ok=True)
    cams_of = {mid: store.load_array(f"cams/{mid}.npy") for mid in models}
    pairs = list(combinations(models, 2))
    shards = list(ctx.shards())
    jobs = [
        {
            "unit": f"shard:{k}",
            "start": sl.start,
            "stop": sl.stop,
            "out": str(store.part_path("stats", f"shard-{k:05d}", ".npz")),
        }
        for k, sl in shards
        if not ctx.done("stats", f"shard:{k}")
    ]
    worker = {"root": str(store.root), "cfg": cfg, "models": models,
              "n_classes": len(class_names) if labels is not None else 0}  # fmt: skip
    ctx.executor.map(workers.StatsWorker, worker, jobs, ctx.unit_finished("stats"), desc="stats")
    parts = [load_arrays(store.part_path("stats", f"shard-{k:05d}", ".npz")) for k, _ in shards]
    city_of = pd.Series(test_df["city"].to_numpy(), index=ids)
    n_images_of = test_df.groupby("city").size()  # images without labelled pixels count too
    rpc_frames = []
    for mid in models:
        if labels is None:
            break
        hist = stats.hist_frame(
            ids,
            np.concatenate([p[f"hist_row_{mid}"] for p in parts]),
            np.concatenate([p[f"hist_class_{mid}"] for p in parts]),
            np.concatenate([p[f"hist_counts_{mid}"] for p in parts]),
        )
        store.save_table(f"hist/{mid}.parquet", hist)
        table = stats.rpc_table(
            hist,
            city_of,
            cfg.threshold,
            class_names,
            min_mean_pixels=cfg.min_pixels,
            n_images_of=n_images_of,
        )
        ci = stats.rpc_bootstrap(hist, city_of, cfg.threshold, n_boot=cfg.bootstrap, seed=0)
        table = table.merge(ci, on=["city", "class_id"], how="left")
        table.insert(0, "model_id", mid)
        rpc_frames.append(table)
    if rpc_frames:
        store.save_table("stats/rpc.parquet", pd.concat(rpc_frames, ignore_index=True))
        _rpc_trust(ctx, models, test_df, labels, class_names, cams_of)
    ar_frames = [
        pd.DataFrame(
            {
                "model_a": a,
                "model_b": b,
                "image_id": ids,
                "ar": np.concatenate([p[f"ar_{i}"] for p in parts]),
            }
        )
        for i, (a, b) in enumerate(pairs)
    ]
    ar = (
        pd.concat(ar_frames, ignore_index=True)
        if ar_frames
        else pd.DataFrame({"model_a": [], "model_b": [], "image_id": [], "ar": []})
    )
    store.save_table("stats/ar.parquet", ar)
    if pairs:
        store.save_table("stats/ar_summary.parquet", stats.ar_summary(ar, arch_of))
        store.save_json("stats/arch_vs_seed.json", stats.arch_vs_seed(ar, arch_of))


def _rpc_trust(
    ctx: Context,
    models: list[str],
    test_df: pd.DataFrame,
    labels: np.ndarray,
    class_names: list[str],
    cams_of: dict[str, np.ndarray],
) -> None:
    """The trust checks of R_p^c (issue 11): permutation null and city contrast per model.

    One unit per model (``null:<model_id>``), written under ``parts/stats/``; then
    ``stats/rpc_null.parquet`` and ``stats/rpc_contrast.parquet`` (:mod:`cityviz.trust.nulls`).
    The null tests at most ``cfg.null_images`` images per city (a seeded sample, the same for
    every model); seeds derive from the model id, so adding a model changes no other's rows.
    """
    cfg, store = ctx.cfg, ctx.store
    cities = test_df["city"].to_numpy()
    rows = nulls.null_sample(cities, cfg.null_images, seed=0)
    city_of = pd.Series(cities, index=test_df["image_id"].to_numpy())
    frames: dict[str, list[pd.DataFrame]] = {"null": [], "contrast": []}
    bar = ctx.bar(len(models), "R_p^c nulls", unit="model")
    for mid in models:
        unit = f"null:{mid}"
        parts = {k: store.part_path("stats", f"{k}-{mid}", ".parquet") for k in frames}
        if not ctx.done("stats", unit):
            seed = zlib.crc32(mid.encode())
            masks = cam.mask_norm(np.asarray(cams_of[mid][rows]), ctx.size)
            null = nulls.rpc_null_table(
                np.asarray(labels[rows]),
                stats.bin_index(masks, cfg.n_bins),
                cities[rows],
                class_names,
                n_bins=cfg.n_bins,
                n_permutations=cfg.n_permutations,
                min_mean_pixels=cfg.min_pixels,
                seed=seed,
            )
            contrast = nulls.rpc_contrast_table(
                store.read_table(f"hist/{mid}.parquet"),
                city_of,
                class_names,
                n_permutations=cfg.n_permutations,
                n_boot=cfg.bootstrap,
                min_mean_pixels=cfg.min_pixels,
                seed=seed,
            )
            for key, table in (("null", null), ("contrast", contrast)):
                table.insert(0, "model_id", mid)
                save_table(parts[key], table)
            ctx.mark("stats", unit)
            _test_delay()
        for key, path in parts.items():
            frames[key].append(pd.read_parquet(path))
        bar.update(1)
    bar.close()
    store.save_table("stats/rpc_null.parquet", pd.concat(frames["null"], ignore_index=True))
    store.save_table("stats/rpc_contrast.parquet", pd.concat(frames["contrast"], ignore_index=True))


def stage_embed(ctx: Context) -> None:
    """PCA-50 → t-SNE / UMAP of every model's masks, clusters and their dominant objects."""
    cfg, store = ctx.cfg, ctx.store
    df = ctx.images()
    test_df = df[df["row"] >= 0].sort_values("row")
    ids = test_df["image_id"].to_numpy()
    has_labels = bool(store.manifest.get("segmenter")) and store.path("classes.json").exists()
    class_names = store.read_json("classes.json") if has_labels else None
    for m in ctx.models():
        mid = m["model_id"]
        if ctx.done("embed", mid):
            continue
        cams_arr = store.load_array(f"cams/{mid}.npy")
        feats = np.concatenate(
            [
                embed.masks_to_features(
                    cam.mask_norm(np.asarray(cams_arr[sl]), ctx.size), cfg.embed_res
                )
                for _, sl in ctx.shards()
            ]
        )
        frame = pd.DataFrame({"image_id": ids, "row": test_df["row"].to_numpy()})
        for method in cfg.embed_methods:
            # above embed.SAMPLE_ABOVE masks: fitted on a sample, the rest placed (on Ray with
            # --executor ray)
            emb = embed.MaskEmbedder(
                method=method, n_pca=cfg.n_pca, random_state=0, executor=ctx.executor.name
            )
            xy = emb.fit_transform(feats)
            frame[f"{method}_x"], frame[f"{method}_y"] = xy[:, 0], xy[:, 1]
            save_arrays(store.path(f"embed/{mid}_{method}.npz"), **emb.state_dict())
        for method in ("tsne", "umap"):
            if f"{method}_x" not in frame:
                frame[f"{method}_x"] = np.nan
                frame[f"{method}_y"] = np.nan
        first = cfg.embed_methods[0]
        xy = frame[[f"{first}_x", f"{first}_y"]].to_numpy()
        n_clusters = max(1, min(cfg.n_clusters, len(frame) // 5))
        frame["cluster"] = embed.cluster_points(xy, n_clusters=n_clusters)
        frame["cluster_label"] = frame["cluster"].map(lambda c: f"cluster {c}")
        frame["dominant"] = ""
        if class_names is not None and store.path(f"hist/{mid}.parquet").exists():
            hist = store.read_table(f"hist/{mid}.parquet")
            dom = stats.dominant_object(hist, cfg.threshold, class_names)
            frame["dominant"] = frame["image_id"].map(dom).fillna("").astype(str)
            # named by the objects over-represented in the cluster's explanations (lift), not
            # by the most common ones, which are the same everywhere ("building · sky")
            lift = stats.cluster_lift(
                hist, pd.Series(frame["cluster"].to_numpy(), index=ids), cfg.threshold, class_names
            )
            label_of = stats.lift_labels(lift).to_dict() if len(lift) else {}
            frame["cluster_label"] = [label_of.get(c) or f"cluster {c}" for c in frame["cluster"]]
        store.save_table(f"embed/{mid}.parquet", frame)
        ctx.mark("embed", mid)
        _test_delay()


def stage_thumbs(ctx: Context) -> None:
    """Sprite sheets of 96 px thumbnails: originals, and per model overlay + explanation."""
    cfg, store = ctx.cfg, ctx.store
    test = ctx.inputs("test")
    n = ctx.n_test()
    models = [m["model_id"] for m in ctx.models()]
    cams_of = {mid: store.load_array(f"cams/{mid}.npy") for mid in models}
    n_sheets = (n + THUMBS_PER_SHEET - 1) // THUMBS_PER_SHEET
    kinds = ["orig"] + [f"{mid}/{k}" for mid in models for k in ("overlay", "expl")]
    bar = ctx.bar(n_sheets, "thumbs", unit="sheet")
    for s in range(n_sheets):
        unit = f"sheet:{s}"
        if not ctx.done("thumbs", unit):
            sl = slice(s * THUMBS_PER_SHEET, min((s + 1) * THUMBS_PER_SHEET, n))
            imgs = np.asarray(test[sl])
            tiles = thumbs.render_tiles(imgs, None, "orig", size=cfg.thumb_size)
            thumbs.write_sheet(store.path(thumb_sheet_rel("orig", s)), tiles, THUMBS_PER_ROW)
            for mid in models:
                masks = cam.mask_norm(np.asarray(cams_of[mid][sl]), ctx.size)
                for kind in ("overlay", "expl"):
                    tiles = thumbs.render_tiles(
                        imgs, masks, kind, size=cfg.thumb_size, threshold=cfg.threshold
                    )
                    path = store.path(thumb_sheet_rel(f"{mid}/{kind}", s))
                    thumbs.write_sheet(path, tiles, THUMBS_PER_ROW)
            ctx.mark("thumbs", unit)
            _test_delay()
        bar.update(1)
    bar.close()
    store.manifest["thumbs"] = {
        "size": cfg.thumb_size,
        "per_row": THUMBS_PER_ROW,
        "kinds": kinds,
        "n_sheets": n_sheets,
        "threshold": cfg.threshold,
    }


STAGE_FUNCS: dict[str, Callable[[Context], None]] = {
    "data": stage_data,
    "train": stage_train,
    "cams": stage_cams,
    "segment": stage_segment,
    "stats": stage_stats,
    "trust": stage_trust,
    "embed": stage_embed,
    "thumbs": stage_thumbs,
}


def run_stages(
    ctx: Context,
    stages: list[str],
    *,
    force: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> None:
    """Run ``stages`` in order, each only where its identity (settings and upstream results)
    changed since it last finished; ``force`` redoes them from scratch. ``on_stage(name)`` is
    called as each stage starts."""
    store = ctx.store
    for i, name in enumerate(stages):
        if on_stage is not None:
            on_stage(name)
        identity = ctx.ids.stage(name)
        if force:
            store.reset_stage(name)
        elif store.stage_done(name, identity):
            log.info("stage %s: already done, reused", name)
            ctx.timings[name] = 0.0
            continue
        elif store.stage_done(name):
            log.info("stage %s: settings or inputs changed; redoing what depends on them", name)
            store.reopen_stage(name)
        t0 = time.perf_counter()
        log.info("stage %s …", name)
        store.set_progress(
            stage=name,
            index=i,
            n_stages=len(stages),
            started=time.time(),
            units_done=ctx.units_done(name),
            units_total=ctx.units_total(name),
            eta_seconds=(ctx.store.manifest.get("estimate") or {}).get(name),
        )
        STAGE_FUNCS[name](ctx)
        seconds = time.perf_counter() - t0
        store.finish_stage(name, seconds, identity)
        ctx.timings[name] = seconds
        log.info("stage %s: done in %.1f s", name, seconds)
    store.manifest.pop("progress", None)
    store.save_manifest()
