"""Safe image decoding, the one definition of model-input geometry, and batched loading.

Every entry point (data set loading, training, the upload page) decodes through
:func:`decode_image`, so odd files behave the same everywhere: EXIF orientation is applied, any
colour mode becomes 8-bit RGB, transparency is composited on white, and anything that cannot be
decoded becomes an :class:`ImageDecodeError` with a sentence fit to show a user.

:func:`image_batches` feeds the per-batch work (decoding in the data stage; predictions, Grad-CAM
and segmentation over the cache's memory-mapped inputs) through a ``torch.utils.data.DataLoader``
with worker processes and, on CUDA, pinned memory.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "La", "RGBa", "PA"})


class ImageDecodeError(ValueError):
    """An image could not be decoded; ``str(err)`` is a plain-English sentence for users."""


ImageSource = bytes | bytearray | memoryview | str | os.PathLike | IO[bytes]


def decode_image(src: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``src`` (bytes, a path, or a binary file object) to a uint8 ``H×W×3`` RGB array.

    The pixel count is read from the header and checked against ``max_pixels`` before any pixel
    data is decoded. Animated images give their first frame. Truncated files are an error, not a
    partial image. No PIL exception escapes: every failure is an :class:`ImageDecodeError`.
    """
    stream, owned = _open_stream(src)
    try:
        with Image.open(stream) as im:
            _check_size(im.size, max_pixels)
            im.seek(0)
            im.load()
            im = _apply_exif_orientation(im)
            return _to_rgb(im)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(
            f"The image is too large to open safely; the limit is {max_pixels:,} pixels."
        ) from err
    except Image.DecompressionBombWarning as err:  # only raised when warnings are errors
        raise ImageDecodeError(
            f"The image is too large to open safely; the limit is {max_pixels:,} pixels."
        ) from err
    except UnidentifiedImageError as err:
        raise ImageDecodeError(
            "The file is not a recognised image (use JPEG, PNG, WebP, GIF, BMP or TIFF)."
        ) from err
    except MemoryError as err:
        raise ImageDecodeError(
            "The image is too large to decode with the memory available."
        ) from err
    except Exception as err:
        # Truncation is an OSError; corrupt streams raise ValueError, SyntaxError, struct.error...
        log.debug("decode failed", exc_info=True)
        raise ImageDecodeError(
            "The image file is damaged or incomplete and could not be decoded."
        ) from err
    finally:
        if owned:
            stream.close()


def display_path(path: str | bytes | os.PathLike) -> str:
    """``path`` as printable UTF-8 text for messages, logs, JSON and Parquet; never raises.

    Bytes that are not valid UTF-8 (as :func:`os.fsdecode` keeps them, as lone surrogates) are
    shown as ``\\xNN`` escapes, and control or other non-printable characters (newline, tab, ...)
    by their Python escape (``\\n``), so ``b"caf\\xe9\\n.jpg"`` reads ``caf\\xe9\\n.jpg``.
    The result is for showing, not for opening: it is not a path of the same file.
    """
    try:
        raw = os.fsencode(path)
    except (TypeError, ValueError):
        return repr(path)
    text = raw.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def _open_stream(src: ImageSource) -> tuple[IO[bytes], bool]:
    """``(seekable stream, whether we must close it)``; empty or missing input fails early."""
    if isinstance(src, bytes | bytearray | memoryview):
        if len(src) == 0:
            raise ImageDecodeError("The file is empty.")
        return io.BytesIO(bytes(src)), False
    if isinstance(src, str | os.PathLike):
        path = Path(src)
        name = display_path(path.name)
        try:
            if path.stat().st_size == 0:
                raise ImageDecodeError(f"The file {name} is empty.")
            return open(path, "rb"), True  # closed by decode_image
        except ImageDecodeError:
            raise
        except FileNotFoundError as err:
            raise ImageDecodeError(f"The file {name} does not exist.") from err
        except IsADirectoryError as err:
            raise ImageDecodeError(f"The path {name} is a folder, not an image file.") from err
        except OSError as err:  # permission denied, name too long, I/O error, ...
            why = (err.strerror or "input/output error").lower()
            raise ImageDecodeError(f"The file {name} could not be read ({why}).") from err
        except ValueError as err:  # a NUL character in the path
            raise ImageDecodeError(f"The path {name} is not a valid file name.") from err
    if hasattr(src, "read"):
        try:
            data = src.read()
        except OSError as err:
            raise ImageDecodeError("The uploaded file could not be read.") from err
        return _open_stream(data)
    raise TypeError(f"decode_image expects bytes, a path or a binary file, not {type(src)!r}")


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageDecodeError("The image has no pixels (zero width or height).")
    if w * h > max_pixels:
        raise ImageDecodeError(
            f"The image is too large ({w}×{h} pixels); the limit is {max_pixels:,} pixels."
        )


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    """Rotate/flip per the EXIF orientation tag; a broken EXIF block is ignored, not fatal."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # a bad EXIF block only loses the orientation
        log.debug("ignoring unreadable EXIF orientation", exc_info=True)
        return im


def _to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        grey = _scale_to_uint8(np.asarray(im), mode)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "L" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        return _composite_on_white(np.asarray(im.convert("RGBA")))
    if im.mode != "RGB":
        try:
            im = im.convert("RGB")
        except (ValueError, OSError) as err:
            raise ImageDecodeError(f"The image uses an unsupported colour mode ({mode}).") from err
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def _scale_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Map a single-channel high-depth image onto 0..255 by scaling, never by clipping.

    16-bit modes use the full 0..65535 range (65535 → 255). 32-bit integer ("I") images holding
    8-bit values are kept, 16-bit values are scaled as above, anything wider is min-max scaled.
    Float ("F") images in 0..1 are multiplied by 255, otherwise treated like "I".
    """
    if mode in _SIXTEEN_BIT_MODES:
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0.0)
    lo, hi = float(a.min()), float(a.max())
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = a * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = a
    elif lo >= 0.0 and hi <= 65535.0:
        scaled = a / 257.0
    elif hi > lo:
        scaled = (a - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(a)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    out = (rgb * alpha + 255 * (255 - alpha) + 127) // 255
    return np.ascontiguousarray(out.astype(np.uint8))


def crop_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """``(resized_h, resized_w, top, left)`` of torchvision's ``Resize(size)+CenterCrop(size)``.

    The shorter side becomes ``size``, the longer ``int(size * long / short)``; the crop offset is
    ``int(round((resized - size) / 2))`` on each axis.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"cannot resize an empty {height}×{width} array")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if height <= width:
        new_h, new_w = size, int(size * width / height)
    else:
        new_h, new_w = int(size * height / width), size
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    return new_h, new_w, top, left


def resize_center_crop(img: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop to ``size×size`` (torchvision style).

    ``nearest=False``: bilinear with antialiasing (PIL's BILINEAR) for uint8 ``H×W×3`` or
    ``H×W`` images. ``nearest=True``: exact nearest-neighbour for label maps of any integer dtype
    (values are copied, never interpolated). Both paths sample the same source positions (output
    pixel centre ``i + 0.5`` maps to ``(top + i + 0.5) * H / resized_h``), so an image and its
    label map stay pixel-aligned.
    """
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an H×W or H×W×C array, got shape {img.shape}")
    h, w = img.shape[:2]
    new_h, new_w, top, left = crop_geometry(h, w, size)
    if (new_h, new_w) == (h, w):
        return np.ascontiguousarray(img[top : top + size, left : left + size])
    if nearest:
        rows = _nearest_index(new_h, h)[top : top + size]
        cols = _nearest_index(new_w, w)[left : left + size]
        return np.ascontiguousarray(img[rows[:, None], cols[None, :]])
    if img.dtype != np.uint8:
        raise ValueError(f"bilinear resizing needs a uint8 image, got {img.dtype}; "
                         "use nearest=True for label maps")
    if img.ndim == 3 and img.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected 1, 3 or 4 channels, got {img.shape[2]}")
    squeeze = img.ndim == 3 and img.shape[2] == 1
    pil = Image.fromarray(img[..., 0] if squeeze else img)
    sy, sx = h / new_h, w / new_w
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    out = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR, box=box))
    return np.ascontiguousarray(out[..., None] if squeeze else out)


def _nearest_index(new_len: int, old_len: int) -> np.ndarray:
    """Source index of each of ``new_len`` output pixels: ``floor((i + 0.5) * old / new)``.

    The coordinate is accumulated step by step exactly as PIL's NEAREST resize does, so ties at
    exact pixel borders break the same way and results equal torchvision's NEAREST bit for bit.
    """
    step = old_len / new_len
    coords = np.cumsum(np.concatenate(([step * 0.5], np.full(new_len - 1, step))))
    return np.clip(coords.astype(np.int64), 0, old_len - 1)


def decode_resized(path: str | os.PathLike, size: int) -> np.ndarray:
    """``path`` decoded (:func:`decode_image`) and resized + centre-cropped to a uint8
    ``[size, size, 3]`` array (:func:`resize_center_crop`), as every model input is made.

    Raises :class:`ImageDecodeError` whose sentence starts with the file's printable name."""
    try:
        return resize_center_crop(decode_image(path), size)
    except ImageDecodeError as err:
        raise ImageDecodeError(f"{display_path(Path(path).name)}: {err}") from err


class _Batches:
    """A map-style data set whose item ``k`` is batch ``k`` of ``source`` as a uint8 tensor
    ``[B, H, W, 3]``: rows ``k·B … (k+1)·B`` of an array (copied out of a memory map), or those
    paths decoded at ``size``. A decoding error is returned, not raised, so that it reaches the
    caller with its own sentence from a worker process too (see :func:`image_batches`)."""

    def __init__(self, source: np.ndarray | Sequence[Any], batch_size: int, size: int | None):
        self.source, self.batch_size, self.size = source, batch_size, size
        self.is_array = isinstance(source, np.ndarray)

    def __len__(self) -> int:
        return -(-len(self.source) // self.batch_size)

    def __getitem__(self, k: int) -> torch.Tensor | ImageDecodeError:
        import torch

        rows = slice(k * self.batch_size, min((k + 1) * self.batch_size, len(self.source)))
        if self.is_array:
            return torch.from_numpy(np.array(self.source[rows]))
        try:
            images = [decode_resized(p, self.size) for p in self.source[rows]]
        except ImageDecodeError as err:
            return ImageDecodeError(str(err))
        return torch.from_numpy(np.stack(images))


def image_batches(
    source: np.ndarray | Sequence[str | os.PathLike],
    batch_size: int,
    *,
    size: int | None = None,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> Iterator[torch.Tensor]:
    """Consecutive batches of ``source`` as CPU uint8 tensors ``[B, H, W, 3]``, in order.

    ``source`` is a uint8 array ``[N, H, W, 3]`` (usually the cache's memory-mapped inputs: each
    batch is read into memory) or a sequence of image paths, decoded, resized and centre-cropped
    to ``size`` (:func:`decode_resized`; ``size`` is required then). Batch ``k`` holds items
    ``k·batch_size`` up to ``(k+1)·batch_size``; the last may be shorter.

    A ``torch.utils.data.DataLoader`` does the reading: ``num_workers`` processes (0: this
    process) prepare the next batches while the caller computes, and the order and contents are
    the same whatever ``num_workers`` is. With a CUDA ``device`` the batches are pinned
    (page-locked), so that ``batch.to(device, non_blocking=True)`` copies asynchronously; the
    caller makes that copy. Raises :class:`ImageDecodeError` (the file's name and why) for a path
    that cannot be decoded, and ``ValueError`` for a ``batch_size`` below 1, a negative
    ``num_workers``, or paths without ``size``.
    """
    import torch
    from torch.utils.data import DataLoader

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
    data = _Batches(source, batch_size, size)
    if not data.is_array and size is None:
        raise ValueError("image_batches needs size= to decode image paths")
    if not data.is_array and not isinstance(source, list | tuple):
        data.source = list(source)
    loader = DataLoader(
        data,
        batch_size=None,  # each item already is a batch
        shuffle=False,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
    )
    for batch in loader:
        if isinstance(batch, ImageDecodeError):
            raise batch
        yield batch
