"""The Geography page: pure logic (cityviz.ui.geography), exports, and the page (AppTest)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely.geometry
from streamlit.testing.v1 import AppTest

from cityviz import geo, stats
from cityviz.store import Cache
from cityviz.ui import geography as ug
from cityviz.ui import map as um
from cityviz.ui import scatter
from tests.hostile import CITY_A, copy_cache, make_hostile
from tests.test_ui_hostile import assert_no_markup, plotly_strings, shown_texts

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "geography.py")
CITIES = ["a", "b"]
TOKYO = (35.68, 139.76)


def small_frame() -> pd.DataFrame:
    test = pd.DataFrame(
        {"row": [0, 1, 2, 3, 4], "image_id": ["i0", "i1", "i2", "i3", "i4"],
         "path": ["p0", "p1", "p2", "p3", "p4"], "city": ["a", "a", "b", "b", "b"],
         "lat": [TOKYO[0], TOKYO[0] + 1e-5, TOKYO[0] + 0.05, np.nan, 95.0],
         "lon": [TOKYO[1], TOKYO[1] + 1e-5, TOKYO[1] + 0.05, TOKYO[1], TOKYO[1]]}
    )  # fmt: skip
    pred = pd.DataFrame(
        {"row": [4, 3, 2, 1, 0], "pred": [1, 1, 0, 0, 1], "correct": [True, True, False, True,
         False], "confidence": [0.9, 0.6, 0.8, 0.55, 0.7]}
    )  # fmt: skip
    return ug.geo_frame(test, pred, CITIES)


def small_hist() -> pd.DataFrame:
    """Two objects in i0 and i2, one in i1; 20 bins, threshold 0.5 = bins 10..19."""
    counts = np.zeros((5, 20), dtype=np.int64)
    counts[0, [2, 12]] = [30, 10]  # i0 object 0: M=10, N=40
    counts[1, [15]] = [30]  # i0 object 1: M=30
    counts[2, [1]] = [50]  # i1 object 1: M=0
    counts[3, [11, 19]] = [5, 15]  # i2 object 0: M=20
    counts[4, [3]] = [7]  # i2 object 2: M=0
    hist = pd.DataFrame(counts, columns=stats.bin_columns(20))
    hist.insert(0, "n_pixels", counts.sum(axis=1))
    hist.insert(0, "class_id", np.array([0, 1, 1, 0, 2], dtype=np.int64))
    hist.insert(0, "image_id", ["i0", "i0", "i1", "i2", "i2"])
    return hist


# ---------------------------------------------------------------- pure logic


def test_geo_frame_joins_by_row_and_reads_bad_coordinates_as_unknown():
    f = small_frame()
    assert f["pred_city"].tolist() == ["b", "a", "a", "b", "b"]
    assert f["correct"].tolist() == [False, True, False, True, True]
    assert f["lat"].dtype == np.float64
    assert f["lat"].isna().tolist() == [False, False, False, True, True]  # NaN and lat 95
    assert ug.located(f)["row"].tolist() == [0, 1, 2]
    assert ug.missing_note(len(f), 3).startswith("2 of 5 test images have no coordinates")
    assert ug.missing_note(5, 5) is None
    bare = ug.geo_frame(
        pd.DataFrame({"row": [0], "image_id": ["x"], "path": ["p"], "city": ["a"]}),
        pd.DataFrame({"row": [0], "pred": [0], "correct": [True], "confidence": [0.9]}),
        CITIES,
    )
    assert bare["lat"].isna().all() and ug.located(bare).empty


def test_explained_shares_match_hand_computed_values():
    shares = ug.explained_shares(small_hist(), ["i0", "i1", "i2", "i9"], 0.5, ["o0", "o1", "o2"])
    assert list(shares.index) == ["i0", "i1", "i2", "i9"]
    assert list(shares.columns) == ["o0", "o1"]  # o2 is never explained
    np.testing.assert_allclose(shares.loc["i0"], [10 / 40, 30 / 40])
    np.testing.assert_allclose(shares.loc["i1"], [0, 0])  # no explained pixel
    np.testing.assert_allclose(shares.loc["i2"], [1, 0])
    np.testing.assert_allclose(shares.loc["i9"], [0, 0])  # no histogram rows at all
    with pytest.raises(ValueError, match="has no name"):
        ug.explained_shares(small_hist(), ["i0"], 0.5, ["o0"])


def test_colourings_and_the_component_frame():
    f = small_frame()
    pts = ug.located(f)
    assert ug.color_spec(pts, "Predicted city", CITIES)["codes"].tolist() == [1, 0, 0]
    spec = ug.color_spec(pts, ug.OBJECT_SHARE, CITIES, np.array([0.1, 0.4, 0.0]), "tree")
    assert spec["mode"] == "continuous" and spec["cmax"] == pytest.approx(0.4)
    assert "tree" in spec["title"]
    with pytest.raises(ValueError):
        ug.color_spec(pts, ug.OBJECT_SHARE, CITIES)
    with pytest.raises(ValueError):
        ug.color_spec(pts, "Shoe size", CITIES)
    cf = ug.component_frame(f)
    lat0 = np.median(pts["lat"])
    np.testing.assert_allclose(cf["geo_x"], pts["lon"] * math.cos(math.radians(lat0)), rtol=1e-6)
    np.testing.assert_allclose(cf["geo_y"], pts["lat"], rtol=1e-6)
    args = ug.component_args(
        cf, ug.color_spec(cf, "Confidence", CITIES), CITIES, view_key="k", thumbs=None,
        height=300, dragmode="select", selected=[2],
    )  # fmt: skip
    assert um.decode_i32(args["rows"]).tolist() == [0, 1, 2]
    np.testing.assert_allclose(um.decode_f32(args["y"]), pts["lat"], rtol=1e-6)
    assert args["selected"] == [2] and args["view_key"] == "k"
    assert args["equal_aspect"] is True  # the browser keeps one unit per pixel on both axes
    assert um.payload(cf, "geo", ug.color_spec(cf, "Confidence", CITIES), CITIES,
                      view_key="k")["equal_aspect"] is False  # fmt: skip


def test_the_component_frame_keeps_metres_equal_on_both_axes():
    """1 km east and 1 km north of a point (spherical Earth) are equally far in geo units."""
    r_earth, d = 6_371_000.0, 1000.0
    lat, lon = TOKYO
    east = lon + math.degrees(d / (r_earth * math.cos(math.radians(lat))))
    north = lat + math.degrees(d / r_earth)
    test = pd.DataFrame(
        {"row": [0, 1, 2], "image_id": ["o", "e", "n"], "path": ["p", "p", "p"],
         "city": ["a", "a", "a"], "lat": [lat, lat, north], "lon": [lon, east, lon]}
    )  # fmt: skip
    pred = pd.DataFrame({"row": [0, 1, 2], "pred": [0, 0, 0], "correct": [True] * 3,
                         "confidence": [0.9] * 3})  # fmt: skip
    cf = ug.component_frame(ug.geo_frame(test, pred, CITIES))
    x, y = cf["geo_x"].to_numpy(np.float64), cf["geo_y"].to_numpy(np.float64)
    dx, dy = x[1] - x[0], y[2] - y[0]
    assert abs(y[1] - y[0]) < 1e-6 and abs(x[2] - x[0]) < 1e-6
    assert dx == pytest.approx(dy, rel=1e-3)  # plain lon would be 1 / cos(35.7°) ≈ 1.23 wider


def test_areas_pick_one_city_when_cities_are_far_apart():
    f = small_frame()
    assert ug.area_options(f) == [ug.ALL_AREAS, "a", "b"]
    assert ug.default_area(f) == ug.ALL_AREAS  # 0.05 degrees apart
    far = f.copy()
    far.loc[2, ["lat", "lon"]] = [40.44, -79.99]  # b in Pittsburgh
    assert ug.default_area(far) == "a"
    assert ug.in_area(far, "b")["row"].tolist() == [2]
    assert len(ug.in_area(far, ug.ALL_AREAS)) == 3


def test_selection_events_are_validated():
    valid = np.array([0, 1, 2])
    event = {"selection": {"points": [{"customdata": 2}, {"customdata": [1]}, {"customdata": 7},
                                      {"customdata": True}, {"x": 1}]}}  # fmt: skip
    assert ug.event_rows(event, valid).tolist() == [1, 2]
    assert ug.event_rows(None, valid).tolist() == []
    assert ug.event_rows({"selection": {"points": "x"}}, valid).tolist() == []
    cells = ["8a2f5a3ffffffff"]
    assert ug.event_cell({"selection": {"points": [{"location": cells[0]}]}}, cells) == cells[0]
    assert ug.event_cell({"selection": {"points": [{"location": "other"}]}}, cells) is None
    assert ug.event_cell({}, cells) is None


def test_cells_table_counts_the_images_of_each_cell():
    f = small_frame()
    pts = ug.located(f)
    table = ug.cells_table(f, 9, np.array([0.2, 0.4, 1.0, 0.0, 0.0]))
    ids = geo.cells(pts["lat"], pts["lon"], 9)
    assert table["n_images"].sum() == 3 and set(table["cell"]) == set(ids)
    first = table.iloc[0]
    assert first["n_images"] == 2 and first["cell"] == ids[0] == ids[1]  # i0, i1 share a cell
    assert first["accuracy"] == pytest.approx(0.5)  # i0 wrong, i1 right
    assert first["share"] == pytest.approx(0.3)
    assert first["top_city"] == "a" and first["top_city_n"] == 2
    lat, lon = geo.cell_centre(first["cell"])
    assert (first["lat"], first["lon"]) == pytest.approx((lat, lon))
    assert ug.cell_rows(f, 9, first["cell"]).tolist() == [0, 1]
    assert ug.cell_rows(f, 9, "8a2f5a3ffffffff").tolist() == []
    assert ug.default_resolution(pts["lat"], pts["lon"], min_per_cell=1.5) == max(
        r for r in ug.RESOLUTIONS if 3 / len(set(geo.cells(pts["lat"], pts["lon"], r))) >= 1.5
    )
    fig = ug.cells_figure(table, "n_images", "images", tiles=False)
    assert fig.layout.map.style == ug.BLANK_STYLE
    assert len(fig.data[0].geojson["features"]) == len(table)


def test_cell_profile_keeps_objects_over_the_pixel_filter():
    profiles = pd.DataFrame(
        {"cell": ["c", "c", "c", "d"], "city": ["a", "a", "b", "a"], "object": ["x", "y", "x",
         "x"], "class_id": [0, 1, 0, 0], "mean_pixels": [500.0, 50.0, 300.0, 900.0],
         "rpc_cell": [0.2, 0.9, 0.4, 0.5], "rpc_city": [0.1, 0.1, 0.1, 0.1]}
    )  # fmt: skip
    out = ug.cell_profile(profiles, "c", min_mean_pixels=100)
    assert list(zip(out["city"], out["object"], strict=True)) == [("a", "x"), ("b", "x")]


def test_points_figure_escapes_names_and_keeps_rows_as_customdata():
    f = small_frame()
    f["city"] = f["city"].replace({"a": "<b>x</b>"})
    pts = ug.located(f)
    color = ug.color_spec(pts, "Predicted city", CITIES)
    fig = ug.points_figure(pts, color, tiles=True)
    assert fig.layout.map.style == ug.OSM_STYLE
    rows = sorted(int(r) for t in fig.data for r in t.customdata)
    assert rows == [0, 1, 2]
    text = json.dumps(fig.to_plotly_json(), default=str)
    assert "<b>x</b>" not in text and "&lt;b&gt;x&lt;/b&gt;" in text
    assert ug.points_figure(pts, color, tiles=False).layout.map.style == ug.BLANK_STYLE


# ---------------------------------------------------------------- exports


def hostile_export_frame() -> pd.DataFrame:
    f = small_frame()
    f["city"] = f["city"].replace({"a": '=HYPERLINK("http://x")'})
    return f


def test_geojson_export_is_valid_and_complete():
    f = hostile_export_frame()
    shares = ug.explained_shares(small_hist(), f["image_id"], 0.5, ["o0", "o1", "o2"])
    doc = json.loads(ug.to_geojson(f, shares).decode("utf-8"))
    assert doc["type"] == "FeatureCollection"
    assert len(doc["features"]) == 3  # only located images
    for feat, (_, want) in zip(doc["features"], ug.located(f).iterrows(), strict=True):
        geom = shapely.geometry.shape(feat["geometry"])
        assert geom.geom_type == "Point" and geom.is_valid
        assert (geom.x, geom.y) == pytest.approx((want["lon"], want["lat"]))  # [lon, lat]
        props = feat["properties"]
        assert props["image_id"] == want["image_id"]
        assert props["predicted_city"] == want["pred_city"]
        assert props["confidence"] == pytest.approx(want["confidence"], abs=1e-6)
        assert isinstance(props["correct"], bool)
    p0 = doc["features"][0]["properties"]
    assert p0["share o0"] == pytest.approx(0.25) and p0["share o1"] == pytest.approx(0.75)
    assert doc["features"][0]["properties"]["city"].startswith("=HYPERLINK")  # JSON: kept raw


def test_csv_export_has_coordinates_and_no_formulas():
    f = hostile_export_frame()
    shares = ug.explained_shares(small_hist(), f["image_id"], 0.5, ["o0", "=o1", "o2"])
    rows = list(csv.DictReader(io.StringIO(ug.to_csv(f, shares).decode("utf-8"))))
    assert len(rows) == 3
    assert float(rows[2]["lat"]) == pytest.approx(f.loc[2, "lat"])
    assert float(rows[2]["lon"]) == pytest.approx(f.loc[2, "lon"])
    assert rows[0]["city"].startswith("'=HYPERLINK")
    assert float(rows[0]["share =o1"]) == pytest.approx(0.75)  # a header never starts with "="
    assert not any(k.startswith(("=", "+", "-", "@")) for k in rows[0])


# ---------------------------------------------------------------- the page (AppTest)


def run_page(root: Path, monkeypatch, select: int = 0, **state) -> AppTest:
    """The page on ``root``; the map component (faked) selects its first ``select`` points."""
    seen: list[dict] = []

    def fake_scatter(args, *, key):
        seen.append(args)
        rows = um.decode_i32(args["rows"])[:select].tolist()
        return {"rows": rows, "view": args["view_key"]} if select else None

    monkeypatch.setattr(scatter, "scatter_map", fake_scatter)
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["cache_path"] = str(root)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    at.seen = seen  # type: ignore[attr-defined]
    return at


def test_points_view_hands_located_images_to_the_map_and_shows_a_selection(
    fake_cache_dir, monkeypatch
):
    at = run_page(fake_cache_dir, monkeypatch, select=5)
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    assert at.title[0].value == "Geography"
    frame = ug.geo_frame(
        Cache(fake_cache_dir).test_images(), Cache(fake_cache_dir).predictions("simple_s0"),
        Cache(fake_cache_dir).cities,
    )  # fmt: skip
    area = ug.default_area(frame)
    want = ug.in_area(frame, area)
    args = at.seen[-1]
    assert um.decode_i32(args["rows"]).tolist() == want["row"].tolist()
    np.testing.assert_allclose(um.decode_f32(args["y"]), want["lat"], rtol=1e-6)
    assert args["thumbs"] and len(args["thumbs"]["kinds"]) == 3
    assert args["equal_aspect"] is True
    captions = " ".join(c.value for c in at.caption)
    n_missing = len(frame) - len(ug.located(frame))
    assert n_missing > 0 and f"{n_missing} of {len(frame)} test images have no coord" in captions
    assert ug.OFFLINE_NOTE[:40] in captions
    assert at.subheader[0].value == "Selection: 5 images"
    assert len(at.get("imgs")) + len(at.get("image")) >= 1
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["GeoJSON", "CSV with lat/lon"]


def test_street_map_and_cells_views(fake_cache_dir, monkeypatch):
    at = run_page(fake_cache_dir, monkeypatch, geo_tiles=True)
    assert not at.exception and not at.error
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["map"]["style"] == ug.OSM_STYLE
    assert spec["data"][0]["type"] == "scattermap" and not at.seen  # no component here
    at = run_page(fake_cache_dir, monkeypatch, geo_view="H3 cells", geo_area=ug.ALL_AREAS)
    assert not at.exception and not at.error, [e.value for e in at.error]
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["data"][0]["type"] == "choroplethmap"
    assert spec["layout"]["map"]["style"] == ug.BLANK_STYLE
    cell = at.selectbox(key=f"geo_cell_{at.select_slider(key='geo_resolution').value}").value
    assert at.subheader[0].value.startswith(f"Cell {cell}: ")
    assert any("R_p^c of the cell" in m.value for m in at.markdown)
    assert len(at.get("plotly_chart")) == 2  # the cells and the cell's profile


def test_a_cache_without_coordinates_says_how_to_add_them(fake_cache_dir, tmp_path, monkeypatch):
    root = copy_cache(fake_cache_dir, tmp_path / "nocoords")
    images = pd.read_parquet(root / "images.parquet").drop(columns=["lat", "lon"], errors="ignore")
    images.to_parquet(root / "images.parquet", index=False)
    at = run_page(root, monkeypatch)
    assert not at.exception and not at.error
    assert [i.value for i in at.info] == [ug.NO_COORDINATES_MESSAGE]
    assert not at.seen and not at.get("download_button")


@pytest.mark.parametrize("rel", ["images.parquet", "predictions.parquet", "hist/simple_s0.parquet"])
def test_a_damaged_file_is_one_sentence_naming_it(fake_cache_dir, tmp_path, monkeypatch, rel):
    root = copy_cache(fake_cache_dir, tmp_path / "damaged")
    (root / rel).write_bytes(b"this is not a cache file\n" * 8)
    at = run_page(root, monkeypatch, select=5, geo_color=ug.OBJECT_SHARE)
    assert not at.exception
    errors = [e.value.replace("\\", "") for e in at.error]  # shown Markdown-escaped
    assert errors and all(rel in e and "--force --stages" in e for e in errors), errors
    assert all("Traceback" not in e for e in errors)
    assert at.title[0].value == "Geography"
    if rel.startswith("hist/"):  # only the object colouring, the profile and exports need it
        assert at.seen and at.subheader[0].value == "Selection: 5 images"


@pytest.mark.parametrize(
    "state",
    [{}, {"geo_tiles": True}, {"geo_view": "H3 cells", "geo_color": ug.OBJECT_SHARE}],
    ids=["points", "street-map", "cells"],
)
def test_hostile_names_are_shown_as_text(fake_cache_dir, tmp_path, monkeypatch, state):
    root = make_hostile(fake_cache_dir, tmp_path / "hostile")
    at = run_page(root, monkeypatch, select=8, geo_area=ug.ALL_AREAS, **state)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert_no_markup(shown_texts(at), "geography")
    assert_no_markup(plotly_strings(at), "geography plotly", markdown=False)
    for args in at.seen:
        assert CITY_A in args["meta"]["cities"]  # raw: the component sets textContent
