"""Discriminative-element galleries (issue 13 §3): pure logic (cityviz.ui.gallery) and the page."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from cityviz import stats
from cityviz.segment import NO_SEGMENTER_MESSAGE
from cityviz.store import Cache
from cityviz.ui import gallery as ug
from tests.hostile import MARKUP, make_hostile

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "gallery.py")
APP = str(Path(__file__).resolve().parents[1] / "app.py")
CAPTION = re.compile(r"row (\d+) · mask ([0-9.]+) inside")


# ---------------------------------------------------------------- pure logic


def test_mask_in_object_is_the_mean_over_the_object_pixels():
    masks = np.zeros((2, 2, 3), dtype=np.float32)
    masks[0] = [[0.2, 0.4, 1.0], [0.6, 0.0, 0.1]]
    masks[1] = 0.5
    labels = np.array([[[3, 3, 1], [3, 1, 1]], [[1, 1, 1], [1, 1, 1]]])
    got = ug.mask_in_object(masks, labels, 3)
    assert got[0] == pytest.approx((0.2 + 0.4 + 0.6) / 3)
    assert np.isnan(got[1])  # no pixel of class 3
    assert ug.mask_in_object(masks, labels, 1)[1] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ug.mask_in_object(masks, labels[:, :1], 3)


def test_candidates_keep_the_city_images_with_the_object_explained():
    counts = np.zeros((4, 20), dtype=np.uint32)
    counts[0, 12], counts[0, 3] = 30, 10  # i0 object 5: 30 of 40 pixels explained at 0.5
    counts[1, 3] = 50  # i1 object 5: none explained
    counts[2, 19] = 8  # i2 object 5, other city
    counts[3, 19] = 9  # i0 object 6
    hist = stats.hist_frame(["i0", "i1", "i2", "i0"], np.arange(4), [5, 5, 5, 6], counts)
    test = pd.DataFrame({"image_id": ["i0", "i1", "i2"], "row": [7, 8, 9], "city": list("aab")})
    got = ug.candidates(hist, test, 5, 0.5, "a")
    assert got["image_id"].tolist() == ["i0"] and got["row"].tolist() == [7]
    assert got.loc[0, "M"] == 30 and got.loc[0, "N"] == 40 and got.loc[0, "rate"] == 0.75
    assert ug.candidates(hist, test, 5, 0.05, "a")["image_id"].tolist() == ["i0", "i1"]


def test_rank_orders_by_score_then_explained_pixels_then_id():
    scored = pd.DataFrame(
        {"image_id": ["c", "a", "b", "d"], "row": [2, 0, 1, 3], "score": [0.5, 0.9, 0.5, 0.5],
         "M": [10, 1, 10, 20], "N": [20, 2, 20, 40], "rate": [0.5] * 4}
    )  # fmt: skip
    assert ug.rank(scored, 3)["image_id"].tolist() == ["a", "d", "b"]


def test_outline_is_the_region_border_and_tile_draws_it():
    obj = np.zeros((5, 5), dtype=bool)
    obj[1:4, 1:4] = True
    line = ug.outline(obj)
    assert line.sum() == 8 and not line[2, 2] and line[1, 1]  # a 3x3 square's ring
    edge = np.zeros((3, 3), dtype=bool)
    edge[:, 0] = True
    assert ug.outline(edge)[:, 0].all()  # the image border counts as outside
    image = np.full((5, 5, 3), 100, dtype=np.uint8)
    labels = np.where(obj, 4, 0)
    out = ug.tile(image, np.zeros((5, 5), np.float32), labels, 4)
    assert (out[line] == ug.OUTLINE_COLOR).all()
    assert not (out[~line] == ug.OUTLINE_COLOR).all(axis=-1).any()


def test_query_links_are_validated():
    objects_of = {"a": ["sky", "sign"], "b": ["tree"]}
    assert ug.from_query({"city": "a", "object": "sign"}, ["a", "b"], objects_of) == ("a", "sign")
    assert ug.from_query({"city": "a", "object": "tree"}, ["a", "b"], objects_of) == ("a", None)
    assert ug.from_query({"city": "z", "object": "sky"}, ["a", "b"], objects_of) == (None, None)
    args = ug.link_args("[x](http://e)", "<b>o</b>", "m")
    assert args["query_params"] == {"city": "[x](http://e)", "object": "<b>o</b>", "model": "m"}
    assert "[x](" not in args["label"] and args["page"] == ug.GALLERY_PAGE


# ---------------------------------------------------------------- the page


def run_gallery(root: Path, query: dict | None = None, **state) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["cache_path"] = str(root)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def reference_ranking(root: Path, model_id: str, city: str, obj: str, n: int) -> list[int]:
    """Rows ranked by the mean mask over the object, straight from masks and label maps."""
    cache = Cache(root)
    class_id = cache.class_names().index(obj)
    test = cache.test_images()
    rows = test.loc[test["city"] == city, "row"].to_numpy()
    masks = cache.masks(model_id, rows).astype(np.float32)
    labels = np.asarray(cache.labels()[rows])
    found = []
    for r, m, lab, image_id in zip(rows, masks, labels, test.set_index("row").loc[rows, "image_id"],
                                   strict=True):  # fmt: skip
        obj_px = lab == class_id
        explained = int((obj_px & (m >= np.float32(0.5))).sum())
        if explained:
            found.append(
                (-float(m[obj_px].astype(np.float64).mean()), -explained, image_id, int(r))
            )
    return [r for *_, r in sorted(found)[:n]]


def shown_rows(at: AppTest) -> list[int]:
    images = at.get("image")
    assert len(images) == 1, [m.value for m in (*at.error, *at.info)]
    return [int(CAPTION.match(i.caption).group(1)) for i in images[0].proto.imgs]


def test_gallery_ranks_by_mask_inside_the_object(fake_cache_dir):
    cache = Cache(fake_cache_dir)
    city = cache.cities[0]
    objects = ug.objects_by_city(cache.rpc(), "simple_s0")[city]
    obj = objects[0]
    at = run_gallery(fake_cache_dir, {"city": city, "object": obj})
    assert not at.error
    assert at.session_state["gallery_city"] == city and at.session_state["gallery_object"] == obj
    want = reference_ranking(fake_cache_dir, "simple_s0", city, obj, 24)
    assert want and shown_rows(at) == want
    scores = [float(CAPTION.match(i.caption).group(2)) for i in at.get("image")[0].proto.imgs]
    assert scores == sorted(scores, reverse=True)
    # another model, object and size through the link and the pickers
    for other in ug.objects_by_city(cache.rpc(), "resnet18_s0")[city][:4]:
        want = reference_ranking(fake_cache_dir, "resnet18_s0", city, other, 12)
        query = {"city": city, "object": other, "model": "resnet18_s0"}
        at = run_gallery(fake_cache_dir, query, gallery_n=12)
        assert at.session_state["gallery_model"] == "resnet18_s0"
        if want:
            assert shown_rows(at) == want
        else:  # nothing explained: one sentence instead of an empty gallery
            assert not at.get("image") and "No test image" in at.info[0].value


def test_hostile_names_are_escaped(fake_cache_dir, tmp_path):
    root = make_hostile(fake_cache_dir, tmp_path / "hostile")
    cache = Cache(root)
    city = cache.cities[0]
    obj = next(o for o in ug.objects_by_city(cache.rpc(), "simple_s0")[city] if "<b>" in o)
    at = run_gallery(root, {"city": city, "object": obj})
    assert at.session_state["gallery_object"] == obj
    texts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    texts += [i.value for i in at.info]
    assert any("\\<b\\>x\\</b\\>" in t for t in texts)  # the name is shown, escaped
    for text in texts:
        plain = re.sub(r"\\[!-/:-@\[-`{-~]", "", text)
        assert not any(bad in plain for bad in MARKUP), text


def test_missing_labels_give_one_clear_sentence(bare_cache_dir):
    at = run_gallery(bare_cache_dir)
    assert not at.error
    assert [i.value for i in at.info] == [NO_SEGMENTER_MESSAGE]


def test_damaged_labels_name_the_file(fake_cache_dir, tmp_path):
    from tests.hostile import copy_cache

    root = copy_cache(fake_cache_dir, tmp_path / "damaged")
    (root / "labels.npy").write_bytes(b"not an array")
    at = run_gallery(root)
    assert len(at.error) == 1 and not at.get("image")
    text = at.error[0].value.replace("\\", "")  # Markdown-escaped
    assert "labels.npy" in text and "--force --stages segment" in text


def test_overview_and_objects_link_to_the_galleries(fake_cache_dir):
    at = AppTest.from_file(APP, default_timeout=180)
    at.session_state["cache_path"] = str(fake_cache_dir)
    at.run()
    assert not at.exception
    top = Cache(fake_cache_dir).rpc().query("model_id == 'simple_s0'")

    def gallery_links():
        return [
            (p.proto.page, dict(kv.split("=") for kv in p.proto.query_string.split("&")))
            for p in at.get("page_link")
            if p.proto.label.startswith("Gallery:")
        ]

    overview = gallery_links()  # one per city: its most discriminative object
    assert {q["city"] for _, q in overview} == set(top["city"])
    assert all(page == "gallery" and q["object"] in set(top["object"]) for page, q in overview)
    at.switch_page("pages/objects.py")
    at.session_state["objects_drill_open"] = True
    at.run()
    assert not at.exception
    (page, query), *_ = gallery_links()
    assert page == "gallery"
    assert query == {"city": at.session_state["drill_city"],
                     "object": at.session_state["drill_object"],
                     "model": at.session_state["drill_model"]}  # fmt: skip
