"""Executors: who runs a stage's units of work — this process, or a Ray cluster.

A per-image stage (``cams``, ``segment``) describes each unfinished unit as a *job* (a dict of
plain values: the unit's name, its rows, the part file it writes) and names a *worker class*: a
callable class built once per process with the stage's settings (it loads the model or the
segmenter in its constructor) and called with a batch of jobs as columns (``dict[str,
np.ndarray]``, Ray Data's batch format). A worker writes each job's part file atomically and
returns the names of the units it finished; the executor records them in the manifest as they come
back, in this process (the only writer of the manifest). A run killed mid-stage therefore resumes
at the units not recorded, with either executor, and both produce the same cache.

- :class:`LocalExecutor` (the default) calls one worker in this process, job by job.
- :class:`RayExecutor` turns the jobs into a Ray dataset (``ray.data.from_items``) and runs
  ``map_batches`` over a fixed pool of actors (``ActorPoolStrategy``), one job per batch: each
  actor loads its model once. Actors ask for one GPU each when the cluster has GPUs, else
  ``cpus_per_actor`` CPUs. Every node must see the cache directory at the same path (a shared file
  system) and have cityviz installed; a local cluster is started when no address is given.

Ray is an optional dependency (``pip install -r requirements-scale.txt``), imported only here and
only when the Ray executor is asked for.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")


class ExecutorUnavailable(RuntimeError):
    """The asked-for executor cannot run here (Ray not installed, cluster unreachable)."""


class Executor(Protocol):
    name: str

    def map(
        self,
        worker_cls: type,
        kwargs: dict[str, Any],
        jobs: Sequence[dict[str, Any]],
        on_done: Callable[[str], None],
        *,
        desc: str = "",
    ) -> None:
        """Run ``worker_cls(**kwargs)`` over ``jobs``; call ``on_done(unit)`` as each finishes."""

    def close(self) -> None: ...


def _columns(jobs: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {key: np.array([job[key] for job in jobs]) for key in jobs[0]}


def _rows(jobs: Sequence[dict[str, Any]]) -> int:
    return sum(int(job.get("stop", 1)) - int(job.get("start", 0)) for job in jobs)


class LocalExecutor:
    """Every unit in this process, in order (one worker, built once per stage)."""

    name = "local"

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def map(self, worker_cls, kwargs, jobs, on_done, *, desc: str = "") -> None:
        if not jobs:
            return
        worker = worker_cls(**kwargs)
        with tqdm(total=_rows(jobs), desc=desc, unit="img", disable=not self.progress,
                  leave=False) as bar:  # fmt: skip
            for job in jobs:
                for unit in worker(_columns([job]))["unit"]:
                    on_done(str(unit))
                bar.update(_rows([job]))

    def close(self) -> None:
        return None


def _code_root() -> str:
    """The folder that holds the ``cityviz`` and ``precompute`` packages (for Ray's workers)."""
    return str(Path(__file__).resolve().parents[1])


class RayExecutor:
    """Units as a Ray dataset, mapped by a pool of actors (Ray Data ``map_batches``).

    ``address``: ``None`` starts a local Ray (``num_cpus`` CPUs, default all), ``"auto"`` or
    ``"HOST:PORT"`` joins a running cluster. ``cpus_per_actor``: CPUs (and torch threads) per
    CPU actor. Raises :class:`ExecutorUnavailable` when Ray is missing or the cluster cannot be
    reached.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        cpus_per_actor: int = 1,
        progress: bool = True,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise ExecutorUnavailable(
                "--executor ray needs Ray, which is not installed: "
                "pip install -r requirements-scale.txt"
            ) from None
        self.ray = ray
        self.cpus_per_actor = max(1, cpus_per_actor)
        self.progress = progress
        self._started = False
        if not ray.is_initialized():
            init: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "runtime_env": {"env_vars": {"PYTHONPATH": _code_root()}},
            }
            if address is None:
                init["num_cpus"] = num_cpus or os.cpu_count() or 1
            else:
                init["address"] = address
            # a loaded small machine may need more than Ray's default 60 s to start its raylet
            os.environ.setdefault("RAY_raylet_start_wait_time_s", "300")
            try:
                ray.init(**init)
            except Exception as exc:  # Ray raises bare Exception for a node that failed to start
                where = "a local Ray" if address is None else f"the Ray cluster at {address}"
                raise ExecutorUnavailable(
                    f"could not start or reach {where}: {' '.join(str(exc).split())}"
                ) from None
            self._started = True
        ray.data.DataContext.get_current().enable_progress_bars = progress

    def _pool(self) -> tuple[int, dict[str, float]]:
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus:
            return gpus, {"num_gpus": 1, "num_cpus": 1}
        cpus = int(resources.get("CPU", 1))
        return max(1, cpus // self.cpus_per_actor), {"num_cpus": self.cpus_per_actor}

    def map(self, worker_cls, kwargs, jobs, on_done, *, desc: str = "") -> None:
        if not jobs:
            return
        from ray.data import ActorPoolStrategy

        size, resources = self._pool()
        size = min(size, len(jobs))
        kwargs = {**kwargs, "threads": self.cpus_per_actor}
        if "num_gpus" in resources:
            kwargs["device"] = "cuda"
        log.info("%s: %d unit(s) on %d Ray actor(s) %s", desc, len(jobs), size, resources)
        ds = self.ray.data.from_items(list(jobs), override_num_blocks=len(jobs))
        out = ds.map_batches(
            worker_cls,
            fn_constructor_kwargs=kwargs,
            batch_size=1,
            compute=ActorPoolStrategy(size=size),
            **resources,
        )
        with tqdm(total=len(jobs), desc=desc, unit="unit", disable=not self.progress,
                  leave=False) as bar:  # fmt: skip
            for row in out.iter_rows():
                on_done(str(row["unit"]))
                bar.update(1)

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False


def make_executor(
    name: str, address: str | None = None, *, progress: bool = True
) -> LocalExecutor | RayExecutor:
    """The executor called ``name`` (:data:`EXECUTORS`); ``ValueError`` for an unknown one."""
    if name == "local":
        return LocalExecutor(progress=progress)
    if name == "ray":
        return RayExecutor(address, progress=progress)
    raise ValueError(f"unknown executor {name!r}; executors are {', '.join(EXECUTORS)}")
