"""The ``trust`` precompute stage on a real smoke cache: the tables' contract, resuming, damage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import precompute.trust as trust_stage
from cityviz.config import PROFILES
from cityviz.store import REQUIRED_COLUMNS, Cache, CacheError
from precompute.__main__ import main
from precompute.identity import Identities
from tests.helpers import clone_cache, smoke_args

TABLES = ("mprt", "other_city", "curves", "auc", "removal")


@pytest.fixture(scope="module")
def cache(smoke_run) -> Cache:
    return Cache(smoke_run[0])


def test_tables_follow_the_contract(cache):
    cfg = cache.manifest["config"]
    for name in TABLES:
        t = cache.trust_table(name)
        assert list(REQUIRED_COLUMNS[f"trust/{name}.parquet"]) == [
            c for c in t.columns if c in REQUIRED_COLUMNS[f"trust/{name}.parquet"]
        ]
        if name != "removal":
            assert set(t["model_id"]) == set(cache.model_ids), name
    mprt = cache.trust_table("mprt")
    for _, g in mprt.groupby("model_id"):
        g = g.sort_values("step")
        assert g["step"].tolist() == list(range(len(g))) and len(g) > 2
        first = g.iloc[0]
        assert first["layer"] == "" and first["spearman"] == pytest.approx(1.0)
        assert (g["spearman_lo"] <= g["spearman"] + 1e-12).all()
        assert (g["spearman"] <= g["spearman_hi"] + 1e-12).all()
        assert g["method"].eq(cfg["cam_method"]).all()
    curves = cache.trust_table("curves")
    assert set(curves["curve"]) == {"deletion", "insertion"}
    assert set(curves["order"]) == {"mask", "random"}
    assert curves["fraction"].between(0, 1).all() and curves["prob"].between(0, 1).all()
    n_points = curves.groupby(["model_id", "curve", "order"]).size()
    assert (n_points == cfg["trust_steps"] + 1).all()
    auc = cache.trust_table("auc")
    assert {"all", *cache.cities} == set(auc["city"])
    assert auc.loc[auc["city"] == "all", "n_images"].eq(cfg["trust_sample"]).all()
    other = cache.trust_table("other_city")
    assert (other["ar_lo"] <= other["ar"]).all() and (other["ar"] <= other["ar_hi"]).all()
    removal = cache.trust_table("removal")
    names = cache.class_names()
    assert len(removal) > 0
    assert all(names[k] == o for k, o in zip(removal["class_id"], removal["object"], strict=True))
    assert removal["n_images"].between(1, cfg["trust_removal_max"]).all()
    assert np.allclose(removal["drop"], removal["acc_before"] - removal["acc_after"])
    verdicts = cache.trust_verdict()
    assert set(verdicts) == set(cache.model_ids)
    for v in verdicts.values():
        assert v["verdict"] in {"pass", "warn", "fail"} and v["sentence"]
        assert set(v["checks"]) == {"mprt", "other_city", "deletion"}
        assert all({"passed", "rule", "value"} <= set(c) for c in v["checks"].values())


def test_rerun_redoes_only_the_unfinished_model(smoke_run, tmp_path, monkeypatch):
    """A run killed with one model's unit unfinished (the cheaper Simple): the rerun checks
    only that model and ends with the same tables as the uninterrupted run (every check is
    seeded)."""
    src, data = smoke_run
    cache = clone_cache(src, tmp_path / "cache")
    manifest = json.loads((cache / "manifest.json").read_text())
    redo = next(m["model_id"] for m in manifest["models"] if m["arch"] == "simple")
    st = manifest["stages"]["trust"]
    st["status"] = "running"
    del st["units"][redo]
    (cache / "manifest.json").write_text(json.dumps(manifest))
    for p in (cache / "parts" / "trust").glob(f"{redo}-*"):
        p.unlink()
    for name in TABLES:
        (cache / "trust" / f"{name}.parquet").unlink()
    checked = []
    real = trust_stage.check_model

    def counting(*args, **kwargs):
        checked.append(kwargs["model_id"])
        return real(*args, **kwargs)

    monkeypatch.setattr(trust_stage, "check_model", counting)
    assert main(smoke_args(cache, data, "--stages", "trust")) == 0
    assert checked == [redo]
    for name in TABLES:
        a = pd.read_parquet(cache / "trust" / f"{name}.parquet")
        b = pd.read_parquet(src / "trust" / f"{name}.parquet")
        pd.testing.assert_frame_equal(a, b, check_dtype=False)
    assert Cache(cache).trust_verdict() == Cache(src).trust_verdict()


@pytest.mark.parametrize("rel", ["trust/removal.parquet", "trust/verdict.json"])
def test_damaged_trust_file_names_itself_and_its_stage(smoke_run, tmp_path, rel):
    cache = clone_cache(smoke_run[0], tmp_path / "cache")
    (cache / rel).write_bytes(b"\x00 not what it should be")
    c = Cache(cache)
    with pytest.raises(CacheError) as err:
        c.trust_table("removal") if rel.endswith(".parquet") else c.trust_verdict()
    assert rel in str(err.value) and "--stages trust" in str(err.value)


def test_trust_settings_redo_trust_only():
    cfg = PROFILES["smoke"]
    a, b = Identities(cfg, "fp"), Identities(cfg.replace(trust_sample=3), "fp")
    mid = cfg.model_ids[0]
    assert a.cams_of(mid) == b.cams_of(mid) and a.stage("stats") == b.stage("stats")
    assert a.trust_of(mid) != b.trust_of(mid) and a.stage("trust") != b.stage("trust")
    c = Identities(cfg.replace(cam_method="hirescam"), "fp")
    assert c.trust_of(mid) != a.trust_of(mid)
