"""Distributed training: one model trained by several processes with DistributedDataParallel.

``train_distributed`` starts ``nproc`` worker processes on this machine through PyTorch's elastic
launcher (the engine behind ``torchrun --standalone``: c10d rendezvous on a free local port, no
restarts), each of which runs :func:`cityviz.models.train.train_model` with its ``rank`` and
``world_size``: gloo on CPU, NCCL with one GPU per process on CUDA. Every process draws the same
seeded permutation, so the run reproduces the single-process one with the same global batch up to
float summation order (``tests/test_distributed.py`` checks the weights agree to 1e-5); batch norm
differs on CPU, where each process keeps its own statistics (see ``train_model``).

Images travel as the cache's memory-mapped ``.npy`` files, not pickled arrays: each process maps
the same file and reads only its share of every batch. Rank 0 returns the trained weights; the
caller (the ``train`` stage) saves them as it saves a single-process model, so the checkpoint
format does not change.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cityviz.models.archs import build_model
from cityviz.models.train import TrainResult, train_model


class DistributedError(RuntimeError):
    """A distributed training run that could not start or whose workers failed."""


def _worker(
    arch: str,
    seed: int,
    train_path: str,
    train_labels: np.ndarray,
    val_path: str,
    val_labels: np.ndarray,
    n_classes: int,
    kwargs: dict[str, Any],
    threads: int,
) -> dict[str, Any] | None:
    """One process of a distributed run (the elastic launcher sets RANK, WORLD_SIZE, LOCAL_RANK)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(kwargs.pop("device", "cpu"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    torch.set_num_threads(threads)
    torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        result = train_model(
            arch,
            seed,
            np.load(train_path, mmap_mode="r"),
            train_labels,
            np.load(val_path, mmap_mode="r"),
            val_labels,
            n_classes,
            device=device,
            rank=rank,
            world_size=world,
            **kwargs,
        )
    finally:
        torch.distributed.destroy_process_group()
    if rank != 0:
        return None
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    return {
        "state": state,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "seconds": result.seconds,
    }


def train_distributed(
    nproc: int,
    arch: str,
    seed: int,
    train_path: str | Path,
    train_labels: np.ndarray,
    val_path: str | Path,
    val_labels: np.ndarray,
    n_classes: int,
    *,
    device: torch.device | str = "cpu",
    **kwargs: Any,
) -> TrainResult:
    """Train one model with ``nproc`` processes on this machine; the model comes back in eval mode
    on ``device`` (the weights of rank 0, which every rank holds after each step).

    ``train_path``/``val_path``: ``.npy`` files of uint8 images [N, S, S, 3]; labels int [N];
    ``kwargs`` are :func:`~cityviz.models.train.train_model`'s (epochs, batch_size — the
    *global* batch —, lr, precision…). Each process gets ``cpu_count // nproc`` intra-op threads
    (at least 1).
    Raises ``ValueError`` for ``nproc < 2`` or more CUDA processes than GPUs, and
    :class:`DistributedError` when the workers fail (their error is in the message).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 2:
        raise ValueError(f"distributed training needs at least 2 processes, got {nproc}")
    device = torch.device(device)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ValueError(
            f"--nproc-per-node {nproc} on CUDA needs {nproc} GPUs; "
            f"this machine has {torch.cuda.device_count()}."
        )
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        run_id=f"cityviz-{uuid.uuid4().hex[:8]}",
        max_restarts=0,
        start_method="spawn",
    )
    threads = max(1, (os.cpu_count() or 1) // nproc)
    kwargs = {**kwargs, "device": device.type, "progress": kwargs.get("progress", False)}
    try:
        out = elastic_launch(config, _worker)(
            arch,
            seed,
            str(train_path),
            np.asarray(train_labels),
            str(val_path),
            np.asarray(val_labels),
            n_classes,
            kwargs,
            threads,
        )
    except ChildFailedError as exc:
        raise DistributedError(f"distributed training of {arch} failed: {exc}") from None
    first = out[0]
    model = build_model(arch, n_classes).to(device)
    model.load_state_dict(first["state"])
    model.eval()
    return TrainResult(
        model=model,
        history=first["history"],
        seconds=first["seconds"],
        best_epoch=first["best_epoch"],
    )
