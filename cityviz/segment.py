"""Semantic segmentation behind one protocol, with three backends.

A :class:`Segmenter` turns the model-input crops ``uint8 [B, H, W, 3]`` into label maps
``[B, H, W]`` in its own class indices, pixel-aligned with the crops the city classifier and
Grad-CAM saw, so R_p^c can count object pixels inside the explanation mask directly.

* :class:`AnnotationSegmenter` reads ground-truth label PNGs (the synthetic set, whose labels are
  ADE20K indices, or a real annotated set with its own class list such as Cityscapes' 19 or
  CamVid's 11 classes).
* :class:`HFSegmenter` runs any Hugging Face ``AutoModelForSemanticSegmentation`` checkpoint, from
  the hub or from a local directory.
* ``None`` (spec ``"none"``): no segmentation; pages show :data:`NO_SEGMENTER_MESSAGE`.

Default Hugging Face model: ``openmmlab/upernet-convnext-small``
    UPerNet with a ConvNeXt-S backbone trained on ADE20K-150; the same decoder family (UPerNet)
    as the paper's UPerNet/ResNet50 scene parser.

    * Licence: MIT, per the model card's metadata
      (https://huggingface.co/openmmlab/upernet-convnext-small).
    * mIoU: 48.56 single-scale, 49.02 multi-scale + flip on ADE20K val, as reported by
      mmsegmentation for checkpoint ``upernet_convnext_small_fp16_512x512_160k_ade20k_20220227_
      131208-1b1e394f`` (open-mmlab/mmsegmentation, ``configs/convnext/README.md``). The hub
      weights were converted from that exact checkpoint (transformers,
      ``models/upernet/convert_convnext_upernet_to_pytorch.py``, which checks logits after
      conversion). mmsegmentation scored it with sliding-window inference; this module resizes
      each crop to the processor's 512x512, so the mIoU under this pipeline is not verified.
    * Weights ship as ``pytorch_model.bin`` (~328 MB on the hub's file list); loading them needs
      torch >= 2.6 (requirements.txt pins 2.14).
    * CPU cost: ~82 M parameters; the UPerNet head at 1/4 of 512x512 dominates. A random-weight
      model of this architecture took ~17 s per 512x512 crop on a heavily loaded 2-core CPU
      (SegFormer-B0's architecture: ~2.8 s on the same machine), so real photo folders want a GPU
      (``device="auto"``) or patience; the synthetic set uses its own annotations instead.
    * Precision: on CUDA the model runs under autocast (:func:`segmenter_amp_dtype`: bfloat16
      where the GPU supports it, else float16, with ``precision="auto"``); on a CPU it stays
      float32 whatever the precision (this CPU has no native bfloat16). Logits are upsampled and
      compared in float32 either way.

    Rejected: ``nvidia/segformer-b{0,2}-finetuned-ade-512-512`` are smaller and faster, but their
    model cards say ``License: other`` (changed from apache-2.0 in August 2022) and the SegFormer
    code is under the NVIDIA Source Code License, which restricts use; their ADE20K mIoU through
    this pipeline was not verified either. ``openmmlab/upernet-convnext-tiny`` (MIT, 46.11 mIoU
    in the same mmsegmentation table) is smaller on disk but not faster on CPU (same head).
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from cityviz.data.images import crop_geometry, resize_center_crop

log = logging.getLogger(__name__)

DEFAULT_HF_MODEL = "openmmlab/upernet-convnext-small"

NO_SEGMENTER_MESSAGE = (
    "No segmenter was configured when this cache was built, so object statistics "
    "(R_p^c, per-object shares) are not available; re-run precompute with "
    "`--segmenter annotations` (data sets with label maps) or `--segmenter hf:/path/to/model`."
)

SPEC_FORMS = ("annotations", "hf", "hf:<hub-id-or-directory>", "none")


class SegmenterUnavailable(RuntimeError):
    """The segmentation model cannot be loaded here (no weights, no internet, bad directory)."""


@runtime_checkable
class Segmenter(Protocol):
    """Turns model-input crops into label maps in the segmenter's own class indices."""

    name: str
    class_names: Sequence[str]

    def segment(self, images: np.ndarray, image_ids: Sequence[str] | None = None) -> np.ndarray:
        """``uint8 [B, H, W, 3]`` → integer ``[B, H, W]``; values ``>= len(class_names)`` are
        unlabelled."""
        ...


def label_dtype(n_classes: int) -> np.dtype:
    """Smallest label dtype that keeps one spare value for "unlabelled"."""
    return np.dtype(np.uint8) if n_classes <= 255 else np.dtype(np.uint16)


def unlabelled_value(n_classes: int) -> int:
    """The value written for unlabelled pixels: 255 for uint8 maps, 65535 for uint16."""
    return int(np.iinfo(label_dtype(n_classes)).max)


def _check_images(images: np.ndarray) -> tuple[int, int, int]:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images of shape [B, H, W, 3], got {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    b, h, w, _ = images.shape
    return b, h, w


#: Label values that mean "unlabelled" in label PNGs when they do not index a class: 255 (the
#: usual 8-bit ignore index, e.g. Cityscapes' trainIds and Hugging Face's ``do_reduce_labels``)
#: and 65535 (its 16-bit counterpart).
IGNORE_VALUES = (255, 65535)

_SINGLE_CHANNEL_MODES = frozenset({"1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N"})
_EXIF_ORIENTATION = 0x0112


def _read_label_png(path: Path) -> np.ndarray:
    """The raw values of a single-channel label image as ``int64 [H, W]``.

    8-bit ("L"), 16-bit ("I;16*"), 32-bit ("I"), bilevel ("1") and palette ("P": the palette
    index is the label, the palette's colours are ignored) images are accepted.

    Raises:
        ValueError: one sentence naming ``path`` when the file is missing, empty, unreadable or
            damaged, has more than one channel (RGB, RGBA, LA, PA: colour-coded label images must
            be converted to class indices first) or holds floats.
    """
    try:
        empty = path.stat().st_size == 0
    except OSError as exc:
        raise ValueError(f"cannot read label map {path}: {exc.strerror or exc}") from None
    if empty:
        raise ValueError(f"label map {path} is an empty file")
    try:
        with Image.open(path) as im:
            im.seek(0)
            im.load()
            mode, bands = im.mode, len(im.getbands())
            raw = np.asarray(im) if mode in _SINGLE_CHANNEL_MODES else None
    except Exception as exc:  # truncated, corrupt or not an image: PIL raises many types
        reason = _first_sentence(str(exc)) or type(exc).__name__
        raise ValueError(
            f"cannot read label map {path}: it is damaged or not an image ({reason})"
        ) from exc
    if raw is None:
        kind = f"{bands} channels" if bands > 1 else "floating-point values"
        raise ValueError(
            f"label map {path} has {kind} (PIL mode {mode}); label maps must be single-channel "
            "class indices (8/16-bit greyscale or palette PNG), so convert colour-coded labels "
            "to indices first"
        )
    return raw.astype(np.int64)


def _photo_size(path: Path) -> tuple[int, int] | None:
    """``(height, width)`` of a photo as :func:`cityviz.data.images.decode_image` returns it
    (EXIF orientations 5-8 swap the axes), read from the header only; ``None`` if unreadable."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # the photo's own decoding reports unreadable photos
        log.debug("cannot read the size of %s", path, exc_info=True)
        return None
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


class AnnotationSegmenter:
    """Ground-truth label PNGs, cropped exactly like the model input.

    ``label_paths`` maps image id → single-channel label PNG (8- or 16-bit greyscale, or palette,
    whose palette index is the label) whose values index ``class_names``. ``segment`` applies the
    same shorter-side resize + centre crop as the model input
    (:func:`cityviz.data.images.resize_center_crop`, nearest neighbour, so no label value is
    invented), which keeps every label pixel on top of its image pixel.

    Rules for label values (``n = len(class_names)``; a violation raises a one-sentence
    ``ValueError`` naming the file, the value and the fix):

    * ``reduce_labels=False`` (0-based, e.g. cityviz's synthetic set: 0 = wall): value ``v < n``
      is class ``v``; 255 and 65535 (:data:`IGNORE_VALUES`) are unlabelled when ``>= n``; any
      other ``v >= n`` is refused. ``v == n`` is refused as the tell-tale of 1-based labels
      (ADE20K's own release: 0 = "other", 1..150 = wall..flag) with the fix ``--reduce-labels``.
    * ``reduce_labels=True`` (as Hugging Face's ``do_reduce_labels``): 0 is unlabelled, ``v`` is
      class ``v - 1``, 255/65535 stay unlabelled; ``v - 1 >= n`` otherwise is refused.
    * Data set warning (``logging.warning``, once per segmenter): with ``reduce_labels=False``,
      when no pixel of any label map has value 0 although some are labelled, the labels may be
      1-based with their top class absent (:meth:`check_labels`).

    Rules for label size, when ``image_paths`` (image id → photo) is given: a label map the
    photo's size is cropped with the photo's geometry; one at another resolution but the photo's
    aspect ratio (each side within one label pixel of the scaled other) is sampled by nearest
    neighbour at the photo's crop positions; any other size is refused. Without ``image_paths``
    each label map is assumed to be its photo's size.
    """

    def __init__(
        self,
        label_paths: Mapping[str, str | Path],
        class_names: Sequence[str],
        name: str = "annotations",
        *,
        reduce_labels: bool = False,
        image_paths: Mapping[str, str | Path] | None = None,
    ) -> None:
        if not class_names:
            raise ValueError("AnnotationSegmenter needs a non-empty class_names list")
        self.label_paths = {str(k): Path(v) for k, v in label_paths.items()}
        self.image_paths = {str(k): Path(v) for k, v in (image_paths or {}).items()}
        self.class_names: Sequence[str] = tuple(class_names)
        self.name = name
        self.reduce_labels = bool(reduce_labels)
        self._dtype = label_dtype(len(self.class_names))
        self._unlabelled = unlabelled_value(len(self.class_names))
        self._checked = False
        self._warned_resized = False

    def _path(self, image_id: str) -> Path:
        try:
            return self.label_paths[image_id]
        except KeyError:
            raise KeyError(
                f"no label map for image id {image_id!r} "
                f"({len(self.label_paths)} ids have labels in segmenter {self.name!r})"
            ) from None

    def _to_classes(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw label values → class indices (unlabelled → the dtype's unlabelled value)."""
        n = len(self.class_names)
        offset = 1 if self.reduce_labels else 0
        classes = raw - offset
        unlabelled = np.isin(raw, IGNORE_VALUES) & (classes >= n)
        if self.reduce_labels:
            unlabelled |= raw == 0
        bad = ~unlabelled & ((classes < 0) | (classes >= n))
        if bad.any():
            value = int(raw[bad].max())
            raise ValueError(self._bad_value_message(path, value))
        return np.where(unlabelled, self._unlabelled, classes).astype(self._dtype)

    def _bad_value_message(self, path: Path, value: int) -> str:
        n = len(self.class_names)
        if value < 0:
            return f"label map {path} has the negative value {value}; labels must be class indices"
        if not self.reduce_labels and value == n:
            return (
                f"label map {path} has value {value} with {n} class names: labels look 1-based "
                "(ADE20K's release: 0 = other); pass --reduce-labels (reduce_labels=True)"
            )
        shift = " after --reduce-labels (value - 1)" if self.reduce_labels else ""
        return (
            f"label map {path} has value {value}, beyond the {n} class names{shift} "
            f"(0..{n - 1}, with {IGNORE_VALUES[0]} or {IGNORE_VALUES[1]} for unlabelled); "
            "check that the class list (classes.json) belongs to these label maps"
        )

    def load_label(self, image_id: str) -> np.ndarray:
        """The full-resolution label map of ``image_id`` in class indices, ``[H, W]`` of
        :func:`label_dtype`; unlabelled pixels hold :func:`unlabelled_value`.

        Raises:
            KeyError: ``image_id`` has no label map.
            ValueError: the file is unreadable, not single-channel, or a value breaks the rules
                in the class docstring.
        """
        path = self._path(image_id)
        return self._to_classes(_read_label_png(path), path)

    def check_labels(self, image_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Read every label map (or those of ``image_ids``), refuse any that breaks the rules, and
        warn once when no pixel has value 0 (see the class docstring).

        Returns ``{"maps", "labelled_pixels", "zero_pixels", "max_value"}`` over the raw values.
        Raises the ``ValueError`` of :meth:`load_label` for the first bad file.
        """
        ids = list(self.label_paths) if image_ids is None else [str(i) for i in image_ids]
        labelled = zeros = 0
        max_value = -1
        for image_id in ids:
            path = self._path(image_id)
            raw = _read_label_png(path)
            classes = self._to_classes(raw, path)
            labelled += int(np.count_nonzero(classes != self._unlabelled))
            zeros += int(np.count_nonzero(raw == 0))
            max_value = max(max_value, int(raw.max()))
        if not self.reduce_labels and ids and labelled and zeros == 0 and not self._checked:
            log.warning(
                "segmenter %s: no pixel of the %d label maps has value 0 (%s) and the largest "
                "value is %d of %d class names; if the labels are 1-based (ADE20K's release: "
                "0 = other), pass --reduce-labels",
                self.name, len(ids), self.class_names[0], max_value, len(self.class_names),
            )
        self._checked = True
        return {
            "maps": len(ids),
            "labelled_pixels": labelled,
            "zero_pixels": zeros,
            "max_value": max_value,
        }

    def _crop(self, image_id: str, label: np.ndarray, size: int) -> np.ndarray:
        """``label`` cropped like its photo's model input: ``[size, size]``, nearest neighbour."""
        photo_path = self.image_paths.get(image_id)
        photo = _photo_size(photo_path) if photo_path is not None else None
        hl, wl = label.shape
        if photo is None or photo == (hl, wl):
            return resize_center_crop(label, size, nearest=True)
        hp, wp = photo
        if abs(hl - hp * wl / wp) > 1 or abs(wl - wp * hl / hp) > 1:
            raise ValueError(
                f"label map {self.label_paths[image_id]} is {wl}x{hl} pixels but its photo "
                f"{photo_path} is {wp}x{hp} with another aspect ratio; label maps must cover the "
                "whole photo"
            )
        if not self._warned_resized:
            log.warning(
                "segmenter %s: label maps at another resolution than their photos (first: %s, "
                "%dx%d for %dx%d) are resized by nearest neighbour",
                self.name, self.label_paths[image_id], wl, hl, wp, hp,
            )
            self._warned_resized = True
        new_h, new_w, top, left = crop_geometry(hp, wp, size)
        centres = np.arange(size) + 0.5
        rows = np.clip(((top + centres) * hl / new_h).astype(np.int64), 0, hl - 1)
        cols = np.clip(((left + centres) * wl / new_w).astype(np.int64), 0, wl - 1)
        return np.ascontiguousarray(label[rows[:, None], cols[None, :]])

    def segment(self, images: np.ndarray, image_ids: Sequence[str] | None = None) -> np.ndarray:
        """Label maps ``[B, S, S]`` (:func:`label_dtype`) for the square model-input crops
        ``uint8 [B, S, S, 3]`` of ``image_ids``. The first call checks the whole data set
        (:meth:`check_labels`).

        Raises:
            ValueError: bad images, missing or mismatched ``image_ids``, non-square crops, or a
                label map that breaks the rules in the class docstring.
            KeyError: an id has no label map.
        """
        b, h, w = _check_images(images)
        if image_ids is None:
            raise ValueError("AnnotationSegmenter.segment needs image_ids to find the label maps")
        if len(image_ids) != b:
            raise ValueError(f"got {b} images but {len(image_ids)} image ids")
        if h != w:
            raise ValueError(f"expected square model-input crops, got {h}x{w}")
        for image_id in image_ids:
            self._path(str(image_id))
        if not self._checked:
            self.check_labels()
        out = np.empty((b, h, w), dtype=self._dtype)
        for i, image_id in enumerate(image_ids):
            out[i] = self._crop(str(image_id), self.load_label(str(image_id)), h)
        return out


def _env_offline() -> bool:
    truthy = {"1", "on", "yes", "true"}
    return any(
        os.environ.get(var, "").strip().lower() in truthy
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _looks_like_path(model: str | Path) -> bool:
    """A Path, or a string no hub id could be (absolute, ./, ../, ~, or with 2+ slashes)."""
    if isinstance(model, Path):
        return True
    s = str(model)
    return (
        os.path.isabs(s)
        or s.startswith(("./", "../", "~", ".\\"))
        or s.count("/") > 1
        or (os.sep != "/" and os.sep in s)
    )


def _unavailable_message(model: str, reason: str) -> str:
    hub_id = model if not _looks_like_path(model) else DEFAULT_HF_MODEL
    local = f"models/{hub_id.split('/')[-1]}"
    return (
        f"Cannot load the segmentation model {model!r}: {reason}. "
        "Without internet access (or with HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE set) cityviz can "
        "only use weights that are already on disk. On a machine with internet, fetch the model "
        f"once with `hf download {hub_id} --local-dir {local}` (older huggingface_hub: "
        f"`huggingface-cli download {hub_id} --local-dir {local}`), or with "
        '`python -c "from transformers import AutoImageProcessor as P, '
        f"AutoModelForSemanticSegmentation as M; P.from_pretrained('{hub_id}')"
        f".save_pretrained('{local}'); "
        f"M.from_pretrained('{hub_id}').save_pretrained('{local}')\"`, "
        f"copy that directory here and run with `--segmenter hf:/path/to/{local}` "
        "(or `--segmenter none` to skip segmentation)."
    )


def _first_sentence(text: str, limit: int = 200) -> str:
    """One line of an exception text: its first sentence, whitespace collapsed, capped."""
    flat = " ".join(text.split())
    head = flat.split(". ", 1)[0].rstrip(".")
    return head if len(head) <= limit else head[: limit - 3] + "..."


def _hub_host() -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return urlparse(endpoint).netloc or "huggingface.co"


def _hub_reachable(host: str, timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the hub? Assumed yes behind a proxy (not probed)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    name, _, port = host.partition(":")
    try:
        with socket.create_connection((name, int(port or 443)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when available, else ``"cpu"``; anything else is kept."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def segmenter_amp_dtype(device: str, precision: str) -> Any:
    """The autocast dtype of the segmenter: :func:`cityviz.models.train.amp_dtype` on a CUDA
    device (``"auto"``: ``torch.bfloat16`` where ``torch.cuda.is_bf16_supported()``, else
    ``torch.float16``), and ``None`` (float32) on any other device whatever ``precision`` says.

    Hugging Face's segmentation models run under ``torch.autocast`` on GPUs; on a CPU without
    native bfloat16, such as this project's, autocast is emulated and slower (README, *On a
    GPU*). Raises ``ValueError`` for an unknown precision."""
    import torch

    from cityviz.models.train import amp_dtype

    dtype = amp_dtype(device, precision)  # checks the name on every device
    return dtype if torch.device(device).type == "cuda" else None


class HFSegmenter:
    """A Hugging Face ``AutoModelForSemanticSegmentation`` checkpoint (hub id or local directory).

    Label maps are pixel-aligned with the crops by construction, whatever the checkpoint's image
    processor would do to their geometry (resize, centre crop, ``crop_pct``, padding,
    ``size_divisor``): each whole crop is resized to the model's input size
    (:func:`model_input_size`), the processor is called with ``do_resize``, ``do_center_crop``
    and ``do_pad`` off so it only rescales and normalises, and the logits are upsampled bilinearly
    (``align_corners=False``) back to the whole crop before the argmax. Both resizes map the
    crop's full extent onto the other's, so no pixel moves.

    ``precision`` (:func:`segmenter_amp_dtype`): autocast on CUDA, float32 on a CPU; an unknown
    one raises ``ValueError``. On CUDA the processor's output is pinned and copied asynchronously.
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_HF_MODEL,
        device: str = "cpu",
        batch_size: int = 8,
        local_files_only: bool | None = None,
        precision: str = "fp32",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.amp_dtype = segmenter_amp_dtype(resolve_device(device), precision)
        ref = str(Path(model).expanduser()) if _looks_like_path(model) else str(model)
        path = Path(ref)
        is_dir = path.is_dir()
        if _looks_like_path(model) and not is_dir:
            raise SegmenterUnavailable(_unavailable_message(ref, f"directory {ref} does not exist"))
        if local_files_only is None:
            local_files_only = is_dir or _env_offline()
        self.model_ref = ref
        self.name = path.name if is_dir else ref
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.processor, self.model = self._load(ref, local_files_only)
        id2label = {int(k): str(v) for k, v in self.model.config.id2label.items()}
        if sorted(id2label) != list(range(len(id2label))):
            raise SegmenterUnavailable(
                _unavailable_message(ref, "its config.id2label is not indexed 0..N-1")
            )
        self.class_names: Sequence[str] = tuple(id2label[i] for i in range(len(id2label)))
        self._dtype = label_dtype(len(self.class_names))

    def _load(self, ref: str, local_files_only: bool) -> tuple[Any, Any]:
        """Local directory or cache first; the hub only when allowed and reachable, so a machine
        without internet fails in seconds instead of minutes of download retries."""
        try:
            from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation
        except ImportError as exc:
            raise SegmenterUnavailable(
                _unavailable_message(ref, f"the transformers package is missing ({exc})")
            ) from exc

        def load(only_local: bool) -> tuple[Any, Any]:
            processor = AutoImageProcessor.from_pretrained(ref, local_files_only=only_local)
            model = AutoModelForSemanticSegmentation.from_pretrained(
                ref, local_files_only=only_local
            )
            return processor, model

        try:
            try:
                processor, model = load(only_local=True)
            except Exception:
                if local_files_only:
                    raise
                host = _hub_host()
                if not _hub_reachable(host):
                    reason = f"it is not in the local Hugging Face cache and {host} is unreachable"
                    raise SegmenterUnavailable(_unavailable_message(ref, reason)) from None
                processor, model = load(only_local=False)
        except SegmenterUnavailable:
            raise
        except Exception as exc:  # from_pretrained raises OSError, ValueError, HF errors, ...
            reason = _first_sentence(str(exc)) or type(exc).__name__
            if local_files_only and not Path(ref).is_dir():
                reason += " (offline: only the local Hugging Face cache was searched)"
            raise SegmenterUnavailable(_unavailable_message(ref, reason)) from exc
        model.eval().to(self.device)
        log.info("loaded segmenter %s on %s", ref, self.device)
        return processor, model

    def segment(self, images: np.ndarray, image_ids: Sequence[str] | None = None) -> np.ndarray:
        """Label maps ``[B, H, W]`` (:func:`label_dtype`, indices into ``class_names``) for crops
        ``uint8 [B, H, W, 3]`` of any size; ``image_ids`` is ignored.

        Raises:
            ValueError: bad images, or a processor that still changes the geometry.
        """
        import torch
        import torch.nn.functional as F

        b, h, w = _check_images(images)
        out = np.empty((b, h, w), dtype=self._dtype)
        th, tw = model_input_size(self.processor, h, w)
        resample = _pil_resample(getattr(self.processor, "resample", None))
        geometry_steps = ("do_resize", "do_center_crop", "do_pad")
        geometry_off = {k: False for k in geometry_steps if hasattr(self.processor, k)}
        with torch.inference_mode():
            for start in range(0, b, self.batch_size):
                batch = [
                    image if (h, w) == (th, tw)
                    else np.array(Image.fromarray(image).resize((tw, th), resample))
                    for image in images[start : start + self.batch_size]
                ]
                inputs = self.processor(
                    images=batch,
                    return_tensors="pt",
                    input_data_format="channels_last",
                    **geometry_off,
                )
                pixel_values = inputs["pixel_values"]
                if tuple(pixel_values.shape[-2:]) != (th, tw):
                    raise ValueError(
                        f"the image processor of segmenter {self.name} turned {th}x{tw} inputs "
                        f"into {tuple(pixel_values.shape[-2:])} with its resizing, cropping and "
                        "padding off, so its label maps could not be aligned with the crops"
                    )
                logits = F.interpolate(
                    self.logits(pixel_values), size=(h, w), mode="bilinear", align_corners=False
                )
                labels = logits.argmax(dim=1).cpu().numpy()
                out[start : start + len(batch)] = labels.astype(self._dtype)
        return out

    def logits(self, pixel_values: Any) -> Any:
        """The model's logits ``float32 [B, C, h, w]`` (at its own output resolution, on the
        segmenter's device) for the processor's ``pixel_values`` ``[B, 3, H, W]`` (CPU), run
        under autocast with :attr:`amp_dtype` when it is set and cast back to float32."""
        import torch

        device = torch.device(self.device)
        if device.type == "cuda":
            pixel_values = pixel_values.pin_memory()
        x = pixel_values.to(device, non_blocking=True)
        dtype = self.amp_dtype
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            out = self.model(pixel_values=x).logits
        return out.float()


def _size_field(size: Any, key: str) -> int | None:
    """``size[key]`` of a processor's ``size``/``crop_size`` (a dict or a ``SizeDict``)."""
    if size is None:
        return None
    value = size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)
    return int(value) if value else None


def model_input_size(processor: Any, height: int, width: int) -> tuple[int, int]:
    """``(height, width)`` to which :class:`HFSegmenter` resizes a whole ``height x width`` crop.

    Follows the processor's own sizing rules, without its cropping or padding: ``crop_size``
    when it centre-crops (the model was trained on crops of that size), else ``size``'s
    ``height``/``width`` (DPT's ``keep_aspect_ratio`` keeps the scale closer to 1 on both axes,
    as ``DPTImageProcessor`` does), else ``shortest_edge`` (capped by ``longest_edge``),
    else the crop's own size (also when ``do_resize`` is off); each side is then rounded up to
    a multiple of ``size_divisor`` and ``ensure_multiple_of`` (their least common multiple).
    """
    th, tw = height, width
    size = getattr(processor, "size", None)
    crop = getattr(processor, "crop_size", None)
    if getattr(processor, "do_resize", True) is not False:
        ch, cw = _size_field(crop, "height"), _size_field(crop, "width")
        sh, sw = _size_field(size, "height"), _size_field(size, "width")
        shortest = _size_field(size, "shortest_edge")
        longest = _size_field(size, "longest_edge")
        if getattr(processor, "do_center_crop", False) and ch and cw:
            th, tw = ch, cw
        elif sh and sw:
            th, tw = sh, sw
            if getattr(processor, "keep_aspect_ratio", False):
                scale_h, scale_w = sh / height, sw / width
                scale = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
                th, tw = round(height * scale), round(width * scale)
        elif shortest:
            scale = shortest / min(height, width)
            if longest:
                scale = min(scale, longest / max(height, width))
            th, tw = round(height * scale), round(width * scale)
    multiple = math.lcm(
        int(getattr(processor, "size_divisor", None) or 1),
        int(getattr(processor, "ensure_multiple_of", None) or 1),
    )
    th, tw = (max(1, math.ceil(v / multiple)) * multiple for v in (th, tw))
    return th, tw


def _pil_resample(resample: Any) -> Image.Resampling:
    """The processor's PIL resampling filter, bilinear when it names none PIL knows."""
    try:
        return Image.Resampling(int(resample))
    except (TypeError, ValueError):
        return Image.Resampling.BILINEAR


def segmenter_from_spec(
    spec: str,
    *,
    label_paths: Mapping[str, str | Path] | None = None,
    class_names: Sequence[str] | None = None,
    device: str = "cpu",
    reduce_labels: bool = False,
    image_paths: Mapping[str, str | Path] | None = None,
    precision: str = "fp32",
) -> Segmenter | None:
    """Build a segmenter from a CLI spec: ``annotations``, ``hf``, ``hf:<id-or-dir>`` or ``none``.

    ``precision``: the Hugging Face model's autocast policy (:func:`segmenter_amp_dtype`: used on
    CUDA only).

    ``label_paths``, ``class_names``, ``image_paths`` (image id → photo, for the label-size check)
    and ``reduce_labels`` (1-based label PNGs such as ADE20K's release: 0 → unlabelled,
    v → v − 1; see :class:`AnnotationSegmenter`) describe the data set's own annotations and are
    used only by ``annotations``.

    Raises:
        ValueError: an unknown spec, ``annotations`` without label maps or class names, or
            ``reduce_labels`` with a model segmenter (its outputs are already 0-based).
        SegmenterUnavailable: the Hugging Face model cannot be loaded.
    """
    s = spec.strip()
    key = s.lower()
    if reduce_labels and key != "annotations":
        raise ValueError(
            f"--reduce-labels applies to --segmenter annotations only, not to {spec!r}, whose "
            "model already predicts 0-based classes"
        )
    if key == "none":
        return None
    if key == "annotations":
        if not label_paths:
            raise ValueError(
                "--segmenter annotations: this data set has no label maps; use "
                f"--segmenter hf (default model {DEFAULT_HF_MODEL}), hf:/path/to/model or none"
            )
        if not class_names:
            raise ValueError("--segmenter annotations: the data set declares no class names")
        return AnnotationSegmenter(
            label_paths, class_names, reduce_labels=reduce_labels, image_paths=image_paths
        )
    if key == "hf":
        return HFSegmenter(DEFAULT_HF_MODEL, device=device, precision=precision)
    if key.startswith("hf:"):
        ref = s[3:].strip()
        if not ref:
            raise ValueError("--segmenter hf: needs a hub id or a directory after 'hf:'")
        return HFSegmenter(ref, device=device, precision=precision)
    raise ValueError(f"unknown segmenter spec {spec!r}; valid forms: {', '.join(SPEC_FORMS)}")
