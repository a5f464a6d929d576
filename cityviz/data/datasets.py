"""City photo data sets: loading (manifest, CSV, folder per city), spots, grouped splits.

A *spot* is one physical place seen from several directions. Splits keep every spot in one
split only, because with 12-24 views per place a random split leaks places into the test set.

Layouts :func:`load_dataset` reads:

- a CSV ``path,city[,spot][,label_path][,lat,lon][,district]`` (UTF-8; relative paths are
  relative to the CSV; ``latitude,longitude`` are read as ``lat,lon``), with ``classes.json`` (a
  JSON list of class names, indexed by the label values) beside the CSV;
- a folder with ``manifest.csv`` (the same CSV; the synthetic generator writes one);
- a folder ``root/<city>/**/*.{jpg,jpeg,png,webp}``. Label maps, optional:
  ``root/_labels/<city>/<same relative path, suffix .png>`` (single-channel class indices, the
  photo's size), with the class names in ``root/classes.json``. When ``root/_labels`` exists,
  a photo without its label map is skipped. Folders whose names start with ``.`` or ``_`` are
  not cities.

What is never fatal: every problem with one file (not an image, unreadable, damaged, a name that
is not valid UTF-8 or holds a control character such as a newline, too long for the system, a
broken link) skips that file and records ``(path, reason)`` in :attr:`CityDataset.skipped`,
shown with :func:`~cityviz.data.images.display_path` so the text is always printable. A city
folder whose name is not valid UTF-8 skips the whole city, with one reason. Names that cannot be
encoded as UTF-8 are skipped rather than stored because the cache keeps paths in Parquet and
JSON, which hold UTF-8 text only.

One file, one record. Symbolic links are followed (a city folder may be a link to the photos
elsewhere); a folder reached twice within a city (a link loop, or two links to one folder) is
read once. Files are identified by ``(st_dev, st_ino)``, so a symlink or hard link to a file
already loaded is the same file: under the same city it is skipped as a duplicate, under two
cities it is a ``ValueError`` naming both cities (one photo cannot carry two labels; a city
folder linked to the data root does this). Files of equal size are also compared by content
(BLAKE2b of the first 64 KiB, then of the whole file when those agree): an identical copy under
the same city is skipped as a duplicate; identical photos under different cities are all
skipped, since they cannot tell the cities apart and would leak between splits.

Spots (:data:`SPOT_SOURCES` says where each came from, counted in
:attr:`CityDataset.spot_sources`): the CSV's ``spot`` column; else the file name (Pittsburgh,
Tokyo 24/7, VPR; see :func:`parse_spot`); else one spot per file. VPR names carry UTM
coordinates: photos closer than ``spot_radius_m`` (default :data:`SPOT_RADIUS_M`, the 25 m at
which place recognition is evaluated) are joined into one spot, transitively, per UTM zone and
hemisphere (:func:`spatial_groups`), so that no two photos that close can sit in different
splits. Photos with a pano id keep all views of a pano together *and* join nearby photos the
same way. Photos in different UTM zones are never joined. Photos without a spot convention but
with coordinates (from the CSV or EXIF) are joined the same way by their latitude/longitude
(:func:`gps_groups`; spot source ``gps``).

Coordinates (WGS84 degrees; :data:`GEO_SOURCES`, counted in :attr:`CityDataset.geo_sources`), in
priority order: the CSV's ``lat,lon`` columns; else a VPR / Tokyo 24/7 name's lat/lon fields
(:func:`latlon_from_name`); else the EXIF GPS tags of a JPEG or WebP, read from its header only
(:mod:`cityviz.data.geo_tags`); else NaN. A CSV value that is not a number or out of range leaves
that photo's coordinates empty and is listed in :attr:`CityDataset.geo_warnings` with its line,
never fatal. Photos without coordinates work everywhere else.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import logging
import math
import os
import re
import stat
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.neighbors import radius_neighbors_graph

from cityviz.data.geo_tags import EXIF_SUFFIXES, parse_latlon, read_exif_latlon
from cityviz.data.images import (
    DEFAULT_MAX_PIXELS,
    decode_resized,
    display_path,
)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp"})
SPLITS = ("train", "val", "test")
SPOT_RADIUS_M = 25.0
"""Photos closer than this (metres, UTM) share a spot: the 25 m threshold of place recognition."""
SPOT_SOURCES = ("csv", "pittsburgh", "tokyo-pano", "vpr-pano", "vpr-utm", "gps", "file")
"""Where a spot came from: the CSV's spot column, a Pittsburgh place id, a Tokyo 24/7 / Time
Machine pano id, a VPR pano id (joined with nearby photos), VPR UTM coordinates (joined by
distance), the photo's latitude/longitude from the CSV or EXIF (``gps``, joined by distance), or
nothing known (``file``: each photo is its own spot)."""
GEO_SOURCES = ("csv", "name", "exif", "none")
"""Where a photo's latitude/longitude came from, in priority order: the CSV's ``lat,lon`` (or
``latitude,longitude``) columns, a VPR / Tokyo 24/7 file name, the file's EXIF GPS tags, or
nowhere (``none``: NaN)."""
EARTH_RADIUS_M = 6_371_008.8
"""Mean Earth radius (IUGG), metres: GPS coordinates are compared on this sphere."""
LABELS_DIR = "_labels"
"""Folder layouts keep label maps in ``root/_labels/<city>/...`` (see the module docstring)."""


@dataclass(frozen=True)
class ImageRecord:
    image_id: str
    path: Path  # absolute
    city: str
    spot: str
    label_path: Path | None = None
    lat: float = math.nan  # WGS84 degrees, NaN when unknown
    lon: float = math.nan
    district: str = ""  # the CSV's district column (the synthetic set writes one), else ""
    geo_source: str = "none"  # a GEO_SOURCES key


@dataclass
class CityDataset:
    """A loaded data set. ``skipped`` lists ``(path, reason)`` of every file left out (printable
    text); ``spot_sources`` counts the records per :data:`SPOT_SOURCES` key (all keys present),
    ``geo_sources`` per :data:`GEO_SOURCES` key; ``geo_warnings`` lists ``(path, reason)`` of
    every photo kept whose coordinates (or district) were unusable and left empty."""

    root: Path
    records: list[ImageRecord]
    cities: list[str]  # sorted
    class_names: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    discriminative: dict[str, list[str]] | None = None  # ground truth, synthetic sets only
    spot_sources: dict[str, int] = field(default_factory=dict)
    geo_sources: dict[str, int] = field(default_factory=dict)
    geo_warnings: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def city_indices(self) -> np.ndarray:
        """Index into ``cities`` of every record (the classification target)."""
        lookup = {c: i for i, c in enumerate(self.cities)}
        return np.array([lookup[r.city] for r in self.records], dtype=np.int64)

    def to_frame(self) -> pd.DataFrame:
        """One row per record: image_id, path, city, city_idx, spot, label_path, ``lat``/``lon``
        (float64 degrees, NaN unknown), and ``district`` (str) when any record has one."""
        df = pd.DataFrame({
            "image_id": [r.image_id for r in self.records],
            "path": [str(r.path) for r in self.records],
            "city": [r.city for r in self.records],
            "city_idx": self.city_indices(),
            "spot": [r.spot for r in self.records],
            "label_path": [None if r.label_path is None else str(r.label_path)
                           for r in self.records],
            "lat": np.array([r.lat for r in self.records], dtype=np.float64),
            "lon": np.array([r.lon for r in self.records], dtype=np.float64),
        })
        if any(r.district for r in self.records):
            df["district"] = [r.district for r in self.records]
        return df

    def fingerprint(self) -> str:
        """sha256 over the sorted (relative path, file size, city, spot, label) of every record,
        plus the CSV's coordinates and district where given.

        Cheap (one ``stat`` per file, no content hashing) yet changes when files are added,
        removed, replaced by a file of another size, or assigned to another city, spot,
        position or district. (Coordinates from names and EXIF follow from the name and file.)
        """
        lines = []
        for r in self.records:
            label = ("" if r.label_path is None
                     else f"{_rel(r.label_path, self.root)}\t{_size(r.label_path)}")
            line = f"{_rel(r.path, self.root)}\t{_size(r.path)}\t{r.city}\t{r.spot}\t{label}"
            if r.geo_source == "csv":
                line += f"\t{r.lat:.7f},{r.lon:.7f}"
            if r.district:
                line += f"\t{r.district}"
            lines.append(line)
        h = hashlib.sha256()
        for line in sorted(lines):
            h.update(line.encode("utf-8", "surrogateescape"))
            h.update(b"\n")
        return h.hexdigest()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except (OSError, ValueError):
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
# UTM latitude bands: C..M are south of the equator, N..X north (I and O are not used).
_SOUTH_BANDS = frozenset("CDEFGHJKLM")
_NORTH_BANDS = frozenset("NPQRSTUVWX")


@dataclass(frozen=True)
class _NameSpot:
    key: str  # the spot of this name alone
    source: str  # a SPOT_SOURCES key
    zone: str | None = None  # "<zone><N|S|?>" when the name has UTM coordinates
    east: float = math.nan
    north: float = math.nan
    pano: str = ""


def parse_spot(filename: str) -> str | None:
    """The place a street-view file name belongs to, or None if the name follows no convention.

    - VPR convention ``@east@north@zone@letter@lat@lon@pano_id@tile@...@.jpg``: ``pano:<pano_id>``
      when the pano id is present, else ``utm:<zone><letter>:<east>:<north>`` (metres, two
      decimals). :func:`load_dataset` then joins photos closer than ``spot_radius_m``.
    - Pittsburgh ``NNNNNN_pitchP_yawY.jpg``: ``pitts:NNNNNN`` (24 views per place).
    - Tokyo 24/7 ``<pano id>_012_<heading>.png`` / Tokyo TM ``<pano id>_<heading>_012.jpg``:
      ``pano:<pano id>`` (12 directions per panorama).
    """
    found = _spot_from_name(filename)
    return None if found is None else found.key


def _spot_from_name(filename: str) -> _NameSpot | None:
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    if name.startswith("@"):
        return _parse_vpr(name.split("@"))
    stem = name.rsplit(".", 1)[0] if "." in name else name
    if m := _PITTS.match(stem):
        return _NameSpot(f"pitts:{m.group(1)}", "pittsburgh")
    if m := _TOKYO247.match(stem) or _TOKYO_TM.match(stem):
        return _NameSpot(f"pano:{m.group(1)}", "tokyo-pano")
    return None


def _parse_vpr(parts: list[str]) -> _NameSpot | None:
    if len(parts) < 9:
        return None
    pano = parts[7].strip()
    zone, letter = parts[3].strip(), parts[4].strip().upper()
    try:
        east, north = float(parts[1]), float(parts[2])
    except ValueError:
        east = north = math.nan
    located = math.isfinite(east) and math.isfinite(north) and bool(zone)
    hemisphere = "S" if letter in _SOUTH_BANDS else "N" if letter in _NORTH_BANDS else "?"
    where = dict(zone=f"{zone}{hemisphere}", east=east, north=north) if located else {}
    if pano:
        return _NameSpot(f"pano:{pano}", "vpr-pano", pano=pano, **where)
    if not located:
        return None
    return _NameSpot(f"utm:{zone}{letter}:{east:.2f}:{north:.2f}", "vpr-utm", **where)


def latlon_from_name(filename: str) -> tuple[float, float] | None:
    """``(lat, lon)`` in degrees from a VPR / Tokyo 24/7 file name
    ``@utm_e@utm_n@zone@letter@lat@lon@pano_id@...``, or None when the name follows no such
    convention or its latitude/longitude fields are empty, not numbers or out of range.

    The UTM fields are not converted when lat/lon are missing: no maintained projection library
    (e.g. pyproj) is a dependency, and VPR names carry both.
    """
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    parts = name.split("@")
    if not name.startswith("@") or len(parts) < 9 or not (parts[5].strip() and parts[6].strip()):
        return None
    try:
        return parse_latlon(parts[5], parts[6])
    except ValueError:
        return None


def gps_groups(lat: Sequence[float], lon: Sequence[float],
               radius_m: float = SPOT_RADIUS_M) -> np.ndarray:
    """Group index (int64, ``[N]``) of each point given in degrees: connected components of
    "closer than ``radius_m``" (single linkage, as :func:`spatial_groups`).

    Points are placed on a sphere of :data:`EARTH_RADIUS_M` in Cartesian metres, so the
    straight-line (chord) distance differs from the great-circle distance by less than a
    micrometre at 25 m, anywhere on Earth, with no projection zones. Uses scikit-learn's
    ``radius_neighbors_graph`` and SciPy's ``connected_components``.

    Raises ValueError for sequences of different lengths, non-finite or out-of-range
    coordinates, or a radius that is not a positive finite number.
    """
    la = np.asarray(lat, dtype=np.float64).reshape(-1)
    lo = np.asarray(lon, dtype=np.float64).reshape(-1)
    if len(la) != len(lo):
        raise ValueError("lat and lon must have the same length")
    try:
        radius = float(radius_m)
    except (TypeError, ValueError):
        radius = math.nan
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius_m must be a positive number of metres, got {radius_m!r}")
    if not (np.isfinite(la).all() and np.isfinite(lo).all()
            and (np.abs(la) <= 90).all() and (np.abs(lo) <= 180).all()):
        raise ValueError("coordinates must be finite degrees within [-90, 90] and [-180, 180]")
    if len(la) < 2:
        return np.zeros(len(la), dtype=np.int64)
    phi, lam = np.radians(la), np.radians(lo)
    xyz = EARTH_RADIUS_M * np.column_stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam),
                                            np.sin(phi)])
    graph = radius_neighbors_graph(xyz, radius, mode="connectivity", include_self=False)
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def spatial_groups(zones: Sequence[str | None], east: Sequence[float], north: Sequence[float],
                   radius_m: float = SPOT_RADIUS_M,
                   same: Sequence[str] | None = None) -> np.ndarray:
    """Group index (int64, ``[N]``) of each point: connected components of "closer than
    ``radius_m``", computed per zone.

    ``east``/``north`` are UTM metres; points of different ``zones`` (e.g. ``"17N"``) are never
    grouped, as their coordinates are not comparable; a zone of None or ``""`` marks a point
    without coordinates (its east/north are ignored). Single linkage: two points within
    ``radius_m`` (inclusive) always share a group, so a chain of close points is one group. With
    ``same`` (e.g. pano ids; ``""`` for none), points sharing a non-empty value are joined too.
    Uses scikit-learn's ``radius_neighbors_graph`` and SciPy's ``connected_components``.

    Raises ValueError for sequences of different lengths, non-finite coordinates, or a radius
    that is not a positive finite number.
    """
    n = len(zones)
    e = np.asarray(east, dtype=np.float64).reshape(-1)
    nn = np.asarray(north, dtype=np.float64).reshape(-1)
    if len(e) != n or len(nn) != n or (same is not None and len(same) != n):
        raise ValueError("zones, east, north (and same) must have the same length")
    try:
        radius = float(radius_m)
    except (TypeError, ValueError):
        radius = math.nan
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius_m must be a positive number of metres, got {radius_m!r}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    has_zone = np.array([bool(z) for z in zones])
    if not (np.isfinite(e[has_zone]).all() and np.isfinite(nn[has_zone]).all()):
        raise ValueError("UTM coordinates must be finite numbers")
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    located = np.flatnonzero(has_zone)
    codes, _ = pd.factorize(pd.Series([str(zones[i]) for i in located], dtype=object))
    order = np.argsort(codes, kind="stable")
    for part in np.split(located[order], np.flatnonzero(np.diff(codes[order])) + 1):
        idx = np.sort(part)
        if len(idx) < 2:
            continue
        graph = radius_neighbors_graph(np.column_stack([e[idx], nn[idx]]), radius,
                                       mode="connectivity", include_self=False).tocoo()
        rows.append(idx[graph.row])
        cols.append(idx[graph.col])
    if same is not None:
        members: dict[str, list[int]] = defaultdict(list)
        for i, key in enumerate(same):
            if key:
                members[str(key)].append(i)
        for idx_list in members.values():
            if len(idx_list) > 1:
                rows.append(np.asarray(idx_list[:-1]))
                cols.append(np.asarray(idx_list[1:]))
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    adjacency = coo_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(n, n))
    _, labels = connected_components(adjacency, directed=False)
    return labels.astype(np.int64)


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

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_HEAD_BYTES = 64 * 1024


def load_dataset(source: str | Path, *, check_images: bool = True, progress: bool = False,
                 spot_radius_m: float = SPOT_RADIUS_M) -> CityDataset:
    """Load a data set from (a) a folder with ``manifest.csv``, (b) a CSV file
    ``path,city[,spot][,label_path][,lat,lon][,district]``, or (c) a folder
    ``root/<city>/**/*.{jpg,jpeg,png,webp}`` (label maps, ``classes.json`` and where coordinates
    come from: see the module docstring).

    Problems with single files are skipped and listed in ``skipped``, never fatal. With
    ``check_images`` every file's header is opened (JPEGs are also decoded at 1/8 scale and PNG
    chunk checksums verified, which catches truncated files cheaply) and label maps must be
    single-channel and the photo's size. ``spot_radius_m``: photos with UTM coordinates in
    their names closer than this share a spot (:func:`spatial_groups`).

    Raises FileNotFoundError when ``source`` does not exist; ValueError for a CSV that is not a
    readable UTF-8 table (naming the file and line), one file under two cities, fewer than two
    cities with usable photos, label maps without ``classes.json``, or a data set path that is
    not valid UTF-8.
    """
    try:
        src = Path(os.path.abspath(Path(source).expanduser()))
    except (RuntimeError, ValueError, TypeError) as err:
        raise ValueError(f"{display_path(str(source))} is not a usable data set path") from err
    if os.path.isdir(src):
        manifest = src / "manifest.csv"
        if os.path.isfile(manifest):
            return _from_table(manifest, check_images, progress, spot_radius_m)
        return _from_folders(src, check_images, progress, spot_radius_m)
    if os.path.isfile(src):
        if src.suffix.lower() != ".csv":
            raise ValueError(f"{display_path(src)} is not a folder or a .csv file")
        return _from_table(src, check_images, progress, spot_radius_m)
    raise FileNotFoundError(
        f"no data set at {display_path(src)}: the folder or CSV file does not exist")


@dataclass(eq=False)
class _Row:
    """One candidate photo while loading."""

    path: Path  # absolute, as named (links kept)
    city: str
    shown: str  # printable path for messages
    where: str = ""  # " (list.csv line 4)" for table rows
    spot: str = ""  # given by the table
    label: Path | None = None
    key: tuple[int, int] = (0, 0)  # (st_dev, st_ino)
    size: int = 0
    lat: float = math.nan  # given by the table
    lon: float = math.nan
    district: str = ""  # given by the table

    def skip(self, skipped: list[tuple[str, str]], reason: str) -> None:
        skipped.append((self.shown, reason + self.where))


def _name_problem(name: str) -> str | None:
    """Why a name from a user's disk or table cannot be stored as cache text, or None."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8 (the cache stores names as UTF-8 text); rename it"
    if _CONTROL.search(name):
        return "name holds a control character (such as a newline or tab); rename it"
    return None


def _require_text(path: Path) -> None:
    if _name_problem(str(path)) is not None:
        raise ValueError(f"the data set path {display_path(path)} is not valid UTF-8 text or "
                         "holds a control character, which the cache cannot store; rename or "
                         "move the folder")


def _shown(path: Path, root: Path) -> str:
    return display_path(_rel(path, root))


def _from_table(csv_path: Path, check: bool, progress: bool, radius: float) -> CityDataset:
    root = csv_path.parent.resolve()
    _require_text(root)
    name = display_path(csv_path.name)
    rows: list[_Row] = []
    skipped: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    declared: dict[str, str] = {}
    line = 0
    try:
        with open(csv_path, "rb") as fh:
            if fh.read(2) in (b"\xff\xfe", b"\xfe\xff"):
                raise ValueError(f"{name} is UTF-16 text; save it as UTF-8")
        with open(csv_path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
            reader = csv.reader(fh, skipinitialspace=True)
            header = next(reader, None)
            line = reader.line_num
            if header is None:
                raise ValueError(f"{name} is empty; it needs a header line "
                                 "path,city[,spot][,label_path]")
            columns = _table_columns(header, name)
            for fields in reader:
                start, line = line + 1, reader.line_num
                row = _table_row(fields, columns, root, name, start, skipped, warnings)
                if row is not None:
                    declared.setdefault(row.city, f"{name}: city {row.city}")
                    rows.append(row)
    except csv.Error as err:
        raise ValueError(f"{name} line {line + 1} is not readable as CSV ({err})") from err
    except OSError as err:
        raise ValueError(f"could not read {name} ({err.strerror or 'input/output error'})") from err
    class_names = _read_class_names(csv_path.parent / "classes.json")
    discriminative = _read_discriminative(csv_path.parent / "synth.json")
    return _finish(root, rows, skipped, declared, check, progress, class_names, discriminative,
                   radius, warnings)


_COLUMN_ALIASES = {"latitude": "lat", "longitude": "lon"}


def _table_columns(header: list[str], name: str) -> list[str]:
    """Lower-cased column names; ``latitude``/``longitude`` read as ``lat``/``lon``."""
    columns = [c.strip().lower() for c in header]
    columns = [_COLUMN_ALIASES.get(c, c) for c in columns]
    if any(_name_problem(c) for c in columns):
        raise ValueError(f"{name} line 1: the header is not valid UTF-8 text; save the file as "
                         "UTF-8")
    missing = {"path", "city"} - set(columns)
    if missing:
        raise ValueError(f"{name} needs columns path and city (optional: spot, label_path, "
                         "lat, lon, district); "
                         f"it has {[display_path(c) for c in columns]}")
    twice = sorted(c for c, k in Counter(columns).items() if k > 1 and c)
    if twice:
        raise ValueError(f"{name} line 1: column {twice[0]!r} appears more than once")
    return columns


def _table_row(fields: list[str], columns: list[str], root: Path, name: str, line: int,
               skipped: list[tuple[str, str]], warnings: list[tuple[str, str]]) -> _Row | None:
    """One table line as a row, or None (blank, or skipped with a reason naming the line).

    Unusable coordinates or district leave those empty and add ``(path, reason)`` naming the
    line to ``warnings``; the photo is kept.
    """
    if not any(f.strip() for f in fields):
        return None
    where = f" ({name} line {line})"
    values = dict(zip(columns, (f.strip() for f in fields), strict=False))
    rel = values.get("path", "")
    shown = display_path(rel) if rel else f"{name} line {line}"
    if len(fields) > len(columns):
        skipped.append((shown, f"has {len(fields)} fields but the header has {len(columns)} "
                               f"(a comma inside a path needs quotes){where}"))
        return None
    if not rel:
        skipped.append((shown, "empty path" + where))
        return None
    city, spot, label = values.get("city", ""), values.get("spot", ""), values.get("label_path", "")
    for what, value in (("path", rel), ("city", city), ("spot", spot), ("label_path", label)):
        problem = _name_problem(value)
        if problem is not None:
            skipped.append((shown, f"{what} {problem}{where}"))
            return None
    if not city:
        skipped.append((shown, "no city given" + where))
        return None
    try:
        path = _resolve(rel, root)
        label_path = _resolve(label, root) if label else None
    except (RuntimeError, ValueError):  # "~nouser/...", NUL characters
        skipped.append((shown, "path cannot be resolved" + where))
        return None
    row = _Row(path, city, shown, where, spot, label_path)
    lat, lon = values.get("lat", ""), values.get("lon", "")
    if lat or lon:
        try:
            row.lat, row.lon = parse_latlon(lat, lon)
        except ValueError as err:
            warnings.append((shown, f"{err}: its coordinates are left empty{where}"))
    district = values.get("district", "")
    if district and _name_problem(district) is None:
        row.district = district
    elif district:
        warnings.append((shown, f"district {_name_problem(district)}; it is left empty{where}"))
    return row


def _from_folders(root: Path, check: bool, progress: bool, radius: float) -> CityDataset:
    root = root.resolve()
    _require_text(root)
    skipped: list[tuple[str, str]] = []
    rows: list[_Row] = []
    declared: dict[str, str] = {}
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as err:
        raise ValueError(f"could not read the data set folder {display_path(root)} "
                         f"({err.strerror or 'input/output error'})") from err
    for entry in entries:
        if entry.name.startswith((".", "_")):
            continue
        problem = _name_problem(entry.name)
        shown = display_path(entry.name)
        if not _is_dir(entry):
            skipped.append((shown, "not inside a city folder" if problem is None
                            else f"file {problem}"))
        elif problem is not None:
            skipped.append((shown + "/", f"city folder {problem}; the city is skipped"))
        else:
            declared[entry.name] = entry.name + "/"
            rows.extend(_walk_city(root, entry.name, skipped))
    class_names = _read_class_names(root / "classes.json")
    if os.path.isdir(root / LABELS_DIR):
        rows = _attach_labels(rows, root, skipped)
        if rows and class_names is None:
            raise ValueError(f"{display_path(root / LABELS_DIR)} holds label maps but "
                             f"{display_path(root / 'classes.json')} (a JSON list of class "
                             "names) is missing")
    return _finish(root, rows, skipped, declared, check, progress, class_names, None, radius)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symbolic links
    except OSError:
        return False


def _walk_city(root: Path, city: str, skipped: list[tuple[str, str]]) -> Iterator[_Row]:
    """Every non-hidden file under ``root/city``, links followed, each folder read once."""
    seen: dict[tuple[int, int], str] = {}

    def unreadable(err: OSError) -> None:
        why = (err.strerror or "input/output error").lower()
        where = _shown(Path(err.filename), root) + "/"
        skipped.append((where, f"folder could not be read ({why})"))

    for dirpath, dirnames, filenames in os.walk(root / city, onerror=unreadable, followlinks=True):
        here = Path(dirpath)
        try:
            st = os.stat(here)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            skipped.append((_shown(here, root) + "/",
                            f"same folder as {seen[(st.st_dev, st.st_ino)]}/ (a symbolic link "
                            "loop or a second link to it); read once"))
            continue
        seen[(st.st_dev, st.st_ino)] = _shown(here, root)
        keep = []
        for d in sorted(dirnames):
            problem = _name_problem(d)
            if d.startswith("."):
                continue
            if problem is not None:
                skipped.append((_shown(here / d, root) + "/", f"folder {problem}; its files are "
                                                              "skipped"))
            else:
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = here / name
            problem = _name_problem(name)
            if problem is not None:
                skipped.append((_shown(path, root), f"file {problem}"))
            else:
                yield _Row(path, city, _shown(path, root))


def _attach_labels(rows: list[_Row], root: Path, skipped: list[tuple[str, str]]) -> list[_Row]:
    kept = []
    for row in rows:
        rel = row.path.relative_to(root / row.city).with_suffix(".png")
        label = root / LABELS_DIR / row.city / rel
        if os.path.isfile(label):
            row.label = label
            kept.append(row)
        else:
            expected = f"{LABELS_DIR}/{row.city}/{display_path(rel.as_posix())}"
            row.skip(skipped, f"no label map {expected}")
    return kept


def _resolve(rel: str, root: Path) -> Path:
    p = Path(rel).expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else root / p))  # keeps symlinks as named


def _locate(row: _Row) -> str | None:
    """Why ``row`` is not a regular image file (or its label is missing), else None; sets
    ``row.key`` and ``row.size`` from ``os.stat``."""
    if row.path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file type ({display_path(row.path.suffix) or 'no extension'})"
    try:
        st = os.stat(row.path)
    except FileNotFoundError:
        return "broken symbolic link" if os.path.islink(row.path) else "file not found"
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            return "file name too long for this system"
        if err.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"file could not be read ({(err.strerror or 'input/output error').lower()})"
    except ValueError:
        return "not a valid file name (it holds a NUL character)"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if row.label is not None and not os.path.isfile(row.label):
        return f"label file not found: {display_path(row.label)}"
    row.key, row.size = (st.st_dev, st.st_ino), st.st_size
    return None


def _finish(root: Path, rows: list[_Row], skipped: list[tuple[str, str]],
            declared: dict[str, str], check: bool, progress: bool,
            class_names: list[str] | None, discriminative: dict[str, list[str]] | None,
            radius: float, warnings: list[tuple[str, str]] | None = None) -> CityDataset:
    located = []
    for row in rows:
        reason = _locate(row)
        if reason is None:
            located.append(row)
        else:
            row.skip(skipped, reason)
    rows = _one_record_per_file(located, skipped)
    rows = _checked(rows, check, progress, skipped)
    rows = _drop_copies(rows, skipped)
    for city in sorted(set(declared) - {r.city for r in rows}):
        skipped.append((declared[city], "no usable images: the city is left out"))
    kept = {r.shown for r in rows}
    warnings = [w for w in warnings or [] if w[0] in kept]
    return _build(root, rows, skipped, class_names, discriminative, radius, warnings)


def _one_record_per_file(rows: list[_Row], skipped: list[tuple[str, str]]) -> list[_Row]:
    """Drop a file reached twice under one city; raise ValueError for one file in two cities."""
    first: dict[tuple[int, int], _Row] = {}
    kept, clashes = [], []
    for row in rows:
        prev = first.setdefault(row.key, row)
        if prev is row:
            kept.append(row)
        elif prev.city == row.city:
            row.skip(skipped, "listed more than once" if prev.shown == row.shown
                     else f"same file as {prev.shown}")
        else:
            clashes.append((prev, row))
    if clashes:
        prev, row = clashes[0]
        raise ValueError(
            f"{len(clashes)} file(s) belong to two cities: {row.shown}{row.where} in city "
            f"{row.city!r} is the same file as {prev.shown}{prev.where} in city {prev.city!r}. "
            "One photo cannot belong to two cities; remove the duplicate link, folder or line "
            "(a city folder that is a link to the data folder does this).")
    return kept


def _digest(path: Path, limit: int | None) -> bytes | None:
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            if limit is None:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            else:
                h.update(fh.read(limit))
    except OSError:
        return None
    return h.digest()


def _same_content(rows: list[_Row]) -> Iterator[list[_Row]]:
    """Groups (2+) of equally sized ``rows`` with identical bytes."""
    heads: dict[bytes, list[_Row]] = defaultdict(list)
    for row in rows:
        if (d := _digest(row.path, _HEAD_BYTES)) is not None:
            heads[d].append(row)
    for group in heads.values():
        if len(group) < 2:
            continue
        if group[0].size <= _HEAD_BYTES:
            yield group
            continue
        whole: dict[bytes, list[_Row]] = defaultdict(list)
        for row in group:
            if (d := _digest(row.path, None)) is not None:
                whole[d].append(row)
        yield from (g for g in whole.values() if len(g) > 1)


def _drop_copies(rows: list[_Row], skipped: list[tuple[str, str]]) -> list[_Row]:
    """Skip byte-identical copies: later copies within a city, every copy across cities."""
    by_size: dict[int, list[_Row]] = defaultdict(list)
    for row in rows:
        by_size[row.size].append(row)
    dropped: set[int] = set()
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        for group in _same_content(same_size):
            if len({r.city for r in group}) == 1:
                for row in group[1:]:
                    row.skip(skipped, f"same content as {group[0].shown} (a copy)")
                    dropped.add(id(row))
                continue
            for row in group:
                other = next(o for o in group if o.city != row.city)
                row.skip(skipped, f"same content as {other.shown} in city {other.city!r}; a "
                                  "photo under two cities is left out")
                dropped.add(id(row))
    return [r for r in rows if id(r) not in dropped]


def _checked(rows: list[_Row], check: bool, progress: bool,
             skipped: list[tuple[str, str]]) -> list[_Row]:
    if not check:
        return rows
    it: Iterable[_Row] = rows
    if progress:
        from tqdm import tqdm

        it = tqdm(rows, desc="checking images", unit="img")
    kept = []
    for row in it:
        reason = check_image_file(row.path)
        if reason is None and row.label is not None:
            reason = _label_problem(row.label, row.path)
        if reason is None:
            kept.append(row)
        else:
            row.skip(skipped, reason)
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
    except PermissionError:
        return "file could not be read (permission denied)"
    except Exception as err:  # PIL signals bad files with many exception types
        log.debug("unreadable image %s: %s", display_path(path), err)
        if isinstance(err, Image.DecompressionBombError | Image.DecompressionBombWarning):
            return "image too large"
        if isinstance(err, OSError) and "truncated" in str(err):
            return "truncated or damaged image"
        return "not a readable image"
    return None


def _label_problem(label: Path, image: Path) -> str | None:
    """Why ``label`` cannot label ``image`` (not one channel, not the photo's size), or None."""
    try:
        with Image.open(image) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
        with Image.open(label) as lab:
            lw, lh = lab.size
            bands = len(lab.getbands())
    except Exception:  # PIL signals bad files with many exception types
        return "label map is not a readable image"
    if bands != 1:
        return f"label map has {bands} channels; it must hold one class index per pixel"
    if orientation in (5, 6, 7, 8):  # EXIF rotates the photo by 90°: labels follow the view
        w, h = h, w
    if (lw, lh) != (w, h):
        return f"label map is {lw}×{lh} pixels but the photo is {w}×{h}"
    return None


def _read_class_names(path: Path) -> list[str] | None:
    if not os.path.isfile(path):
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"could not read {display_path(path)}: {err}") from err
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{display_path(path)} must be a JSON list of class names")
    return names


def _read_discriminative(path: Path) -> dict[str, list[str]] | None:
    if not os.path.isfile(path):
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("ignoring unreadable %s", display_path(path))
        return None
    disc = meta.get("discriminative") if isinstance(meta, dict) else None
    if not isinstance(disc, dict):
        return None
    return {str(k): [str(x) for x in v] for k, v in disc.items()}


def _build(root: Path, rows: list[_Row], skipped: list[tuple[str, str]],
           class_names: list[str] | None, discriminative: dict[str, list[str]] | None,
           radius: float, warnings: list[tuple[str, str]]) -> CityDataset:
    cities = sorted({r.city for r in rows})
    if len(cities) < 2:
        found = ", ".join(cities) if cities else "none"
        first = f"; the first: {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise ValueError(f"a city data set needs images from at least two cities; found {found} "
                         f"in {display_path(root)} ({len(skipped)} files skipped{first})")
    ids = [_image_id(r.path, root, keep_ext=False) for r in rows]
    dup = {i for i, n in Counter(ids).items() if n > 1}
    ids = [_image_id(r.path, root, keep_ext=True) if i in dup else i
           for r, i in zip(rows, ids, strict=True)]
    coords = [_coordinates(r) for r in rows]
    spots, sources = _assign_spots(rows, ids, radius, coords)
    records = [ImageRecord(image_id, r.path, r.city, spot, r.label, lat, lon, r.district, geo)
               for r, image_id, spot, (lat, lon, geo)
               in zip(rows, ids, spots, coords, strict=True)]
    _warn_coarse_spots(records, radius)
    counts = Counter(sources)
    geo_counts = Counter(geo for _, _, geo in coords)
    if warnings:
        log.warning("%d photo(s) have unusable coordinates or district, left empty; the first: "
                    "%s: %s", len(warnings), *warnings[0])
    return CityDataset(root, records, cities, class_names, skipped, discriminative,
                       {k: counts.get(k, 0) for k in SPOT_SOURCES},
                       {k: geo_counts.get(k, 0) for k in GEO_SOURCES}, warnings)


def _coordinates(row: _Row) -> tuple[float, float, str]:
    """``(lat, lon, source)`` of a photo: the table's, else its file name's, else its EXIF GPS
    tags' (read from the header, JPEG and WebP only), else ``(nan, nan, "none")``."""
    if math.isfinite(row.lat):
        return row.lat, row.lon, "csv"
    if (found := latlon_from_name(row.path.name)) is not None:
        return *found, "name"
    if row.path.suffix.lower() in EXIF_SUFFIXES and (found := read_exif_latlon(row.path)):
        return *found, "exif"
    return math.nan, math.nan, "none"


def _assign_spots(rows: list[_Row], ids: list[str], radius: float,
                  coords: list[tuple[float, float, str]]) -> tuple[list[str], list[str]]:
    """Spot and spot source (a SPOT_SOURCES key) of every row; see the module docstring."""
    spots, sources = [], []
    placed: list[tuple[int, _NameSpot]] = []
    located: list[int] = []  # rows without a spot convention but with coordinates
    for i, (row, image_id) in enumerate(zip(rows, ids, strict=True)):
        found = None if row.spot else _spot_from_name(row.path.name)
        if row.spot:
            spots.append(row.spot)
            sources.append("csv")
        elif found is None and math.isfinite(coords[i][0]):
            lat, lon, _ = coords[i]
            spots.append(f"gps:{lat:.6f}:{lon:.6f}")
            sources.append("gps")
            located.append(i)
        elif found is None:
            spots.append(f"file:{image_id}")
            sources.append("file")
        else:
            spots.append(found.key)
            sources.append(found.source)
            if found.zone is not None or found.pano:
                placed.append((i, found))
    if placed:
        groups = spatial_groups([f.zone for _, f in placed],
                                [f.east if f.zone else 0.0 for _, f in placed],
                                [f.north if f.zone else 0.0 for _, f in placed],
                                radius, same=[f.pano for _, f in placed])
        name: dict[int, str] = {}
        for (i, _), g in zip(placed, groups, strict=True):
            name[g] = min(name.get(g, spots[i]), spots[i])
        for (i, _), g in zip(placed, groups, strict=True):
            spots[i] = name[g]
    if located:
        groups = gps_groups([coords[i][0] for i in located], [coords[i][1] for i in located],
                            radius)
        first: dict[int, str] = {}
        for i, g in zip(located, groups, strict=True):
            first[g] = min(first.get(g, spots[i]), spots[i])
        for i, g in zip(located, groups, strict=True):
            spots[i] = first[g]
    return spots, sources


def _warn_coarse_spots(records: list[ImageRecord], radius: float) -> None:
    by_city: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        by_city[r.city][r.spot] += 1
    for city, counts in sorted(by_city.items()):
        n = sum(counts.values())
        spot, biggest = counts.most_common(1)[0]
        if n >= 20 and biggest > n / 2:
            log.warning("%d of %d photos of %s share one spot (%s): photos closer than %g m are "
                        "joined transitively, so this city splits coarsely", biggest, n,
                        display_path(city), display_path(spot), radius)


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
        arr = decode_resized(rec.path, self.size)
        label = -1 if self.labels is None else self.labels[i]
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), label


def load_uint8_batch(paths: Sequence[Path | str], size: int) -> np.ndarray:
    """Decode, resize and centre-crop ``paths`` into one ``[B, size, size, 3]`` uint8 array."""
    if not paths:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([decode_resized(p, size) for p in paths])
