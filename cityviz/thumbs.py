"""Thumbnails as sprite sheets: 96 px tiles, 16 × 16 to a 1536 × 1536 JPEG.

One sheet holds 256 test rows (layout: :func:`cityviz.store.thumb_location`), so a map of 30 000
points needs about 118 files per kind instead of 30 000, and the browser fetches a sheet once and
shows any of its tiles with a CSS offset.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cityviz.cam import DEFAULT_THRESHOLD, explanation, overlay
from cityviz.store import THUMB_SIZE, THUMBS_PER_ROW, atomic_write_bytes, thumb_location

KINDS = ("orig", "overlay", "expl")
JPEG_QUALITY = 85
OVERLAY_ALPHA = 0.5


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [B,H,W,3] → [B,size,size,3] (bilinear with antialiasing; a no-op at the same size)."""
    if images.shape[1:3] == (size, size):
        return np.ascontiguousarray(images, dtype=np.uint8)
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        pil = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8))
        out[i] = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None))
    return out


def render_tiles(
    images: np.ndarray,
    masks: np.ndarray | None,
    kind: str,
    size: int = THUMB_SIZE,
    threshold: float = DEFAULT_THRESHOLD,
) -> np.ndarray:
    """Thumbnail tiles ``uint8 [B,size,size,3]`` of one kind.

    ``images`` uint8 [B,S,S,3]; ``masks`` float [B,S,S] (``mask_norm`` at the image size; unused
    and may be None for ``kind="orig"``). ``overlay`` is the Turbo heat map over the image,
    ``expl`` the paper's visual explanation (pixels below ``threshold`` black). The effect is
    applied at full resolution, then the result is resized.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [B,S,S,3], got shape {images.shape}")
    if kind not in KINDS:
        raise ValueError(f"unknown thumbnail kind {kind!r}; known: {', '.join(KINDS)}")
    if kind == "orig":
        return _resize(images, size)
    if masks is None:
        raise ValueError(f"thumbnail kind {kind!r} needs masks")
    masks = np.asarray(masks, dtype=np.float32)
    if masks.shape != images.shape[:3]:
        raise ValueError(f"masks {masks.shape} do not match images {images.shape}")
    if kind == "overlay":
        return _resize(overlay(images, masks, OVERLAY_ALPHA), size)
    return _resize(explanation(images, masks, threshold), size)


def sheet_image(tiles: np.ndarray, per_row: int = THUMBS_PER_ROW) -> np.ndarray:
    """Lay out up to ``per_row²`` tiles row-major on a black ``uint8`` sheet."""
    tiles = np.asarray(tiles, dtype=np.uint8)
    if tiles.ndim != 4 or tiles.shape[1] != tiles.shape[2] or tiles.shape[-1] != 3:
        raise ValueError(f"tiles must be [n,s,s,3], got shape {tiles.shape}")
    n, s = tiles.shape[:2]
    if n > per_row * per_row:
        raise ValueError(f"{n} tiles do not fit on a {per_row}×{per_row} sheet")
    sheet = np.zeros((per_row * s, per_row * s, 3), dtype=np.uint8)
    for i in range(n):
        y, x = divmod(i, per_row)
        sheet[y * s : (y + 1) * s, x * s : (x + 1) * s] = tiles[i]
    return sheet


def sheet_bytes(tiles: np.ndarray, per_row: int = THUMBS_PER_ROW) -> bytes:
    """The JPEG file of a sheet (see :func:`write_sheet`)."""
    buf = io.BytesIO()
    Image.fromarray(sheet_image(tiles, per_row)).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def write_sheet(path: str | Path, tiles: np.ndarray, per_row: int = THUMBS_PER_ROW) -> None:
    """Write ``tiles`` [n <= per_row², s, s, 3] as one JPEG sheet (quality 85), atomically."""
    atomic_write_bytes(path, sheet_bytes(tiles, per_row))


def crop_tile(
    sheet_path: str | Path, row: int, size: int = THUMB_SIZE, per_row: int = THUMBS_PER_ROW
) -> np.ndarray:
    """The ``size``×``size``×3 tile of test row ``row`` from its sheet (the sheet of ``row``)."""
    _, x, y = thumb_location(row, per_row)
    with Image.open(sheet_path) as im:
        tile = im.convert("RGB").crop((x * size, y * size, (x + 1) * size, (y + 1) * size))
        return np.asarray(tile)


def crop_tiles(
    sheet_path: Callable[[int], Path],
    rows: Sequence[int],
    size: int = THUMB_SIZE,
    per_row: int = THUMBS_PER_ROW,
) -> list[np.ndarray]:
    """Tiles of many rows, decoding each sheet once; ``sheet_path(sheet)`` is a sheet's file."""
    by_sheet: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_sheet.setdefault(thumb_location(row, per_row)[0], []).append(i)
    out: list[np.ndarray | None] = [None] * len(rows)
    for sheet, idx in by_sheet.items():
        with Image.open(sheet_path(sheet)) as im:
            arr = np.asarray(im.convert("RGB"))
        for i in idx:
            _, x, y = thumb_location(rows[i], per_row)
            out[i] = arr[y * size : (y + 1) * size, x * size : (x + 1) * size].copy()
    return [t for t in out if t is not None]
