"""The Trust page, the trust badges on the Objects and Overview pages, and the Live page's
deletion curves (AppTest), plus the pure builders of cityviz.ui.trust.

The trust tables come from the fake cache (``cityviz.fake_cache._save_trust``): made-up but
internally consistent, with the columns of issue 11's contract.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cityviz.fake_cache import make_fake_cache
from cityviz.trust.faithfulness import auc as trapezoid_auc
from cityviz.ui import overview as uo
from cityviz.ui import trust as ut
from cityviz.ui.safe_text import md_escape
from tests.hostile import CITY_A, CITY_B, OBJECT, copy_cache, make_hostile
from tests.test_ui_hostile import assert_no_markup, plotly_strings, shown_texts

ROOT = Path(__file__).resolve().parents[1]
PARTS = (
    "Verdict per model",
    "Randomisation test",
    "Deletion and insertion curves",
    "Other-city test",
    "Object removal: does painting an object out change the prediction?",
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """Two cities, Simple + ResNet18 (no checkpoint files), labels, statistics, trust checks."""
    return make_fake_cache(
        tmp_path_factory.mktemp("trust") / "cache",
        n_images=32,
        test_fraction=0.5,
        archs=("simple", "resnet18"),
        seeds=(0,),
        image_size=32,
        pool_size=8,
        with_thumbs=False,
        with_models=False,
    )


def run(page: str, root: Path, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / f"{page}.py"), default_timeout=120)
    at.session_state["cache_path"] = str(root)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def values(v) -> np.ndarray:
    """A Plotly JSON array: a list, or plotly's typed-array form ``{"dtype", "bdata"}``."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return np.asarray(v, dtype=float)


def trust(root: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(root / f"trust/{name}.parquet")


# ---------------------------------------------------------------- the Trust page


def test_trust_page_shows_every_part(cache_dir):
    at = run("trust", cache_dir)
    assert not at.error, [e.value for e in at.error]
    assert [s.value for s in at.subheader] == list(PARTS)
    verdicts = json.loads((cache_dir / "trust/verdict.json").read_text())
    text = " ".join(m.value for m in at.markdown)
    for model_id, v in verdicts.items():
        display = next(
            m["display"]
            for m in json.loads((cache_dir / "manifest.json").read_text())["models"]
            if m["model_id"] == model_id
        )
        word = ut.VERDICT_WORDS[v["verdict"]]
        assert f"**{md_escape(display)}** with Grad\\-CAM: {word}" in text
        assert md_escape(v["sentence"]) in text
    # the rule behind each verdict is shown, one table per model
    rules = [df.value for df in at.dataframe if "rule" in df.value.columns]
    assert len(rules) == len(verdicts)
    assert {r for t in rules for r in t["rule"]} == {
        c["rule"] for v in verdicts.values() for c in v["checks"].values()
    }
    mprt_fig, curves_fig = charts(at)
    # randomisation curves of the first model: its Spearman values in step order
    mprt = trust(cache_dir, "mprt")
    first = mprt[mprt["model_id"] == "simple_s0"].sort_values("step")
    line = next(t for t in mprt_fig["data"] if t.get("name") == "Spearman rank correlation")
    np.testing.assert_allclose(values(line["y"]), first["spearman"].to_numpy())
    # deletion / insertion legends carry the stored AUC over all images
    auc = trust(cache_dir, "auc")
    for t in curves_fig["data"]:
        curve, order = t["name"].split(",")[0], t["name"].split(", ")[1].split(" ")[0]
        row = auc[(auc["model_id"] == "simple_s0") & (auc["city"] == "all")
                  & (auc["curve"] == curve) & (auc["order"] == order)]  # fmt: skip
        assert f"(AUC {row['auc'].iloc[0]:.3f})" in t["name"]
    # the removal table: sortable, biggest drop first, causal objects marked, CSV offered
    removal = next(df.value for df in at.dataframe if "accuracy drop" in df.value.columns)
    assert len(removal) == len(trust(cache_dir, "removal"))
    assert removal["accuracy drop"].is_monotonic_decreasing
    causal = trust(cache_dir, "removal")["causal"]
    assert (removal["removal drops accuracy"] == "✓ yes").sum() == int(causal.sum())
    assert len(at.get("download_button")) == 1


def test_picking_another_model_shows_its_curves(cache_dir):
    at = run("trust", cache_dir)
    at.selectbox(key="trust_model").set_value("resnet18_s0").run()
    assert not at.exception and not at.error
    mprt = trust(cache_dir, "mprt")
    mine = mprt[mprt["model_id"] == "resnet18_s0"].sort_values("step")
    line = next(t for t in charts(at)[0]["data"] if t.get("name") == "SSIM")
    np.testing.assert_allclose(values(line["y"]), mine["ssim"].to_numpy())


def test_cache_without_trust_checks_says_how_to_build_them(cache_dir, tmp_path):
    root = copy_cache(cache_dir, tmp_path / "cache")
    shutil.rmtree(root / "trust")
    at = run("trust", root)
    assert not at.error
    assert any("not built yet" in i.value and "\\-\\-stages trust" in i.value for i in at.info)
    assert not at.get("plotly_chart")


@pytest.mark.parametrize(
    "rel, gone",
    [
        ("trust/curves.parquet", "Deletion and insertion curves"),
        ("trust/verdict.json", "Verdict per model"),
    ],
)  # every trust file's damage on every page: tests/test_ui_hostile.py
def test_a_damaged_table_disables_only_its_part(cache_dir, tmp_path, rel, gone):
    root = copy_cache(cache_dir, tmp_path / "cache")
    (root / rel).write_bytes(b"this is not a cache file\n" * 8)
    at = run("trust", root)
    (error,) = [e.value for e in at.error]
    assert md_escape(rel) in error and "\\-\\-force" in error
    shown = [s.value for s in at.subheader]
    assert set(PARTS) - {gone} <= set(shown)
    assert "Other-city test" in shown and len(at.dataframe) >= 1


def _hostile(src: Path, dst: Path) -> Path:
    """make_hostile, with the trust tables' city and object names rewritten too."""
    root = make_hostile(src, dst)
    rename = dict(zip(["tokyo-like", "pittsburgh-like"], [CITY_A, CITY_B], strict=True))
    names = json.loads((root / "classes.json").read_text())
    for rel in ("trust/removal.parquet", "trust/auc.parquet", "stats/rpc_null.parquet",
                "stats/rpc_contrast.parquet"):  # fmt: skip
        df = pd.read_parquet(root / rel)
        df["city"] = df["city"].map(lambda c: rename.get(c, c))
        if "class_id" in df:
            df["object"] = [names[i] for i in df["class_id"]]
        df.to_parquet(root / rel, index=False)
    return root


@pytest.mark.parametrize("page", ["trust", "overview", "objects"])
def test_hostile_names_are_shown_as_text(cache_dir, tmp_path, page):
    root = _hostile(cache_dir, tmp_path / "hostile")
    at = run(page, root, objects_table_open=True)
    assert not at.error, [e.value for e in at.error]
    texts = shown_texts(at)
    assert_no_markup(texts, f"{page} markdown")
    assert_no_markup(plotly_strings(at), f"{page} plotly", markdown=False)
    if page != "objects":  # the names are there, escaped
        assert md_escape(CITY_A) in " ".join(texts)


def test_removal_csv_cannot_run_as_a_spreadsheet_formula(cache_dir):
    removal = trust(cache_dir, "removal").head(3).copy()
    removal["object"] = ['=HYPERLINK("http://x")', OBJECT, "+1"]
    out = pd.read_csv(io.BytesIO(ut.removal_csv(removal)))
    assert out["object"].tolist() == ['\'=HYPERLINK("http://x")', OBJECT, "'+1"]


# ---------------------------------------------------------------- badges


def objects_page(root: Path) -> AppTest:
    """The Objects page with its table open and the pixel filter low enough (32 px images)
    to keep the small planted objects."""
    at = run("objects", root, objects_table_open=True, objects_drill_open=False)
    at.number_input[0].set_value(10.0).run()
    assert not at.exception
    return at


def test_objects_page_marks_values_within_their_null(cache_dir):
    at = objects_page(cache_dir)
    assert not at.error
    assert any(ut.BADGE_LEGEND in c.value for c in at.caption)
    table = at.dataframe[0].value
    null = pd.read_parquet(cache_dir / ut.NULL_FILE)
    null = null[np.isclose(null["threshold"], 0.5)]
    display = {"simple_s0": "Simple · seed 0", "resnet18_s0": "ResNet18 · seed 0"}
    null = null.assign(model=null["model_id"].map(display))
    merged = table.merge(null, on=["model", "city", "object"])
    assert len(merged) >= 4 and merged["above_null"].any() and (~merged["above_null"]).any()
    want = np.where(merged["above_null"], ut.ABOVE, ut.WITHIN)
    assert merged["above null"].tolist() == want.tolist()
    # bars within the null are faded and hatched, the others are not
    (fig,) = charts(at)
    above = {(m, c, o): a for m, c, o, a in zip(null["model_id"], null["city"], null["object"],
                                                null["above_null"], strict=True)}  # fmt: skip
    checked = 0
    for trace in fig["data"]:
        for data, opacity in zip(trace["customdata"], trace["marker"]["opacity"], strict=True):
            key = (data[2], data[0], data[1])
            if key in above:
                assert opacity == (1.0 if above[key] else 0.35)
                checked += 1
    assert checked >= 4


def test_objects_badges_follow_the_threshold(cache_dir):
    at = objects_page(cache_dir)
    at.slider[0].set_value(0.75).run()
    table = at.dataframe[0].value
    null = pd.read_parquet(cache_dir / ut.NULL_FILE)
    null = null[np.isclose(null["threshold"], 0.75) & (null["model_id"] == "simple_s0")]
    rows = table[table["model"] == "Simple · seed 0"].merge(null, on=["city", "object"])
    assert len(rows) and rows["above null"].tolist() == np.where(
        rows["above_null"], ut.ABOVE, ut.WITHIN).tolist()  # fmt: skip
    # a threshold without a null: no badge, and a sentence saying where the null exists
    at.slider[0].set_value(0.4).run()
    assert set(at.dataframe[0].value["above null"]) == {""}
    assert any("computed at thresholds 0.25, 0.50, 0.75" in c.value for c in at.caption)


def test_overview_ranks_by_evidence_and_marks_chance_level_objects(cache_dir):
    at = run("overview", cache_dir)
    assert not at.error
    lines = [m.value for m in at.markdown if m.value.startswith("- ")]
    tells = [x for x in lines if "What tells" in x]
    assert len(tells) == 2 and all(x.startswith(f"- {ut.ABOVE}{ut.DISTINGUISHES}") for x in tells)
    assert any(x.startswith(f"- {ut.CAUSAL} Painting out drops") for x in lines)
    look = [x for x in lines if "the networks look most at" in x]
    assert len(look) == 2
    # each top object carries "✓" when its null supports it for every model, "~" for none
    joined = " ".join(look)
    null = pd.read_parquet(cache_dir / ut.NULL_FILE)
    null = null[np.isclose(null["threshold"], 0.5)]
    top = uo.top_objects(pd.read_parquet(cache_dir / "stats/rpc.parquet"), n=3)
    for city, obj in zip(top["city"], top["object"], strict=True):
        above = null[(null["city"] == city) & (null["object"] == obj)]["above_null"]
        want = ut.ABOVE if above.all() else ut.WITHIN if not above.any() else None
        if want and len(above):
            assert re.search(rf"\*\*{re.escape(md_escape(obj))}\*\*( \(planted\))? "
                             rf"{re.escape(want)}[ (]", joined), (obj, want)  # fmt: skip
    assert ut.WITHIN in joined


def test_badges_are_read_at_the_threshold_and_default_to_not_tested():
    null = pd.DataFrame({"model_id": ["m", "m"], "city": ["c", "c"], "object": ["o", "o"],
                         "threshold": [0.5, 0.75], "above_null": [True, False]})  # fmt: skip
    removal = pd.DataFrame({"model_id": ["m", "m"], "city": ["c", "c"], "object": ["o", "p"],
                            "causal": [False, True]})  # fmt: skip
    at_half = ut.badges(null, None, removal, 0.5).set_index("object")
    assert at_half.loc["o", "above_null"] is np.True_ or bool(at_half.loc["o", "above_null"])
    assert pd.isna(at_half.loc["p", "above_null"]) and bool(at_half.loc["p", "causal"])
    assert pd.isna(at_half.loc["o", "distinguishes"])
    at_75 = ut.badges(null, None, None, 0.75)
    assert not bool(at_75["above_null"].iloc[0])
    assert ut.marker(True, True, True) == ut.ABOVE + ut.DISTINGUISHES + ut.CAUSAL
    assert ut.marker(False, pd.NA, None) == ut.WITHIN
    assert ut.marker(pd.NA) == ""
    counts = {"n_null": 2, "n_above": 1, "n_contrast": 2, "n_distinguishes": 2, "n_removal": 0}
    assert ut.finding_marker(counts) == f"{ut.ABOVE} 1/2 {ut.DISTINGUISHES}"


def test_auc_table_says_whether_the_mask_beats_random():
    auc = pd.DataFrame(
        [("m", "g", "all", "deletion", "mask", 0.2), ("m", "g", "all", "deletion", "random", 0.4),
         ("m", "g", "all", "insertion", "mask", 0.3), ("m", "g", "all", "insertion", "random",
                                                       0.5)],
        columns=["model_id", "method", "city", "curve", "order", "auc"],
    ).assign(auc_lo=0.0, auc_hi=1.0, n_images=10)  # fmt: skip
    table = ut.auc_table(auc, "m", "g").set_index("curve")
    assert table.loc["deletion", "mask beats random"] == "✓"  # lower than random: faithful
    assert table.loc["insertion", "mask beats random"] == "✗"  # lower than random: not
    assert table.loc["deletion", "mask − random"] == pytest.approx(-0.2)


def test_an_unknown_verdict_is_not_trusted():
    checks = {"mprt": {"passed": True, "rule": "r"}}
    cards = ut.verdict_cards({"m": {"verdict": "<b>great</b>", "sentence": "**x**",
                                    "checks": checks}}, {})  # fmt: skip
    (card,) = cards
    assert card["verdict"] == "unknown" and "great" not in card["title"]
    assert card["sentence"] == md_escape("**x**")
    assert card["checks"]["passed"].tolist() == ["✓ yes"]


# ---------------------------------------------------------------- the Live page


def test_live_page_draws_each_models_deletion_curve(fake_cache_dir):
    at = AppTest.from_file(str(ROOT / "pages" / "live.py"), default_timeout=180)
    at.session_state["cache_path"] = str(fake_cache_dir)
    at.session_state["live_deletion_open"] = True
    at.run()
    at.radio(key="live_source").set_value("Sample from the test set").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(ut.LIVE_DELETION_GUIDE in c.value for c in at.caption)
    fig = next(f for f in charts(at) if any("(AUC" in str(t.get("name")) for t in f["data"]))
    assert len(fig["data"]) == 2  # one curve per model
    for t in fig["data"]:
        x, y = values(t["x"]), values(t["y"])
        assert x[0] == 0 and x[-1] == 1 and len(x) == 21 and ((y >= 0) & (y <= 1)).all()
        assert f"(AUC {trapezoid_auc(x, y):.3f})" in t["name"]
