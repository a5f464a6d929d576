"""The cache format: one directory per run, readable with pandas/numpy alone.

Layout (``FORMAT_VERSION`` 2; paths relative to the cache root)::

    manifest.json              format, version, config (+ where each setting came from), library
                               versions, data set, stages (status, identity, finished units with
                               their identities), models, segmenter, thumbnail layout, progress
    .cityviz.lock              held by the precompute writing the cache (see CacheStore.lock)
    images.parquet             image_id, path, city, city_idx, spot, split, split_row, row
                               (row = index into the test arrays below, -1 outside the test split),
                               lat, lon (float64 degrees, NaN unknown), district (synthetic sets)
    inputs/<split>.npy         uint8 [N, S, S, 3]: every image decoded once at the input size
    models/<id>.safetensors    weights, and models/<id>.json: sidecar (arch, classes, accuracy…)
    predictions.parquet        model_id, image_id, row, target, pred, confidence, correct, p0…
    cams/<id>.npy              float32 [N_test, h, w] raw Grad-CAM maps (see cam.mask_norm)
    labels.npy, classes.json   label maps [N_test, S, S] and the segmenter's class names
    hist/<id>.parquet          image_id, class_id, n_pixels, h00..h19: mask-value histograms
    stats/rpc.parquet          R_p^c at the default threshold with bootstrap CIs (all models)
    stats/rpc_null.parquet     R_p^c against its permutation null (masks shuffled within a
                               city), p-values (BH), per model, city, object and grid threshold
    stats/rpc_contrast.parquet R_p^c in a city minus in the other cities, bootstrap CI,
                               permutation p-value (BH), per model, city, object, grid threshold
    stats/ar.parquet           model_a, model_b, image_id, ar (per image, every model pair)
    stats/ar_summary.parquet   Table 2: mean AR per pair with CIs; arch_vs_seed.json
    embed/<id>.parquet         image_id, row, tsne_x, tsne_y, umap_x, umap_y, cluster, …
    embed/<id>_<method>.npz    fitted embedder state (plain arrays) to place new images
    trust/mprt.parquet         model-parameter randomisation: per model, method and step, the
                               masks' Spearman and SSIM to the original (median, IQR)
    trust/other_city.parquet   predicted vs runner-up city masks: mean AR (CI), median Spearman
    trust/curves.parquet       deletion/insertion curves (mask and random order), mean prob
    trust/auc.parquet          their areas per model, method, city (and "all"), bootstrap CIs
    trust/removal.parquet      object removal by inpainting vs an equal-area random region
    trust/verdict.json         per model: pass | warn | fail, a sentence, each check and its rule
    thumbs/<kind>/<k>.jpg      sprite sheets; kind = orig | <id>/overlay | <id>/expl

Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written file under its real name. Stages write shards under ``parts/`` and record finished
work in the manifest, so a killed run resumes from its last finished shard. Version 2 records each
unit's identity (precompute/identity.py); version 1 caches are refused with a message to rebuild.
Readers raise :class:`CacheError` (:class:`CacheMissing` for a part not built yet) with one
sentence naming the file and the command that rebuilds it.
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
FORMAT_VERSION = 2
MANIFEST = "manifest.json"


class CacheError(RuntimeError):
    """A cache directory is missing, incomplete, stale, damaged or of another format version.

    The message is one sentence a user can act on: which file, and the command that rebuilds it.
    """


class CacheMissing(CacheError):
    """A cache part that its stage has not written yet (not damage: a run still to do or under
    way). Pages show it as "not built yet" rather than as an error."""


# Which stage writes a cache file (by its first path component or name): what to rerun when the
# file is missing or damaged.
_STAGE_OF = {
    "images.parquet": "data",
    "inputs": "data",
    "models": "train",
    "predictions.parquet": "cams",
    "cams": "cams",
    "labels.npy": "segment",
    "classes.json": "segment",
    "hist": "stats",
    "stats": "stats",
    "embed": "embed",
    "trust": "trust",
    "thumbs": "thumbs",
    "ood": "cams",
}

# Columns every reader of a table relies on (a table without them is damaged).
REQUIRED_COLUMNS = {
    "images.parquet": ("image_id", "path", "city", "city_idx", "spot", "split", "row"),
    "predictions.parquet": ("model_id", "image_id", "row", "target", "pred", "confidence"),
    "hist": ("image_id", "class_id", "n_pixels"),
    "stats/rpc.parquet": ("model_id", "city", "class_id", "object", "rpc"),
    "stats/rpc_null.parquet": (
        "model_id",
        "city",
        "object",
        "class_id",
        "threshold",
        "rpc",
        "null_mean",
        "null_lo",
        "null_hi",
        "p_value",
        "p_adjusted",
        "above_null",
        "n_images",
        "n_permutations",
    ),
    "stats/rpc_contrast.parquet": (
        "model_id",
        "city",
        "object",
        "class_id",
        "threshold",
        "rpc_city",
        "rpc_others",
        "difference",
        "diff_lo",
        "diff_hi",
        "p_value",
        "p_adjusted",
        "distinguishes",
    ),
    "stats/ar.parquet": ("model_a", "model_b", "image_id", "ar"),
    "stats/ar_summary.parquet": ("model_a", "model_b"),
    "embed": ("image_id", "row", "cluster"),
    # trust/*.parquet (precompute/trust.py; the contract the Trust page reads)
    "trust/mprt.parquet": ("model_id", "method", "step", "layer", "spearman", "spearman_lo",
                           "spearman_hi", "ssim", "ssim_lo", "ssim_hi", "n_images"),
    "trust/other_city.parquet": ("model_id", "method", "ar", "ar_lo", "ar_hi", "spearman",
                                 "n_images"),
    "trust/curves.parquet": ("model_id", "method", "curve", "order", "fraction", "prob"),
    "trust/auc.parquet": ("model_id", "method", "city", "curve", "order", "auc", "auc_lo",
                          "auc_hi", "n_images"),
    "trust/removal.parquet": ("model_id", "city", "object", "class_id", "n_images", "area",
                              "acc_before", "acc_after", "acc_random", "prob_before",
                              "prob_after", "prob_random", "drop", "drop_random", "drop_lo",
                              "drop_hi", "causal"),
}  # fmt: skip


def stage_of(rel: str) -> str:
    """The precompute stage that writes the cache file ``rel`` (``"data"`` if unknown)."""
    first = rel.replace("\\", "/").split("/", 1)[0]
    return _STAGE_OF.get(first, "data")


def damaged(root: str | Path, rel: str, problem: str) -> CacheError:
    """The error for a damaged cache file: names it and the command that rebuilds it."""
    return CacheError(
        f"The cache file {rel} in {root} {problem}; rebuild it with `python -m precompute "
        f"--cache {root} --force --stages {stage_of(rel)}` (and the stages after it)."
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


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


def inputs_rel(split: str, size: int, cache_size: int) -> str:
    """Where a split's decoded images live: ``inputs/<split>.npy`` at the cache's own size,
    ``inputs/<split>_<size>px.npy`` at a model input size other than the cache's."""
    return f"inputs/{split}.npy" if size == cache_size else f"inputs/{split}_{size}px.npy"


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

    def init(
        self, config: dict[str, Any], dataset: dict[str, Any], *, owned: bool = False
    ) -> list[str]:
        """Create a new cache, or reopen one made from the same data set.

        Returns the config keys that changed since the cache was last built (empty for a new
        cache): the stages whose identity they change are redone, the rest is kept. A cache made
        from *another data set* is refused rather than overwritten. A directory that holds other
        files and no cityviz manifest is refused too: cityviz writes only into its own caches.

        Raises :class:`CacheError` (another data set, a foreign directory) and ``OSError``
        (permissions, a file where the directory should be). ``owned``: the directory is known to
        be this cache's (just emptied by :meth:`clear`), other files in it are the user's to keep.
        """
        if self.exists():
            m = self.manifest
            if m["dataset"].get("fingerprint") != dataset["fingerprint"]:
                raise CacheError(
                    f"The cache at {self.root} was built from another data set "
                    f"({m['dataset'].get('source')}). Use another --cache directory, or pass "
                    "--fresh to rebuild it from scratch."
                )
            old = m["config"]
            changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            m["config"] = config
            m["dataset"] = {**m["dataset"], **dataset}
            self.save_manifest()
            return changed
        if not owned:
            check_cache_dir(self.root)
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
        return []

    def save_manifest(self) -> None:
        self.manifest["updated"] = now_iso()
        atomic_write_json(self.manifest_path, self.manifest)

    def update(self, **fields: Any) -> None:
        self.manifest.update(fields)
        self.save_manifest()

    # ---- stages ---------------------------------------------------------------------------
    def stage(self, name: str) -> dict[str, Any]:
        """A stage's record: ``status`` (pending | running | done), ``identity`` (of the settings
        it was finished with) and ``units`` (finished unit -> the identity it was made with)."""
        return self.manifest["stages"].setdefault(name, {"status": "pending", "units": {}})

    def stage_done(self, name: str, identity: str | None = None) -> bool:
        """Whether ``name`` finished (with ``identity``, when given)."""
        st = self.stage(name)
        return st["status"] == "done" and (identity is None or st.get("identity") == identity)

    def mark_unit_done(self, stage: str, unit: str, identity: str = "") -> None:
        """Record a finished unit of work (a model, a shard) so a rerun can skip it."""
        st = self.stage(stage)
        if st["units"].get(unit) != identity or st["status"] != "running":
            st["units"][unit] = identity
            st["status"] = "running"
            self.save_manifest()

    def unit_done(self, stage: str, unit: str, identity: str = "") -> bool:
        """Whether ``unit`` of ``stage`` was finished with the same ``identity``."""
        units = self.stage(stage)["units"]
        return unit in units and units[unit] == identity

    def finish_stage(self, name: str, seconds: float, identity: str = "", **info: Any) -> None:
        st = self.stage(name)
        st.update(
            status="done", identity=identity, seconds=round(seconds, 2), finished=now_iso(), **info
        )
        self.save_manifest()

    def reopen_stage(self, name: str) -> None:
        """Mark a finished stage pending again, keeping its units (those whose identity still
        matches are reused)."""
        st = self.stage(name)
        if st["status"] == "done":
            st["status"] = "pending"
            self.save_manifest()

    def reset_stage(self, name: str) -> None:
        """Forget every unit of a stage (``--force``) and delete its shards under ``parts/``."""
        self.manifest["stages"][name] = {"status": "pending", "units": {}}
        shutil.rmtree(self.root / "parts" / name, ignore_errors=True)
        self.save_manifest()

    def set_progress(self, **fields: Any) -> None:
        """Record where a running precompute is (stage, units done and total, ETA) in the
        manifest, so a dashboard opened early can show it."""
        self.manifest["progress"] = {**fields, "updated": now_iso()}
        self.save_manifest()

    # ---- ownership ------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the cache's lock file for a whole run; a second run on the same cache is
        refused with :class:`CacheError` instead of interleaving writes."""
        import fcntl

        check_cache_dir(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                raise CacheError(
                    f"Another precompute (pid {holder}) is writing the cache at {self.root}. "
                    "Wait for it to finish, or use another --cache directory."
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)

    def clear(self) -> list[str]:
        """Delete what cityviz wrote in this cache (``--fresh``), nothing else.

        Only a directory that is a cityviz cache (or holds nothing but cityviz's own files) is
        touched, and only the entries cityviz creates (:data:`CACHE_ENTRIES`) are removed; any
        other file is left where it is and returned, so nothing of a user's is ever deleted.
        Raises :class:`CacheError` for a directory that is not a cityviz cache.
        """
        if not self.root.exists():
            return []
        check_cache_dir(self.root)
        kept = []
        for entry in sorted(self.root.iterdir()):
            name = entry.name
            if name == LOCK_FILE:
                continue
            if name in CACHE_ENTRIES or (name.startswith(".") and name.endswith(".tmp")):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            else:
                kept.append(name)
        self._manifest = None
        return kept

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


LOCK_FILE = ".cityviz.lock"

# Every entry cityviz writes at a cache's top level: what --fresh may delete.
CACHE_ENTRIES = frozenset(
    {
        MANIFEST,
        "images.parquet",
        "predictions.parquet",
        "labels.npy",
        "classes.json",
        "inputs",
        "models",
        "cams",
        "hist",
        "stats",
        "embed",
        "thumbs",
        "parts",
        "ood",
        "trust",
    }
)


def is_cache_dir(root: str | Path) -> bool:
    """Whether ``root`` holds a cityviz manifest (even one of another format version)."""
    path = Path(root) / MANIFEST
    try:
        head = path.read_bytes()[:4096]
    except OSError:
        return False
    return f'"{FORMAT_NAME}"'.encode() in head


def check_cache_dir(root: str | Path) -> None:
    """Refuse a ``--cache`` that cityviz must not write into.

    Raises ``NotADirectoryError`` when ``root`` (or a parent) is a file, and :class:`CacheError`
    when it is a directory holding other files and no cityviz manifest (a user's own folder).
    """
    root = Path(root)
    for p in (root, *root.parents):
        if p.exists() and not p.is_dir():
            raise NotADirectoryError(f"--cache {root}: {p} is a file, not a directory")
        if p.exists():
            break
    if not root.exists() or is_cache_dir(root):
        return
    foreign = [
        e.name
        for e in root.iterdir()
        if e.name != LOCK_FILE and not (e.name.startswith(".") and e.name.endswith(".tmp"))
    ]
    if foreign:
        raise CacheError(
            f"{root} is not a cityviz cache (no {MANIFEST}) and is not empty (it holds "
            f"{foreign[0]!r} and {len(foreign) - 1} more); cityviz writes and deletes only its "
            "own caches. Choose a new or empty --cache directory."
        )


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of a cache, with clear errors for a missing or foreign one."""
    path = Path(root) / MANIFEST
    if not path.exists():
        raise CacheError(
            f"No cityviz cache at {root} (no {MANIFEST}). Build one with "
            "`python -m precompute --cache DIR` (or `make demo`)."
        )
    try:
        m = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CacheError(
            f"The manifest {path} is not valid JSON ({_reason(exc)}); rebuild the cache with "
            f"`python -m precompute --cache {root} --fresh`."
        ) from exc
    if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
        raise CacheError(f"{path} is not a cityviz cache manifest.")
    if m.get("format_version") != FORMAT_VERSION:
        raise CacheError(
            f"The cache at {root} has format version {m.get('format_version')}, but this cityviz "
            f"reads version {FORMAT_VERSION}. Rebuild it with `python -m precompute --cache "
            f"{root} --fresh`."
        )
    problems = [k for k, t in _MANIFEST_KEYS.items() if not isinstance(m.get(k), t)]
    if not problems and not isinstance(m["dataset"].get("cities"), list):
        problems = ["dataset.cities"]
    if problems:
        raise CacheError(
            f"The manifest {path} is damaged (bad or missing {', '.join(problems)}); rebuild the "
            f"cache with `python -m precompute --cache {root} --fresh`."
        )
    return m


_MANIFEST_KEYS = {"config": dict, "dataset": dict, "stages": dict, "models": list}


def _existing(root: str | Path, rel: str) -> Path:
    """The path of cache file ``rel``; :class:`CacheMissing` (naming the stage that writes it)
    when its stage has not written it yet."""
    path = Path(root) / rel
    if not path.exists():
        raise CacheMissing(
            f"The cache at {root} has no {rel} yet; build it with `python -m precompute "
            f"--cache {root} --stages {stage_of(rel)}`."
        )
    return path


def read_table(root: str | Path, rel: str, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """A Parquet table of the cache, checked for the columns its readers need.

    Raises :class:`CacheError` naming the file and the stage to rerun when it is missing, not
    Parquet, truncated, or lacks a required column (``columns``, default
    :data:`REQUIRED_COLUMNS` for its kind).
    """
    path = _existing(root, rel)
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ValueError, ...
        raise damaged(root, rel, f"is not a readable Parquet table ({_reason(exc)})") from exc
    if columns is None:
        columns = REQUIRED_COLUMNS.get(rel) or REQUIRED_COLUMNS.get(rel.split("/", 1)[0], ())
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise damaged(root, rel, f"lacks the column(s) {', '.join(missing)}")
    return df


def read_json(root: str | Path, rel: str, kind: type | None = None) -> Any:
    """A JSON file of the cache (of type ``kind`` when given), or :class:`CacheError`."""
    path = _existing(root, rel)
    try:
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise damaged(root, rel, f"is not valid JSON ({_reason(exc)})") from exc
    if kind is not None and not isinstance(obj, kind):
        raise damaged(root, rel, f"holds a {type(obj).__name__}, not a {kind.__name__}")
    return obj


def read_array(
    root: str | Path,
    rel: str,
    *,
    kinds: str = "biuf",
    ndim: int | None = None,
    length: int | None = None,
    mmap: bool = True,
) -> np.ndarray:
    """A ``.npy`` array of the cache, checked: numeric dtype kind in ``kinds`` (numpy's
    ``dtype.kind`` letters), ``ndim`` dimensions, ``length`` rows; else :class:`CacheError`."""
    path = _existing(root, rel)
    try:
        arr = load_array(path, mmap=mmap)
    except Exception as exc:  # ValueError (pickled/object arrays, bad header), OSError, EOFError
        raise damaged(root, rel, f"is not a readable .npy array ({_reason(exc)})") from exc
    if arr.dtype.kind not in kinds:
        raise damaged(root, rel, f"has dtype {arr.dtype}, not a numeric array")
    if ndim is not None and arr.ndim != ndim:
        raise damaged(root, rel, f"has {arr.ndim} dimensions, expected {ndim}")
    if length is not None and len(arr) != length:
        raise damaged(root, rel, f"has {len(arr)} rows, expected {length}")
    return arr


def read_arrays(root: str | Path, rel: str) -> dict[str, np.ndarray]:
    """A ``.npz`` file of the cache as a dict of arrays, or :class:`CacheError`."""
    path = _existing(root, rel)
    try:
        return load_arrays(path)
    except Exception as exc:  # BadZipFile, ValueError (pickles), OSError, EOFError
        raise damaged(root, rel, f"is not a readable .npz archive ({_reason(exc)})") from exc


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
    """Read-only, typed view of a finished (or partly finished) cache: what the dashboard uses.

    Every reader raises :class:`CacheError` with one sentence naming the file and the command that
    rebuilds it when a part is missing or damaged, so a page can disable just that part.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)

    @property
    def cities(self) -> list[str]:
        return [str(c) for c in self.manifest["dataset"]["cities"]]

    @property
    def models(self) -> list[dict[str, Any]]:
        found = self.manifest.get("models", [])
        return [m for m in found if isinstance(m, dict) and "model_id" in m]

    @property
    def model_ids(self) -> list[str]:
        return [str(m["model_id"]) for m in self.models]

    def model(self, model_id: str) -> dict[str, Any]:
        for m in self.models:
            if m["model_id"] == model_id:
                return m
        raise CacheError(f"No model {model_id!r} in the cache at {self.root}.")

    def stage_done(self, name: str) -> bool:
        st = self.manifest["stages"].get(name)
        return isinstance(st, dict) and st.get("status") == "done"

    @property
    def image_size(self) -> int:
        return int(self.manifest["config"]["image_size"])

    @property
    def n_test(self) -> int | None:
        """Number of test images (rows of the per-image arrays), from the split counts."""
        counts = self.manifest["dataset"].get("split_counts")
        if not isinstance(counts, dict):
            return None
        return sum(int(c.get("test", 0)) for c in counts.values() if isinstance(c, dict))

    def images(self) -> pd.DataFrame:
        """``images.parquet``; ``lat``/``lon`` (float64 degrees, NaN where unknown) are added
        as NaN columns for caches written before coordinates were stored."""
        df = read_table(self.root, "images.parquet")
        for col in ("lat", "lon"):
            if col not in df.columns:
                df[col] = np.nan
        return df

    def test_images(self) -> pd.DataFrame:
        df = self.images()
        return df[df["row"] >= 0].sort_values("row").reset_index(drop=True)

    def predictions(self, model_id: str | None = None) -> pd.DataFrame:
        df = read_table(self.root, "predictions.parquet")
        return df if model_id is None else df[df["model_id"] == model_id].reset_index(drop=True)

    def cams(self, model_id: str) -> np.ndarray:
        """Raw Grad-CAM maps, float ``[N_test, h, w]``."""
        return read_array(self.root, f"cams/{model_id}.npy", kinds="f", ndim=3, length=self.n_test)

    def masks(self, model_id: str, rows: np.ndarray | list[int], size: int | None = None):
        """mask_norm of the given test rows, at ``size`` (default: the cache's image size)."""
        from cityviz.cam import mask_norm

        cams = self.cams(model_id)
        return mask_norm(np.asarray(cams[np.asarray(rows)]), size or self.image_size)

    @property
    def has_labels(self) -> bool:
        return (self.root / "labels.npy").exists()

    def labels(self) -> np.ndarray:
        """Segmentation label maps, integer ``[N_test, S, S]``."""
        return read_array(self.root, "labels.npy", kinds="iu", ndim=3, length=self.n_test)

    def class_names(self) -> list[str] | None:
        """The segmenter's class names, or None when the cache has no segmentation."""
        if not (self.root / "classes.json").exists():
            return None
        names = read_json(self.root, "classes.json", list)
        if not all(isinstance(n, str) for n in names):
            raise damaged(self.root, "classes.json", "is not a JSON list of class names")
        return names

    def read_json(self, rel: str, kind: type | None = None) -> Any:
        return read_json(self.root, rel, kind)

    def hist(self, model_id: str) -> pd.DataFrame:
        return read_table(self.root, f"hist/{model_id}.parquet")

    def rpc(self) -> pd.DataFrame:
        return read_table(self.root, "stats/rpc.parquet")

    def rpc_null(self) -> pd.DataFrame:
        """``stats/rpc_null.parquet``: R_p^c against its permutation null, one row per model,
        city, object and threshold ``k / n_bins`` (k >= 1); columns and rules in
        :mod:`cityviz.trust.nulls`. CacheMissing for a cache built before the trust checks."""
        return read_table(self.root, "stats/rpc_null.parquet")

    def rpc_contrast(self) -> pd.DataFrame:
        """``stats/rpc_contrast.parquet``: R_p^c in each city against the other cities, one row
        per model, city, object and grid threshold (:mod:`cityviz.trust.nulls`)."""
        return read_table(self.root, "stats/rpc_contrast.parquet")

    def ar(self) -> pd.DataFrame:
        return read_table(self.root, "stats/ar.parquet")

    def trust_table(self, name: str) -> pd.DataFrame:
        """``trust/<name>.parquet`` (``mprt``, ``other_city``, ``curves``, ``auc``, ``removal``;
        columns in :data:`REQUIRED_COLUMNS`, written by ``precompute/trust.py``), or
        :class:`CacheError` (:class:`CacheMissing` before the trust stage ran)."""
        return read_table(self.root, f"trust/{name}.parquet")

    def trust_verdict(self) -> dict[str, Any]:
        """``trust/verdict.json``: per model id ``{"method", "verdict", "sentence", "checks"}``
        (:mod:`cityviz.trust.verdict`), or :class:`CacheError`."""
        return read_json(self.root, "trust/verdict.json", dict)

    def ar_summary(self) -> pd.DataFrame:
        return read_table(self.root, "stats/ar_summary.parquet")

    def embedding(self, model_id: str) -> pd.DataFrame:
        return read_table(self.root, f"embed/{model_id}.parquet")

    def embedder(self, model_id: str, method: str):
        from cityviz.embed import MaskEmbedder

        rel = f"embed/{model_id}_{method}.npz"
        if not (self.root / rel).exists():
            raise CacheMissing(f"No {method} embedder for {model_id} in {self.root}.")
        try:
            return MaskEmbedder.from_state(read_arrays(self.root, rel))
        except CacheError:
            raise
        except Exception as exc:  # missing keys, wrong shapes
            problem = f"does not hold a fitted embedder ({_reason(exc)})"
            raise damaged(self.root, rel, problem) from exc

    def running(self) -> dict[str, Any] | None:
        """Where a precompute writing this cache right now is, or None when none is.

        ``{"stage", "index", "n_stages", "units_done", "units_total", "eta_seconds", ...}`` from
        the manifest, trusted only while a precompute holds the cache's lock (a killed run
        leaves its last progress record behind).
        """
        import fcntl

        path = self.root / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            progress = self.manifest.get("progress")
            return dict(progress) if isinstance(progress, dict) else {}
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @property
    def thumbs(self) -> dict[str, Any] | None:
        """Sprite-sheet layout ``{"size", "per_row", "kinds"}`` or None before the thumbs stage."""
        t = self.manifest.get("thumbs")
        return t if isinstance(t, dict) else None

    def thumb_sheet(self, kind: str, sheet: int) -> Path:
        return self.root / thumb_sheet_rel(kind, sheet)

    def _array(self, rel: str) -> np.ndarray:
        return read_array(self.root, rel)
