"""Live Grad-CAM page logic: uploads → a checked RGB image → per-model predictions and masks.

Everything here is plain Python (no Streamlit), so each bad-file case can be tested directly:
:func:`read_upload` turns any bytes into either an image or one sentence for the user, and notes
what it did to odd-but-valid files (EXIF rotation, transparency, 16-bit, CMYK, animation).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageColor, ImageDraw, ImageFont
from threadpoolctl import ThreadpoolController
from torch import nn

from cityviz import ood
from cityviz.cam import Explainer, compute_cams, explanation, mask_norm, overlay
from cityviz.data.images import ImageDecodeError, decode_image, resize_center_crop
from cityviz.embed import masks_to_features
from cityviz.ui.safe_text import md_escape

log = logging.getLogger(__name__)

MAX_UPLOAD_MB = 20
"""The one upload limit, in MB of 2**20 bytes per file (Streamlit's unit): the widget shows it,
the help text states it, ``server.maxUploadSize`` in ``.streamlit/config.toml`` equals it, and
:func:`read_upload` enforces it."""
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB * 2**20
MAX_UPLOAD_PIXELS = 25_000_000
"""Decoded size limit (width × height) for uploads, checked from the header before decoding."""
OOD_MESSAGE = (
    "This photo is unlike the test photos this model was evaluated on (feature distance beyond "
    "their 99th percentile): treat the prediction with caution."
)
MAX_REFERENCE_IMAGES = 1000
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
SMALL_SIDE = 64
UNEXPECTED_MESSAGE = (
    "Something went wrong while analysing this photo; the problem was logged. "
    "The app is still running: try another photo or a sample."
)
ANNOTATIONS_MESSAGE = (
    "This cache was segmented with the data set's own annotations (label files), which exist "
    "only for the data set's images: an uploaded photo has none, so its object breakdown "
    "cannot be shown. Build the cache with a Hugging Face segmenter (`--segmenter hf:...`) to "
    "segment new photos."
)

TIMING_ENV = "CITYVIZ_LIVE_TIMING"
"""Environment variable naming a file: when set, every script run of the live page that
analyses a photo appends one JSON line to it (see :class:`RunTimes`; ``bench/soak.py`` reads it)."""

_EXTENSIONS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


@dataclass
class Upload:
    """The outcome of reading an uploaded file: ``image`` (uint8 H×W×3) or an ``error``."""

    image: np.ndarray | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    digest: str = ""

    @property
    def ok(self) -> bool:
        return self.image is not None


def _sniff_notes(data: bytes, name: str) -> list[str]:
    """What an already validated file needed: read from its header only, never fatal."""
    notes: list[str] = []
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = (im.format or "").upper()
            mode = im.mode
            frames = int(getattr(im, "n_frames", 1) or 1)
            orientation = im.getexif().get(0x0112, 1)
            transparent = mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    except Exception:  # header already read once by decode_image; notes are a nicety
        log.debug("could not sniff %s", name, exc_info=True)
        return notes
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext in _EXTENSIONS and fmt and _EXTENSIONS[ext] != fmt:
        notes.append(f"The file is named .{ext} but contains a {fmt} image; it was read as {fmt}.")
    if fmt and fmt not in ACCEPTED_FORMATS:
        notes.append(f"{fmt} is not JPEG/PNG/WebP, but it could be read, so it is used as is.")
    if frames > 1:
        notes.append(f"Animated image ({frames} frames): only the first frame is analysed.")
    if orientation not in (1, None):
        notes.append("The photo was rotated upright using its EXIF orientation tag.")
    if mode == "CMYK":
        notes.append("CMYK colours were converted to RGB.")
    if mode.startswith("I;16") or mode in ("I", "F"):
        notes.append("A 16-bit (or higher) greyscale image was scaled to 8 bits.")
    if transparent:
        notes.append("Transparent areas were filled with white.")
    return notes


def upload_limit_mb(server_mb: object = None) -> int:
    """The upload limit in MB actually in force: :data:`MAX_UPLOAD_MB`, or Streamlit's
    ``server.maxUploadSize`` (``server_mb``) when a deployment set that lower (its server
    refuses bigger requests before the page sees them)."""
    try:
        server = int(server_mb)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return MAX_UPLOAD_MB
    return max(1, min(MAX_UPLOAD_MB, server))


def upload_help(limit_mb: int = MAX_UPLOAD_MB, max_pixels: int = MAX_UPLOAD_PIXELS) -> str:
    """The uploader's help text: the formats and both limits, worded as the errors word them."""
    return f"JPEG, PNG or WebP, up to {limit_mb} MB per file and {max_pixels:,} pixels."


def read_upload(
    data: bytes,
    name: str = "upload",
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_UPLOAD_PIXELS,
) -> Upload:
    """Validate and decode an uploaded file; never raises for bad input.

    The content decides (not the extension): anything :func:`decode_image` can decode safely
    is used, with :attr:`Upload.notes` saying what was converted; anything else gets one
    sentence in :attr:`Upload.error` (over ``max_bytes``: "The file is 21.0 MB; the limit is
    20 MB per file."; over ``max_pixels``: "... the limit is 25,000,000 pixels.").
    """
    size = len(data)
    if size == 0:
        return Upload(error="The file is empty.")
    if size > max_bytes:
        return Upload(
            error=f"The file is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:g} MB "
            "per file. Please upload a smaller photo."
        )
    digest = hashlib.sha256(data).hexdigest()[:16]
    try:
        image = decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        return Upload(error=str(exc), digest=digest)
    notes = _sniff_notes(data, name)
    h, w = image.shape[:2]
    if min(h, w) < SMALL_SIDE:
        notes.append(f"The image is very small ({w}×{h} px); it was enlarged, expect a blur.")
    return Upload(image=image, notes=notes, digest=digest)


# --------------------------------------------------------------------------- predictions


@dataclass
class ModelResult:
    """One model's view of the photo: probabilities over the cities, the predicted city, the
    normalised Grad-CAM mask at the display size (explaining the predicted city), and the
    photo's ``features`` [K] float32 (trunk output averaged over space, for :mod:`cityviz.ood`)."""

    model_id: str
    probs: np.ndarray
    pred: int
    city: str
    mask: np.ndarray
    features: np.ndarray | None = None

    @property
    def confidence(self) -> float:
        return float(self.probs[self.pred])


_threads_lock = threading.Lock()
_threads_active = 0
_threads_saved = 0


@contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """Run torch single-threaded (intra-op) inside the block, in every thread inside one.

    A dashboard serves many sessions at once, each in its own script thread; with torch's
    default of one intra-op thread per core, ``n`` sessions start ``n × cores`` busy threads on
    ``cores`` cores, and every parallel region waits at its barrier for threads that are not
    scheduled. One thread per explanation lets the sessions, not the threads, share the cores
    (measured in ``bench/soak.py``). ``torch.set_num_threads`` is process-wide, so the value in
    force before the first thread entered is put back when the last one leaves; code outside
    any block (training, tests) keeps its own setting.
    """
    global _threads_active, _threads_saved
    with _threads_lock:
        if _threads_active == 0:
            _threads_saved = torch.get_num_threads()
        _threads_active += 1
        torch.set_num_threads(1)  # this thread's OpenMP setting, and the default for new ones
    try:
        yield
    finally:
        with _threads_lock:
            _threads_active -= 1
            if _threads_active == 0:
                torch.set_num_threads(_threads_saved)


def predict(
    explainer: Explainer,
    image: np.ndarray,
    input_size: int,
    display_size: int,
    cities: Sequence[str],
    method: str = "gradcam",
    model_id: str = "",
) -> ModelResult:
    """Grad-CAM of the predicted city for one full photo (resized and centre-cropped here),
    with the photo's pooled trunk features taken from the same forward pass; torch runs
    single-threaded inside (see :func:`one_intra_op_thread`)."""
    crop = np.array(resize_center_crop(image, input_size))  # writable: torch.from_numpy
    tap = _Tap(explainer.trunk)  # one per call: nothing is shared between threads
    with one_intra_op_thread():
        res = compute_cams(tap, explainer.head, explainer.prepare(crop[None]), method=method)
        mask = mask_norm(res.cams, display_size)[0]
    probs = res.probs[0].detach().cpu().double().numpy()
    pred = int(res.target[0])
    city = cities[pred] if 0 <= pred < len(cities) else str(pred)
    feats = tap.pooled[0] if tap.pooled is not None else None
    return ModelResult(model_id=model_id, probs=probs, pred=pred, city=city, mask=mask,
                       features=feats)  # fmt: skip


class _Tap(nn.Module):
    """Runs ``trunk`` and keeps its output averaged over space ([B, K] float32 numpy)."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.training = False  # eval mode for this wrapper only: the shared trunk is untouched
        self.pooled: np.ndarray | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.trunk(x)
        self.pooled = out.detach().float().mean(dim=(2, 3)).cpu().numpy()
        return out


# --------------------------------------------------------------------------- timing


class RunTimes:
    """Wall-clock and CPU time of one script run of the live page, by step.

    ``start``/``end`` are Unix times in seconds (``time.time()``, comparable with a browser's
    ``performance.timeOrigin + performance.now()`` on the same machine, in ms); ``steps`` maps a
    step name to its wall-clock seconds (summed when a step repeats); ``cpu`` is the CPU seconds
    of the script's thread (``time.thread_time``), so the GIL and other threads' work are not in
    it. :meth:`write` appends the record as one JSON line when :data:`TIMING_ENV` names a file.
    """

    def __init__(self) -> None:
        self.start = time.time()
        self._cpu0 = time.thread_time()
        self.steps: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.steps[name] = self.steps.get(name, 0.0) + time.perf_counter() - t0

    def record(self, digest: str) -> dict:
        """``{"digest", "start", "end", "cpu", "steps"}`` as of now (seconds)."""
        return {
            "digest": digest,
            "start": self.start,
            "end": time.time(),
            "cpu": time.thread_time() - self._cpu0,
            "steps": {k: round(v, 6) for k, v in self.steps.items()},
        }

    def write(self, digest: str, path: str | None = None) -> None:
        """Append :meth:`record` to ``path`` (default ``$CITYVIZ_LIVE_TIMING``; nothing when
        neither is set). One ``write`` of one line to a file opened for appending, so runs of
        several sessions never interleave within a line. An OSError is logged, never raised."""
        path = path if path is not None else os.environ.get(TIMING_ENV)
        if not path:
            return
        line = json.dumps(self.record(digest)) + "\n"
        try:
            with open(path, "a", encoding="utf-8") as out:
                out.write(line)
        except OSError:
            log.warning("cannot append the live page's timing to %s", path, exc_info=True)


# --------------------------------------------------------------------------- OOD caveat


def spread_rows(n: int, limit: int = MAX_REFERENCE_IMAGES) -> np.ndarray:
    """At most ``limit`` row indices evenly spread over ``range(n)`` (int64, sorted, unique)."""
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, num=limit).round().astype(np.int64))


_POOLS = ThreadpoolController()


def ood_check(
    reference: Mapping[str, np.ndarray] | None, result: ModelResult
) -> tuple[float, float, bool] | None:
    """``(distance, percentile, is_ood)`` of one result's photo, or None when there is no
    reference or no features (nothing to say). The nearest-neighbour search runs on one OpenMP
    thread (this thread's setting only): for one photo, scikit-learn's default of a thread per
    core costs 4× the CPU's time in waiting when sessions share the cores (measured: 212 ms
    wall for 54 ms CPU, 1000 reference rows, 2 loaded cores)."""
    if reference is None or result.features is None:
        return None
    with _POOLS.limit(limits=1, user_api="openmp"):
        d, p, flag = ood.score(reference, np.asarray(result.features)[None])
    return float(d[0]), float(p[0]), bool(flag[0])


def views(crop: np.ndarray, mask: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """``(Grad-CAM overlay, visual explanation)`` of a display crop at ``threshold``."""
    return overlay(crop, mask), explanation(crop, mask, threshold)


def probability_rows(probs: Sequence[float], cities: Sequence[str]) -> list[tuple[float, str]]:
    """One ``(value in [0, 1], Markdown label)`` per city, in the model's class order, for
    ``st.progress`` bars: the label is the city name (escaped with
    :func:`~cityviz.ui.safe_text.md_escape`) and the probability in percent, the most probable
    city in bold. A bar per city is a plain element in the browser, where a chart per model
    costs a Plotly render for every upload in every session (``bench/soak.py``)."""
    values = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    best = int(np.argmax(values)) if len(values) else -1
    rows = []
    for i, (p, city) in enumerate(zip(values.tolist(), cities, strict=True)):
        name = md_escape(city)
        rows.append((p, f"**{name} {p:.1%}**" if i == best else f"{name} {p:.1%}"))
    return rows


def summary_table(results: Sequence[ModelResult], display: Mapping[str, str]) -> pd.DataFrame:
    """One row per model: predicted city and confidence."""
    return pd.DataFrame(
        {
            "model": [display.get(r.model_id, r.model_id) for r in results],
            "predicted city": [r.city for r in results],
            "confidence": [r.confidence for r in results],
        }
    )


# --------------------------------------------------------------------------- objects, map


def object_breakdown(
    mask: np.ndarray, labels: np.ndarray, threshold: float, class_names: Sequence[str]
) -> pd.DataFrame:
    """What the explanation (``mask >= threshold``, float32) is made of, per segmented object.

    Columns ``object, pixels, explained, rate`` (explained / pixels, the object's R in this
    photo) and ``share`` (explained / all explained labelled pixels); sorted by share. Label
    values outside ``class_names`` are unlabelled and ignored.
    """
    labels = np.asarray(labels).astype(np.int64)
    n = len(class_names)
    valid = (labels >= 0) & (labels < n)
    explained = (np.asarray(mask, dtype=np.float32) >= np.float32(threshold)) & valid
    pixels = np.bincount(labels[valid], minlength=n)
    inside = np.bincount(labels[explained], minlength=n)
    present = np.flatnonzero(pixels)
    total = inside.sum()
    out = pd.DataFrame(
        {
            "object": [class_names[i] for i in present],
            "pixels": pixels[present],
            "explained": inside[present],
            "rate": inside[present] / pixels[present],
            "share": inside[present] / total if total else np.zeros(len(present)),
        }
    )
    return out.sort_values(["share", "pixels"], ascending=False, kind="stable").reset_index(
        drop=True
    )


def colorize_labels(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Label map → RGB with a fixed pseudo-random colour per class; unlabelled pixels black."""
    rng = np.random.default_rng(12345)
    palette = rng.integers(40, 256, size=(max(n_classes, 1), 3)).astype(np.uint8)
    lab = np.asarray(labels).astype(np.int64)
    valid = (lab >= 0) & (lab < n_classes)
    out = np.zeros((*lab.shape, 3), dtype=np.uint8)
    out[valid] = palette[lab[valid]]
    return out


def place_on_map(embedder, mask: np.ndarray, k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """``(xy [2], nearest fitted indices [k])`` of one mask on a fitted :class:`MaskEmbedder`.

    The feature grid (``res × res``) is read off the embedder's PCA dimension, so it matches
    whatever resolution the map was built with. The embedder's fitted points are the cache's
    test rows in order, so the indices are test rows.
    """
    res = math.isqrt(int(embedder.pca_mean_.shape[0]))
    feats = masks_to_features(np.asarray(mask, dtype=np.float32)[None], res=res)
    xy = embedder.transform(feats)[0]
    _, idx = embedder.kneighbors(feats, k)
    return np.asarray(xy, dtype=float), idx[0]


MAP_WIDTH, MAP_HEIGHT = 640, 480
"""The placement map's plotting area in pixels (the legend rows come below it)."""
_MAP_MARGIN = 14
_LEGEND_ROW = 20
_PHOTO_COLOR = (255, 212, 0)
_RING_COLOR = (17, 17, 17)


@dataclass
class MapCanvas:
    """The test images' explanation map drawn once as an image, to place new photos on.

    The live page shows where each upload lands on a model's map; drawing the fitted points
    once per map (here) and only the photo's star and its neighbours' rings per upload (see
    :meth:`place`) keeps the per-upload cost to a PNG of one picture, on the server and in the
    browser, whatever the number of test images. ``background`` is uint8 [H, W, 3] (the plot's
    ``height`` rows, then the legend); ``lo`` and ``scale`` map coordinates to pixels
    (:meth:`to_px`).
    """

    background: np.ndarray
    lo: np.ndarray
    scale: np.ndarray
    height: int

    @classmethod
    def draw(
        cls,
        xy: np.ndarray,
        city: Sequence[str],
        colors: Mapping[str, str],
        width: int = MAP_WIDTH,
        height: int = MAP_HEIGHT,
    ) -> MapCanvas:
        """Points ``xy`` [N, 2] (map coordinates) as half-transparent dots coloured by ``city``
        [N] (``colors``: city → CSS colour, e.g. ``figures.city_colors``), and a legend below:
        one row per city, then the photo's star and the neighbours' ring. A city name is drawn
        as pixels (never markup), cut to 40 characters. Raises ValueError for a shape mismatch
        or no finite point."""
        xy = np.asarray(xy, dtype=np.float64)
        city = [str(c) for c in city]
        if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) != len(city):
            raise ValueError(f"xy must be [N, 2] with one city per row, got {xy.shape}")
        finite = np.isfinite(xy).all(axis=1)
        if not finite.any():
            raise ValueError("the map has no finite point")
        lo, hi = xy[finite].min(axis=0), xy[finite].max(axis=0)
        span = np.where(hi - lo > 0, hi - lo, 1.0)
        area = np.array([width, height], dtype=np.float64) - 2 * _MAP_MARGIN
        scale = area / span
        names = sorted(set(city))
        legend = len(names) + 1
        scale = np.full(2, scale.min())  # one scale for both axes: distances keep their look
        canvas = cls(np.zeros(0, np.uint8), lo - (area / scale - span) / 2, scale, height)
        img = Image.new("RGB", (width, height + legend * _LEGEND_ROW + 8), "white")
        dots = Image.new("RGBA", img.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(dots)
        rgb = {c: ImageColor.getrgb(colors.get(c, "#888888"))[:3] for c in names}
        px = canvas.to_px(xy)
        for (x, y), c, ok in zip(px, city, finite, strict=True):
            if ok:
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(*rgb[c], 128))
        img.paste(dots, (0, 0), dots)
        pen = ImageDraw.Draw(img)
        pen.rectangle((0, 0, width - 1, height - 1), outline=(220, 220, 220))
        font = ImageFont.load_default(size=13)
        y = height + 6
        for c in names:
            pen.rectangle((10, y + 3, 22, y + 15), fill=rgb[c])
            label = c if len(c) <= 40 else c[:39] + "…"
            pen.text((30, y + 1), label, fill=(40, 40, 40), font=font)
            y += _LEGEND_ROW
        _star(pen, 16, y + 9, 8)
        pen.text((30, y + 1), "your photo", fill=(40, 40, 40), font=font)
        pen.ellipse((130, y + 3, 142, y + 15), outline=_RING_COLOR, width=2)
        pen.text((150, y + 1), "nearest test images", fill=(40, 40, 40), font=font)
        canvas.background = np.asarray(img)
        return canvas

    def to_px(self, xy: np.ndarray) -> np.ndarray:
        """Map coordinates [..., 2] → pixel coordinates [..., 2] (x right, y down), float64."""
        px = (np.asarray(xy, dtype=np.float64) - self.lo) * self.scale + _MAP_MARGIN
        return np.stack([px[..., 0], self.height - px[..., 1]], axis=-1)

    def place(self, photo_xy: Sequence[float], near_xy: np.ndarray) -> np.ndarray:
        """A copy of the map with rings around ``near_xy`` [K, 2] and a star at ``photo_xy``
        (both map coordinates), uint8 [H, W, 3]."""
        img = Image.fromarray(self.background)
        pen = ImageDraw.Draw(img)
        for x, y in self.to_px(np.asarray(near_xy, dtype=np.float64).reshape(-1, 2)):
            pen.ellipse((x - 6, y - 6, x + 6, y + 6), outline=_RING_COLOR, width=2)
        x, y = self.to_px(np.asarray(photo_xy, dtype=np.float64))
        _star(pen, float(x), float(y), 11)
        return np.asarray(img)


def _star(pen: ImageDraw.ImageDraw, x: float, y: float, r: float) -> None:
    """A five-pointed star of outer radius ``r`` pixels centred at ``(x, y)``."""
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    points = [(x + q * np.cos(a), y - q * np.sin(a)) for a, q in zip(angles, radii, strict=True)]
    pen.polygon(points, fill=_PHOTO_COLOR, outline=_RING_COLOR)


def sample_rows(test_images: pd.DataFrame, per_city: int = 2) -> pd.DataFrame:
    """A few test images per city (evenly spread over each city's rows) to try the page."""
    picks = []
    for _city, grp in test_images.sort_values("row").groupby("city", sort=True):
        pos = np.linspace(0, len(grp) - 1, num=min(per_city, len(grp))).round().astype(int)
        picks.append(grp.iloc[np.unique(pos)])
    if not picks:
        return test_images.head(0)
    out = pd.concat(picks).reset_index(drop=True)
    out["label"] = [f"{c} · test image {r}" for c, r in zip(out["city"], out["row"], strict=True)]
    return out


def deletion(
    explainer: Explainer,
    image: np.ndarray,
    input_size: int,
    mask: np.ndarray,
    target: int,
    steps: int = 20,
) -> tuple[np.ndarray, np.ndarray, float]:
    """The deletion curve of one photo's explanation (Petsiuk et al. 2018, RISE):
    ``(fractions [steps+1], probs [steps+1], auc)``, float64.

    ``image``: the full photo (uint8 H×W×3; resized and centre-cropped to ``input_size`` here,
    as :func:`predict` does); ``mask``: its normalised Grad-CAM ([S,S] float in [0,1], e.g.
    ``ModelResult.mask``), bilinearly resized to the input size; ``target``: the class whose
    probability is followed (the predicted city). Pixels are removed most important first and
    filled with a blurred copy of the photo (:func:`cityviz.trust.faithfulness.deletion_curve`);
    ``auc`` is the trapezoid area (:func:`cityviz.trust.faithfulness.auc`). Torch runs
    single-threaded inside (:func:`one_intra_op_thread`).
    """
    from cityviz.trust.faithfulness import auc, deletion_curve

    crop = np.array(resize_center_crop(image, input_size))
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    if m.shape[-1] != input_size or m.shape[-2] != input_size:
        m = torch.nn.functional.interpolate(
            m, size=(input_size, input_size), mode="bilinear", align_corners=False
        )
    m = m[0, 0].clamp(0, 1).numpy()
    with one_intra_op_thread():
        x = explainer.prepare(crop[None])
        fractions, probs = deletion_curve(explainer.model, x, m, int(target), steps=steps)
    return fractions, probs, float(auc(fractions, probs))
