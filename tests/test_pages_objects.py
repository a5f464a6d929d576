"""AppTest: the Objects page on a fake cache (numbers, threshold, filters, drill-down)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cityviz import stats
from cityviz.fake_cache import make_fake_cache
from cityviz.segment import NO_SEGMENTER_MESSAGE
from cityviz.store import Cache

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "objects.py")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return make_fake_cache(
        tmp_path_factory.mktemp("objects") / "cache",
        n_images=120,
        archs=("simple", "resnet18"),
        seeds=(0, 1),
        image_size=48,
        test_fraction=0.5,
        pool_size=32,
        with_models=False,
    )


def run_page(root: Path, table_open: bool = True, drill_open: bool = True) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["cache_path"] = str(root)
    # The table and the drill-down are built only when their expanders are open.
    at.session_state["objects_table_open"] = table_open
    at.session_state["objects_drill_open"] = drill_open
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def reference(root: Path, threshold: float) -> pd.DataFrame:
    """stats.rpc_table for every model, as the page should show it."""
    cache = Cache(root)
    test = cache.test_images()
    city_of = test.set_index("image_id")["city"]
    n_images_of = test["city"].value_counts()
    frames = []
    for m in cache.models:
        ref = stats.rpc_table(cache.hist(m["model_id"]), city_of, threshold, cache.class_names(),
                              100, n_images_of=n_images_of)  # fmt: skip
        frames.append(ref.assign(model=m["display"], model_id=m["model_id"]))
    return pd.concat(frames, ignore_index=True)


def chart_bars(at: AppTest) -> dict[tuple[str, str, str], float]:
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    out = {}
    for trace in spec["data"]:
        for key, y in zip(trace["customdata"], _values(trace["y"]), strict=True):
            out[tuple(key)] = y
    return out


def drill_captions(at: AppTest) -> list[str]:
    """Captions of the drill-down's explanation tiles (one image-list element)."""
    return [img.caption for el in at.get("image") for img in el.proto.imgs
            if img.caption.startswith("row ")]  # fmt: skip


def _values(y) -> list[float]:
    """Plotly JSON arrays may come as lists or as typed-array dicts."""
    if isinstance(y, dict):
        import base64

        return np.frombuffer(base64.b64decode(y["bdata"]), dtype=y["dtype"]).tolist()
    return list(y)


def test_page_renders_with_chart_table_and_drill_down(cache_dir):
    at = run_page(cache_dir)
    assert at.title[0].value == "Objects"
    assert at.slider[0].label == "Explanation threshold" and at.slider[0].value == 0.5
    assert len(at.get("plotly_chart")) == 1
    assert len(at.get("download_button")) == 1
    assert 0 < len(drill_captions(at)) <= 12
    assert not at.error


def test_numbers_follow_the_threshold_exactly(cache_dir):
    at = run_page(cache_dir)
    before = at.dataframe[0].value
    at.slider[0].set_value(0.3).run()
    assert not at.exception
    shown = at.dataframe[0].value
    ref = reference(cache_dir, 0.3)
    kept = ref[ref["kept"]]
    merged = shown.merge(kept, on=["model", "city", "object"], how="outer", indicator=True)
    assert (merged["_merge"] == "both").all(), "page and rpc_table keep different objects"
    np.testing.assert_array_equal(merged["R_p^c"].to_numpy(), merged["rpc"].to_numpy())
    np.testing.assert_array_equal(merged["lift_x"].to_numpy(), merged["lift_y"].to_numpy())
    assert not np.array_equal(before["R_p^c"].to_numpy(), shown["R_p^c"].to_numpy())
    # The bars are the same numbers.
    bars = chart_bars(at)
    assert bars
    by_key = ref.set_index(["city", "object", "model_id"])["rpc"]
    for key, y in bars.items():
        assert y == pytest.approx(by_key[key], abs=1e-12)


def test_lift_toggle_and_pixel_filter(cache_dir):
    at = run_page(cache_dir)
    at.toggle[0].set_value(True).run()
    ref = reference(cache_dir, 0.5).set_index(["city", "object", "model_id"])["lift"]
    for key, y in chart_bars(at).items():
        assert y == pytest.approx(ref[key], abs=1e-12)
    at.number_input[0].set_value(400.0).run()
    shown = at.dataframe[0].value
    assert len(shown) and (shown["mean pixels / image"] > 400).all()
    at.number_input[0].set_value(1e9).run()
    assert any("No object passes the pixel filter" in i.value for i in at.info)
    assert not at.exception


def test_drill_down_shows_most_discriminative_images(cache_dir):
    at = run_page(cache_dir)
    city = at.selectbox(key="drill_city").value
    obj = at.selectbox(key="drill_object").options[1]
    at.selectbox(key="drill_object").set_value(obj).run()
    model_id = at.selectbox(key="drill_model").value
    assert not at.exception
    cache = Cache(cache_dir)
    hist = cache.hist(model_id)
    test = cache.test_images()
    hist = hist[hist["image_id"].isin(test.loc[test["city"] == city, "image_id"])]
    m = stats.explained_pixels(stats.hist_counts(hist), 0.5)
    per = pd.DataFrame({"image_id": hist["image_id"], "class_id": hist["class_id"], "M": m})
    per["share"] = per["M"] / per.groupby("image_id")["M"].transform("sum")
    class_id = cache.class_names().index(obj)
    best = per[(per["class_id"] == class_id) & (per["M"] > 0)].sort_values(
        ["share", "M", "image_id"], ascending=[False, False, True]
    )
    best_row = int(test.set_index("image_id").loc[best["image_id"].iloc[0], "row"])
    captions = drill_captions(at)
    assert captions[0].startswith(f"row {best_row} ")
    assert f"{best['share'].iloc[0]:.0%} of the explanation" in captions[0]
    assert len(captions) == min(12, len(best))


def test_table_and_drill_down_are_built_only_when_open(cache_dir):
    at = run_page(cache_dir, table_open=False, drill_open=False)
    assert not at.dataframe and not at.get("download_button")
    assert not drill_captions(at) and not at.selectbox
    at.session_state["objects_table_open"] = True
    at.run()
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) > 0
    assert len(at.get("download_button")) == 1


def test_no_segmenter_says_so(bare_cache_dir):  # conftest: no labels, thumbs or checkpoints
    at = run_page(bare_cache_dir)
    assert [i.value for i in at.info] == [NO_SEGMENTER_MESSAGE]
    assert not at.get("plotly_chart")


def test_a_threshold_shown_again_comes_back_with_its_own_numbers(cache_dir):
    """Charts are kept per setting (issue 10): going back to a threshold reuses its chart, and
    no other setting (threshold, lift, model subset, filter) is ever served from that entry."""
    at = run_page(cache_dir, drill_open=False)
    first = chart_bars(at)
    at.slider[0].set_value(0.3).run()
    moved = chart_bars(at)
    assert moved != first
    at.slider[0].set_value(0.5).run()
    assert chart_bars(at) == first
    ref = reference(cache_dir, 0.5).set_index(["city", "object", "model_id"])
    for key, y in first.items():
        assert y == pytest.approx(ref["rpc"][key], abs=1e-12)
    at.toggle[0].set_value(True).run()
    lifted = chart_bars(at)
    for key, y in lifted.items():
        assert y == pytest.approx(ref["lift"][key], abs=1e-12)
    at.toggle[0].set_value(False).run()
    one = Cache(cache_dir).models[0]["model_id"]
    at.multiselect[0].set_value([one]).run()
    only = chart_bars(at)
    assert only and {k[2] for k in only} == {one}
    at.multiselect[0].set_value([]).run()
    assert any("Pick at least one model" in i.value for i in at.info)
    assert not at.exception
