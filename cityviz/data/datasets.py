"""City photo data sets: loading (manifest, CSV, folder per city), spots, grouped splits.

A *spot* is one physical place seen from several directions. Splits keep every spot in one
split only, because with 12-24 views per place a random split leaks places into the test set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from cityviz.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    decode_image,
    resize_center_crop,
)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp"})
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageRecord:
    image_id: str
    path: Path  # absolute
    city: str
    spot: str
    label_path: Path | None = None


@dataclass
class CityDataset:
    root: Path
    records: list[ImageRecord]
    cities: list[str]  # sorted
    class_names: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    discriminative: dict[str, list[str]] | None = None  # ground truth, synthetic sets only

    def __len__(self) -> int:
        return len(self.records)

    def city_indices(self) -> np.ndarray:
        """Index into ``cities`` of every record (the classification target)."""
        lookup = {c: i for i, c in enumerate(self.cities)}
        return np.array([lookup[r.city] for r in self.records], dtype=np.int64)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({
            "image_id": [r.image_id for r in self.records],
            "path": [str(r.path) for r in self.records],
            "city": [r.city for r in self.records],
            "city_idx": self.city_indices(),
            "spot": [r.spot for r in self.records],
            "label_path": [None if r.label_path is None else str(r.label_path)
                           for r in self.records],
        })

    def fingerprint(self) -> str:
        """sha256 over the sorted (relative path, file size, city, spot, label) of every record.

        Cheap (one ``stat`` per file, no content hashing) yet changes when files are added,
        removed, replaced by a file of another size, or assigned to another city or spot.
        """
        lines = []
        for r in self.records:
            label = ("" if r.label_path is None
                     else f"{_rel(r.label_path, self.root)}\t{_size(r.label_path)}")
            lines.append(f"{_rel(r.path, self.root)}\t{_size(r.path)}\t{r.city}\t{r.spot}\t{label}")
        h = hashlib.sha256()
        for line in sorted(lines):
            h.update(line.encode())
            h.update(b"\n")
        return h.hexdigest()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


# --------------------------------------------------------------------------- spots

_PITTS = re.compile(r"^(\d+)_pitch(\d+)_yaw(\d+)$")
# Tokyo 24/7 database: "<22-char Street View pano id>_012_<heading>.png";
# Tokyo Time Machine: "<pano id>_<heading>_012.jpg" (as parsed by public VPR format scripts).
_TOKYO247 = re.compile(r"^([A-Za-z0-9_-]{22})_012_(\d{3})$")
_TOKYO_TM = re.compile(r"^([A-Za-z0-9_-]{22})_(\d{3})_012$")
_UTM_GRID_M = 5


def parse_spot(filename: str) -> str | None:
    """The place a street-view file name belongs to, or None if the name follows no convention.

    - VPR convention ``@east@north@zone@letter@lat@lon@pano_id@tile@...@.jpg``: ``pano:<pano_id>``
      when the pano id is present, else ``utm:<zone><letter>:<east>:<north>`` on a 5 m grid.
    - Pittsburgh ``NNNNNN_pitchP_yawY.jpg``: ``pitts:NNNNNN`` (24 views per place).
    - Tokyo 24/7 ``<pano id>_012_<heading>.png`` / Tokyo TM ``<pano id>_<heading>_012.jpg``:
      ``pano:<pano id>`` (12 directions per panorama).
    """
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    if name.startswith("@"):
        return _parse_vpr(name.split("@"))
    stem = name.rsplit(".", 1)[0] if "." in name else name
    if m := _PITTS.match(stem):
        return f"pitts:{m.group(1)}"
    if m := _TOKYO247.match(stem) or _TOKYO_TM.match(stem):
        return f"pano:{m.group(1)}"
    return None


def _parse_vpr(parts: list[str]) -> str | None:
    if len(parts) < 9:
        return None
    pano = parts[7].strip()
    if pano:
        return f"pano:{pano}"
    try:
        east, north = float(parts[1]), float(parts[2])
    except ValueError:
        return None
    zone, letter = parts[3].strip(), parts[4].strip()
    if not (math.isfinite(east) and math.isfinite(north)) or not zone:
        return None
    g = _UTM_GRID_M
    return f"utm:{zone}{letter}:{round(east / g) * g}:{round(north / g) * g}"


# --------------------------------------------------------------------------- splits


def split_counts(n: int, ratios: Sequence[float]) -> list[int]:
    """Split ``n`` groups by ``ratios`` (largest remainder); every positive ratio gets at least
    one group when ``n`` allows it."""
    r = np.asarray(ratios, dtype=float)
    if r.ndim != 1 or (r < 0).any() or r.sum() <= 0:
        raise ValueError(f"ratios must be non-negative with a positive sum, got {ratios}")
    exact = r / r.sum() * n
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    positive = np.flatnonzero(r > 0)
    if n >= len(positive):
        for i in positive:
            if counts[i] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[i] = 1
    return counts.tolist()


def grouped_split(spots: Sequence[str], ratios: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0,
                  strata: Sequence[str] | None = None) -> np.ndarray:
    """"train"/"val"/"test" for every item, with all items of a spot in the same split.

    Spots are shuffled with ``seed`` and cut by ``ratios`` (counted in spots). With ``strata``
    (e.g. the city of each item) this is done per stratum, so each city gets its own ~6:2:2; a
    spot found in several strata goes with its most common one. Deterministic in ``seed`` and
    independent of the other strata.
    """
    spots = [str(s) for s in spots]
    if len(ratios) != len(SPLITS):
        raise ValueError(f"need {len(SPLITS)} ratios (train, val, test), got {ratios}")
    if strata is None:
        strata = [""] * len(spots)
    elif len(strata) != len(spots):
        raise ValueError(f"strata has {len(strata)} items, spots has {len(spots)}")
    votes: dict[str, Counter] = {}
    for spot, stratum in zip(spots, strata, strict=True):
        votes.setdefault(spot, Counter())[str(stratum)] += 1
    by_stratum: dict[str, list[str]] = {}
    for spot, c in votes.items():
        best = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
        by_stratum.setdefault(best, []).append(spot)
    assignment: dict[str, str] = {}
    for stratum in sorted(by_stratum):
        group = sorted(by_stratum[stratum])
        rng = np.random.default_rng([seed, zlib.crc32(stratum.encode())])
        perm = [group[i] for i in rng.permutation(len(group))]
        start = 0
        for name, k in zip(SPLITS, split_counts(len(group), ratios), strict=True):
            for spot in perm[start : start + k]:
                assignment[spot] = name
            start += k
    return np.array([assignment[s] for s in spots], dtype="<U5")


# --------------------------------------------------------------------------- loading


def load_dataset(source: str | Path, *, check_images: bool = True,
                 progress: bool = False) -> CityDataset:
    """Load a data set from (a) a folder with ``manifest.csv``, (b) a CSV file
    ``path,city[,spot][,label_path]``, or (c) a folder ``root/<city>/**/*.{jpg,jpeg,png,webp}``.

    Unreadable and non-image files are skipped and listed in ``skipped``, never fatal. With
    ``check_images`` every file's header is opened (JPEGs are also decoded at 1/8 scale and PNG
    chunk checksums verified, which catches truncated files cheaply).
    """
    src = Path(source).expanduser()
    if src.is_dir():
        manifest = src / "manifest.csv"
        if manifest.is_file():
            return _from_table(manifest, check_images, progress)
        return _from_folders(src, check_images, progress)
    if src.is_file():
        if src.suffix.lower() != ".csv":
            raise ValueError(f"{src} is not a folder or a .csv file")
        return _from_table(src, check_images, progress)
    raise FileNotFoundError(f"no data set at {src}: the folder or CSV file does not exist")


def _from_table(csv_path: Path, check: bool, progress: bool) -> CityDataset:
    root = csv_path.parent.resolve()
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"could not read {csv_path.name} as a CSV table: {err}") from err
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = {"path", "city"} - set(table.columns)
    if missing:
        raise ValueError(f"{csv_path.name} needs columns path and city "
                         f"(optional: spot, label_path); it has {list(table.columns)}")
    has_spot, has_label = "spot" in table.columns, "label_path" in table.columns
    skipped: list[tuple[str, str]] = []
    rows: list[tuple[Path, str, str, Path | None]] = []
    seen: set[Path] = set()
    for raw in table.itertuples(index=False):
        rel, city = raw.path.strip(), raw.city.strip()
        if not rel:
            skipped.append(("", "empty path"))
            continue
        path = _resolve(rel, root)
        if not city:
            skipped.append((rel, "no city given"))
            continue
        if path in seen:
            skipped.append((rel, "listed more than once"))
            continue
        reason = _file_problem(path)
        label = None
        if reason is None and has_label and raw.label_path.strip():
            label = _resolve(raw.label_path.strip(), root)
            if not label.is_file():
                reason = f"label file not found: {raw.label_path.strip()}"
        if reason is not None:
            skipped.append((rel, reason))
            continue
        seen.add(path)
        rows.append((path, city, raw.spot.strip() if has_spot else "", label))
    rows = _checked(rows, check, progress, skipped, root)
    class_names = _read_class_names(csv_path.parent / "classes.json")
    discriminative = _read_discriminative(csv_path.parent / "synth.json")
    return _build(root, rows, skipped, class_names, discriminative)


def _from_folders(root: Path, check: bool, progress: bool) -> CityDataset:
    root = root.resolve()
    skipped: list[tuple[str, str]] = []
    rows: list[tuple[Path, str, str, Path | None]] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith((".", "_")):
            continue
        if not entry.is_dir():
            skipped.append((entry.name, "not inside a city folder"))
            continue
        for path in _walk_files(entry):
            reason = _file_problem(path)
            if reason is not None:
                skipped.append((_rel(path, root), reason))
            else:
                rows.append((path, entry.name, "", None))
    rows = _checked(rows, check, progress, skipped, root)
    return _build(root, rows, skipped, None, None)


def _walk_files(folder: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _resolve(rel: str, root: Path) -> Path:
    p = Path(rel).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else root / p))  # keeps symlinks as named


def _file_problem(path: Path) -> str | None:
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file type ({path.suffix or 'no extension'})"
    if not path.is_file():
        return "file not found"
    return None


def _checked(rows, check: bool, progress: bool, skipped: list, root: Path) -> list:
    if not check:
        return rows
    it = rows
    if progress:
        from tqdm import tqdm

        it = tqdm(rows, desc="checking images", unit="img")
    kept = []
    for row in it:
        reason = check_image_file(row[0])
        if reason is None:
            kept.append(row)
        else:
            skipped.append((_rel(row[0], root), reason))
    return kept


def check_image_file(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """None if ``path`` looks like a decodable image, else a short reason. Cheap: the header,
    PNG chunk checksums, and JPEG entropy data decoded at 1/8 scale (detects truncation)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w <= 0 or h <= 0:
                return "image has no pixels"
            if w * h > max_pixels:
                return f"image too large ({w}×{h} pixels)"
            if im.format == "JPEG":
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                im.load()
            elif im.format == "PNG":
                im.verify()
    except Exception as err:  # PIL signals bad files with many exception types
        log.debug("unreadable image %s: %s", path, err)
        if isinstance(err, Image.DecompressionBombError | Image.DecompressionBombWarning):
            return "image too large"
        if isinstance(err, OSError) and "truncated" in str(err):
            return "truncated or damaged image"
        return "not a readable image"
    return None


def _read_class_names(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"could not read {path}: {err}") from err
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path} must be a JSON list of class names")
    return names


def _read_discriminative(path: Path) -> dict[str, list[str]] | None:
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("ignoring unreadable %s", path)
        return None
    disc = meta.get("discriminative") if isinstance(meta, dict) else None
    if not isinstance(disc, dict):
        return None
    return {str(k): [str(x) for x in v] for k, v in disc.items()}


def _build(root: Path, rows, skipped, class_names, discriminative) -> CityDataset:
    cities = sorted({city for _, city, _, _ in rows})
    if len(cities) < 2:
        found = ", ".join(cities) if cities else "none"
        raise ValueError(f"a city data set needs images from at least two cities; found {found} "
                         f"in {root} ({len(skipped)} files skipped)")
    ids = [_image_id(path, root, keep_ext=False) for path, *_ in rows]
    dup = {i for i, n in Counter(ids).items() if n > 1}
    records = []
    for (path, city, spot, label), image_id in zip(rows, ids, strict=True):
        if image_id in dup:
            image_id = _image_id(path, root, keep_ext=True)
        spot = spot or parse_spot(path.name) or f"file:{image_id}"
        records.append(ImageRecord(image_id, path, city, spot, label))
    return CityDataset(root, records, cities, class_names, skipped, discriminative)


def _image_id(path: Path, root: Path, keep_ext: bool) -> str:
    rel = _rel(path, root).lstrip("/")
    if keep_ext:
        return rel
    suffix = path.suffix
    return rel[: -len(suffix)] if suffix else rel


# --------------------------------------------------------------------------- torch


class TorchImages(torch.utils.data.Dataset):
    """``(uint8 tensor 3×size×size, label or -1)``; normalisation is left to the model side."""

    def __init__(self, records: Sequence[ImageRecord], size: int,
                 labels: Sequence[int] | None = None) -> None:
        self.records = list(records)
        self.size = int(size)
        self.labels = None if labels is None else [int(x) for x in labels]
        if self.labels is not None and len(self.labels) != len(self.records):
            raise ValueError(f"{len(self.labels)} labels for {len(self.records)} records")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rec = self.records[i]
        arr = _load_resized(rec.path, self.size)
        label = -1 if self.labels is None else self.labels[i]
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), label


def _load_resized(path: Path | str, size: int) -> np.ndarray:
    try:
        return resize_center_crop(decode_image(path), size)
    except ImageDecodeError as err:
        raise ImageDecodeError(f"{Path(path).name}: {err}") from err


def load_uint8_batch(paths: Sequence[Path | str], size: int) -> np.ndarray:
    """Decode, resize and centre-crop ``paths`` into one ``[B, size, size, 3]`` uint8 array."""
    if not paths:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([_load_resized(p, size) for p in paths])
