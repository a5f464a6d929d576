"""Synthetic cities: procedurally rendered street scenes with planted, per-city objects.

Each *spot* is one street layout rendered as a panorama three views wide; its *views* are crops
at evenly spaced offsets (like the 12 directions of a Tokyo 24/7 place). Every city shares the
same distribution of sky, buildings, road, cars, people... and owns a pair of *discriminative*
objects (tokyo-like: signboard + fence; pittsburgh-like: skyscraper + tree; further cities take
further pairs) that appear in every view of that city and nowhere else. The label maps use
ADE20K indices, so the planted answer can be checked end to end.

Randomness: a spot's layout comes from ``SeedSequence((seed, city, spot, stream))`` and each
view's nuisances (time of day, colour jitter, noise) from ``(seed, city, spot, view)``, so an
image does not depend on generation order or parallelism. The shared layout is drawn from its
own stream before anything city-specific, so shared objects are identically distributed.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import struct
import uuid
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cityviz.data.ade20k import ADE20K_CLASSES, ADE20K_INDEX

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2
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
    """The planted object names of each city (tokyo-like and pittsburgh-like keep their pairs)."""
    taken = {_CITY_PAIR[c] for c in config.cities if c in _CITY_PAIR}
    free = iter(i for i in range(len(PLANTED_PAIRS)) if i not in taken)
    out: dict[str, list[str]] = {}
    for city in config.cities:
        idx = _CITY_PAIR[city] if city in _CITY_PAIR else next(free)
        out[city] = list(PLANTED_PAIRS[idx])
    return out


# --------------------------------------------------------------------------- randomness


def _city_key(city: str) -> int:
    return int.from_bytes(hashlib.sha256(city.encode()).digest()[:8], "little")


def _rng(seed: int, city: str, spot: int, *rest: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _city_key(city), spot, *rest]))


_STREAM_SHARED, _STREAM_PLANTED = 1_000_001, 1_000_002  # never equal to a view index
_STREAM_PRESENCE = 1_000_003


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

    def segment(self, xa: float, ya: float, xb: float, yb: float, r: float, color, cls: int):
        """A thick line: every pixel centre within ``r`` of the segment."""
        r = max(r, 0.5)
        x0, y0 = math.floor(min(xa, xb) - r), math.floor(min(ya, yb) - r)
        x1, y1 = math.ceil(max(xa, xb) + r), math.ceil(max(ya, yb) + r)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        px, py = xx + 0.5 - xa, yy + 0.5 - ya
        dx, dy = xb - xa, yb - ya
        t = np.clip((px * dx + py * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
        m = (px - t * dx) ** 2 + (py - t * dy) ** 2 <= r * r
        self.paint(x0, y0, m, color, cls)

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
    buildings: list[tuple[float, float, float]] = field(default_factory=list)  # x0, x1, top

    def facade_top(self, x: float) -> float | None:
        for x0, x1, top in self.buildings:
            if x0 <= x < x1:
                return top
        return None


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
        top_y = rng.uniform(0.1, 0.42) * s
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
        sc.buildings.append((x, x + w, top_y))
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
        cv.rect(px, rng.uniform(0.15, 0.35) * s, px + max(1, 0.012 * s), sc.ys * s - 0.005 * s,
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


@dataclass
class _Planted:
    kind: str
    width: float  # pixels, for placement
    params: dict
    x0: float = 0.0


def _signboard(rng, sc):
    s = sc.s
    if rng.random() < 0.5:
        w, h = rng.uniform(0.12, 0.2) * s, rng.uniform(0.06, 0.09) * s
    else:
        w, h = rng.uniform(0.05, 0.07) * s, rng.uniform(0.16, 0.26) * s
    return w, {"h": h, "color": _jit(rng, _pick(rng, SATURATED), 12),
               "ink": _pick(rng, [(250, 250, 245), (25, 25, 30)]), "v": rng.uniform(0, 1)}


def _draw_signboard(cv, sc, o: _Planted):
    s, p = sc.s, o.params
    top = sc.facade_top(o.x0 + o.width / 2)
    lo = (top if top is not None else 0.25 * s) + 0.03 * s
    hi = sc.yb * s - 0.12 * s - p["h"]
    y0 = lo + p["v"] * max(hi - lo, 0.0)
    x0, x1, y1 = o.x0, o.x0 + o.width, y0 + p["h"]
    b = max(1.0, 0.012 * s)
    cls = C["signboard"]
    cv.rect(x0, y0, x1, y1, (240, 238, 225), cls, glow=(255, 252, 240))
    cv.rect(x0 + b, y0 + b, x1 - b, y1 - b, p["color"], cls, glow=_bright(p["color"]))
    w, h = x1 - x0 - 4 * b, y1 - y0 - 4 * b
    if w > h:
        for i in range(3):
            cx = x0 + 2 * b + (i + 0.15) * w / 3
            cv.rect(cx, y0 + 2 * b + 0.3 * h, cx + 0.6 * w / 3, y0 + 2 * b + 0.7 * h, p["ink"], cls)
    else:
        for i in range(3):
            cy = y0 + 2 * b + (i + 0.15) * h / 3
            cv.rect(x0 + 2 * b + 0.2 * w, cy, x0 + 2 * b + 0.8 * w, cy + 0.6 * h / 3, p["ink"], cls)


def _fence(rng, sc):
    s = sc.s
    return rng.uniform(0.45, 0.8) * s, {
        "h": rng.uniform(0.11, 0.15) * s, "pitch": rng.uniform(0.028, 0.036) * s,
        "lift": rng.uniform(0, 0.015) * s,
        "color": _jit(rng, _pick(rng, [(45, 85, 55), (215, 215, 210), (40, 40, 45)]), 8)}


def _draw_fence(cv, sc, o: _Planted):
    s, p = sc.s, o.params
    bottom = sc.ys * s - p["lift"]
    top = bottom - p["h"]
    bar = max(1.0, 0.4 * p["pitch"])
    cls = C["fence"]
    for bx in np.arange(o.x0, o.x0 + o.width - bar + 1e-6, p["pitch"]):
        cv.rect(bx, top, bx + bar, bottom, p["color"], cls)
    rail = max(1.0, 0.012 * s)
    for ry in (top, top + 0.5 * p["h"]):
        cv.rect(o.x0, ry, o.x0 + o.width, ry + rail, p["color"], cls)


def _skyscraper(rng, sc):
    s = sc.s
    return rng.uniform(0.13, 0.19) * s, {
        "top": rng.uniform(0.0, 0.08) * s, "antenna": rng.random() < 0.5,
        "cell": rng.uniform(0.035, 0.045) * s, "color": _jit(rng, (28, 42, 88), 10),
        "win": _jit(rng, (95, 130, 190), 10)}


def _draw_skyscraper(cv, sc, o: _Planted, rng):
    s, p = sc.s, o.params
    x0, x1, cls = o.x0, o.x0 + o.width, C["skyscraper"]
    cv.rect(x0, p["top"], x1, sc.yb * s, p["color"], cls)
    cv.grid(x0 + 0.2 * p["cell"], p["top"] + 0.02 * s, x1 - 0.2 * p["cell"], sc.yb * s,
            p["cell"], 0.55, p["win"], cls, lit_p=0.6, glow=(205, 225, 255), rng=rng)
    if p["antenna"]:
        mx = (x0 + x1) / 2
        cv.rect(mx - max(0.5, 0.005 * s), p["top"] - 0.08 * s, mx + max(0.5, 0.005 * s), p["top"],
                p["color"], cls)


def _tree(rng, sc):
    s = sc.s
    r = rng.uniform(0.085, 0.12) * s
    blobs = [(rng.uniform(-0.6, 0.6) * r, rng.uniform(-0.5, 0.4) * r, rng.uniform(0.6, 0.8) * r)
             for _ in range(4)]
    return 2.4 * r, {"r": r, "blobs": blobs, "height": rng.uniform(0.3, 0.4) * s,
                     "leaf": _jit(rng, (45, 115, 45), 12), "trunk": _jit(rng, (95, 65, 40), 8)}


def _draw_tree(cv, sc, o: _Planted):
    s, p = sc.s, o.params
    cx, base, cls = o.x0 + o.width / 2, sc.ys * s - 0.01 * s, C["tree"]
    cy = base - p["height"]
    tw = max(1.0, 0.03 * s)
    cv.rect(cx - tw / 2, cy, cx + tw / 2, base, p["trunk"], cls)
    cv.ellipse(cx, cy, p["r"], 0.85 * p["r"], p["leaf"], cls)
    dark = tuple(int(v * 0.7) for v in p["leaf"])
    for i, (dx, dy, r) in enumerate(p["blobs"]):
        cv.ellipse(cx + dx, cy + dy, r, 0.9 * r, dark if i % 2 else p["leaf"], cls)


def _awning(rng, sc):
    s = sc.s
    return rng.uniform(0.16, 0.28) * s, {
        "h": rng.uniform(0.05, 0.07) * s, "top": rng.uniform(0.16, 0.2) * s,
        "color": _jit(rng, _pick(rng, [(200, 40, 40), (30, 120, 60), (40, 70, 170),
                                       (230, 140, 20)]), 10)}


def _draw_awning(cv, sc, o: _Planted):
    s, p = sc.s, o.params
    y0 = sc.yb * s - p["top"]
    h, w, cls = p["h"], o.width, C["awning"]
    inset = 0.025 * s
    yy, xx = np.ogrid[0 : math.ceil(h), 0 : math.ceil(w)]
    ins = inset * (1 - (yy + 0.5) / h)
    shape = (xx + 0.5 >= ins) & (xx + 0.5 <= w - ins)
    stripe = ((xx + 0.5) // max(1.0, 0.025 * s)) % 2 == 0
    x0, y0i = round(o.x0), round(y0)
    cv.paint(x0, y0i, shape & stripe, p["color"], cls)
    cv.paint(x0, y0i, shape & ~stripe, (245, 240, 228), cls)
    sr = max(1.0, 0.012 * s)
    for sx in np.arange(o.x0 + sr, o.x0 + w - sr + 1e-6, 2 * sr):
        cv.ellipse(sx, y0 + h, sr, sr, p["color"], cls)


def _streetlight(rng, sc):
    s = sc.s
    return 0.12 * s, {"top": rng.uniform(0.12, 0.2) * s, "left": rng.random() < 0.5,
                      "color": _jit(rng, (55, 65, 60), 6)}


def _draw_streetlight(cv, sc, o: _Planted):
    s, p = sc.s, o.params
    cls = C["streetlight"]
    px = o.x0 + (0.1 * s if p["left"] else 0.02 * s)
    pw = max(1.0, 0.018 * s)
    base = sc.ys * s - 0.01 * s
    cv.rect(px - 0.6 * pw, base - 0.04 * s, px + pw * 1.6, base, p["color"], cls)
    cv.rect(px, p["top"], px + pw, base, p["color"], cls)
    arm_end = px - 0.08 * s if p["left"] else px + pw + 0.08 * s
    cv.rect(min(px, arm_end), p["top"], max(px + pw, arm_end), p["top"] + max(1, 0.012 * s),
            p["color"], cls)
    cv.ellipse(arm_end, p["top"] + 0.02 * s, 0.035 * s, 0.018 * s, (250, 240, 200), cls,
               glow=(255, 246, 205))


def _traffic_light(rng, sc):
    s = sc.s
    return 0.07 * s, {"top": rng.uniform(0.2, 0.3) * s, "on": int(rng.integers(3)),
                      "body": _pick(rng, [(30, 30, 32), (190, 160, 40)])}


def _draw_traffic_light(cv, sc, o: _Planted):
    s, p = sc.s, o.params
    cls = C["traffic light"]
    x0, x1 = o.x0, o.x0 + 0.06 * s
    mx = (x0 + x1) / 2
    pw = max(1.0, 0.014 * s)
    cv.rect(mx - pw / 2, p["top"], mx + pw / 2, sc.ys * s - 0.005 * s, (70, 72, 75), cls)
    cv.rect(x0, p["top"], x1, p["top"] + 0.16 * s, p["body"], cls)
    lamps = [(225, 35, 30), (245, 170, 20), (30, 205, 120)]
    for i, col in enumerate(lamps):
        on = i == p["on"]
        c = col if on else tuple(int(v * 0.35) for v in col)
        cv.ellipse(mx, p["top"] + (0.03 + 0.05 * i) * s, 0.021 * s, 0.021 * s, c, cls,
                   glow=_bright(col) if on else None)


def _flag(rng, sc):
    s = sc.s
    palettes = [((200, 30, 45), (245, 245, 245), (30, 60, 150)), ((20, 140, 70), (245, 245, 245),
                (210, 40, 40)), ((250, 200, 30), (30, 30, 30), (210, 40, 40)),
                ((40, 90, 200), (250, 210, 30), (40, 90, 200))]  # fmt: skip
    cw = rng.uniform(0.13, 0.18) * s
    return cw + 0.02 * s, {"top": rng.uniform(0.1, 0.2) * s, "cw": cw,
                           "ch": rng.uniform(0.08, 0.11) * s, "colors": _pick(rng, palettes),
                           "horizontal": rng.random() < 0.5, "phase": rng.uniform(0, 2 * np.pi)}


def _draw_flag(cv, sc, o: _Planted):
    s, p = sc.s, o.params
    cls = C["flag"]
    pw = max(1.0, 0.01 * s)
    cv.rect(o.x0, p["top"] - 0.01 * s, o.x0 + pw, sc.ys * s - 0.005 * s, (200, 200, 205), cls)
    cw, ch = p["cw"], p["ch"]
    x0 = round(o.x0 + pw)
    amp = 0.012 * s
    yy, xx = np.ogrid[0 : math.ceil(ch + 2 * amp), 0 : math.ceil(cw)]
    shift = amp * (1 + np.sin(2 * np.pi * (xx + 0.5) / (0.15 * s) + p["phase"]))
    v = (yy + 0.5 - shift) / ch  # 0..1 inside the cloth
    inside = (v >= 0) & (v < 1)
    band = np.floor(v * 3) if p["horizontal"] else np.floor((xx + 0.5) / cw * 3) + 0 * v
    for i, col in enumerate(p["colors"]):
        cv.paint(x0, round(p["top"]), inside & (band == i), col, cls)


def _palm(rng, sc):
    s = sc.s
    return 0.3 * s, {"height": rng.uniform(0.4, 0.5) * s, "bend": rng.uniform(-0.06, 0.06) * s,
                     "n": int(rng.integers(6, 9)), "rot": rng.uniform(0, np.pi),
                     "leaf": _jit(rng, (70, 140, 60), 10)}


def _draw_palm(cv, sc, o: _Planted):
    s, p = sc.s, o.params
    cls = C["palm"]
    bx, base = o.x0 + 0.15 * s, sc.ys * s - 0.01 * s
    r = max(0.6, 0.011 * s)
    pts = [(bx + p["bend"] * t * t, base - p["height"] * t) for t in np.linspace(0, 1, 5)]
    for (xa, ya), (xb, yb) in itertools.pairwise(pts):
        cv.segment(xa, ya, xb, yb, r, (145, 122, 92), cls)
    tx, ty = pts[-1]
    for k in range(p["n"]):
        a = p["rot"] + 2 * np.pi * k / p["n"]
        mx, my = tx + 0.07 * s * np.cos(a), ty - 0.05 * s * abs(np.sin(a)) - 0.02 * s
        ex, ey = tx + 0.13 * s * np.cos(a), ty + 0.03 * s
        cv.segment(tx, ty, mx, my, r, p["leaf"], cls)
        cv.segment(mx, my, ex, ey, 0.8 * r, p["leaf"], cls)


def _bench(rng, sc):
    s = sc.s
    return rng.uniform(0.2, 0.26) * s, {
        "ground": rng.uniform(0.03, 0.05) * s,
        "color": _jit(rng, _pick(rng, [(150, 95, 50), (40, 95, 65)]), 8)}


def _draw_bench(cv, sc, o: _Planted):
    s, p = sc.s, o.params
    cls = C["bench"]
    g = sc.yb * s + p["ground"]
    x0, x1 = o.x0, o.x0 + o.width
    lw = max(1.0, 0.015 * s)
    for lx in (x0 + 0.08 * o.width, x1 - 0.08 * o.width - lw):
        cv.rect(lx, g - 0.11 * s, lx + lw, g, (50, 50, 52), cls)
    seat = g - 0.045 * s
    cv.rect(x0, seat - 0.022 * s, x1, seat, p["color"], cls)
    for k in range(2):
        y = seat - 0.06 * s - k * 0.032 * s
        cv.rect(x0 + 0.02 * s, y - 0.02 * s, x1 - 0.02 * s, y, p["color"], cls)


def _bus(rng, sc):
    s = sc.s
    return rng.uniform(0.45, 0.58) * s, {
        "h": rng.uniform(0.18, 0.22) * s, "bottom": rng.uniform(0.2, 0.26) * s,
        "color": _jit(rng, _pick(rng, [(230, 230, 225), (40, 110, 190), (200, 60, 40),
                                       (60, 140, 80)]), 8)}


def _draw_bus(cv, sc, o: _Planted):
    s, p = sc.s, o.params
    cls = C["bus"]
    b = min(sc.ys * s + p["bottom"], cv.h - 0.02 * s)
    x0, x1, h = o.x0, o.x0 + o.width, p["h"]
    cv.rect(x0, b - h, x1, b - 0.06 * s, p["color"], cls)
    cv.rect(x0, b - 0.35 * h, x1, b - 0.27 * h, _bright(p["color"], 0.6), cls)
    n = max(2, round(o.width / (0.07 * s)))
    ww = o.width / n
    for i in range(n):
        cv.rect(x0 + i * ww + 0.1 * ww, b - 0.85 * h, x0 + (i + 0.9) * ww, b - 0.5 * h,
                (40, 50, 62), cls, glow=(255, 230, 170))
    cv.rect(x0 + 0.05 * o.width, b - 0.97 * h, x0 + 0.3 * o.width, b - 0.88 * h, (250, 150, 30),
            cls, glow=(255, 170, 40))
    for wx in (0.18, 0.82):
        cv.ellipse(x0 + wx * o.width, b - 0.05 * s, 0.055 * s, 0.055 * s, (20, 20, 20), cls)


def _plant(rng, sc):
    s = sc.s
    return 0.1 * s, {"ground": rng.uniform(0.03, 0.05) * s,
                     "pot": _pick(rng, [(170, 95, 60), (150, 150, 145)]),
                     "leaf": _jit(rng, (55, 125, 50), 10),
                     "blobs": [(rng.uniform(-0.02, 0.02) * s, rng.uniform(0.035, 0.045) * s)
                               for _ in range(3)]}


def _draw_plant(cv, sc, o: _Planted):
    s, p = sc.s, o.params
    cls = C["plant"]
    cx, g = o.x0 + 0.05 * s, sc.yb * s + p["ground"]
    ph = 0.05 * s
    yy, xx = np.ogrid[0 : math.ceil(ph), 0 : math.ceil(0.06 * s)]
    ins = 0.01 * s * (yy + 0.5) / ph
    pot = (xx + 0.5 >= ins) & (xx + 0.5 <= 0.06 * s - ins)
    cv.paint(round(cx - 0.03 * s), round(g - ph), pot, p["pot"], cls)
    for i, (dx, r) in enumerate(p["blobs"]):
        cv.ellipse(cx + dx + (i - 1) * 0.02 * s, g - ph - 0.7 * r - 0.01 * s * (i == 1), r, r,
                   p["leaf"], cls)


def _column(rng, sc):
    s = sc.s
    n = int(rng.integers(3, 5))
    return (n - 1) * 0.09 * s + 0.065 * s, {"n": n, "h": rng.uniform(0.3, 0.38) * s,
                                           "color": _jit(rng, (226, 220, 205), 6)}


def _draw_column(cv, sc, o: _Planted):
    s, p = sc.s, o.params
    cls = C["column"]
    base = sc.yb * s
    top = base - p["h"]
    shade = tuple(int(v * 0.8) for v in p["color"])
    for i in range(p["n"]):
        x = o.x0 + i * 0.09 * s
        cv.rect(x + 0.01 * s, top, x + 0.055 * s, base, p["color"], cls)
        for f in (0.025, 0.04):
            cv.rect(x + f * s, top + 0.02 * s, x + f * s + max(1, 0.004 * s), base - 0.02 * s,
                    shade, cls)
        cv.rect(x, top, x + 0.065 * s, top + 0.02 * s, p["color"], cls)
        cv.rect(x, base - 0.02 * s, x + 0.065 * s, base, p["color"], cls)
    cv.rect(o.x0 - 0.01 * s, top - 0.03 * s, o.x0 + o.width + 0.01 * s, top, shade, cls)


def _clock(rng, sc):
    s = sc.s
    return 0.15 * s, {"y": rng.uniform(0.25, 0.35) * s, "r": rng.uniform(0.06, 0.07) * s,
                      "a": rng.uniform(0, 2 * np.pi, 2)}


def _draw_clock(cv, sc, o: _Planted):
    s, p = sc.s, o.params
    cls = C["clock"]
    cx, cy, r = o.x0 + 0.075 * s, p["y"], p["r"]
    pw = max(1.0, 0.018 * s)
    cv.rect(cx - pw / 2, cy, cx + pw / 2, sc.ys * s - 0.005 * s, (30, 70, 50), cls)
    cv.ellipse(cx, cy, r, r, (30, 70, 50), cls)
    cv.ellipse(cx, cy, 0.85 * r, 0.85 * r, (245, 245, 235), cls, glow=(255, 250, 225))
    for a, k in zip(p["a"], (0.5, 0.75), strict=True):
        cv.segment(cx, cy, cx + k * r * np.cos(a), cy + k * r * np.sin(a), max(0.5, 0.006 * s),
                   (20, 20, 20), cls)


def _bridge(rng, sc):
    return float(sc.width), {"y": rng.uniform(0.12, 0.22) * sc.s,
                             "color": _jit(rng, (120, 115, 110), 8)}


def _draw_bridge(cv, sc, o: _Planted):
    s, p = sc.s, o.params
    cls = C["bridge"]
    y = p["y"]
    cv.rect(0, y, sc.width, y + 0.05 * s, p["color"], cls)
    cv.rect(0, y + 0.04 * s, sc.width, y + 0.05 * s, tuple(int(v * 0.6) for v in p["color"]), cls)
    cv.rect(0, y - 0.035 * s, sc.width, y - 0.028 * s, p["color"], cls)
    for bx in np.arange(0, sc.width, 0.025 * s):
        cv.rect(bx, y - 0.035 * s, bx + max(1, 0.008 * s), y, p["color"], cls)


def _ashcan(rng, sc):
    s = sc.s
    return rng.uniform(0.06, 0.075) * s, {
        "h": rng.uniform(0.1, 0.12) * s, "ground": rng.uniform(0.03, 0.05) * s,
        "color": _jit(rng, _pick(rng, [(40, 100, 60), (70, 70, 75), (40, 80, 160)]), 8)}


def _draw_ashcan(cv, sc, o: _Planted):
    s, p = sc.s, o.params
    cls = C["ashcan"]
    g = sc.yb * s + p["ground"]
    x0, x1 = o.x0, o.x0 + o.width
    cv.rect(x0, g - p["h"], x1, g, p["color"], cls)
    dark = tuple(int(v * 0.6) for v in p["color"])
    cv.rect(x0 - 0.006 * s, g - p["h"] - 0.015 * s, x1 + 0.006 * s, g - p["h"], dark, cls)
    cv.rect(x0 + 0.3 * o.width, g - 0.8 * p["h"], x1 - 0.3 * o.width, g - 0.7 * p["h"],
            (20, 20, 20), cls)


@dataclass(frozen=True)
class _Kind:
    sample: Callable
    draw: Callable
    per_view: int  # instances guaranteed fully inside every view
    layer: int  # 0 facade/behind, 1 street level (kept apart from each other), 2 road
    extra: float = 0.0  # mean number of further instances per view


_KINDS: dict[str, _Kind] = {
    "signboard": _Kind(_signboard, _draw_signboard, 2, 0, 0.3),
    "fence": _Kind(_fence, _draw_fence, 1, 1),
    "skyscraper": _Kind(_skyscraper, _draw_skyscraper, 1, 0, 0.2),
    "tree": _Kind(_tree, _draw_tree, 1, 1, 0.5),
    "awning": _Kind(_awning, _draw_awning, 3, 0),
    "streetlight": _Kind(_streetlight, _draw_streetlight, 3, 1),
    "traffic light": _Kind(_traffic_light, _draw_traffic_light, 3, 1),
    "flag": _Kind(_flag, _draw_flag, 2, 1),
    "palm": _Kind(_palm, _draw_palm, 2, 1),
    "bench": _Kind(_bench, _draw_bench, 2, 1),
    "bus": _Kind(_bus, _draw_bus, 1, 2),
    "plant": _Kind(_plant, _draw_plant, 3, 1),
    "column": _Kind(_column, _draw_column, 1, 0),
    "clock": _Kind(_clock, _draw_clock, 2, 1),
    "bridge": _Kind(_bridge, _draw_bridge, 1, 0),
    "ashcan": _Kind(_ashcan, _draw_ashcan, 4, 1),
}
assert all(name in ADE20K_INDEX for name in _KINDS)
assert {n for pair in PLANTED_PAIRS for n in pair} == set(_KINDS)


def view_offsets(config: SynthConfig) -> list[int]:
    """Left edge of each view in the spot panorama (evenly spaced, first and last at the ends)."""
    s, v = config.size, config.views_per_spot
    span = (_PANORAMA_VIEWS - 1) * s
    if v == 1:
        return [span // 2]
    return [round(i * span / (v - 1)) for i in range(v)]


def _place_planted(rng, sc: _Scene, kinds: list[str], offsets: list[int]) -> list[_Planted]:
    """Instances of each planted kind so that every view fully contains ``per_view`` of them."""
    s = sc.s
    placed: list[_Planted] = []
    street: list[tuple[float, float]] = []
    for kind in kinds:
        spec = _KINDS[kind]
        if kind == "bridge":
            w, params = spec.sample(rng, sc)
            placed.append(_Planted(kind, w, params, 0.0))
            continue
        mine: list[_Planted] = []
        for off in offsets:
            need = spec.per_view - sum(off <= o.x0 and o.x0 + o.width <= off + s for o in mine)
            need += rng.poisson(spec.extra) if spec.extra else 0
            for _ in range(max(need, 0)):
                w, params = spec.sample(rng, sc)
                lo, hi = off + 0.02 * s, off + 0.98 * s - w
                x0 = rng.uniform(lo, max(lo, hi))
                if spec.layer >= 1:
                    for _try in range(12):
                        if not any(x0 < b and a < x0 + w for a, b in street):
                            break
                        x0 = rng.uniform(lo, max(lo, hi))
                    street.append((x0, x0 + w))
                mine.append(_Planted(kind, w, params, x0))
        placed.extend(mine)
    return placed


# --------------------------------------------------------------------------- rendering


def planted_kinds(config: SynthConfig, city: str, spot: int) -> list[str]:
    """The planted objects that appear in (every view of) this spot.

    Each of the city's planted kinds is present with probability ``planted_presence``, redrawn
    until at least one is. Spots that show only one cue force a classifier to learn every cue of
    a city instead of the easiest one, so each planted object has to earn its R_p^c.
    """
    kinds = discriminative_objects(config)[city]
    if config.planted_presence >= 1.0:
        return list(kinds)
    rng = _rng(config.seed, city, spot, _STREAM_PRESENCE)
    while True:
        keep = [k for k in kinds if rng.random() < config.planted_presence]
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
    kinds = planted_kinds(config, city, spot)
    planted = _place_planted(rng_p, sc, kinds, view_offsets(config))
    by_layer = sorted(planted, key=lambda o: (_KINDS[o.kind].layer, kinds.index(o.kind)))
    mid = (sc.yb + sc.ys) / 2 * s
    drawn_people = False
    for o in by_layer:
        layer = _KINDS[o.kind].layer
        if layer >= 1 and not drawn_people:
            for p in people:
                if p[1] < mid:
                    _draw_person(cv, p)
            drawn_people = True
        if o.kind == "skyscraper":
            _draw_skyscraper(cv, sc, o, rng_p)
        else:
            _KINDS[o.kind].draw(cv, sc, o)
    if not drawn_people:
        for p in people:
            if p[1] < mid:
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


def _write_spot(args: tuple[SynthConfig, str, int, str]) -> list[tuple[str, str, str, str]]:
    config, city, spot, root = args
    root_p = Path(root)
    pano = _render_spot(config, city, spot)
    rows = []
    for view in range(config.views_per_spot):
        img, lab = _finish_view(config, city, spot, view, pano)
        name = image_name(city, spot, view)
        _save_png(root_p / "images" / city / name, img, 0)
        _save_png(root_p / "labels" / city / name, lab, 6)
        rows.append((f"images/{city}/{name}", city, f"{city}/s{spot:04d}", f"labels/{city}/{name}"))
    return rows


def _metadata(config: SynthConfig) -> dict:
    return {"config": config.to_json(), "discriminative": discriminative_objects(config),
            "shared": list(SHARED_OBJECTS), "generator_version": GENERATOR_VERSION}


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
        rows: list[tuple[str, str, str, str]] = []
        for chunk in _run_tasks(tasks, workers, progress):
            rows.extend(chunk)
        with open(tmp / "manifest.csv", "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["path", "city", "spot", "label_path"])
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
