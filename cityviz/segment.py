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

    Rejected: ``nvidia/segformer-b{0,2}-finetuned-ade-512-512`` are smaller and faster, but their
    model cards say ``License: other`` (changed from apache-2.0 in August 2022) and the SegFormer
    code is under the NVIDIA Source Code License, which restricts use; their ADE20K mIoU through
    this pipeline was not verified either. ``openmmlab/upernet-convnext-tiny`` (MIT, 46.11 mIoU
    in the same mmsegmentation table) is smaller on disk but not faster on CPU (same head).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from cityviz.data.images import resize_center_crop

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


class AnnotationSegmenter:
    """Ground-truth label PNGs, cropped exactly like the model input.

    ``label_paths`` maps image id → single-channel label PNG (8- or 16-bit, or palette) whose
    values index ``class_names`` and whose size equals the original photo's. ``segment`` applies
    the same shorter-side resize + center crop as the model input (nearest neighbour, so no label
    value is invented), which keeps every label pixel on top of its image pixel.
    """

    def __init__(
        self,
        label_paths: Mapping[str, str | Path],
        class_names: Sequence[str],
        name: str = "annotations",
    ) -> None:
        if not class_names:
            raise ValueError("AnnotationSegmenter needs a non-empty class_names list")
        self.label_paths = {str(k): Path(v) for k, v in label_paths.items()}
        self.class_names: Sequence[str] = tuple(class_names)
        self.name = name
        self._dtype = label_dtype(len(self.class_names))
        self._unlabelled = unlabelled_value(len(self.class_names))

    def load_label(self, image_id: str) -> np.ndarray:
        """The full-resolution label map of ``image_id``; out-of-range values → unlabelled."""
        try:
            path = self.label_paths[image_id]
        except KeyError:
            raise KeyError(
                f"no label map for image id {image_id!r} "
                f"({len(self.label_paths)} ids have labels in segmenter {self.name!r})"
            ) from None
        try:
            with Image.open(path) as im:
                label = np.asarray(im)
        except OSError as exc:
            raise ValueError(f"cannot read label map {path}: {exc}") from exc
        if label.ndim != 2:
            raise ValueError(
                f"label map {path} must be single-channel (class indices), got shape {label.shape}"
            )
        label = label.astype(np.int64, copy=False)
        label = np.where((label >= 0) & (label < len(self.class_names)), label, self._unlabelled)
        return label.astype(self._dtype)

    def segment(self, images: np.ndarray, image_ids: Sequence[str] | None = None) -> np.ndarray:
        b, h, w = _check_images(images)
        if image_ids is None:
            raise ValueError("AnnotationSegmenter.segment needs image_ids to find the label maps")
        if len(image_ids) != b:
            raise ValueError(f"got {b} images but {len(image_ids)} image ids")
        if h != w:
            raise ValueError(f"expected square model-input crops, got {h}x{w}")
        out = np.empty((b, h, w), dtype=self._dtype)
        for i, image_id in enumerate(image_ids):
            out[i] = resize_center_crop(self.load_label(str(image_id)), h, nearest=True)
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


class HFSegmenter:
    """A Hugging Face ``AutoModelForSemanticSegmentation`` checkpoint (hub id or local directory).

    Logits are upsampled bilinearly to the crop's resolution before the argmax, as the processors'
    ``post_process_semantic_segmentation`` does.
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_HF_MODEL,
        device: str = "cpu",
        batch_size: int = 8,
        local_files_only: bool | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
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
        import torch
        import torch.nn.functional as F

        b, h, w = _check_images(images)
        out = np.empty((b, h, w), dtype=self._dtype)
        with torch.inference_mode():
            for start in range(0, b, self.batch_size):
                batch = list(images[start : start + self.batch_size])
                inputs = self.processor(
                    images=batch, return_tensors="pt", input_data_format="channels_last"
                )
                pixel_values = inputs["pixel_values"].to(self.device)
                logits = self.model(pixel_values=pixel_values).logits
                logits = F.interpolate(
                    logits.float(), size=(h, w), mode="bilinear", align_corners=False
                )
                labels = logits.argmax(dim=1).cpu().numpy()
                out[start : start + len(batch)] = labels.astype(self._dtype)
        return out


def segmenter_from_spec(
    spec: str,
    *,
    label_paths: Mapping[str, str | Path] | None = None,
    class_names: Sequence[str] | None = None,
    device: str = "cpu",
) -> Segmenter | None:
    """Build a segmenter from a CLI spec: ``annotations``, ``hf``, ``hf:<id-or-dir>`` or ``none``.

    ``label_paths`` and ``class_names`` describe the data set's own annotations and are used only
    by ``annotations``.
    """
    s = spec.strip()
    key = s.lower()
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
        return AnnotationSegmenter(label_paths, class_names)
    if key == "hf":
        return HFSegmenter(DEFAULT_HF_MODEL, device=device)
    if key.startswith("hf:"):
        ref = s[3:].strip()
        if not ref:
            raise ValueError("--segmenter hf: needs a hub id or a directory after 'hf:'")
        return HFSegmenter(ref, device=device)
    raise ValueError(f"unknown segmenter spec {spec!r}; valid forms: {', '.join(SPEC_FORMS)}")
