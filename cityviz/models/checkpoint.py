"""Checkpoints: weights as safetensors plus a JSON sidecar. Loading never unpickles anything.

A checkpoint is two files, ``<stem>.safetensors`` (the ``state_dict``) and ``<stem>.json`` (the
sidecar: ``arch``, ``classes``, ``input_size``, normalisation, accuracies…). Reading either can
fail in many ways — missing, not safetensors, truncated, a sidecar that is not JSON or lacks a
key, an unknown architecture, weights of another shape — and every one of them raises
:class:`CheckpointError` (a :class:`cityviz.store.CacheError`) whose message is one sentence
naming the file, so a caller can disable just that model and say why.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cityviz.models.archs import build_model, get_arch
from cityviz.store import CacheError, atomic_path, atomic_write_json

REQUIRED_META = ("arch", "classes", "input_size")


class CheckpointError(CacheError):
    """A checkpoint's weights or sidecar are missing, damaged or do not fit the architecture."""


def _rebuild_hint(path: Path) -> str:
    cache = path.parent.parent if path.parent.name == "models" else "DIR"
    return f"rebuild it with `python -m precompute --cache {cache} --force --stages train`"


def _written_size(path: Path) -> tuple[set[str], int]:
    """``(tensor names, expected file size)`` read from a safetensors header (8-byte length,
    JSON header, then the data; format spec: github.com/huggingface/safetensors)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise OSError("no header")
        (n,) = struct.unpack("<Q", raw)
        header = json.loads(f.read(n))
    names = {k for k in header if k != "__metadata__"}
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k in names), default=0)
    return names, 8 + n + end


def save_checkpoint(stem: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write ``<stem>.safetensors`` and ``<stem>.json``, each atomically.

    ``meta`` must hold at least ``arch``, ``classes`` (city names, in logit order) and
    ``input_size``; normalisation is added from the registry so the sidecar is self-describing.

    Raises ``ValueError`` for incomplete ``meta`` and ``OSError`` (one sentence naming the file)
    when the weights cannot be written completely, e.g. on a full disk: safetensors' own
    ``SafetensorError`` is wrapped, and the written file is checked against its header because
    safetensors does not always report a failed write.
    """
    for key in REQUIRED_META:
        if key not in meta:
            raise ValueError(f"checkpoint metadata needs {key!r}")
    spec = get_arch(meta["arch"])
    meta = {"mean": list(spec.mean), "std": list(spec.std), **meta, "format": "cityviz-model-1"}
    stem = Path(stem)
    target = stem.with_suffix(".safetensors")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    try:
        with atomic_path(target) as tmp:
            save_file(state, str(tmp), metadata={"arch": meta["arch"]})
            names, size = _written_size(tmp)
            if names != set(state) or tmp.stat().st_size != size:
                raise OSError("the file on disk is shorter than its header says")
    except (SafetensorError, OSError, ValueError) as exc:
        raise OSError(
            f"Could not write the checkpoint {target} ({exc}); is the disk full?"
        ) from exc
    atomic_write_json(stem.with_suffix(".json"), meta)


def read_meta(stem: str | Path) -> dict[str, Any]:
    """The sidecar ``<stem>.json`` as a dict with at least ``arch`` (a registered architecture),
    ``classes`` (a list of at least 2 names) and ``input_size`` (a positive int).

    Raises :class:`CheckpointError` when it is missing, not JSON, or lacks or mistypes a key.
    """
    path = Path(stem).with_suffix(".json")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"The model sidecar {path} is missing; {_rebuild_hint(path)}."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"The model sidecar {path} is not readable JSON ({exc}); {_rebuild_hint(path)}."
        ) from exc
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"The model sidecar {path} is not a JSON object; {_rebuild_hint(path)}."
        )
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(
            f"The model sidecar {path} lacks {', '.join(missing)}; {_rebuild_hint(path)}."
        )
    classes, size = meta["classes"], meta["input_size"]
    if not isinstance(classes, list) or len(classes) < 2:
        raise CheckpointError(
            f"The model sidecar {path} needs a list of at least 2 classes; {_rebuild_hint(path)}."
        )
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise CheckpointError(
            f"The model sidecar {path} has an invalid input_size {size!r}; {_rebuild_hint(path)}."
        )
    try:
        get_arch(str(meta["arch"]))
    except ValueError as exc:
        raise CheckpointError(f"The model sidecar {path}: {exc}; {_rebuild_hint(path)}.") from exc
    return meta


def load_checkpoint(stem: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The model (eval mode, on ``device``) and its sidecar metadata (see :func:`read_meta`).

    Raises :class:`CheckpointError` for a missing, non-safetensors or truncated weights file,
    a bad sidecar, or weights whose names or shapes do not fit the sidecar's architecture.
    """
    stem = Path(stem)
    meta = read_meta(stem)
    path = stem.with_suffix(".safetensors")
    if not path.is_file():
        raise CheckpointError(f"The model weights {path} are missing; {_rebuild_hint(path)}.")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"The model weights {path} are not a complete safetensors file ({exc}); "
            f"{_rebuild_hint(path)}."
        ) from exc
    model = build_model(meta["arch"], len(meta["classes"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) or first[0]
        raise CheckpointError(
            f"The model weights {path} do not fit a {meta['arch']} with {len(meta['classes'])} "
            f"classes ({detail}); {_rebuild_hint(path)}."
        ) from exc
    return model.to(device).eval(), meta
