"""The overview page and the app entry: pure helpers (cityviz.ui.overview) and AppTest runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

import pages.common
from cityviz.ui import overview as uo
from cityviz.ui.safe_text import md_escape

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "overview.py")
APP = str(ROOT / "app.py")


# ---------------------------------------------------------------- pure logic


def test_split_table_adds_totals():
    ds = {
        "cities": ["x", "y"],
        "split_counts": {"x": {"train": 6, "val": 2, "test": 2}, "y": {"train": 3, "test": 1}},
    }
    t = uo.split_table(ds)
    assert t["city"].tolist() == ["x", "y", "all cities"]
    assert t["val"].tolist() == [2, 0, 2]
    assert t["total"].tolist() == [10, 4, 14]


def test_models_table():
    t = uo.models_table([{"model_id": "a_s0", "arch": "a", "seed": 0, "test_accuracy": 0.9}])
    assert t.iloc[0].to_dict() == {
        "model": "a_s0", "architecture": "a", "seed": 0, "test accuracy": 0.9,
        "val accuracy": None,
    }  # fmt: skip


def rpc_rows() -> pd.DataFrame:
    rows = [
        # model, city, object, rpc, lift, kept
        ("m1", "x", "sign", 0.8, 2.0, True),
        ("m2", "x", "sign", 0.6, 1.8, True),
        ("m1", "x", "tree", 0.9, 2.2, False),  # filtered out by the pixel count
        ("m1", "x", "road", 0.1, 0.3, True),
        ("m2", "x", "sky", 0.5, 1.0, True),
        ("m1", "y", "tree", 0.4, 1.5, True),
    ]
    return pd.DataFrame(rows, columns=["model_id", "city", "object", "rpc", "lift", "kept"])


def test_top_objects_average_kept_objects_over_models():
    top = uo.top_objects(rpc_rows(), n=2)
    assert top[["city", "rank", "object"]].values.tolist() == [
        ["x", 1, "sign"], ["x", 2, "sky"], ["y", 1, "tree"],
    ]  # fmt: skip
    assert top.loc[0, "rpc"] == pytest.approx(0.7)
    assert top.loc[0, "lift"] == pytest.approx(1.9)
    assert top["n_models"].tolist() == [2, 1, 1]


def test_findings_and_planted_recovery():
    top = uo.top_objects(rpc_rows(), n=2)
    sentences = uo.findings(top, {"x": ["sign"], "y": ["bench"]})
    assert sentences[0].startswith("In **x** the networks look most at **sign** (planted) (70%")
    assert "(planted)" not in sentences[1]
    assert uo.planted_recovered(top, {"x": ["sign", "sky"], "y": ["bench"]}) == {
        "x": True, "y": False,
    }  # fmt: skip
    assert uo.top_objects(rpc_rows().assign(kept=False)).empty


def test_fmt_accuracy():
    assert uo.fmt_accuracy(0.9876) == "98.8%"
    assert uo.fmt_accuracy(None) == "n/a" and uo.fmt_accuracy(np.nan) == "n/a"


# ---------------------------------------------------------------- the page


def run(path: str, root: Path | None = None, env_root: Path | None = None, monkeypatch=None):
    if env_root is not None:
        monkeypatch.setenv("CITYVIZ_CACHE", str(env_root))
    at = AppTest.from_file(path, default_timeout=120)
    if root is not None:
        at.session_state["cache_path"] = str(root)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def text_of(at: AppTest) -> str:
    return " ".join(m.value for m in at.markdown)


def test_overview_shows_cache_models_and_findings(fake_cache_dir):
    at = run(PAGE, fake_cache_dir)
    assert not at.error
    assert md_escape(str(fake_cache_dir)) in at.caption[0].value
    splits = at.dataframe[0].value
    assert splits.set_index("city").loc["all cities", "test"] == 100
    models = at.dataframe[1].value
    assert models["model"].tolist() == ["Simple · seed 0", "ResNet18 · seed 0"]
    text = text_of(at)
    assert "synthetic annotations" in text
    assert "Masks: **Grad\\-CAM** on each model's last convolutional block" in text
    assert "In **tokyo\\-like** the networks look most at" in text
    assert "signboard** (planted)" in text or "awning** (planted)" in text
    assert "cannot be tested" in text  # one seed only: no same-architecture pairs
    assert any(m.label.startswith("Mean AR, other architecture") for m in at.metric)
    assert "How to read this" in [e.label for e in at.expander]


def test_overview_on_a_bare_cache_says_what_is_missing(bare_cache_dir):
    at = run(PAGE, bare_cache_dir)
    assert not at.error
    assert "none configured" in text_of(at)
    assert any("No object statistics" in i.value for i in at.info)


def test_app_entry_uses_the_environment_variable(fake_cache_dir, tmp_path, monkeypatch):
    # no ./cache of the working tree (e.g. after `make demo`) may leak into this test
    monkeypatch.setattr(pages.common, "CACHE_BASE", tmp_path / "no-caches-here")
    at = run(APP, env_root=fake_cache_dir, monkeypatch=monkeypatch)
    assert not at.error
    assert md_escape(str(fake_cache_dir)) in at.caption[0].value
    assert not at.sidebar.selectbox  # a single cache: no picker


def test_app_offers_a_picker_when_several_caches_exist(
    fake_cache_dir, bare_cache_dir, tmp_path, monkeypatch
):
    base = tmp_path / "caches"
    base.mkdir()
    shutil.copytree(bare_cache_dir, base / "other", symlinks=True)
    monkeypatch.setattr(pages.common, "CACHE_BASE", base)
    at = run(APP, env_root=fake_cache_dir, monkeypatch=monkeypatch)
    picker = at.sidebar.selectbox(key="cache_path")
    assert picker.options == [str(fake_cache_dir), str(base / "other")]
    assert md_escape(str(fake_cache_dir)) in at.caption[0].value
    picker.select(str(base / "other")).run()
    assert not at.exception
    assert md_escape(str(base / "other")) in at.caption[0].value
    assert "none configured" in text_of(at)


def test_missing_cache_is_reported(tmp_path, monkeypatch):
    at = run(APP, env_root=tmp_path / "missing", monkeypatch=monkeypatch)
    assert at.error and "No cityviz cache" in at.error[0].value
