"""Serve early (issue 10, goal 6): the dashboard opens on a cache a precompute is still writing,
shows what is finished and where the run is (stage, units, ETA); and the Overview says which
settings came from where and when spots are unknown (goals 3, 4)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cityviz.store import Cache, CacheStore
from cityviz.ui import overview as uo
from tests.helpers import clone_cache, smoke_args

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["overview", "map", "objects", "compare", "live"]


def _page(name: str, cache: Path) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=120)
    at.session_state["cache_path"] = str(cache)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_progress_summary_and_settings_table():
    frac, text = uo.progress_summary(
        {
            "stage": "cams",
            "index": 2,
            "n_stages": 7,
            "units_done": 3,
            "units_total": 12,
            "eta_seconds": 150,
        }
    )
    assert frac == 0.25 and "stage cams (3 of 7)" in text and "3 of 12 units" in text
    assert "2 min" in text
    frac, text = uo.progress_summary({"stage": "x"})
    assert frac == 0.0 and "0 of 0 units" in text
    table = uo.settings_table(
        {
            "config": {"epochs": 3, "archs": ["simple"]},
            "config_sources": {"epochs": "--epochs", "archs": "profile cpu"},
        }
    )
    assert table.set_index("setting").loc["epochs"].tolist() == ["3", "--epochs"]
    assert uo.unknown_spots_warning({"spot_sources": {"file": 0, "csv": 9}}) is None
    warning = uo.unknown_spots_warning({"spot_sources": {"file": 7}, "n_images": 9})
    assert warning.startswith("7 of 9 photos")


def test_overview_shows_a_running_precompute_and_nothing_when_none_runs(fake_cache_dir, tmp_path):
    work = tmp_path / "cache"
    shutil.copytree(fake_cache_dir, work)
    store = CacheStore(work)
    store.set_progress(stage="cams", index=2, n_stages=7, units_done=1, units_total=4,
                       eta_seconds=30, started=time.time())  # fmt: skip
    at = _page("overview", work)
    assert not at.get("progress")  # a progress record without a live run is stale
    with CacheStore(work).lock():
        assert Cache(work).running()["stage"] == "cams"
        at = _page("overview", work)
        bars = at.get("progress")
        assert len(bars) == 1 and "stage cams" in bars[0].proto.text
    assert Cache(work).running() is None


def test_every_page_opens_on_a_half_built_cache(smoke_run, tmp_path):
    cache, _ = smoke_run
    work = clone_cache(cache, tmp_path / "cache")
    for rel in ("cams", "hist", "stats", "embed", "thumbs", "predictions.parquet", "labels.npy",
                "classes.json"):  # fmt: skip
        path = work / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    m = json.loads((work / "manifest.json").read_text())
    for stage in ("cams", "segment", "stats", "embed", "thumbs"):
        m["stages"][stage] = {"status": "pending", "units": {}}
    m.pop("thumbs", None)
    (work / "manifest.json").write_text(json.dumps(m))
    for name in PAGES:
        at = _page(name, work)
        assert not at.error, (name, [e.value for e in at.error])


@pytest.mark.slow
def test_a_running_precompute_reports_its_units(smoke_run, tmp_path):
    cache, data = smoke_run
    work = clone_cache(cache, tmp_path / "cache")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CITYVIZ_TEST_UNIT_DELAY": "1"}
    cmd = [sys.executable, "-m", "precompute", *smoke_args(work, data), "--stages", "cams",
           "--force"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    seen = []
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            progress = Cache(work).running()
            if progress and progress.get("stage") == "cams":
                seen.append(progress.get("units_done", 0))
            if seen and seen[-1] >= 2:
                break
            time.sleep(0.1)
    finally:
        proc.wait(300)
    assert proc.returncode == 0
    assert seen and max(seen) >= 2 and seen == sorted(seen)
    total = Cache(work).manifest["stages"]["cams"]["units"]
    assert len(total) >= 2 and Cache(work).running() is None
