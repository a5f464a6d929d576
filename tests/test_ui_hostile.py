"""Hostile caches on every dashboard page (AppTest): names that try to inject Markdown or HTML,
and damaged cache files. No page may show a traceback; a damaged file gets one error naming it.

Each case copies a small fake cache (``cityviz.fake_cache``) and rewrites or damages the copy,
so no binary test data is committed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cityviz.fake_cache import make_fake_cache
from cityviz.ui import scatter
from cityviz.ui.safe_text import md_escape
from tests.hostile import CITY_A, CITY_B, MARKUP, copy_cache, make_hostile

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("overview", "map", "objects", "compare", "trust")
MODELS = ("simple_s0", "resnet18_s0")
SELECTION = {"rows": [0, 1, 2, 3], "view": "simple_s0|tsne"}


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> Path:
    """Two cities, two models (no checkpoint files), labels, statistics, maps, thumbnails."""
    return make_fake_cache(
        tmp_path_factory.mktemp("tiny") / "cache",
        n_images=24,
        test_fraction=0.5,
        archs=("simple", "resnet18"),
        seeds=(0,),
        image_size=32,
        pool_size=8,
        with_models=False,
    )


def run_page(name: str, root: Path, monkeypatch, **state) -> AppTest:
    seen: list[dict] = []

    def fake_scatter(args, *, key):
        seen.append(args)
        return SELECTION

    monkeypatch.setattr(scatter, "scatter_map", fake_scatter)
    at = AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=120)
    at.session_state["cache_path"] = str(root)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    at.seen = seen  # type: ignore[attr-defined]
    return at


PAGE_STATE = {
    "overview": {},
    "map": {},
    "objects": {"objects_drill_open": True, "objects_table_open": True},
    "compare": {},
    "trust": {},
}


# ---------------------------------------------------------------- injection


def shown_texts(at: AppTest) -> list[str]:
    """Every string a page hands to Streamlit's Markdown renderer."""
    out: list[str] = []
    for kind in ("markdown", "caption", "info", "error", "warning", "success", "title",
                 "subheader", "header"):  # fmt: skip
        out += [str(e.value) for e in getattr(at, kind)]
    out += [str(m.label) for m in at.metric]
    for el in at.get("imgs"):
        out += [img.caption for img in el.proto.imgs]
    for el in at.get("image"):
        out += [img.caption for img in getattr(el.proto, "imgs", [])]
    for w in (*at.selectbox, *at.multiselect, *at.slider, *at.number_input, *at.toggle):
        out += [str(w.label), str(getattr(w, "help", "") or "")]
    out += [str(e.label) for e in at.expander]
    return out


def plotly_strings(at: AppTest) -> list[str]:
    out: list[str] = []

    def walk(node):
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, dict):
            for k, v in node.items():
                if k != "customdata":  # values handed back on a click, never shown
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for chart in at.get("plotly_chart"):
        walk(json.loads(chart.proto.spec))
    return out


_ESCAPED = re.compile(r"\\[!-/:-@\[-`{-~]")  # a backslash-escaped ASCII punctuation character


def assert_no_markup(texts: list[str], where: str, *, markdown: bool = True) -> None:
    """No hostile markup survives: in Markdown, once the backslash-escaped characters are
    removed; in Plotly labels (HTML), verbatim."""
    for text in texts:
        plain = _ESCAPED.sub("", text) if markdown else text
        for bad in MARKUP:
            if not markdown and not bad.startswith("<"):
                continue  # Markdown syntax is plain text in Plotly
            assert bad not in plain, f"{where}: unescaped {bad!r} in {text[:200]!r}"


@pytest.mark.parametrize("page", PAGES)
def test_hostile_names_are_shown_as_text(tiny_cache, tmp_path, monkeypatch, page):
    root = make_hostile(tiny_cache, tmp_path / "hostile")
    at = run_page(page, root, monkeypatch, **PAGE_STATE[page])
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    texts = shown_texts(at)
    assert_no_markup(texts, f"{page} markdown")
    assert_no_markup(plotly_strings(at), f"{page} plotly", markdown=False)
    # the names are there, escaped, and not dropped
    joined = " ".join(texts) + " ".join(plotly_strings(at))
    if page == "overview":
        assert md_escape(CITY_A) in joined
    if page in ("objects", "compare"):
        assert "&lt;b&gt;m&lt;/b&gt;" in joined  # a model display name in a Plotly label
    if page == "map":
        args = at.seen[-1]
        assert args["meta"]["cities"] == [CITY_A, CITY_B]  # raw: main.js escapes for Plotly


def test_plotly_labels_and_component_text_are_escaped_in_main_js():
    js = (ROOT / "cityviz/ui/scatter_component/main.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js
    assert re.search(r"name: plotlyText\(g\.name\)", js)
    assert re.search(r"text: plotlyText\(l\.text\)", js)
    assert "tipCaption.textContent" in js


# ---------------------------------------------------------------- damaged files

# cache file -> pages that read it on their first run (with PAGE_STATE and a map selection),
# and so must name it in an error when it is damaged
READERS = {
    "manifest.json": PAGES,
    "images.parquet": ("map", "objects", "compare"),
    "predictions.parquet": ("map",),
    "cams/simple_s0.npy": ("objects", "compare"),
    "cams/resnet18_s0.npy": ("compare",),
    "classes.json": ("map", "objects"),
    "hist/simple_s0.parquet": ("map", "objects"),
    "hist/resnet18_s0.parquet": ("objects",),
    "stats/rpc.parquet": ("overview",),
    "stats/ar.parquet": ("compare",),
    "stats/ar_summary.parquet": ("compare",),
    "stats/arch_vs_seed.json": ("overview", "compare"),
    "embed/simple_s0.parquet": ("map",),
    "thumbs/simple_s0/expl/0000.jpg": ("map",),
    "stats/rpc_null.parquet": ("overview", "objects"),
    "stats/rpc_contrast.parquet": ("overview", "objects"),
    "trust/removal.parquet": ("overview", "objects", "trust"),
    "trust/mprt.parquet": ("trust",),
    "trust/curves.parquet": ("trust",),
    "trust/auc.parquet": ("trust",),
    "trust/other_city.parquet": ("trust",),
    "trust/verdict.json": ("trust",),
}
# The trust checks' files get fewer damage kinds (tests/test_pages_trust.py covers more).
FEW_DAMAGES = ("stats/rpc_null.parquet", "stats/rpc_contrast.parquet", "trust/")


def damages(rel: str) -> list[str]:
    if rel.startswith(FEW_DAMAGES):
        return ["garbage", "json-type" if rel.endswith(".json") else "wrong-columns"]
    kinds = ["garbage", "truncated", "empty"]
    if rel.endswith(".npy"):
        kinds += ["object-dtype", "wrong-shape", "wrong-dtype"]
    elif rel.endswith(".json"):
        kinds += ["json-type"]
    elif rel.endswith(".parquet"):
        kinds += ["wrong-columns"]
    elif rel.endswith(".npz"):
        kinds += ["wrong-keys"]
    return kinds


def damage(path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "garbage":
        path.write_bytes(b"this is not a cache file\n" * 8)
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "object-dtype":
        with open(path, "wb") as f:
            np.save(f, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif kind == "wrong-shape":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3, dtype=np.float32))
    elif kind == "wrong-dtype":
        old = np.load(path, allow_pickle=False)
        with open(path, "wb") as f:
            np.save(f, np.full(old.shape, "x", dtype="<U1"))
    elif kind == "json-type":
        old = json.loads(data)
        path.write_text(json.dumps({"not": "a list"} if isinstance(old, list) else ["a", "list"]))
    elif kind == "wrong-columns":
        pd.DataFrame({"x": ["a", "b"]}).to_parquet(path, index=False)
    elif kind == "wrong-keys":
        with open(path, "wb") as f:
            np.savez(f, nothing=np.zeros(2))
    else:
        raise ValueError(kind)


def all_files(root: Path) -> list[str]:
    """Every cache file but the source photos (the data set, listed in images.parquet; the fake
    cache keeps them inside its directory, and copies point at the original's)."""
    photos = {Path(p).name for p in pd.read_parquet(root / "images.parquet")["path"]}
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not (p.suffix == ".png" and p.name in photos)
    )


def test_every_cache_file_is_covered(tiny_cache):
    """READERS plus the files no page of mine reads (live page only) cover the whole cache."""
    unread = {f for f in all_files(tiny_cache) if f not in READERS}
    assert all(
        f.startswith(("embed/", "thumbs/", "models/")) or f == "labels.npy" for f in unread
    ), unread
    assert set(READERS) <= set(all_files(tiny_cache))


def undamaged_part_renders(page: str, at: AppTest) -> bool:
    if page == "overview":
        return "How to read this" in [e.label for e in at.expander]
    if page == "map":
        return bool(at.selectbox) and at.selectbox[0].label == "Model"
    if page == "objects":
        return bool(at.caption) and "R_p^c" in at.caption[0].value
    return bool(at.subheader)


CASES = [(rel, kind) for rel in READERS for kind in damages(rel)]


@pytest.mark.parametrize(("rel", "kind"), CASES, ids=[f"{r}-{k}" for r, k in CASES])
def test_a_damaged_file_disables_only_what_needs_it(tiny_cache, tmp_path, monkeypatch, rel, kind):
    root = copy_cache(tiny_cache, tmp_path / "damaged")
    damage(root / rel, kind)
    for page in READERS[rel]:
        at = run_page(page, root, monkeypatch, **PAGE_STATE[page])
        assert not at.exception, (page, [e.value for e in at.exception])
        errors = [e.value for e in at.error]
        assert any(md_escape(rel) in e or rel in e for e in errors), (page, errors)
        assert all("Traceback" not in e for e in errors), (page, errors)
        if rel != "manifest.json":
            assert undamaged_part_renders(page, at), (page, rel, kind)


def test_files_no_page_reads_break_no_page(tiny_cache, tmp_path, monkeypatch):
    """Checkpoints, embedders, labels and the other thumbnails: only the live page reads them."""
    root = copy_cache(tiny_cache, tmp_path / "damaged")
    unread = [f for f in all_files(root) if f not in READERS]
    assert unread
    for f in unread:
        damage(root / f, "garbage")
    for page in PAGES:
        at = run_page(page, root, monkeypatch, **PAGE_STATE[page])
        assert not at.exception, (page, [e.value for e in at.exception])
        assert undamaged_part_renders(page, at), page


# ---------------------------------------------------------------- the section helper


def _sections_app() -> None:
    import streamlit as st

    from cityviz.store import CacheError
    from pages.common import section

    with section("Part one"):
        raise CacheError("stats/x.parquet is damaged: run `python -m precompute --force`")
    with section("Part **two**"):
        raise ZeroDivisionError("boom <b>x</b>")
    with section("Part three"):
        st.markdown("still here")
    with section("Part four"):
        st.stop()
    st.markdown("never shown")


def test_section_shows_one_sentence_per_failed_part_and_runs_the_rest(caplog):
    at = AppTest.from_function(_sections_app, default_timeout=60).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 2
    assert errors[0].startswith("Part one is not available: stats/x\\.parquet is damaged")
    assert "Part \\*\\*two\\*\\* could not be shown (ZeroDivisionError" in errors[1]
    assert "<b>" not in _ESCAPED.sub("", errors[1]) and "Traceback" not in errors[1]
    assert [m.value for m in at.markdown] == ["still here"]  # st.stop still stops the page


def test_fmt_num_and_findings_never_pass_data_through_unescaped():
    from cityviz.ui import overview as uov
    from cityviz.ui.compare import claim_sentence, fmt_num

    assert fmt_num("![b](http://x)") == "n/a" and fmt_num([1]) == "n/a" and fmt_num(True) == "n/a"
    assert fmt_num(np.float32(0.25)) == "0.2500" and fmt_num(float("nan")) == "n/a"
    sentence = claim_sentence({"claim_holds": True, "ci": "<b>", "mean_arch": "**x**"})
    assert "95% CI" in sentence and "**x**" not in sentence
    top = pd.DataFrame(
        {"city": [CITY_A], "rank": [1], "object": ["<b>x</b>"], "rpc": [0.5], "lift": [1.0],
         "n_models": [1]}
    )  # fmt: skip
    (line,) = uov.findings(top, {CITY_A: ["<b>x</b>"]})
    assert md_escape(CITY_A) in line and "(planted)" in line
    assert_no_markup([line], "findings")


def test_figures_escape_every_label_but_keep_click_data_raw():
    from cityviz.ui import figures

    table = pd.DataFrame(
        {"model_id": ["m"], "city": [CITY_A], "object": ["<b>x</b>"], "value": [0.5],
         "lo": [0.4], "hi": [0.6]}
    )  # fmt: skip
    fig = figures.rpc_bars(table, {CITY_A: ["<b>x</b>"]}, ["m"], {"m": "<b>m</b>"})
    spec = fig.to_plotly_json()
    bar = spec["data"][0]
    assert list(bar["x"]) == ["&lt;b&gt;x&lt;/b&gt;"] and bar["name"] == "&lt;b&gt;m&lt;/b&gt;"
    assert bar["customdata"] == [[CITY_A, "<b>x</b>", "m"]]
    assert "<img" not in bar["hovertemplate"] and "<b>m</b>" not in bar["hovertemplate"]
    assert spec["layout"]["annotations"][0]["text"].startswith("![b](http")  # text, not HTML
    assert "<img" not in spec["layout"]["annotations"][0]["text"]
    heat = figures.ar_heatmap(pd.DataFrame([[0.0]]), ["<b>m</b>"]).to_plotly_json()
    assert list(heat["data"][0]["x"]) == ["&lt;b&gt;m&lt;/b&gt;"]
    hist = figures.ar_histogram([0.1, 0.2], "<a href='x'>t</a>").to_plotly_json()
    assert hist["layout"]["title"]["text"].startswith("&lt;a href=")
    probs = figures.prob_bars([0.3, 0.7], ["<b>a</b>", "b"]).to_plotly_json()
    assert list(probs["data"][0]["y"]) == ["&lt;b&gt;a&lt;/b&gt;", "b"]


def test_app_draws_its_own_navigation_and_hides_streamlits(fake_cache_dir, monkeypatch):
    monkeypatch.setenv("CITYVIZ_CACHE", str(fake_cache_dir))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    links = [el.proto.label for el in at.sidebar.get("page_link")]
    assert links == ["Overview", "Explanation map", "Geography", "Objects", "Galleries",
                     "Compare models", "Live Grad-CAM", "Trust"]  # fmt: skip
    assert "what does a city-recognition network look at" in at.title[0].value
