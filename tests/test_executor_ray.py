"""The Ray executor (``--executor ray``) against the local one, on a local 2-CPU Ray.

The CAM and segment (annotations) stages run as Ray Data ``map_batches`` over an actor pool, and
the stats stage then runs on what they wrote: the cache's tables and arrays must equal the local
executor's (arrays within float tolerance). A Ray run killed mid-stage resumes at the units it had
not recorded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cityviz.store import Cache
from precompute.__main__ import main
from tests.helpers import clone_cache, smoke_args

pytest.importorskip("ray")
# the module fixture trains and runs every stage: on a loaded 2-core machine it can pass 600 s
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[1]


def _ray_args(cache: Path, data: Path, *extra: str) -> list[str]:
    return smoke_args(cache, data, "--executor", "ray", *extra)


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray for the module (``ray.init(num_cpus=2)``): the runs in this process join it
    (the executor neither starts nor stops a Ray it did not start), a subprocess joins it by
    address."""
    import ray

    context = ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    yield context.address_info["address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_cache(smoke_run, ray_address, tmp_path_factory) -> Path:
    local, data = smoke_run
    cache = clone_cache(local, tmp_path_factory.mktemp("ray") / "cache")
    assert main(_ray_args(cache, data, "--stages", "cams,segment,stats", "--force")) == 0
    return cache


def test_ray_cams_segment_and_stats_equal_the_local_executor(smoke_run, ray_cache):
    local, ray = Cache(smoke_run[0]), Cache(ray_cache)
    for mid in local.model_ids:
        np.testing.assert_allclose(ray.cams(mid), local.cams(mid), rtol=1e-5, atol=1e-6)
        pd.testing.assert_frame_equal(ray.hist(mid), local.hist(mid), check_exact=True)
    pd.testing.assert_frame_equal(
        ray.predictions().drop(columns=["confidence"]),
        local.predictions().drop(columns=["confidence"]),
    )
    np.testing.assert_allclose(
        ray.predictions()["confidence"], local.predictions()["confidence"], rtol=1e-5
    )
    np.testing.assert_array_equal(ray.labels(), local.labels())
    pd.testing.assert_frame_equal(ray.rpc(), local.rpc(), rtol=1e-6)
    units = ray.manifest["stages"]["cams"]["units"]
    assert len(units) == len(local.manifest["stages"]["cams"]["units"])


def _cams_units(cache: Path) -> dict:
    try:
        manifest = json.loads((cache / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return manifest.get("stages", {}).get("cams", {}).get("units", {})


def test_a_killed_ray_run_resumes_at_the_unrecorded_units(smoke_run, ray_address, tmp_path):
    local, data = smoke_run
    cache = clone_cache(local, tmp_path / "cache")
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["stages"]["cams"].update(status="pending", units={})  # as if never run
    (cache / "manifest.json").write_text(json.dumps(manifest))
    args = _ray_args(cache, data, "--stages", "cams")
    env = {**os.environ, "CITYVIZ_TEST_UNIT_DELAY": "10", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "precompute", *args, "--ray-address", ray_address],
        cwd=ROOT,
        env=env,
        start_new_session=True,  # whatever it starts is killed with it
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 400
        while not _cams_units(cache) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        done_before = set(_cams_units(cache))
        assert len(done_before) >= 1, "no unit finished before the deadline"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    n_all = len(Cache(local).manifest["stages"]["cams"]["units"])
    assert len(done_before) < n_all  # killed mid-stage
    finished_parts = [
        cache / "parts" / "cams" / f"{u.split(':')[0]}-{int(u.split(':')[1]):05d}.npz"
        for u in done_before
        if not u.endswith(":ood")
    ]
    stamps = {p: p.stat().st_mtime_ns for p in finished_parts}
    assert main(_ray_args(cache, data, "--stages", "cams")) == 0
    resumed = Cache(cache)
    assert set(resumed.manifest["stages"]["cams"]["units"]) >= done_before
    for mid in resumed.model_ids:
        np.testing.assert_allclose(resumed.cams(mid), Cache(local).cams(mid), rtol=1e-5, atol=1e-6)
    redone = [p for p, t in stamps.items() if p.stat().st_mtime_ns != t]
    assert not redone, f"recorded units were computed again: {redone}"


def test_missing_ray_is_one_clear_sentence(tmp_path, monkeypatch, caplog):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    assert main(_ray_args(tmp_path / "c", tmp_path / "d")) == 2
    assert "pip install -r requirements-scale.txt" in caplog.text
    assert not (tmp_path / "c").exists()


def test_a_ray_that_cannot_start_is_one_clear_sentence(ray_address, tmp_path, monkeypatch, caplog):
    import ray

    def fail(**kwargs):
        raise Exception("The current node timed out during startup.")  # what Ray raises

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fail)
    assert main(_ray_args(tmp_path / "c", tmp_path / "d")) == 2
    assert "could not start or reach a local Ray: The current node timed out" in caplog.text
    assert "bug in cityviz" not in caplog.text
