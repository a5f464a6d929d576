"""Checkpoints: weights as safetensors plus a JSON sidecar. Loading never unpickles anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cityviz.models.archs import build_model, get_arch
from cityviz.store import atomic_path, atomic_write_json


def save_checkpoint(stem: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write ``<stem>.safetensors`` and ``<stem>.json``.

    ``meta`` must hold at least ``arch``, ``classes`` (city names, in logit order) and
    ``input_size``; normalisation is added from the registry so the sidecar is self-describing.
    """
    for key in ("arch", "classes", "input_size"):
        if key not in meta:
            raise ValueError(f"checkpoint metadata needs {key!r}")
    spec = get_arch(meta["arch"])
    meta = {"mean": list(spec.mean), "std": list(spec.std), **meta, "format": "cityviz-model-1"}
    stem = Path(stem)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(stem.with_suffix(".safetensors")) as tmp:
        save_file(state, str(tmp), metadata={"arch": meta["arch"]})
    atomic_write_json(stem.with_suffix(".json"), meta)


def read_meta(stem: str | Path) -> dict[str, Any]:
    return json.loads(Path(stem).with_suffix(".json").read_text())


def load_checkpoint(stem: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The model (eval mode, on ``device``) and its sidecar metadata."""
    stem = Path(stem)
    meta = read_meta(stem)
    model = build_model(meta["arch"], len(meta["classes"]))
    model.load_state_dict(load_file(str(stem.with_suffix(".safetensors")), device="cpu"))
    return model.to(device).eval(), meta
