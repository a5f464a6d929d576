"""Per-stage identity (issue 10, goal 2): a changed setting redoes only the stages that depend on
it; the trained models survive a new segmenter, threshold or CAM method; adding or removing a
model trains or drops only that model."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import precompute.stages as stages
from cityviz.store import Cache
from precompute.__main__ import main
from tests.helpers import clone_cache, smoke_args


@pytest.fixture
def counted(monkeypatch):
    """Counts of the expensive calls: models trained (by id) and CAM batches computed."""
    calls = {"train": [], "cams": 0}
    real_train, real_explainer = stages.train_model, stages.cam.Explainer

    def train_model(arch, seed, *a, **kw):
        calls["train"].append(f"{arch}_s{seed}")
        return real_train(arch, seed, *a, **kw)

    class Explainer(real_explainer):
        def __call__(self, *a, **kw):
            calls["cams"] += 1
            return super().__call__(*a, **kw)

    monkeypatch.setattr(stages, "train_model", train_model)
    monkeypatch.setattr(stages.cam, "Explainer", Explainer)
    return calls


@pytest.fixture
def work(smoke_run, tmp_path) -> tuple[Path, Path]:
    cache, data = smoke_run
    return clone_cache(cache, tmp_path / "cache"), data


def _stage_seconds(cache: Path) -> dict[str, float]:
    return {k: v.get("seconds", 0.0) for k, v in Cache(cache).manifest["stages"].items()}


def test_a_new_segmenter_keeps_models_and_cams(work, counted, caplog):
    caplog.set_level(logging.INFO, logger="precompute")
    cache, data = work
    assert main(smoke_args(cache, data, "--segmenter", "none")) == 0
    assert counted["train"] == [] and counted["cams"] == 0
    c = Cache(cache)
    assert c.manifest["segmenter"] is None and not c.has_labels
    assert not (cache / "stats/rpc.parquet").exists()  # the old segmenter's statistics are gone
    assert "segmenter" in caplog.text  # the changed setting is named
    # and back: segment and the statistics are redone, the models still not
    assert main(smoke_args(cache, data)) == 0
    assert counted["train"] == [] and counted["cams"] == 0
    assert Cache(cache).has_labels and len(Cache(cache).rpc()) > 0


def test_a_new_threshold_redoes_statistics_not_cams(work, counted):
    cache, data = work
    before = Cache(cache).rpc()
    assert main(smoke_args(cache, data, "--threshold", "0.3")) == 0
    assert counted["train"] == [] and counted["cams"] == 0
    after = Cache(cache).rpc()
    assert Cache(cache).manifest["config"]["threshold"] == 0.3
    assert Cache(cache).manifest["thumbs"]["threshold"] == 0.3
    # a lower threshold puts at least as many object pixels inside every explanation
    merged = before.merge(after, on=["model_id", "city", "class_id"], suffixes=("_a", "_b"))
    assert (merged["rpc_b"] >= merged["rpc_a"] - 1e-9).all() and (
        merged["rpc_b"] > merged["rpc_a"]
    ).any()


def test_a_new_cam_method_redoes_cams_onward_not_training(work, counted):
    cache, data = work
    before = {m: Cache(cache).cams(m).copy() for m in Cache(cache).model_ids}
    assert main(smoke_args(cache, data, "--cam-method", "gradcam++")) == 0
    assert counted["train"] == [] and counted["cams"] > 0
    after = Cache(cache)
    assert any((after.cams(m) != before[m]).any() for m in before)
    assert after.stage_done("stats") and after.stage_done("embed")


def test_adding_a_model_trains_only_that_model_and_removing_one_trains_none(work, counted):
    cache, data = work
    assert main(smoke_args(cache, data, "--archs", "simple", "--seeds", "0,1")) == 0
    assert counted["train"] == ["simple_s1"]
    c = Cache(cache)
    assert c.model_ids == ["simple_s0", "simple_s1"]
    assert set(c.predictions()["model_id"]) == {"simple_s0", "simple_s1"}
    assert set(c.ar()["model_a"]) | set(c.ar()["model_b"]) == {"simple_s0", "simple_s1"}
    counted["train"].clear()
    assert main(smoke_args(cache, data, "--archs", "simple")) == 0
    assert counted["train"] == [] and Cache(cache).model_ids == ["simple_s0"]


def test_a_training_setting_retrains_and_an_unchanged_rerun_does_nothing(work, counted):
    cache, data = work
    assert main(smoke_args(cache, data)) == 0
    assert counted["train"] == [] and counted["cams"] == 0
    assert main(smoke_args(cache, data, "--epochs", "2", "--archs", "simple")) == 0
    assert counted["train"] == ["simple_s0"]
    assert Cache(cache).model("simple_s0")["model_id"] == "simple_s0"


def test_another_data_set_is_refused_and_nothing_is_lost(work, caplog):
    cache, data = work
    before = (cache / "models/simple_s0.safetensors").stat().st_mtime_ns
    assert main(smoke_args(cache, data, "--cities", "a,b")) == 2
    assert "another data set" in caplog.text
    assert (cache / "models/simple_s0.safetensors").stat().st_mtime_ns == before
    assert Cache(cache).stage_done("thumbs")
