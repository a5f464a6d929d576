"""The per-image stages' workers: one unit of work (a shard of test rows) in, one part file out.

Both executors (:mod:`precompute.executors`) build a worker once per process — here, or in a Ray
actor — and call it with batches of jobs in Ray Data's column format; the worker writes each job's
part file atomically (``cityviz.store.save_arrays``/``save_array``) and returns ``{"unit":
names}``. Workers read the cache's files (the memory-mapped test inputs, checkpoints, the image
table) but never write the manifest: the executor's caller records finished units.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cityviz import cam, stats
from cityviz.config import RunConfig
from cityviz.data.datasets import CityDataset
from cityviz.data.images import image_batches
from cityviz.models.checkpoint import load_checkpoint
from cityviz.segment import Segmenter
from cityviz.store import inputs_rel, read_table, save_array, save_arrays


def cam_shard(
    explainer: cam.Explainer,
    test: np.ndarray,
    truth: np.ndarray,
    cfg: RunConfig,
    rows: slice,
) -> dict[str, np.ndarray]:
    """Grad-CAM maps, class probabilities and explained classes of the test ``rows``.

    Returns ``cams`` float32 [N, h, w] (the model's last conv resolution, before upsampling),
    ``probs`` float32 [N, C] and ``target`` int64 [N] (the class each map explains: the
    prediction, or the true city with ``cfg.cam_target == "true"``). Batches of
    ``cfg.batch_size`` rows come through :func:`cityviz.data.images.image_batches`
    (``cfg.num_workers`` reader processes; pinned memory and asynchronous copies on CUDA) and
    are explained at the explainer's precision.
    """
    cams, probs, target = [], [], []
    batches = image_batches(test[rows], cfg.batch_size, device=explainer.device,
                            num_workers=cfg.num_workers)  # fmt: skip
    start = rows.start
    for batch in batches:
        stop = start + len(batch)
        want = torch.from_numpy(truth[start:stop]).long() if cfg.cam_target == "true" else None
        x = batch.to(explainer.device, non_blocking=True).permute(0, 3, 1, 2)
        res = explainer(x, target=want, method=cfg.cam_method)
        start = stop
        cams.append(res.cams.cpu().numpy().astype(np.float32))
        probs.append(res.probs.detach().cpu().numpy().astype(np.float32))
        target.append(res.target.cpu().numpy())
    return {
        "cams": np.concatenate(cams),
        "probs": np.concatenate(probs),
        "target": np.concatenate(target),
    }


def _set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(int(threads))


class CamWorker:
    """Writes ``parts/cams/<model>-<shard>.npz`` for jobs ``{unit, model_id, start, stop, out}``.

    Keeps one model loaded at a time (jobs arrive grouped by model), so memory stays that of one
    model however many the cache holds.
    """

    def __init__(
        self, root: str, cfg: RunConfig, device: str = "cpu", threads: int | None = None
    ) -> None:
        _set_threads(threads)
        self.root, self.cfg, self.device = Path(root), cfg, torch.device(device)
        images = read_table(self.root, "images.parquet")
        test = images[images["row"] >= 0].sort_values("row")
        self.truth = test["city_idx"].to_numpy()
        self._loaded: tuple[str, cam.Explainer, np.ndarray] | None = None

    def _model(self, entry: dict[str, Any]) -> tuple[cam.Explainer, np.ndarray]:
        mid = entry["model_id"]
        if self._loaded is None or self._loaded[0] != mid:
            model, meta = load_checkpoint(self.root / entry["checkpoint"], self.device)
            explainer = cam.Explainer(model, meta["arch"], self.device, self.cfg.precision)
            rel = inputs_rel("test", int(meta["input_size"]), self.cfg.image_size)
            test = np.load(self.root / rel, mmap_mode="r")
            self._loaded = (mid, explainer, test)
        return self._loaded[1], self._loaded[2]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for mid, ckpt, start, stop, out in zip(
            batch["model_id"], batch["checkpoint"], batch["start"], batch["stop"], batch["out"],
            strict=True,
        ):  # fmt: skip
            explainer, test = self._model({"model_id": str(mid), "checkpoint": str(ckpt)})
            arrays = cam_shard(explainer, test, self.truth, self.cfg, slice(int(start), int(stop)))
            save_arrays(str(out), **arrays)
        return {"unit": batch["unit"]}


class SegmentWorker:
    """Writes ``parts/segment/labels-<shard>.npy`` (uint8/int label maps of the test rows) for
    jobs ``{unit, start, stop, out}``, with the run's segmenter loaded once (or the one already
    loaded by the run's checks, in this process). The rows are read through
    :func:`cityviz.data.images.image_batches` (``cfg.num_workers`` reader processes) in batches
    of the segmenter's own ``batch_size`` when it has one (so a model sees the batches it saw
    when given the whole shard), else of ``cfg.batch_size``."""

    def __init__(
        self,
        root: str,
        cfg: RunConfig,
        dataset: CityDataset,
        device: str = "cpu",
        threads: int | None = None,
        segmenter: Segmenter | None = None,
    ) -> None:
        from precompute.stages import build_segmenter

        _set_threads(threads)
        self.root, self.cfg = Path(root), cfg
        self.segmenter = segmenter or build_segmenter(
            cfg, dataset, torch.device(device), check=False
        )
        images = read_table(self.root, "images.parquet")
        self.ids = images[images["row"] >= 0].sort_values("row")["image_id"].tolist()
        self.test = np.load(self.root / inputs_rel("test", cfg.image_size, cfg.image_size),
                            mmap_mode="r")  # fmt: skip

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for start, stop, out in zip(batch["start"], batch["stop"], batch["out"], strict=True):
            ids = self.ids[int(start) : int(stop)]
            parts = []
            size = int(getattr(self.segmenter, "batch_size", None) or self.cfg.batch_size)
            batches = image_batches(self.test[int(start) : int(stop)], size,
                                    num_workers=self.cfg.num_workers)  # fmt: skip
            for images in batches:
                n = sum(len(p) for p in parts)
                parts.append(self.segmenter.segment(images.numpy(), ids[n : n + len(images)]))
            save_array(str(out), np.concatenate(parts))
        return {"unit": batch["unit"]}


class StatsWorker:
    """Writes ``parts/stats/shard-<k>.npz`` for jobs ``{unit, start, stop, out}``: per model the
    threshold-free object histograms of the shard's masks (``hist_row_<m>``, ``hist_class_<m>``,
    ``hist_counts_<m>``, see :func:`cityviz.stats.object_histograms`; only with label maps,
    ``n_classes > 0``) and per model pair the per-image AR (``ar_<i>``, eq. 2, pairs in
    ``itertools.combinations`` order)."""

    def __init__(
        self,
        root: str,
        cfg: RunConfig,
        models: list[str],
        n_classes: int,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        _set_threads(threads)
        self.root, self.cfg, self.models, self.n_classes = Path(root), cfg, list(models), n_classes
        self.cams = {m: np.load(self.root / "cams" / f"{m}.npy", mmap_mode="r") for m in models}
        self.labels = np.load(self.root / "labels.npy", mmap_mode="r") if n_classes else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = self.cfg.image_size
        for start, stop, out in zip(batch["start"], batch["stop"], batch["out"], strict=True):
            rows = slice(int(start), int(stop))
            masks = {m: cam.mask_norm(np.asarray(self.cams[m][rows]), size) for m in self.models}
            arrays: dict[str, np.ndarray] = {}
            if self.labels is not None:
                labels = np.asarray(self.labels[rows])
                for m in self.models:
                    r, c, counts = stats.object_histograms(
                        masks[m], labels, self.n_classes, self.cfg.n_bins
                    )
                    arrays[f"hist_row_{m}"] = r + rows.start
                    arrays[f"hist_class_{m}"] = c
                    arrays[f"hist_counts_{m}"] = counts
            for i, (a, b) in enumerate(combinations(self.models, 2)):
                arrays[f"ar_{i}"] = stats.average_residual(masks[a], masks[b])
            save_arrays(str(out), **arrays)
        return {"unit": batch["unit"]}
