"""The cache format: atomic writes, manifest checks, resumable units, sprite-sheet maths."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cityviz.store import (
    FORMAT_VERSION,
    THUMBS_PER_SHEET,
    Cache,
    CacheError,
    CacheStore,
    atomic_path,
    find_caches,
    read_manifest,
    thumb_location,
)

CONFIG = {"image_size": 64, "threshold": 0.5}
DATASET = {"fingerprint": "abc", "cities": ["a", "b"]}


def test_atomic_path_never_leaves_a_partial_file(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_init_then_reopen_reports_changed_settings_and_refuses_another_data_set(tmp_path):
    store = CacheStore(tmp_path / "c")
    assert store.init(CONFIG, DATASET) == []
    assert read_manifest(tmp_path / "c")["format_version"] == FORMAT_VERSION
    assert CacheStore(tmp_path / "c").init(CONFIG, DATASET) == []  # same inputs: fine
    # another setting: accepted, and named (the stages that depend on it are redone)
    assert CacheStore(tmp_path / "c").init({**CONFIG, "image_size": 96}, DATASET) == ["image_size"]
    assert read_manifest(tmp_path / "c")["config"]["image_size"] == 96
    with pytest.raises(CacheError, match="another data set"):
        CacheStore(tmp_path / "c").init(CONFIG, {**DATASET, "fingerprint": "xyz"})


def test_manifest_errors_are_clear(tmp_path):
    with pytest.raises(CacheError, match="No cityviz cache"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CacheError, match="not a cityviz cache"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(
        json.dumps({"format": "cityviz-cache", "format_version": FORMAT_VERSION + 1})
    )
    with pytest.raises(CacheError, match="--fresh"):
        Cache(tmp_path)


def test_units_and_stages_survive_a_reopen_and_carry_their_identity(tmp_path):
    store = CacheStore(tmp_path)
    store.init(CONFIG, DATASET)
    store.mark_unit_done("cams", "m:0", "id1")
    store.mark_unit_done("cams", "m:0", "id1")
    again = CacheStore(tmp_path)
    assert again.unit_done("cams", "m:0", "id1") and not again.unit_done("cams", "m:1", "id1")
    assert not again.unit_done("cams", "m:0", "id2")  # made with other settings: redo
    assert again.stage("cams")["units"] == {"m:0": "id1"} and not again.stage_done("cams")
    again.finish_stage("cams", 1.234, "stage-id")
    assert CacheStore(tmp_path).stage_done("cams", "stage-id")
    assert not CacheStore(tmp_path).stage_done("cams", "other-id")
    again.reopen_stage("cams")
    assert not again.stage_done("cams") and again.unit_done("cams", "m:0", "id1")
    again.reset_stage("cams")
    assert not CacheStore(tmp_path).unit_done("cams", "m:0", "id1")


def test_tables_and_arrays_read_back_without_cityviz(tmp_path):
    store = CacheStore(tmp_path)
    store.init(CONFIG, DATASET)
    store.save_table("images.parquet", pd.DataFrame({"image_id": ["x"], "row": [0]}))
    store.save_array("cams/m.npy", np.arange(6, dtype=np.float32).reshape(1, 2, 3))
    assert pd.read_parquet(tmp_path / "images.parquet")["image_id"].tolist() == ["x"]
    assert np.load(tmp_path / "cams/m.npy").sum() == 15
    with pytest.raises(CacheError, match=r"has no predictions\.parquet"):
        Cache(tmp_path).predictions()


def test_thumb_location():
    assert thumb_location(0) == (0, 0, 0)
    assert thumb_location(17) == (0, 1, 1)
    assert thumb_location(THUMBS_PER_SHEET + 16 * 3 + 5) == (1, 5, 3)


def test_find_caches(tmp_path):
    for name in ("a", "b"):
        CacheStore(tmp_path / name).init(CONFIG, DATASET)
    (tmp_path / "not-a-cache").mkdir()
    assert {p.name for p in find_caches(tmp_path)} == {"a", "b"}
