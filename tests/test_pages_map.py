"""The explanation map: pure logic (cityviz.ui.map, cityviz.ui.scatter) and the page (AppTest)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cityviz import stats, thumbs
from cityviz.segment import NO_SEGMENTER_MESSAGE
from cityviz.store import Cache, CacheError
from cityviz.ui import map as um
from cityviz.ui import scatter
from cityviz.ui.safe_text import md_escape
from tests.hostile import copy_cache

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "map.py")
CITIES = ["a", "b"]


def small_frame() -> pd.DataFrame:
    test = pd.DataFrame(
        {"row": [0, 1, 2, 3], "image_id": ["i0", "i1", "i2", "i3"], "city": ["a", "a", "b", "b"]}
    )
    pred = pd.DataFrame(
        {"row": [3, 2, 1, 0], "pred": [1, 0, 0, 1], "correct": [True, False, True, False],
         "confidence": [0.9, 0.6, 0.8, 0.55]}
    )  # fmt: skip
    emb = pd.DataFrame(
        {"row": [0, 1, 2, 3], "tsne_x": [0.0, 1.0, 10.0, 11.0], "tsne_y": [0.0, 2.0, 5.0, 7.0],
         "umap_x": [np.nan] * 4, "umap_y": [np.nan] * 4, "cluster": [0, 0, 1, -1],
         "cluster_label": ["sky", "sky", "tree", "noise"],
         "dominant": ["sky", None, "tree", "tree"]}
    )  # fmt: skip
    return um.map_frame(test, pred, emb, CITIES)


# ---------------------------------------------------------------- pure logic


def test_map_frame_joins_by_row():
    f = small_frame()
    assert f["row"].tolist() == [0, 1, 2, 3]
    assert f["pred_city"].tolist() == ["b", "a", "a", "b"]
    assert f["correct"].tolist() == [False, True, False, True]
    np.testing.assert_allclose(f["confidence"], [0.55, 0.8, 0.6, 0.9])
    assert um.available_methods(f) == ["tsne"]
    assert um.cluster_names(f) == {-1: "unclustered", 0: "0 · sky", 1: "1 · tree"}


def test_categorical_colours_follow_city_order_and_lump_rare_values():
    f = small_frame()
    spec = um.color_spec(f, "True city", CITIES)
    assert [g["name"] for g in spec["groups"]] == ["a", "b"]
    assert spec["codes"].tolist() == [0, 0, 1, 1]
    ok = um.color_spec(f, "Correct / wrong", CITIES)
    assert [g["name"] for g in ok["groups"]] == ["correct", "wrong"]
    assert ok["codes"].tolist() == [1, 0, 1, 0]
    assert ok["groups"][0]["color"] == um.CORRECT_COLORS["correct"]
    dom = um.color_spec(f, "Dominant object", CITIES)
    names = [g["name"] for g in dom["groups"]]
    assert names[0] == "tree" and "none" in names  # tree is the most common
    assert dom["groups"][names.index("none")]["color"] == um.OTHER_COLOR
    values = pd.DataFrame({"dominant": list("aaabbc" + "defghij")})
    lumped = um._groups(values["dominant"], None, None, max_groups=3)
    assert [g["name"] for g in lumped["groups"]] == ["a", "b", "other"]
    assert lumped["codes"].tolist() == [0, 0, 0, 1, 1] + [2] * 8


def test_continuous_and_cluster_colourings():
    f = small_frame()
    conf = um.color_spec(f, "Confidence", CITIES)
    assert conf["mode"] == "continuous" and conf["cmin"] == 0.5
    np.testing.assert_allclose(conf["values"], f["confidence"])
    clus = um.color_spec(f, "Cluster", CITIES)
    assert [g["name"] for g in clus["groups"]] == ["0 · sky", "1 · tree", "unclustered"]
    assert clus["codes"].tolist() == [0, 0, 1, 2]
    with pytest.raises(ValueError):
        um.color_spec(f, "Shoe size", CITIES)


def test_cluster_annotations_sit_at_medians():
    labels = um.cluster_annotations(small_frame(), "tsne")
    assert labels == [{"x": 0.5, "y": 1.0, "text": "sky"}, {"x": 10.0, "y": 5.0, "text": "tree"}]


def test_atlas_rows_pick_the_point_nearest_each_cell_centre():
    # 4 points on a 2x2 grid (n=3 -> g=2): cell centres at 0.25/0.75 of the box
    x = np.array([0.0, 0.2, 0.26, 1.0, 0.0])
    y = np.array([0.0, 0.2, 0.26, 1.0, 1.0])
    rows = np.array([10, 11, 12, 13, 14])
    got = um.atlas_rows(x, y, rows, n=3)
    # cell (0,0) holds rows 10, 11, 12 (12 is nearest its centre 0.25); cells (1,1) and (0,1)
    # hold one point each; 3 cells occupied -> all 3 fit
    assert got.tolist() == [12, 13, 14]
    # with room for 2 only, the fullest cell wins first, then the tie by row
    assert um.atlas_rows(x, y, rows, n=2).tolist() == [12, 13]
    assert len(um.atlas_rows(np.zeros(0), np.zeros(0), np.zeros(0, int))) == 0


def test_atlas_rows_spread_over_a_big_map():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2, 5000))
    got = um.atlas_rows(x, y, np.arange(5000), n=500)
    assert 300 < len(got) <= 500 and len(set(got.tolist())) == len(got)


def test_selected_rows_validate_component_values():
    valid = np.arange(10)
    assert um.selected_rows({"rows": [3, 1, 3, 99, -1], "view": "v"}, valid, "v").tolist() == [1, 3]
    assert um.selected_rows({"rows": [1], "view": "other"}, valid, "v").size == 0
    assert um.selected_rows({"rows": [1, "x", True, 2.5]}, valid).tolist() == [1]
    for bad in (None, [], "rows", {"rows": "1,2"}, {"view": "v"}):
        assert um.selected_rows(bad, valid, "v").size == 0


def test_gallery_rows_spread_over_confidence():
    rows = np.arange(10)
    assert um.gallery_rows(rows[:3]).tolist() == [0, 1, 2]
    conf = pd.Series(np.linspace(0.5, 0.95, 10), index=rows)
    got = um.gallery_rows(rows, conf, n=4)
    # sorted by decreasing confidence: 9, 8, ..., 0 -> positions 0, 3, 6, 9
    assert got.tolist() == [9, 6, 3, 0]


def test_selection_profile_matches_hand_computed_rpc():
    names = ["sky", "tree", "car"]
    counts = np.zeros((4, 20), dtype=np.uint32)
    counts[0, 15] = 300  # i0 sky, all explained at t=0.5
    counts[1, 2] = 100  # i0 tree, unexplained
    counts[2, 12], counts[2, 1] = 150, 150  # i1 sky: half explained
    counts[3, 19] = 50  # i2 car: all explained
    hist = stats.hist_frame(["i0", "i0", "i1", "i2"], np.arange(4), [0, 1, 0, 2], counts)
    prof = um.selection_profile(hist, ["i0", "i1"], ["i0", "i1", "i2"], 0.5, names, 60)
    # selection: sky 450/600 = 0.75, tree 0/100 (mean 50 px < 60: dropped); all: sky 0.75
    assert prof["object"].tolist() == ["sky"]
    assert prof.loc[0, "rpc_selection"] == pytest.approx(0.75)
    assert prof.loc[0, "rpc_all"] == pytest.approx(0.75)
    assert prof.loc[0, "ratio"] == pytest.approx(1.0)
    prof = um.selection_profile(hist, ["i2"], ["i0", "i1", "i2"], 0.5, names, 10)
    assert prof["object"].tolist() == ["car"] and prof.loc[0, "rpc_selection"] == 1.0
    assert um.selection_profile(hist, [], ["i0"], 0.5, names).empty


def test_payload_encodes_arrays_compactly_and_keys_the_data():
    f = small_frame()
    color = um.color_spec(f, "True city", CITIES)
    thumbs = {"component": "x", "size": 96, "per_row": 16, "kinds": [["Original", "orig"]]}
    args = um.payload(f, "tsne", color, CITIES, view_key="m|tsne", thumbs=thumbs)
    np.testing.assert_allclose(um.decode_f32(args["x"]), [0, 1, 10, 11])
    assert um.decode_i32(args["rows"]).tolist() == [0, 1, 2, 3]
    assert um.decode_i32(args["codes"]).tolist() == [0, 0, 1, 1]
    assert um.decode_i32(args["pred"]).tolist() == [1, 0, 0, 1]
    assert um.decode_i32(args["cluster"]).tolist() == [1, 1, 2, 0]  # index into meta clusters
    assert args["meta"]["clusters"] == ["unclustered", "0 · sky", "1 · tree"]
    assert "codes" not in args["color"] and args["color"]["groups"][0]["name"] == "a"
    again = um.payload(f, "tsne", color, CITIES, view_key="m|tsne", thumbs=thumbs)
    assert again["data_key"] == args["data_key"]
    other = um.payload(f, "tsne", color, CITIES, view_key="m|tsne", thumbs=thumbs, height=300)
    assert other["data_key"] != args["data_key"]
    chosen = um.payload(f, "tsne", color, CITIES, view_key="m|tsne", thumbs=thumbs, selected=[2])
    assert chosen["selected"] == [2] and args["selected"] == []
    assert chosen["data_key"] == args["data_key"]  # a selection alone never forces a redraw


def test_plotly_js_is_the_vendored_gl2d_bundle_never_a_cdn():
    bundle = scatter.COMPONENT_DIR / scatter.PLOTLY_JS
    head = bundle.read_text()[:200]
    assert "plotly.js (gl2d - minified)" in head and "MIT" in head
    assert bundle.stat().st_size < 2_000_000  # a third of the full 4.8 MB bundle
    assert (scatter.COMPONENT_DIR / "PLOTLY-LICENSE.txt").exists()
    html = (scatter.COMPONENT_DIR / "index.html").read_text()
    js = (scatter.COMPONENT_DIR / "main.js").read_text()
    assert f's.src = "{scatter.PLOTLY_JS}"' in js  # loaded from the component folder
    assert "http" not in html.split("<body>")[1] and "https:" not in js


def test_thumbs_component_name_is_stable_per_directory(tmp_path):
    a = scatter.thumbs_component_name(tmp_path / "a")
    assert a == scatter.thumbs_component_name(tmp_path / "x" / ".." / "a")
    assert a != scatter.thumbs_component_name(tmp_path / "b")
    assert a.startswith("thumbs_") and a.replace("_", "").isalnum()


# ---------------------------------------------------------------- the page


def run_map(root: Path, monkeypatch, value=None, **state) -> AppTest:
    """Run the page with the component replaced by a stub returning ``value``."""
    seen: list[dict] = []

    def fake_scatter(args, *, key):
        seen.append(args)
        return value

    monkeypatch.setattr(scatter, "scatter_map", fake_scatter)
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["cache_path"] = str(root)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.seen = seen  # type: ignore[attr-defined]
    return at


def test_map_page_sends_the_whole_map(fake_cache_dir, monkeypatch):
    at = run_map(fake_cache_dir, monkeypatch)
    assert not at.error
    args = at.seen[-1]
    assert len(um.decode_f32(args["x"])) == 100
    assert args["view_key"] == "simple_s0|tsne"
    assert args["thumbs"]["kinds"][2] == ["Explanation", "simple_s0/expl"]
    assert args["thumbs"]["component"].startswith("cityviz.ui.scatter.thumbs_")
    assert args["labels"] and args["atlas"] is None
    assert any("Nothing selected" in c.value for c in at.caption)


def test_map_page_options_change_the_payload(fake_cache_dir, monkeypatch):
    at = run_map(
        fake_cache_dir, monkeypatch, map_model="resnet18_s0", map_method="umap",
        map_color="Confidence", map_view="Atlas", map_drag="Lasso", map_cluster_labels=False,
    )  # fmt: skip
    args = at.seen[-1]
    assert args["view_key"] == "resnet18_s0|umap" and args["dragmode"] == "lasso"
    assert args["color"]["mode"] == "continuous" and "values" in args
    assert args["labels"] == []
    assert args["atlas"]["kind"] == "resnet18_s0/expl" and 0 < len(args["atlas"]["rows"]) <= 100
    emb = Cache(fake_cache_dir).embedding("resnet18_s0").sort_values("row")
    np.testing.assert_allclose(um.decode_f32(args["x"]), emb["umap_x"], rtol=1e-6)


def test_selection_shows_gallery_and_object_profile(fake_cache_dir, monkeypatch):
    rows = list(range(0, 30, 2))
    at = run_map(fake_cache_dir, monkeypatch, value={"rows": rows, "view": "simple_s0|tsne"})
    assert at.subheader[0].value == "Selection: 15 images"
    images = at.get("image")
    assert len(images) == 1  # one st.image call holding the whole gallery
    assert len(images[0].proto.imgs) == 15
    assert images[0].proto.imgs[0].caption.startswith("tokyo\\-like")  # Markdown, escaped
    frame = at.dataframe[0].value
    cache = Cache(fake_cache_dir)
    test = cache.test_images()
    sel = test.loc[rows, "image_id"]
    ref = um.selection_profile(
        cache.hist("simple_s0"), sel, test["image_id"], 0.5, cache.class_names()
    )
    assert frame["object"].tolist() == ref["object"].tolist()
    np.testing.assert_allclose(frame["R_p^c selection"], ref["rpc_selection"])


def test_a_selection_is_kept_when_the_map_is_redrawn(fake_cache_dir, monkeypatch):
    value = {"rows": [4, 2, 8], "view": "simple_s0|tsne"}
    at = run_map(
        fake_cache_dir, monkeypatch, value=value, explanation_map=value, map_color="Confidence"
    )
    assert at.seen[-1]["selected"] == [2, 4, 8]
    assert at.subheader[0].value == "Selection: 3 images"


def test_selection_from_another_view_is_ignored(fake_cache_dir, monkeypatch):
    at = run_map(fake_cache_dir, monkeypatch, value={"rows": [1, 2], "view": "resnet18_s0|tsne"})
    assert not at.subheader
    assert any("Nothing selected" in c.value for c in at.caption)


def test_bare_cache_degrades_with_messages(bare_cache_dir, monkeypatch):
    at = run_map(bare_cache_dir, monkeypatch, value={"rows": [0, 1], "view": "simple_s0|tsne"})
    assert not at.error
    infos = " ".join(i.value for i in at.info)
    assert "thumbnails" in infos.lower()
    assert NO_SEGMENTER_MESSAGE in infos
    assert at.seen[-1]["thumbs"] is None


def test_missing_cache_is_an_error_message_not_a_traceback(tmp_path, monkeypatch):
    at = run_map(tmp_path / "nowhere", monkeypatch)
    assert at.error and "No cityviz cache" in at.error[0].value


# ---------------------------------------------------------------- cluster names by lift


def lift_hist() -> pd.DataFrame:
    """sky 0, sign 1, tree 2; bin 15 is explained at t = 0.5, bin 2 is not."""
    counts = np.zeros((6, 20), dtype=np.uint32)
    counts[0, 15] = 60  # i0 sky
    counts[1, 15] = 30  # i0 sign
    counts[2, 15] = 10  # i1 sky
    counts[3, 15], counts[3, 2] = 2, 100  # i1 tree: 2 explained
    counts[4, 15] = 80  # i2 sky
    counts[5, 15] = 20  # i2 tree
    ids = ["i0", "i0", "i1", "i1", "i2", "i2"]
    return stats.hist_frame(ids, np.arange(6), [0, 1, 0, 2, 0, 2], counts)


def test_cluster_lift_matches_hand_computed_values():
    names = ["sky", "sign", "tree"]
    cluster_of = pd.Series([0, 0, 1], index=["i0", "i1", "i2"])
    lift = stats.cluster_lift(lift_hist(), cluster_of, 0.5, names)
    # all images: sky 150, sign 30, tree 22 explained pixels (202); cluster 0: 70, 30, 2 (102)
    c0 = lift[lift["cluster"] == 0].set_index("object")
    assert c0.index.tolist() == ["sign", "sky", "tree"]  # supported by lift, then the rest
    assert c0.loc["sign", "share_cluster"] == pytest.approx(30 / 102)
    assert c0.loc["sign", "share_all"] == pytest.approx(30 / 202)
    assert c0.loc["sign", "lift"] == pytest.approx(202 / 102)
    assert c0.loc["sky", "lift"] == pytest.approx((70 / 102) / (150 / 202))
    assert c0.loc["tree", "lift"] == pytest.approx((2 / 102) / (22 / 202))
    assert not c0.loc["tree", "supported"]  # 2 % of the cluster's explanation < 5 %
    c1 = lift[lift["cluster"] == 1].set_index("object")
    assert c1.loc["tree", "lift"] == pytest.approx(0.2 / (22 / 202))
    assert c1.loc["sky", "lift"] == pytest.approx(0.8 / (150 / 202))
    labels = stats.lift_labels(lift)
    assert labels.to_dict() == {0: "sign", 1: "tree · sky"}
    # a stricter support drops sign (29 % < 40 %): nothing over-represented is left
    strict = stats.lift_labels(stats.cluster_lift(lift_hist(), cluster_of, 0.5, names, 0.4))
    assert strict[0] == "no stand-out object"
    hover = um.lift_hover(lift)
    assert "sign: 29% of the cluster's explanation vs 15% of all (lift 2.0×)" in hover[0]


def test_map_labels_clusters_by_lift_with_hover_statistics(fake_cache_dir, monkeypatch):
    at = run_map(fake_cache_dir, monkeypatch)
    labels = at.seen[-1]["labels"]
    cache = Cache(fake_cache_dir)
    emb = cache.embedding("simple_s0")
    cluster_of = pd.Series(emb["cluster"].to_numpy(), index=emb["image_id"].to_numpy())
    lift = stats.cluster_lift(cache.hist("simple_s0"), cluster_of, 0.5, cache.class_names())
    want = stats.lift_labels(lift)
    assert [lab["text"] for lab in labels] == [want[k] for k in sorted(emb["cluster"].unique())
                                              if k >= 0]  # fmt: skip
    assert all(lab["hover"][0].startswith("Objects over-represented") for lab in labels)
    # over-represented objects differ between clusters (not one name everywhere)
    assert len({lab["text"] for lab in labels}) > 1


# ---------------------------------------------------------------- exports


def test_selection_table_and_csv_are_safe(fake_cache_dir):
    f = small_frame()
    test = pd.DataFrame({"row": [0, 1, 2, 3], "path": ["/a/0.jpg", "=cmd|x", "/b/2.jpg", "c"]})
    table = um.selection_table(f, np.array([3, 1]), test)
    assert table["test_row"].tolist() == [1, 3]
    assert table["path"].tolist() == ["=cmd|x", "c"]
    assert table["predicted_city"].tolist() == ["a", "b"]
    assert table["cluster"].tolist() == ["0 · sky", "unclustered"]
    assert list(table.columns) == um.EXPORT_COLUMNS
    back = pd.read_csv(io.BytesIO(um.selection_csv(table)))
    assert back["path"].tolist() == ["'=cmd|x", "c"]  # no spreadsheet formula
    np.testing.assert_allclose(back["confidence"], [0.8, 0.9])


def test_zip_of_the_selection_holds_one_png_per_image(fake_cache_dir):
    cache = Cache(fake_cache_dir)
    rows = [0, 5, 17, 99]
    ids = ["../../etc/passwd", "a b", "x", "é"]
    tiles = thumbs.crop_tiles(lambda s: cache.thumb_sheet("simple_s0/expl", s), rows)
    data = um.thumbs_zip(tiles, rows, ids)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        assert names == ["000000_etc_passwd.png", "000005_a_b.png", "000017_x.png",
                         "000099_image.png"]  # fmt: skip
        for name, tile in zip(names, tiles, strict=True):
            with Image.open(io.BytesIO(zf.read(name))) as im:
                assert im.format == "PNG"
                np.testing.assert_array_equal(np.asarray(im), tile)
    with pytest.raises(ValueError):
        um.thumbs_zip(tiles, rows[:2], ids)


def test_selection_offers_csv_and_zip_downloads(fake_cache_dir, monkeypatch):
    at = run_map(fake_cache_dir, monkeypatch, value={"rows": [3, 1], "view": "simple_s0|tsne"})
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Selection as CSV"]
    at.button(key="map_export_zip").click().run()
    assert not at.exception and not at.error, [e.value for e in (*at.exception, *at.error)]
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Selection as CSV", "Download the ZIP (2 PNGs)"]


def test_selection_zip_names_a_damaged_or_missing_sheet(fake_cache_dir, tmp_path):
    root = copy_cache(fake_cache_dir, tmp_path / "cache")
    kind, rel = "simple_s0/expl", "thumbs/simple_s0/expl/0000.jpg"
    layout = Cache(root).thumbs
    args = dict(size=int(layout["size"]), per_row=int(layout["per_row"]))
    good = um.selection_zip(root, kind, [0, 1], ["i0", "i1"], **args)
    with zipfile.ZipFile(io.BytesIO(good)) as zf:
        assert len(zf.namelist()) == 2
    sheet = root / rel
    sheet.write_bytes(sheet.read_bytes()[:300])  # truncated
    with pytest.raises(CacheError) as err:
        um.selection_zip(root, kind, [0, 1], ["i0", "i1"], **args)
    msg = str(err.value)
    assert f"{rel} in {root} cannot be read" in msg
    assert f"python -m precompute --cache {root} --force --stages thumbs" in msg
    sheet.unlink()
    with pytest.raises(CacheError, match=f"{rel} in .* is missing"):
        um.selection_zip(root, kind, [1], ["i1"], **args)


def test_zip_export_says_which_sheet_is_unreadable_at_click_time(
    fake_cache_dir, tmp_path, monkeypatch
):
    root = copy_cache(fake_cache_dir, tmp_path / "cache")
    at = run_map(root, monkeypatch, value={"rows": [3, 1], "view": "simple_s0|tsne"})
    assert not at.error
    (root / "thumbs/simple_s0/expl/0000.jpg").write_bytes(b"not a jpeg")  # after the page drew
    at.button(key="map_export_zip").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1, errors
    assert errors[0].startswith("The ZIP of the explanations is not available: The cache file ")
    shown = [md_escape("thumbs/simple_s0/expl/0000.jpg"), md_escape("--force --stages thumbs")]
    assert all(text in errors[0] for text in shown)  # Markdown-escaped
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Selection as CSV"]  # no download of a broken ZIP
