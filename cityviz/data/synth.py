"""Synthetic cities: procedurally rendered street scenes with planted, per-city objects.

Each *spot* is one street layout rendered as a panorama three views wide; its *views* are crops
at evenly spaced offsets (like the 12 directions of a Tokyo 24/7 place). Every city shares the
same distribution of sky, buildings, road, cars, people... and owns a pair of *discriminative*
objects (tokyo-like: signboard + fence; pittsburgh-like: skyscraper + tree; further cities take
further pairs), drawn as textured panels in slots whose geometry is the same in every city, so
that they hide the same shared pixels everywhere and their look is the only signal. A spot shows
a random non-empty subset of its city's pair, in every view. A city named ``control`` owns no
objects and its slots stay empty: with it in the set, a city with planted objects can no longer be
recognised by what it lacks (with only two cities, "no skyscraper or tree" is enough to say
tokyo-like). The label maps use ADE20K indices, so the planted answer can be checked end to end.

Each city is laid out as four districts (:data:`DISTRICTS`) on a few square kilometres of a real
city's latitude/longitude (tokyo-like near Tokyo, pittsburgh-like near Pittsburgh); spot ``i`` lies
in district ``i % 4``. A city's first cue is concentrated in its north-west district and its
second in the north-east (:func:`cue_presence`), a known *spatial* answer for the Geography page.
``manifest.csv`` holds ``path,city,spot,label_path,lat,lon,district``; ``synth.json`` the config,
the planted objects and each city's ``geography`` (centres, cue presence per district, where
each cue is concentrated).

Randomness: a spot's layout comes from ``SeedSequence((seed, city, spot, stream))`` and each
view's nuisances (time of day, colour jitter, noise) from ``(seed, city, spot, view)``, so an
image does not depend on generation order or parallelism. The shared layout is drawn from its
own stream before anything city-specific, so shared objects are identically distributed.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import struct
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cityviz.data.ade20k import ADE20K_CLASSES, ADE20K_INDEX

log = logging.getLogger(__name__)

GENERATOR_VERSION = 5
DEFAULT_CITIES: tuple[str, ...] = ("tokyo-like", "pittsburgh-like")
SHARED_OBJECTS: tuple[str, ...] = (
    "sky", "building", "road", "sidewalk", "car", "person", "pole", "grass", "wall",
)  # fmt: skip
PLANTED_PAIRS: tuple[tuple[str, str], ...] = (
    ("signboard", "fence"),
    ("skyscraper", "tree"),
    ("awning", "streetlight"),
    ("traffic light", "flag"),
    ("palm", "bench"),
    ("bus", "plant"),
    ("column", "clock"),
    ("bridge", "ashcan"),
)
_CITY_PAIR = {"tokyo-like": 0, "pittsburgh-like": 1}
CONTROL_CITY = "control"  # a city with no planted objects (see the module docstring)
_CITY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PANORAMA_VIEWS = 3  # panorama width in view widths
TIMES_OF_DAY = ("day", "sunset", "night")
_TIME_P = (0.5, 0.25, 0.25)


@dataclass
class SynthConfig:
    """What to render. ``size`` is the side of the square images, rendered directly."""

    cities: tuple[str, ...] = DEFAULT_CITIES
    spots_per_city: int = 100
    views_per_spot: int = 4
    size: int = 224
    seed: int = 0
    planted_presence: float = 0.6

    def __post_init__(self) -> None:
        self.cities = tuple(self.cities)
        if not self.cities:
            raise ValueError("SynthConfig needs at least one city")
        if len(set(self.cities)) != len(self.cities):
            raise ValueError(f"city names must be unique: {self.cities}")
        for name in self.cities:
            if not _CITY_NAME.match(name):
                raise ValueError(f"city name {name!r} must be 1-64 letters, digits, '.', '_', '-'")
        if len(self.cities) > len(PLANTED_PAIRS):
            raise ValueError(f"at most {len(PLANTED_PAIRS)} synthetic cities are supported")
        if self.spots_per_city < 1 or self.views_per_spot < 1:
            raise ValueError("spots_per_city and views_per_spot must be at least 1")
        if not 0.0 < self.planted_presence <= 1.0:
            raise ValueError("planted_presence must be in (0, 1]")
        if not 32 <= self.size <= 1024:
            raise ValueError(f"size must be between 32 and 1024 pixels, got {self.size}")

    def to_json(self) -> dict:
        d = asdict(self)
        d["cities"] = list(self.cities)
        return d


def default_city_names(n: int) -> tuple[str, ...]:
    """``n`` city names: the two defaults, then ``city-3``, ``city-4``..."""
    if n < 1:
        raise ValueError("need at least one city")
    return (DEFAULT_CITIES + tuple(f"city-{i}" for i in range(3, n + 1)))[:n]


def discriminative_objects(config: SynthConfig) -> dict[str, list[str]]:
    """The planted object names of each city (tokyo-like and pittsburgh-like keep their pairs,
    ``control`` has none)."""
    taken = {_CITY_PAIR[c] for c in config.cities if c in _CITY_PAIR}
    free = iter(i for i in range(len(PLANTED_PAIRS)) if i not in taken)
    out: dict[str, list[str]] = {}
    for city in config.cities:
        if city == CONTROL_CITY:
            out[city] = []
            continue
        idx = _CITY_PAIR[city] if city in _CITY_PAIR else next(free)
        out[city] = list(PLANTED_PAIRS[idx])
    return out


# --------------------------------------------------------------------------- geography
#
# Each city is laid out as four districts on a patch of a real city's latitude/longitude, so the
# Geography page has a known spatial answer: a city's first cue is concentrated in its north-west
# district and its second cue in the north-east, while the two southern districts show both as
# the rest of the set does (see :func:`cue_presence`).

DISTRICTS: tuple[str, ...] = ("north-west", "north-east", "south-west", "south-east")
"""District names; spot ``i`` of every city lies in district ``i % 4``."""
_DISTRICT_OFFSET_M: tuple[tuple[float, float], ...] = (
    (1200.0, -1200.0), (1200.0, 1200.0), (-1200.0, -1200.0), (-1200.0, 1200.0),
)  # (north, east) of each district's centre from the city's centre, metres; fmt: skip
DISTRICT_RADIUS_M = 350.0
"""Spots lie uniformly in a disc of this radius (metres) around their district's centre."""
CONCENTRATED_PRESENCE = 0.95
SPARSE_PRESENCE = 0.1
_EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)
_CITY_CENTRE: dict[str, tuple[float, float]] = {
    "tokyo-like": (35.6812, 139.7671),  # Tokyo Station
    "pittsburgh-like": (40.4406, -79.9959),  # downtown Pittsburgh
    CONTROL_CITY: (48.8566, 2.3522),  # Paris
}
_OTHER_CENTRES: tuple[tuple[float, float], ...] = (
    (51.5074, -0.1278), (-23.5505, -46.6333), (-33.8688, 151.2093), (19.0760, 72.8777),
    (-1.2921, 36.8219), (45.5019, -73.5674), (52.5200, 13.4050), (41.3874, 2.1686),
)  # London, São Paulo, Sydney, Mumbai, Nairobi, Montréal, Berlin, Barcelona; fmt: skip


def city_centres(cities: tuple[str, ...] | list[str]) -> dict[str, tuple[float, float]]:
    """``{city: (lat, lon)}`` in degrees (WGS84): tokyo-like near Tokyo, pittsburgh-like near
    Pittsburgh, ``control`` in Paris, other cities on further real cities in the order given."""
    free = iter(_OTHER_CENTRES * (len(cities) // len(_OTHER_CENTRES) + 1))
    return {c: _CITY_CENTRE[c] if c in _CITY_CENTRE else next(free) for c in cities}


def offset_latlon(lat: np.ndarray | float, lon: np.ndarray | float, north_m, east_m):
    """``(lat, lon)`` in degrees moved ``north_m``/``east_m`` metres (float64; arrays broadcast).

    The local tangent-plane approximation on a sphere of the mean Earth radius: below 0.1 %
    error over the few kilometres of a synthetic city.
    """
    lat = np.asarray(lat, dtype=np.float64)
    dlat = np.degrees(np.asarray(north_m, dtype=np.float64) / _EARTH_RADIUS_M)
    dlon = np.degrees(np.asarray(east_m, dtype=np.float64)
                      / (_EARTH_RADIUS_M * np.cos(np.radians(lat))))
    return lat + dlat, np.asarray(lon, dtype=np.float64) + dlon


def district_of(spot: int) -> str:
    """The district (a :data:`DISTRICTS` name) of spot number ``spot``, in every city."""
    return DISTRICTS[spot % len(DISTRICTS)]


def district_points(centre: tuple[float, float], district: np.ndarray,
                    u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latitudes and longitudes (float64 ``[N]``) of points in districts ``district`` (int
    indices into :data:`DISTRICTS`) of a city centred at ``centre``, from uniform draws ``u``,
    ``v`` in [0, 1): uniform in a disc of :data:`DISTRICT_RADIUS_M` around the district's
    centre."""
    d = np.asarray(district, dtype=np.int64)
    off = np.asarray(_DISTRICT_OFFSET_M)[d]
    r = DISTRICT_RADIUS_M * np.sqrt(np.asarray(u, dtype=np.float64))
    theta = 2 * np.pi * np.asarray(v, dtype=np.float64)
    return offset_latlon(centre[0], centre[1], off[:, 0] + r * np.sin(theta),
                         off[:, 1] + r * np.cos(theta))


def spot_location(config: SynthConfig, city: str, spot: int) -> tuple[float, float, str]:
    """``(lat, lon, district)`` of a spot (degrees, WGS84): deterministic per
    ``(seed, city, spot)`` like the rendering, and the same for all views of the spot."""
    if city not in config.cities:
        raise ValueError(f"unknown city {city!r}; configured: {config.cities}")
    u, v = _rng(config.seed, city, spot, _STREAM_GEO).random(2)
    lat, lon = district_points(city_centres(config.cities)[city],
                               np.array([spot % len(DISTRICTS)]), np.array([u]), np.array([v]))
    return float(lat[0]), float(lon[0]), district_of(spot)


def cue_presence(config: SynthConfig, city: str, district: str) -> dict[str, float]:
    """Probability that each of the city's planted objects appears in a spot of ``district``.

    The known spatial answer: the city's first cue (e.g. tokyo-like's signboard) is present in
    :data:`CONCENTRATED_PRESENCE` of the north-west's spots and :data:`SPARSE_PRESENCE` of the
    north-east's; the second cue (fence) the other way round; both have ``planted_presence`` in
    the southern districts. With ``planted_presence`` 1 every cue is everywhere.
    """
    kinds = discriminative_objects(config)[city]
    if district not in DISTRICTS:
        raise ValueError(f"unknown district {district!r}; districts: {DISTRICTS}")
    if config.planted_presence >= 1.0:
        return dict.fromkeys(kinds, 1.0)
    out = {}
    for i, kind in enumerate(kinds):
        p = config.planted_presence
        if district == DISTRICTS[0]:
            p = CONCENTRATED_PRESENCE if i == 0 else SPARSE_PRESENCE
        elif district == DISTRICTS[1]:
            p = CONCENTRATED_PRESENCE if i == 1 else SPARSE_PRESENCE
        out[kind] = p
    return out


def concentrated_in(config: SynthConfig) -> dict[str, dict[str, str]]:
    """``{city: {cue: district}}``: the district where each planted cue is concentrated."""
    return {city: {k: DISTRICTS[min(i, 1)] for i, k in enumerate(kinds[:2])}
            for city, kinds in discriminative_objects(config).items()}


# --------------------------------------------------------------------------- randomness


def _city_key(city: str) -> int:
    return int.from_bytes(hashlib.sha256(city.encode()).digest()[:8], "little")


def _rng(seed: int, city: str, spot: int, *rest: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _city_key(city), spot, *rest]))


_STREAM_SHARED, _STREAM_PLANTED = 1_000_001, 1_000_002  # never equal to a view index
_STREAM_PRESENCE = 1_000_003
_STREAM_GEO = 1_000_004


# --------------------------------------------------------------------------- canvas


_PIXEL = np.dtype("<u4")  # RGB packed little-endian into one word: fills are scalar stores


def _pack(color) -> int:
    r, g, b = color
    return int(r) | int(g) << 8 | int(b) << 16


def _rgb(packed: np.ndarray) -> np.ndarray:
    """uint8 ``(..., 3)`` view of packed pixels."""
    return packed.view(np.uint8).reshape(*packed.shape, 4)[..., :3]


class _Canvas:
    """Packed RGB image + label map + night glow layer, painted back to front."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.img = np.zeros((h, w), _PIXEL)
        self.lab = np.zeros((h, w), np.uint8)
        self.glow = np.zeros((h, w), _PIXEL)
        self.lit = np.zeros((h, w), bool)

    def rect(self, x0: float, y0: float, x1: float, y1: float, color, cls: int, glow=None) -> None:
        xa, xb = max(0, round(x0)), min(self.w, round(x1))
        ya, yb = max(0, round(y0)), min(self.h, round(y1))
        if xa >= xb or ya >= yb:
            return
        self.img[ya:yb, xa:xb] = _pack(color)
        self.lab[ya:yb, xa:xb] = cls
        if glow is None:
            self.lit[ya:yb, xa:xb] = False
        else:
            self.glow[ya:yb, xa:xb] = _pack(glow)
            self.lit[ya:yb, xa:xb] = True

    def paint(self, x0: int, y0: int, mask: np.ndarray, color, cls: int, glow=None) -> None:
        """Paint ``mask`` (bool, h×w) with its top-left corner at pixel (x0, y0)."""
        mh, mw = mask.shape
        xa, ya = max(0, x0), max(0, y0)
        xb, yb = min(self.w, x0 + mw), min(self.h, y0 + mh)
        if xa >= xb or ya >= yb:
            return
        m = mask[ya - y0 : yb - y0, xa - x0 : xb - x0]
        self.img[ya:yb, xa:xb][m] = _pack(color)
        self.lab[ya:yb, xa:xb][m] = cls
        if glow is None:
            self.lit[ya:yb, xa:xb][m] = False
        else:
            self.glow[ya:yb, xa:xb][m] = _pack(glow)
            self.lit[ya:yb, xa:xb][m] = True

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, color, cls: int, glow=None):
        rx, ry = max(rx, 0.5), max(ry, 0.5)
        x0, y0 = math.floor(cx - rx), math.floor(cy - ry)
        x1, y1 = math.ceil(cx + rx), math.ceil(cy + ry)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        m = ((xx + 0.5 - cx) / rx) ** 2 + ((yy + 0.5 - cy) / ry) ** 2 <= 1.0
        self.paint(x0, y0, m, color, cls, glow)

    def grid(self, x0, y0, x1, y1, cell, frac, color, cls, lit_p=0.0, glow=None, rng=None):
        """Windows: a ``cell``-pitch grid of rectangles covering ``frac`` of each cell side."""
        xa, xb = max(0, round(x0)), min(self.w, round(x1))
        ya, yb = max(0, round(y0)), min(self.h, round(y1))
        if xa >= xb or ya >= yb or cell < 2:
            return
        lo, hi = (1 - frac) / 2 * cell, (1 + frac) / 2 * cell
        ry = (np.arange(ya, yb) + 0.5 - y0) % cell
        rx = (np.arange(xa, xb) + 0.5 - x0) % cell
        m = ((ry >= lo) & (ry < hi))[:, None] & ((rx >= lo) & (rx < hi))[None, :]
        self.paint(xa, ya, m, color, cls)
        if glow is not None and rng is not None and lit_p > 0:
            iy = ((np.arange(ya, yb) + 0.5 - y0) // cell).astype(int)
            ix = ((np.arange(xa, xb) + 0.5 - x0) // cell).astype(int)
            on = rng.random((iy.max() + 1, ix.max() + 1)) < lit_p
            lit = m & on[iy][:, ix]
            self.glow[ya:yb, xa:xb][lit] = _pack(glow)
            self.lit[ya:yb, xa:xb][lit] = True


def _jit(rng: np.random.Generator, color, amount: float = 10.0) -> tuple[int, int, int]:
    d = rng.uniform(-amount, amount, 3).tolist()
    return tuple(min(255, max(0, round(c + e))) for c, e in zip(color, d, strict=True))


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _bright(color, k: float = 1.25) -> tuple[int, int, int]:
    return tuple(int(min(255, v * k + 30)) for v in color)


C = ADE20K_INDEX
SATURATED = [(220, 30, 40), (245, 195, 20), (30, 160, 60), (30, 90, 210), (225, 40, 160),
             (245, 120, 10), (20, 185, 200)]  # fmt: skip


# --------------------------------------------------------------------------- shared layout


@dataclass
class _Scene:
    s: int  # view size in pixels
    width: int  # panorama width
    yb: float  # building baseline = back edge of the sidewalk
    ys: float  # curb = front edge of the sidewalk


def _draw_shared_back(cv: _Canvas, sc: _Scene, rng: np.random.Generator) -> None:
    """Sky, buildings, walls and the ground: everything behind the street furniture."""
    s, W = sc.s, sc.width
    top = _jit(rng, (95, 150, 220), 12)
    bottom = _jit(rng, (180, 208, 236), 8)
    t = (np.arange(cv.h) / max(cv.h - 1, 1))[:, None]
    grad = np.rint(np.asarray(top) * (1 - t) + np.asarray(bottom) * t).astype(np.uint32)
    cv.img[:] = (grad[:, 0] | grad[:, 1] << 8 | grad[:, 2] << 16)[:, None]
    cv.lab[:] = C["sky"]
    for _ in range(rng.poisson(2.0)):
        cx, cy = rng.uniform(0, W), rng.uniform(0.03, 0.3) * s
        rx, ry = rng.uniform(0.08, 0.18) * s, rng.uniform(0.025, 0.05) * s
        cv.ellipse(cx, cy, rx, ry, _jit(rng, (236, 238, 242), 6), C["sky"])

    facades = [(190, 170, 140), (160, 150, 140), (150, 90, 70), (200, 195, 185), (120, 120, 125),
               (175, 140, 110), (90, 95, 110), (210, 200, 170)]  # fmt: skip
    x = -rng.uniform(0, 0.2) * s
    while x < W:
        if rng.random() < 0.12:
            x += rng.uniform(0.04, 0.12) * s
            continue
        w = rng.uniform(0.2, 0.45) * s
        top_y = rng.uniform(0.06, 0.2) * s
        col = _jit(rng, _pick(rng, facades), 8)
        cv.rect(x, top_y, x + w, sc.yb * s, col, C["building"])
        cv.rect(x, top_y, x + w, top_y + max(1, 0.015 * s), _jit(rng, (70, 70, 72), 6),
                C["building"])
        cell = rng.uniform(0.05, 0.075) * s
        cv.grid(x + 0.3 * cell, top_y + 0.03 * s, x + w - 0.3 * cell, sc.yb * s - 0.1 * s,
                cell, rng.uniform(0.45, 0.6), _jit(rng, (70, 80, 95), 8), C["building"],
                lit_p=0.45, glow=(255, 214, 140), rng=rng)
        dx = x + rng.uniform(0.1, 0.8) * w
        cv.rect(dx, sc.yb * s - 0.09 * s, dx + 0.05 * s, sc.yb * s, _jit(rng, (60, 50, 45), 8),
                C["building"])
        if rng.random() < 0.25:
            wx0 = x + rng.uniform(0, 0.5) * w
            wx1 = min(x + w, wx0 + rng.uniform(0.3, 0.8) * w)
            wh = rng.uniform(0.05, 0.09) * s
            cv.rect(wx0, sc.yb * s - wh, wx1, sc.yb * s, _jit(rng, (165, 160, 150), 8), C["wall"])
        x += w

    yb, ys = sc.yb * s, sc.ys * s
    cv.rect(0, yb, W, ys, _jit(rng, (175, 170, 160), 8), C["sidewalk"])
    joint = _jit(rng, (140, 136, 128), 6)
    step = 0.1 * s
    for jx in np.arange(rng.uniform(0, step), W, step):
        cv.rect(jx, yb, jx + max(1, 0.006 * s), ys, joint, C["sidewalk"])
    cv.rect(0, ys - max(1, 0.008 * s), W, ys, (120, 118, 112), C["sidewalk"])
    for _ in range(rng.poisson(1.2)):
        gx = rng.uniform(-0.2, 1.0) * W
        cv.rect(gx, yb, gx + rng.uniform(0.2, 0.5) * s, yb + 0.6 * (ys - yb),
                _jit(rng, (80, 140, 60), 10), C["grass"])
    cv.rect(0, ys, W, cv.h, _jit(rng, (85, 85, 90), 6), C["road"])
    ly = ys + 0.55 * (cv.h - ys)
    lane = _jit(rng, (225, 225, 215), 5)
    for lx in np.arange(-rng.uniform(0, 0.22) * s, W, 0.22 * s):
        cv.rect(lx, ly, lx + 0.12 * s, ly + max(1, 0.012 * s), lane, C["road"])


def _sample_people(rng: np.random.Generator, sc: _Scene) -> list[tuple[float, ...]]:
    s = sc.s
    out = []
    for _ in range(rng.poisson(3.0)):
        feet = rng.uniform(sc.yb + 0.02, sc.ys) * s
        out.append((rng.uniform(0, sc.width), feet, rng.uniform(0.13, 0.19) * s,
                    *_pick(rng, [*SATURATED, (60, 60, 70), (200, 200, 195), (110, 80, 60)]),
                    *_pick(rng, [(235, 200, 170), (190, 140, 100), (120, 85, 60)])))
    return out


def _draw_person(cv: _Canvas, p: tuple[float, ...]) -> None:
    x, feet, h = p[:3]
    body, skin = p[3:6], p[6:9]
    w = 0.3 * h
    cv.rect(x - 0.35 * w, feet - 0.45 * h, x + 0.35 * w, feet, (45, 45, 55), C["person"])
    cv.rect(x - 0.5 * w, feet - 0.82 * h, x + 0.5 * w, feet - 0.42 * h, body, C["person"])
    cv.ellipse(x, feet - 0.9 * h, 0.1 * h, 0.1 * h, skin, C["person"])


def _draw_shared_front(cv: _Canvas, sc: _Scene, rng: np.random.Generator, people) -> None:
    """Poles, people near the curb and cars: shared occluders in front of the street furniture."""
    s, W = sc.s, sc.width
    for _ in range(rng.poisson(2.5)):
        px = rng.uniform(0, W)
        cv.rect(px, rng.uniform(0.45, 0.52) * s, px + max(1, 0.012 * s), sc.ys * s - 0.005 * s,
                _jit(rng, (110, 110, 115), 6), C["pole"])
    mid = (sc.yb + sc.ys) / 2 * s
    for p in people:
        if p[1] >= mid:
            _draw_person(cv, p)
    cars = [(40, 40, 42), (200, 30, 30), (30, 60, 160), (235, 235, 235), (160, 165, 170),
            (240, 190, 20), (30, 120, 60)]  # fmt: skip
    for _ in range(rng.poisson(2.2)):
        h = rng.uniform(0.11, 0.16) * s
        w = 2.3 * h
        x = rng.uniform(-0.5 * w, W)
        bottom = rng.uniform(sc.ys + 0.13, 1.0) * s
        col = _jit(rng, _pick(rng, cars), 8)
        cv.rect(x + 0.2 * w, bottom - h, x + 0.8 * w, bottom - 0.5 * h, col, C["car"])
        cv.rect(x + 0.26 * w, bottom - 0.92 * h, x + 0.74 * w, bottom - 0.55 * h, (50, 60, 75),
                C["car"])
        cv.rect(x, bottom - 0.58 * h, x + w, bottom - 0.12 * h, col, C["car"])
        for wx in (0.22, 0.78):
            cv.ellipse(x + wx * w, bottom - 0.14 * h, 0.14 * h, 0.14 * h, (20, 20, 20), C["car"])
        cv.ellipse(x + 0.04 * w, bottom - 0.45 * h, 0.05 * h, 0.05 * h, (240, 235, 200), C["car"],
                   glow=(255, 250, 215))


# --------------------------------------------------------------------------- planted objects
#
# Planted objects are opaque, textured panels in *slots* high on the street wall. Every view has
# at least one slot, every slot holds one of the spot's cues, and slot geometry is drawn the same
# way in every city, so a planted object hides the same shared pixels (building, sometimes sky)
# whichever city it belongs to. Only the panel's look tells the city; "how much sky is visible"
# tells nothing. (Generator v2 drew free-form objects: skyscrapers hid sky in one city only, and
# Grad-CAM rightly found empty sky discriminative for the others.) Slots stay well above the
# sidewalk, where people, poles, low walls and grass stand: v3 also had slots on the sidewalk,
# and a coarse Grad-CAM map then gave those small shared objects the panels' attention.


@dataclass(frozen=True)
class _Look:
    """How a kind fills its panel: base colours, accent colours, accent pattern."""

    base: tuple[tuple[int, int, int], ...]
    accent: tuple[tuple[int, int, int], ...]
    pattern: str


_KINDS: dict[str, _Look] = {
    "signboard": _Look(((220, 30, 40), (245, 195, 20), (225, 40, 160)),
                       ((250, 250, 245), (25, 25, 30)), "glyphs"),
    "fence": _Look(((235, 120, 20),), ((60, 40, 25),), "vbars"),
    "skyscraper": _Look(((20, 110, 200),), ((170, 220, 245),), "grid"),
    "tree": _Look(((40, 150, 50),), ((20, 80, 25),), "leaves"),
    "awning": _Look(((135, 50, 175),), ((245, 240, 228),), "vstripes"),
    "streetlight": _Look(((25, 70, 80),), ((255, 245, 190),), "lamp"),
    "traffic light": _Look(((30, 30, 32),), ((230, 40, 30), (245, 190, 20), (40, 200, 80)),
                           "lights"),
    "flag": _Look(((230, 230, 235),), ((200, 30, 40), (30, 60, 160)), "bands"),
    "palm": _Look(((150, 120, 70),), ((60, 150, 60),), "fronds"),
    "bench": _Look(((120, 80, 45),), ((60, 40, 25),), "slats"),
    "bus": _Look(((20, 150, 140),), ((40, 50, 60),), "windows"),
    "plant": _Look(((170, 90, 60),), ((70, 160, 70),), "dots"),
    "column": _Look(((215, 205, 185),), ((150, 140, 125),), "flutes"),
    "clock": _Look(((30, 70, 50),), ((245, 245, 235),), "dial"),
    "bridge": _Look(((120, 115, 110),), ((70, 68, 66),), "truss"),
    "ashcan": _Look(((40, 100, 60), (70, 70, 75)), ((20, 20, 20),), "ribs"),
}


def _accent_mask(pattern: str, h: int, w: int, s: int, rng: np.random.Generator) -> np.ndarray:
    """Where a panel of ``h``×``w`` pixels shows its accent colour (bool h×w)."""
    return np.broadcast_to(_accent(pattern, h, w, s, rng), (h, w))


def _accent(pattern: str, h: int, w: int, s: int, rng: np.random.Generator) -> np.ndarray:
    yy = (np.arange(h) + 0.5)[:, None] / max(h, 1)  # 0..1 down the panel
    xx = (np.arange(w) + 0.5)[None, :] / max(w, 1)
    py = (np.arange(h) + 0.5)[:, None]  # pixels
    px = (np.arange(w) + 0.5)[None, :]
    pitch = max(2.0, 0.035 * s)
    if pattern == "glyphs":
        frame = (yy < 0.07) | (yy > 0.93) | (xx < 0.07) | (xx > 0.93)
        glyph = (np.abs(yy - 0.5) < 0.2) & ((xx * 3) % 1 > 0.35) & ((xx * 3) % 1 < 0.65)
        return frame | glyph
    if pattern == "vbars":
        return ((px % pitch) < 0.4 * pitch) | (yy < 0.12)
    if pattern == "grid":  # windows: the middle half of each cell across, its lower 3/4 down
        cx, cy = px % pitch, py % pitch
        return (cx > 0.25 * pitch) & (cx < 0.75 * pitch) & (cy > 0.25 * pitch)
    if pattern == "leaves":
        spots = rng.random((h // 2 + 1, w // 2 + 1)) < 0.35
        return spots.repeat(2, 0)[:h].repeat(2, 1)[:, :w] | ((yy > 0.75) & (np.abs(xx - 0.5) < 0.1))
    if pattern == "vstripes":
        return (px % (3 * pitch)) < 1.5 * pitch
    if pattern == "lamp":
        return (yy < 0.4) & (np.abs(xx - 0.5) < 0.4)
    if pattern == "lights":
        return ((xx - 0.5) ** 2 * (w / max(h, 1)) ** 2 + ((yy * 3) % 1 - 0.5) ** 2 / 9) < 0.04
    if pattern == "bands":
        return ((yy * 3) % 1 < 0.5) & (yy > 0.2)
    if pattern == "fronds":
        return ((px + py) % (2 * pitch)) < 0.8 * pitch
    if pattern == "slats":
        return (py % pitch) < 0.5 * pitch
    if pattern == "windows":
        return (np.abs(yy - 0.35) < 0.17) & ((px % (1.5 * pitch)) < 1.1 * pitch)
    if pattern == "dots":
        return ((px % pitch - pitch / 2) ** 2 + (py % pitch - pitch / 2) ** 2) < (0.3 * pitch) ** 2
    if pattern == "flutes":
        return (px % pitch) < 0.25 * pitch
    if pattern == "dial":
        r2 = (xx - 0.5) ** 2 + ((yy - 0.5) * h / max(w, 1)) ** 2
        return r2 < 0.16
    if pattern == "truss":
        return (((px + py) % (2 * pitch)) < 0.3 * pitch) | (((px - py) % (2 * pitch)) < 0.3 * pitch)
    if pattern == "ribs":
        return ((py % pitch) < 0.3 * pitch) | (yy < 0.1)
    raise ValueError(f"unknown pattern {pattern!r}")


@dataclass
class _Planted:
    kind: str
    x0: float
    y0: float
    x1: float
    y1: float
    base: tuple[int, int, int]
    accent: tuple[int, int, int]


def _slot(rng: np.random.Generator, sc: _Scene, lo: float, hi: float):
    """One slot rectangle on the upper street wall, left edge in [lo, hi - width] (pixels)."""
    s = sc.s
    w, h = rng.uniform(0.2, 0.28) * s, rng.uniform(0.2, 0.28) * s
    y0 = rng.uniform(0.14, 0.24) * s
    y1 = min(y0 + h, sc.yb * s - 0.12 * s)
    x0 = rng.uniform(lo, max(lo, hi - w))
    return x0, y0, x0 + w, y1


def _place_planted(rng, sc: _Scene, kinds: list[str], offsets: list[int]) -> list[_Planted]:
    """Fill slots so that every view fully contains at least one.

    Every slot is filled, each with one of ``kinds`` (the spot's cues) at random, and slots are
    drawn the same way in every city, so where one city's cue could be, another city shows its
    own. A city without kinds (``control``) gets no panels.
    """
    s = sc.s
    placed: list[_Planted] = []
    if not kinds:
        return placed
    taken: list[tuple[float, float]] = []
    for off in offsets:
        inside = sum(off <= a and b <= off + s for a, b in taken)
        for _ in range(max(1 - inside, 0) + int(rng.poisson(0.4))):
            x0, y0, x1, y1 = _slot(rng, sc, off + 0.02 * s, off + 0.98 * s)
            for _try in range(12):
                if not any(x0 < b and a < x1 for a, b in taken):
                    break
                x0, y0, x1, y1 = _slot(rng, sc, off + 0.02 * s, off + 0.98 * s)
            taken.append((x0, x1))
            kind = _pick(rng, kinds)
            look = _KINDS[kind]
            base = _jit(rng, _pick(rng, look.base), 10)
            accent = _jit(rng, _pick(rng, look.accent), 6)
            placed.append(_Planted(kind, x0, y0, x1, y1, base, accent))
    return placed


def _draw_planted(cv: _Canvas, o: _Planted, rng: np.random.Generator) -> None:
    xa, ya = round(o.x0), round(o.y0)
    w, h = round(o.x1) - xa, round(o.y1) - ya
    if w <= 0 or h <= 0:
        return
    cls = C[o.kind]
    cv.rect(xa, ya, xa + w, ya + h, o.base, cls, glow=o.base)  # lit at night, like a sign
    cv.paint(xa, ya, _accent_mask(_KINDS[o.kind].pattern, h, w, cv.h, rng), o.accent, cls,
             glow=_bright(o.accent))


assert all(name in ADE20K_INDEX for name in _KINDS)
assert {n for pair in PLANTED_PAIRS for n in pair} == set(_KINDS)


def view_offsets(config: SynthConfig) -> list[int]:
    """Left edge of each view in the spot panorama (evenly spaced, first and last at the ends)."""
    s, v = config.size, config.views_per_spot
    span = (_PANORAMA_VIEWS - 1) * s
    if v == 1:
        return [span // 2]
    return [round(i * span / (v - 1)) for i in range(v)]


# --------------------------------------------------------------------------- rendering


def planted_kinds(config: SynthConfig, city: str, spot: int) -> list[str]:
    """The planted objects that appear in (every view of) this spot.

    Each of the city's planted kinds is present with probability ``planted_presence``, redrawn
    until at least one is. Spots that show only one cue force a classifier to learn every cue of
    a city instead of the easiest one, so each planted object has to earn its R_p^c.
    """
    kinds = discriminative_objects(config)[city]
    if not kinds or config.planted_presence >= 1.0:
        return list(kinds)
    presence = cue_presence(config, city, district_of(spot))
    rng = _rng(config.seed, "", spot, _STREAM_PRESENCE)  # the same in every city
    while True:
        keep = [k for k in kinds if rng.random() < presence[k]]
        if keep:
            return keep


def _render_spot(config: SynthConfig, city: str, spot: int) -> _Canvas:
    """The full panorama of one spot (no per-view nuisances)."""
    s = config.size
    width = _PANORAMA_VIEWS * s
    rng_s = _rng(config.seed, city, spot, _STREAM_SHARED)
    rng_p = _rng(config.seed, city, spot, _STREAM_PLANTED)
    yb = rng_s.uniform(0.6, 0.66)
    sc = _Scene(s, width, yb, yb + rng_s.uniform(0.075, 0.095))
    cv = _Canvas(s, width)
    _draw_shared_back(cv, sc, rng_s)
    people = _sample_people(rng_s, sc)
    planted = _place_planted(rng_p, sc, planted_kinds(config, city, spot), view_offsets(config))
    for o in planted:
        _draw_planted(cv, o, rng_p)
    mid = (sc.yb + sc.ys) / 2 * s
    for p in people:
        if p[1] < mid:  # the back half of the sidewalk: behind poles and the front people
            _draw_person(cv, p)
    _draw_shared_front(cv, sc, rng_s, people)
    return cv


def _draw_time_of_day(rng: np.random.Generator) -> str:
    return TIMES_OF_DAY[int(rng.choice(len(TIMES_OF_DAY), p=_TIME_P))]


def time_of_day(config: SynthConfig, city: str, spot: int, view: int) -> str:
    """"day", "sunset" or "night": the lighting :func:`render_scene` uses for this view."""
    return _draw_time_of_day(_rng(config.seed, city, spot, view))


@functools.cache
def _noise_bank() -> np.ndarray:
    """A fixed block of N(0, 1) samples; each image reads its noise at a random offset.

    Drawing 150 000 fresh normals per 224 px image would take most of the rendering time; a
    shared bank (same on every machine and process) keeps images deterministic and fast.
    """
    return np.random.default_rng(20240917).standard_normal(1 << 22, dtype=np.float32)


def _finish_view(config: SynthConfig, city: str, spot: int, view: int, pano: _Canvas):
    """Crop one view and apply its nuisances: time of day, colour jitter, sensor noise.

    Works channel-first so per-channel factors broadcast over long contiguous rows.
    """
    s = config.size
    off = view_offsets(config)[view]
    lab = np.ascontiguousarray(pano.lab[:, off : off + s])
    f = _rgb(pano.img[:, off : off + s]).transpose(2, 0, 1).astype(np.float32, order="C")
    lit = pano.lit[:, off : off + s]
    rng = _rng(config.seed, city, spot, view)
    tod = _draw_time_of_day(rng)
    if tod != "day":
        sky = lab == C["sky"]
        t = np.arange(s, dtype=np.float32)[None, :, None] / np.float32(max(s - 1, 1))
        glow = _rgb(pano.glow[:, off : off + s][lit]).T.astype(np.float32)  # 3×n lit pixels
        if tod == "sunset":
            top, bottom = (95, 80, 145), (250, 150, 80)
            tint = (0.88, 0.72, 0.6)
        else:
            top, bottom = (6, 9, 24), (28, 32, 58)
            tint = (0.28, 0.3, 0.38)  # dark, yet unlit objects stay visible as silhouettes
        top_a = np.array(top, np.float32)[:, None, None]
        grad = top_a + t * (np.array(bottom, np.float32)[:, None, None] - top_a)
        sky_val = 0.35 * f + 0.65 * grad if tod == "sunset" else grad
        f = np.where(sky[None], sky_val, f * np.array(tint, np.float32)[:, None, None])
        if tod == "sunset":
            f[:, lit] = 0.5 * f[:, lit] + 0.5 * glow
        else:
            f[:, lit] = glow * np.float32(rng.uniform(0.75, 1.0))
    brightness = rng.uniform(0.85, 1.15)
    contrast = rng.uniform(0.85, 1.15)
    gains = rng.uniform(0.94, 1.06, 3) * brightness
    mean = float(f.mean())
    # ((f - mean) * contrast + mean) * gain as one per-channel affine map
    f *= (gains * contrast).astype(np.float32)[:, None, None]
    f += (gains * mean * (1.0 - contrast)).astype(np.float32)[:, None, None]
    sigma = np.float32(rng.uniform(1.5, 6.0))
    bank = _noise_bank()
    start = int(rng.integers(0, bank.size - f.size + 1))
    f += bank[start : start + f.size].reshape(f.shape) * sigma
    np.clip(f, 0, 255, out=f)
    out = np.rint(f).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(1, 2, 0)), lab


def render_scene(
    config: SynthConfig, city: str, spot: int, view: int
) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 H×W×3) and its ADE20K label map (uint8 H×W)."""
    if city not in config.cities:
        raise ValueError(f"unknown city {city!r}; configured: {config.cities}")
    if not 0 <= view < config.views_per_spot:
        raise ValueError(f"view must be in [0, {config.views_per_spot}), got {view}")
    return _finish_view(config, city, spot, view, _render_spot(config, city, spot))


# --------------------------------------------------------------------------- writing


def image_name(city: str, spot: int, view: int) -> str:
    return f"{city}_s{spot:04d}_v{view:02d}.png"


def encode_png(arr: np.ndarray, level: int) -> bytes:
    """A minimal 8-bit grey or RGB PNG (filter type 0, zlib ``level``).

    Images are stored with ``level=0``: sensor noise makes them nearly incompressible, and
    deflating them would cost far more time than the whole render. Label maps deflate well.
    """
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    if arr.dtype != np.uint8 or channels not in (1, 3):
        raise ValueError(f"expected uint8 H×W or H×W×3, got {arr.dtype} {arr.shape}")
    raw = np.zeros((h, w * channels + 1), np.uint8)
    raw[:, 1:] = arr.reshape(h, w * channels)
    colour_type = 0 if channels == 1 else 2
    ihdr = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    return b"".join((b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", ihdr),
                     _chunk(b"IDAT", zlib.compress(raw.tobytes(), level)), _chunk(b"IEND", b"")))


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _save_png(path: Path, arr: np.ndarray, level: int) -> None:
    path.write_bytes(encode_png(arr, level))


def _write_spot(args: tuple[SynthConfig, str, int, str]) -> list[tuple[str, ...]]:
    config, city, spot, root = args
    root_p = Path(root)
    pano = _render_spot(config, city, spot)
    lat, lon, district = spot_location(config, city, spot)
    rows = []
    for view in range(config.views_per_spot):
        img, lab = _finish_view(config, city, spot, view, pano)
        name = image_name(city, spot, view)
        _save_png(root_p / "images" / city / name, img, 0)
        _save_png(root_p / "labels" / city / name, lab, 6)
        rows.append((f"images/{city}/{name}", city, f"{city}/s{spot:04d}", f"labels/{city}/{name}",
                     f"{lat:.7f}", f"{lon:.7f}", district))
    return rows


def _metadata(config: SynthConfig) -> dict:
    centres = city_centres(config.cities)
    geography = {
        city: {"centre": list(centres[city]),
               "districts": {d: {"centre": [float(x[0]) for x in district_points(
                                     centres[city], np.array([i]), np.zeros(1), np.zeros(1))],
                                 "cue_presence": cue_presence(config, city, d)}
                             for i, d in enumerate(DISTRICTS)},
               "concentrated": concentrated_in(config)[city]}
        for city in config.cities
    }
    return {"config": config.to_json(), "discriminative": discriminative_objects(config),
            "shared": list(SHARED_OBJECTS), "generator_version": GENERATOR_VERSION,
            "districts": list(DISTRICTS), "district_radius_m": DISTRICT_RADIUS_M,
            "geography": geography}


def _is_complete(out_dir: Path, config: SynthConfig) -> bool:
    try:
        meta = json.loads((out_dir / "synth.json").read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("config") == config.to_json()
            and meta.get("generator_version") == GENERATOR_VERSION
            and (out_dir / "manifest.csv").is_file())


def generate(out_dir: Path, config: SynthConfig, *, progress: bool = False,
             workers: int = 1) -> Path:
    """Render the data set into ``out_dir`` (see the module docstring for the layout).

    The output is built in a temporary sibling folder and renamed into place, so ``out_dir`` is
    either absent, a previous complete set, or the new complete set. A complete set with the same
    config is reused as is. ``workers > 1`` renders spots in a process pool (same bytes).
    """
    out_dir = Path(out_dir)
    if _is_complete(out_dir, config):
        return out_dir
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir())
                                                      and not (out_dir / "synth.json").exists())):
        raise FileExistsError(f"{out_dir} exists and is not a synthetic data set; "
                              "refusing to overwrite it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        for sub in ("images", "labels"):
            for city in config.cities:
                (tmp / sub / city).mkdir(parents=True)
        tasks = [(config, c, i, str(tmp)) for c in config.cities
                 for i in range(config.spots_per_city)]
        rows: list[tuple[str, ...]] = []
        for chunk in _run_tasks(tasks, workers, progress):
            rows.extend(chunk)
        with open(tmp / "manifest.csv", "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["path", "city", "spot", "label_path", "lat", "lon", "district"])
            writer.writerows(rows)
        (tmp / "classes.json").write_text(json.dumps(list(ADE20K_CLASSES), indent=1) + "\n")
        (tmp / "synth.json").write_text(json.dumps(_metadata(config), indent=2) + "\n")
        _swap_into_place(tmp, out_dir, config)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _run_tasks(tasks, workers: int, progress: bool) -> Iterator[list]:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="synthetic spots", unit="spot")
    try:
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for rows in pool.map(_write_spot, tasks, chunksize=4):
                    if bar is not None:
                        bar.update(1)
                    yield rows
        else:
            for task in tasks:
                rows = _write_spot(task)
                if bar is not None:
                    bar.update(1)
                yield rows
    finally:
        if bar is not None:
            bar.close()


def _swap_into_place(tmp: Path, out_dir: Path, config: SynthConfig) -> None:
    if _is_complete(out_dir, config):  # a concurrent run finished first
        return
    if not out_dir.exists():
        try:
            os.rename(tmp, out_dir)
            return
        except OSError:
            if _is_complete(out_dir, config):
                return
            raise
    trash = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(out_dir, trash)
    os.rename(tmp, out_dir)
    shutil.rmtree(trash, ignore_errors=True)
