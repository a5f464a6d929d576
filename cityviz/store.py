"""The cache format: one directory per run, readable with pandas/numpy alone.

Layout (``FORMAT_VERSION`` 1; paths relative to the cache root)::

    manifest.json              format, version, config, library versions, data set, stages,
                               models, segmenter, thumbnail layout
    images.parquet             image_id, path, city, city_idx, spot, split, split_row, row
                               (row = index into the test arrays below, -1 outside the test split)
    inputs/<split>.npy         uint8 [N, S, S, 3]: every image decoded once at the input size
    models/<id>.safetensors    weights, and models/<id>.json: sidecar (arch, classes, accuracy…)
    predictions.parquet        model_id, image_id, row, target, pred, confidence, correct, p0…
    cams/<id>.npy              float32 [N_test, h, w] raw Grad-CAM maps (see cam.mask_norm)
    labels.npy, classes.json   label maps [N_test, S, S] and the segmenter's class names
    hist/<id>.parquet          image_id, class_id, n_pixels, h00..h19: mask-value histograms
    stats/rpc.parquet          R_p^c at the default threshold with bootstrap CIs (all models)
    stats/ar.parquet           model_a, model_b, image_id, ar (per image, every model pair)
    stats/ar_summary.parquet   Table 2: mean AR per pair with CIs; arch_vs_seed.json
    embed/<id>.parquet         image_id, row, tsne_x, tsne_y, umap_x, umap_y, cluster, …
    embed/<id>_<method>.npz    fitted embedder state (plain arrays) to place new images
    thumbs/<kind>/<k>.jpg      sprite sheets; kind = orig | <id>/overlay | <id>/expl

Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written file under its real name. Stages write shards under ``parts/`` and record finished
work in the manifest, so a killed run resumes from its last finished shard.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FORMAT_NAME = "cityviz-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class CacheError(RuntimeError):
    """A cache directory is missing, incomplete, stale or of another format version."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; renamed onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=False, default=str).encode())


def save_array(path: str | Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def load_array(path: str | Path, *, mmap: bool = True) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def save_arrays(path: str | Path, **arrays: np.ndarray) -> None:
    """Several named arrays in one ``.npz`` file, atomically (no pickles)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def save_table(path: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("cityviz", "torch", "torchvision", "numpy", "pandas", "scikit-learn"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    from cityviz import __version__

    out["cityviz"] = __version__
    return out


def predictions_frame(
    model_id: str,
    test: pd.DataFrame,
    target: np.ndarray,
    probs: np.ndarray,
    explained: np.ndarray | None = None,
) -> pd.DataFrame:
    """One model's rows of ``predictions.parquet`` (``test``: the test images in row order).

    ``explained`` is the class each CAM explains (the prediction unless CAMs were made for
    the true class).
    """
    pred = probs.argmax(1)
    frame = pd.DataFrame(
        {
            "model_id": model_id,
            "image_id": test["image_id"].to_numpy(),
            "row": test["row"].to_numpy(),
            "target": target,
            "pred": pred,
            "explained": pred if explained is None else explained,
            "confidence": probs.max(1),
            "correct": pred == target,
        }
    )
    for c in range(probs.shape[1]):
        frame[f"p{c}"] = probs[:, c].astype(np.float32)
    return frame


class CacheStore:
    """Read/write access to one cache directory (the precompute side)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._manifest: dict[str, Any] | None = None

    # ---- manifest -------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.exists()

    @property
    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            self._manifest = read_manifest(self.root)
        return self._manifest

    def init(self, config: dict[str, Any], dataset: dict[str, Any]) -> None:
        """Create a new cache, or check that an existing one was made from the same inputs.

        A cache whose config or data set fingerprint differ is *stale*: we refuse to mix
        results rather than silently overwrite them.
        """
        if self.exists():
            m = self.manifest
            if m["config"] != config or m["dataset"]["fingerprint"] != dataset["fingerprint"]:
                raise CacheError(
                    f"The cache at {self.root} was built from another configuration or data set. "
                    "Use another --cache directory, or pass --fresh to rebuild it from scratch."
                )
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self._manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "created": now_iso(),
            "updated": now_iso(),
            "config": config,
            "versions": library_versions(),
            "dataset": dataset,
            "stages": {},
            "models": [],
        }
        self.save_manifest()

    def save_manifest(self) -> None:
        self.manifest["updated"] = now_iso()
        atomic_write_json(self.manifest_path, self.manifest)

    def update(self, **fields: Any) -> None:
        self.manifest.update(fields)
        self.save_manifest()

    # ---- stages ---------------------------------------------------------------------------
    def stage(self, name: str) -> dict[str, Any]:
        return self.manifest["stages"].setdefault(name, {"status": "pending", "done": []})

    def stage_done(self, name: str) -> bool:
        return self.stage(name)["status"] == "done"

    def mark_unit_done(self, stage: str, unit: str) -> None:
        """Record a finished unit of work (a model, a shard) so a rerun can skip it."""
        st = self.stage(stage)
        if unit not in st["done"]:
            st["done"].append(unit)
            st["status"] = "running"
            self.save_manifest()

    def unit_done(self, stage: str, unit: str) -> bool:
        return unit in self.stage(stage)["done"]

    def finish_stage(self, name: str, seconds: float, **info: Any) -> None:
        st = self.stage(name)
        st.update(status="done", seconds=round(seconds, 2), finished=now_iso(), **info)
        self.save_manifest()

    def reset_stage(self, name: str) -> None:
        self.manifest["stages"][name] = {"status": "pending", "done": []}
        shutil.rmtree(self.root / "parts" / name, ignore_errors=True)
        self.save_manifest()

    def part_path(self, stage: str, unit: str, suffix: str = ".npy") -> Path:
        return self.root / "parts" / stage / f"{unit}{suffix}"

    # ---- files ----------------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        return self.root / rel

    def save_table(self, rel: str, df: pd.DataFrame) -> None:
        save_table(self.root / rel, df)

    def read_table(self, rel: str) -> pd.DataFrame:
        return read_table(self.root, rel)

    def save_array(self, rel: str, arr: np.ndarray) -> None:
        save_array(self.root / rel, arr)

    def load_array(self, rel: str, *, mmap: bool = True) -> np.ndarray:
        return load_array(self.root / rel, mmap=mmap)

    def save_json(self, rel: str, obj: Any) -> None:
        atomic_write_json(self.root / rel, obj)

    def read_json(self, rel: str) -> Any:
        return json.loads((self.root / rel).read_text())


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of a cache, with clear errors for a missing or foreign one."""
    path = Path(root) / MANIFEST
    if not path.exists():
        raise CacheError(
            f"No cityviz cache at {root} (no {MANIFEST}). Build one with "
            "`python -m precompute --cache DIR` (or `make demo`)."
        )
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CacheError(f"The manifest {path} is not valid JSON: {exc}") from exc
    if m.get("format") != FORMAT_NAME:
        raise CacheError(f"{path} is not a cityviz cache manifest.")
    if m.get("format_version") != FORMAT_VERSION:
        raise CacheError(
            f"The cache at {root} has format version {m.get('format_version')}, but this cityviz "
            f"reads version {FORMAT_VERSION}. Rebuild it with `python -m precompute --cache "
            f"{root} --fresh`."
        )
    return m


def read_table(root: str | Path, rel: str) -> pd.DataFrame:
    path = Path(root) / rel
    if not path.exists():
        raise CacheError(f"The cache at {root} has no {rel}: has its stage run?")
    return pd.read_parquet(path)


def find_caches(base: str | Path) -> list[Path]:
    """Cache directories under ``base`` (itself included), newest first."""
    base = Path(base)
    found = [p.parent for p in base.glob(f"*/{MANIFEST}")]
    if (base / MANIFEST).exists():
        found.append(base)
    return sorted(found, key=lambda p: (p / MANIFEST).stat().st_mtime, reverse=True)


# ---- thumbnails -------------------------------------------------------------------------------

THUMB_SIZE = 96
THUMBS_PER_ROW = 16
THUMBS_PER_SHEET = THUMBS_PER_ROW * THUMBS_PER_ROW


def thumb_location(row: int, per_row: int = THUMBS_PER_ROW) -> tuple[int, int, int]:
    """``(sheet, x_tile, y_tile)`` of test row ``row`` in the sprite sheets."""
    per_sheet = per_row * per_row
    sheet, pos = divmod(int(row), per_sheet)
    y, x = divmod(pos, per_row)
    return sheet, x, y


def thumb_sheet_rel(kind: str, sheet: int) -> str:
    return f"thumbs/{kind}/{sheet:04d}.jpg"


class Cache:
    """Read-only, typed view of a finished (or partly finished) cache: what the dashboard uses."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)

    @property
    def cities(self) -> list[str]:
        return list(self.manifest["dataset"]["cities"])

    @property
    def models(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("models", []))

    @property
    def model_ids(self) -> list[str]:
        return [m["model_id"] for m in self.models]

    def model(self, model_id: str) -> dict[str, Any]:
        for m in self.models:
            if m["model_id"] == model_id:
                return m
        raise CacheError(f"No model {model_id!r} in the cache at {self.root}.")

    def stage_done(self, name: str) -> bool:
        return self.manifest["stages"].get(name, {}).get("status") == "done"

    @property
    def image_size(self) -> int:
        return int(self.manifest["config"]["image_size"])

    def images(self) -> pd.DataFrame:
        return read_table(self.root, "images.parquet")

    def test_images(self) -> pd.DataFrame:
        df = self.images()
        return df[df["row"] >= 0].sort_values("row").reset_index(drop=True)

    def predictions(self, model_id: str | None = None) -> pd.DataFrame:
        df = read_table(self.root, "predictions.parquet")
        return df if model_id is None else df[df["model_id"] == model_id].reset_index(drop=True)

    def cams(self, model_id: str) -> np.ndarray:
        return self._array(f"cams/{model_id}.npy")

    def masks(self, model_id: str, rows: np.ndarray | list[int], size: int | None = None):
        """mask_norm of the given test rows, at ``size`` (default: the model input size)."""
        from cityviz.cam import mask_norm

        cams = self.cams(model_id)
        return mask_norm(np.asarray(cams[np.asarray(rows)]), size or self.image_size)

    @property
    def has_labels(self) -> bool:
        return (self.root / "labels.npy").exists()

    def labels(self) -> np.ndarray:
        return self._array("labels.npy")

    def class_names(self) -> list[str] | None:
        path = self.root / "classes.json"
        return json.loads(path.read_text()) if path.exists() else None

    def hist(self, model_id: str) -> pd.DataFrame:
        return read_table(self.root, f"hist/{model_id}.parquet")

    def rpc(self) -> pd.DataFrame:
        return read_table(self.root, "stats/rpc.parquet")

    def ar(self) -> pd.DataFrame:
        return read_table(self.root, "stats/ar.parquet")

    def ar_summary(self) -> pd.DataFrame:
        return read_table(self.root, "stats/ar_summary.parquet")

    def embedding(self, model_id: str) -> pd.DataFrame:
        return read_table(self.root, f"embed/{model_id}.parquet")

    def embedder(self, model_id: str, method: str):
        from cityviz.embed import MaskEmbedder

        path = self.root / f"embed/{model_id}_{method}.npz"
        if not path.exists():
            raise CacheError(f"No {method} embedder for {model_id} in {self.root}.")
        return MaskEmbedder.from_state(load_arrays(path))

    @property
    def thumbs(self) -> dict[str, Any] | None:
        """Sprite-sheet layout ``{"size", "per_row", "kinds"}`` or None before the thumbs stage."""
        return self.manifest.get("thumbs")

    def thumb_sheet(self, kind: str, sheet: int) -> Path:
        return self.root / thumb_sheet_rel(kind, sheet)

    def _array(self, rel: str) -> np.ndarray:
        path = self.root / rel
        if not path.exists():
            raise CacheError(f"The cache at {self.root} has no {rel}: has its stage run?")
        return load_array(path)
