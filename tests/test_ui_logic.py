"""Pure page logic of the Objects, Compare and Live pages (cityviz/ui/*.py), no Streamlit."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cityviz import stats
from cityviz.ui import compare as uc
from cityviz.ui import figures
from cityviz.ui import live as ul
from cityviz.ui import objects as uo

# --------------------------------------------------------------------------- helpers


def random_hist(n_img: int = 90, n_cls: int = 7, seed: int = 1):
    """A histogram table from random masks/labels, with some unlabelled pixels."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n_img, 16, 16)).astype(np.float32)
    labels = rng.integers(0, n_cls, (n_img, 16, 16))
    labels[:, :3] = 255
    labels[::4, 8:] = 2  # object 2 is large in every fourth image
    ids = np.array([f"im{i:03d}" for i in range(n_img)])
    hist = stats.hist_frame(ids, *stats.object_histograms(masks, labels, n_cls))
    city_of = pd.Series(np.where(np.arange(n_img) % 3 == 0, "tokyo", "pitt"), index=ids)
    return hist, city_of, [f"obj{i}" for i in range(n_cls)]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width × height`` pixels but carries almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def street(w: int = 96, h: int = 72) -> np.ndarray:
    rng = np.random.default_rng(3)
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[: h // 2] = (120, 170, 230)
    img[h // 2 :] = (90, 90, 90)
    img[h // 4 : h // 2, w // 3 : w // 2] = (200, 40, 40)
    return np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- objects


def test_reverse_cumsum_hand_values():
    got = uo.reverse_cumsum(np.array([[1, 2, 3, 4], [0, 0, 5, 0]]))
    assert got.tolist() == [[10, 9, 7, 4], [5, 5, 5, 0]]


@pytest.mark.parametrize("n_images_of", [None, {"tokyo": 40, "pitt": 70}])
def test_cube_table_equals_rpc_table_at_every_threshold(n_images_of):
    hist, city_of, names = random_hist()
    cube = uo.RpcCube.build(hist, city_of, names, n_images_of=n_images_of, n_boot=0)
    for k in range(1, stats.N_BINS):
        t = k / stats.N_BINS
        ref = stats.rpc_table(hist, city_of, t, names, 100, n_images_of=n_images_of and
                              pd.Series(n_images_of))  # fmt: skip
        got = cube.table(t, 100)
        pd.testing.assert_frame_equal(got[uo.RPC_COLUMNS], ref, check_exact=True)


def test_cube_bootstrap_equals_rpc_bootstrap_exactly():
    hist, city_of, names = random_hist(n_img=60)
    cache: dict = {}
    cube = uo.RpcCube.build(hist, city_of, names, n_boot=40, seed=7, weights_cache=cache)
    again = uo.RpcCube.build(hist, city_of, names, n_boot=40, seed=7, weights_cache=cache)
    for t in (0.1, 0.5, 0.85):
        ref = stats.rpc_bootstrap(hist, city_of, t, n_boot=40, seed=7)
        got = cube.table(t).merge(ref, on=["city", "class_id"], suffixes=("", "_ref"))
        assert len(got) == len(ref) > 0
        np.testing.assert_array_equal(got["ci_lo"], got["ci_lo_ref"])
        np.testing.assert_array_equal(got["ci_hi"], got["ci_hi_ref"])
        np.testing.assert_array_equal(again.table(t)["ci_lo"], cube.table(t)["ci_lo"])
    assert len(cache) == 1  # the second model reused the resampling weights


def test_cube_rejects_off_grid_threshold():
    hist, city_of, names = random_hist(n_img=12)
    cube = uo.RpcCube.build(hist, city_of, names, n_boot=0)
    with pytest.raises(ValueError, match="grid"):
        cube.table(0.333)


def test_with_value_lift_scales_the_interval():
    t = pd.DataFrame({"rpc": [0.5, 0.0], "lift": [2.0, 0.0], "ci_lo": [0.4, 0.0],
                      "ci_hi": [0.6, 0.1]})  # fmt: skip
    out = uo.with_value(t, "lift")
    assert out["value"].tolist() == [2.0, 0.0]
    assert out["lo"].iloc[0] == pytest.approx(1.6)
    assert out["hi"].iloc[0] == pytest.approx(2.4)
    assert np.isnan(out["lo"].iloc[1])
    assert uo.with_value(t, "rpc")["hi"].tolist() == [0.6, 0.1]
    with pytest.raises(ValueError):
        uo.with_value(t, "share")


def test_chart_objects_keeps_filtered_objects_best_first():
    t = pd.DataFrame(
        {
            "city": ["a"] * 6 + ["b"] * 2,
            "object": ["x", "y", "z", "x", "y", "z", "x", "y"],
            "value": [0.2, 0.9, 0.5, 0.4, 0.7, 0.9, 0.1, 0.3],
            "kept": [True, True, False, True, True, False, True, True],
        }
    )
    assert uo.chart_objects(t) == {"a": ["y", "x"], "b": ["y", "x"]}
    assert uo.chart_objects(t, top=1) == {"a": ["y"], "b": ["y"]}


def test_selected_bar_reads_customdata():
    event = {"selection": {"points": [{"x": "tree", "customdata": ["tokyo", "tree", "m1"]}]}}
    assert uo.selected_bar(event) == ("tokyo", "tree", "m1")
    assert uo.selected_bar({"selection": {"points": []}}) is None
    assert uo.selected_bar(None) is None


def test_display_table_and_csv():
    hist, city_of, names = random_hist(n_img=30)
    cubes = {"m1": uo.RpcCube.build(hist, city_of, names, n_boot=0)}
    long = uo.rpc_long_table(cubes, 0.5, min_mean_pixels=10)
    shown = uo.display_table(long, {"m1": "Model one"})
    assert set(shown["model"]) == {"Model one"}
    assert len(shown) == int(long["kept"].sum())
    csv = pd.read_csv(io.BytesIO(uo.csv_bytes(long, 0.5)))
    assert (csv["threshold"] == 0.5).all() and len(csv) == len(long)
    np.testing.assert_allclose(csv["rpc"], long["rpc"])


def test_object_index_top_images_hand_computed():
    # image a: obj0 all in bin 19 (explained), obj1 half explained; b: obj0 not explained.
    counts = np.zeros((4, stats.N_BINS), dtype=np.uint32)
    counts[0, 19] = 30  # a, obj0
    counts[1, 19], counts[1, 0] = 10, 10  # a, obj1
    counts[2, 0] = 50  # b, obj0
    counts[3, 15] = 5  # b, obj1
    hist = stats.hist_frame(["a", "b"], np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), counts)
    index = uo.ObjectIndex.build(hist, pd.Series({"a": "x", "b": "y"}))
    top = index.top_images(1, 0.5)
    assert top["image_id"].tolist() == ["b", "a"]
    assert top["share"].tolist() == pytest.approx([1.0, 10 / 40])
    assert top["rate"].tolist() == pytest.approx([1.0, 0.5])
    assert index.top_images(0, 0.5)["image_id"].tolist() == ["a"]  # b has none explained
    assert index.top_images(1, 0.5, city="x")["image_id"].tolist() == ["a"]
    assert index.top_images(1, 0.5, city="z").empty


# --------------------------------------------------------------------------- compare


def summary_frame():
    return pd.DataFrame(
        {
            "model_a": ["a0", "a0", "a1"],
            "model_b": ["b0", "a1", "b0"],
            "kind": ["architecture", "seed", "architecture"],
            "mean_ar": [0.4, 0.2, 0.35],
            "ci_lo": [0.38, 0.18, 0.3],
            "ci_hi": [0.42, 0.22, 0.4],
            "n_images": [10, 10, 10],
        }
    )


def test_ar_matrix_symmetric_with_summary_values():
    m = uc.ar_matrix(summary_frame(), ["a0", "a1", "b0"])
    z = m.to_numpy()
    np.testing.assert_array_equal(z, z.T)
    assert np.diag(z).tolist() == [0, 0, 0]
    assert m.loc["a0", "b0"] == 0.4 and m.loc["b0", "a1"] == 0.35 and m.loc["a1", "a0"] == 0.2
    assert np.isnan(uc.ar_matrix(summary_frame(), ["a0", "zz"]).loc["a0", "zz"])
    table = uc.pairs_table(summary_frame(), {"a0": "A zero"})
    assert table["model A"].tolist()[0] == "A zero"
    assert table["differ in"].tolist()[1] == "initialisation (seed)"


def test_claim_sentence_all_cases():
    base = {"mean_arch": 0.4, "mean_seed": 0.2, "diff": 0.2, "ci_lo": 0.1, "ci_hi": 0.3,
            "ci": 0.95, "n_arch_pairs": 2, "n_seed_pairs": 1}  # fmt: skip
    assert "holds on this data" in uc.claim_sentence({**base, "claim_holds": True})
    assert "0.2000" in uc.claim_sentence({**base, "claim_holds": True})
    assert "not confirmed" in uc.claim_sentence({**base, "claim_holds": False})
    none = uc.claim_sentence({**base, "claim_holds": None, "n_seed_pairs": 0})
    assert "cannot be tested" in none and "seed" in none


def test_pair_ar_either_order_and_browse_order():
    ar = pd.DataFrame({"model_a": ["m", "m", "m"], "model_b": ["n", "n", "n"],
                       "image_id": ["i0", "i1", "i2"], "ar": [0.2, 0.5, 0.1]})  # fmt: skip
    assert uc.pair_ar(ar, "n", "m")["ar"].tolist() == [0.2, 0.5, 0.1]
    test = pd.DataFrame({"row": [0, 1, 2], "image_id": ["i0", "i1", "i2"],
                         "city": ["x", "y", "x"]})  # fmt: skip
    pair = uc.pair_ar(ar, "m", "n")
    assert uc.browse_order(pair, test, "most disagreement")["row"].tolist() == [1, 0, 2]
    assert uc.browse_order(pair, test, "least disagreement")["row"].tolist() == [2, 0, 1]
    assert uc.browse_order(pair, test, "test order")["row"].tolist() == [0, 1, 2]


def test_mask_difference_is_eq2():
    a = np.array([[0.0, 1.0], [0.5, 0.5]], dtype=np.float32)
    b = np.array([[1.0, 1.0], [0.0, 0.25]], dtype=np.float32)
    diff, ar = uc.mask_difference(a, b)
    assert diff.tolist() == [[1.0, 0.0], [0.5, 0.25]]
    assert ar == pytest.approx(1.75 / 4)
    assert uc.heat_image(diff).shape == (2, 2, 3)


def test_load_crop_missing_file_is_none(tmp_path):
    assert uc.load_crop(tmp_path / "nope.png", 32) is None
    Image.fromarray(street()).save(tmp_path / "ok.png")
    assert uc.load_crop(tmp_path / "ok.png", 32).shape == (32, 32, 3)


# --------------------------------------------------------------------------- live: uploads


def test_read_upload_good_jpeg():
    up = ul.read_upload(encode(Image.fromarray(street()), "JPEG"), "street.jpg")
    assert up.ok and up.error is None and up.image.shape == (72, 96, 3)
    assert up.notes == [] and len(up.digest) == 16


def test_read_upload_cmyk_jpeg_converted():
    up = ul.read_upload(encode(Image.fromarray(street()).convert("CMYK"), "JPEG"), "c.jpg")
    assert up.ok and up.image.dtype == np.uint8 and up.image.shape == (72, 96, 3)
    assert any("CMYK" in n for n in up.notes)


def test_read_upload_16bit_png_scaled():
    grey = (np.linspace(0, 65535, 64 * 80).reshape(64, 80)).astype(np.uint16)
    up = ul.read_upload(encode(Image.fromarray(grey), "PNG"), "deep.png")
    assert up.ok and up.image.shape == (64, 80, 3)
    assert up.image[0, 0, 0] == 0 and up.image[-1, -1, 0] == 255
    assert any("16-bit" in n for n in up.notes)


def test_read_upload_palette_with_transparency_on_white():
    im = Image.new("P", (80, 64), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.paste(1, (40, 0, 80, 64))
    data = encode(im, "PNG", transparency=0)
    up = ul.read_upload(data, "pal.png")
    assert up.ok
    assert up.image[10, 10].tolist() == [255, 255, 255]  # transparent → white
    assert up.image[10, 60].tolist() == [0, 0, 255]
    assert any("Transparent" in n for n in up.notes)


def test_read_upload_animated_gif_first_frame():
    frames = [Image.new("RGB", (80, 64), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    up = ul.read_upload(buf.getvalue(), "anim.gif")
    assert up.ok and up.image[5, 5].tolist() == [255, 0, 0]
    assert any("3 frames" in n for n in up.notes)
    assert any("GIF" in n for n in up.notes)


def test_read_upload_exif_rotation_applied():
    img = Image.fromarray(street(96, 48))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    up = ul.read_upload(encode(img, "JPEG", exif=exif.tobytes()), "rot.jpg")
    assert up.ok and up.image.shape == (96, 48, 3)
    assert any("EXIF" in n for n in up.notes)


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"", "empty"),
        (np.random.default_rng(0).bytes(5000), "not a recognised image"),
        (b"%PDF-1.4 not an image", "not a recognised image"),
        (png_header_only(100_000, 100_000), "too large"),
        (png_header_only(6000, 6000), "too large"),
    ],
)
def test_read_upload_bad_files_get_a_sentence(data, needle):
    up = ul.read_upload(data, "x.jpg")
    assert not up.ok and up.image is None
    assert needle in up.error


def test_read_upload_truncated_jpeg():
    data = encode(Image.fromarray(street()), "JPEG")
    up = ul.read_upload(data[: len(data) // 2], "cut.jpg")
    assert not up.ok and "damaged or incomplete" in up.error


def test_read_upload_size_limit_before_decoding():
    up = ul.read_upload(b"\xff" * 2048, "big.jpg", max_bytes=1024)
    assert not up.ok and "limit is" in up.error and "MB" in up.error


def test_read_upload_wrong_extension_noted():
    up = ul.read_upload(encode(Image.fromarray(street()), "PNG"), "photo.jpg")
    assert up.ok and any("named .jpg but contains a PNG" in n for n in up.notes)


# --------------------------------------------------------------------------- live: analysis


def test_predict_probabilities_and_mask():
    import torch

    from cityviz.cam import Explainer
    from cityviz.models.archs import build_model

    torch.manual_seed(0)
    explainer = Explainer(build_model("resnet18", 3), "resnet18")
    res = ul.predict(explainer, street(), 64, 48, ["a", "b", "c"], "gradcam", "m")
    assert res.probs.shape == (3,) and res.probs.sum() == pytest.approx(1.0)
    assert res.pred == int(np.argmax(res.probs)) and res.city == "abc"[res.pred]
    assert res.mask.shape == (48, 48) and res.mask.min() >= 0 and res.mask.max() <= 1
    over, expl = ul.views(np.zeros((48, 48, 3), np.uint8) + 200, res.mask, 0.5)
    assert over.shape == expl.shape == (48, 48, 3)
    assert ((expl == 0).all(axis=2) == (res.mask < 0.5)).all()


def test_predict_shared_explainer_across_threads_matches_serial():
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from cityviz.cam import Explainer
    from cityviz.models.archs import build_model

    torch.manual_seed(1)
    explainer = Explainer(build_model("resnet18", 2), "resnet18")
    images = [street(80 + 8 * i, 64) for i in range(4)]
    serial = [ul.predict(explainer, im, 64, 32, ["a", "b"]) for im in images]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda im: ul.predict(explainer, im, 64, 32, ["a", "b"]), images))
    for s, p in zip(serial, parallel, strict=True):
        np.testing.assert_allclose(p.probs, s.probs, rtol=1e-5)
        np.testing.assert_allclose(p.mask, s.mask, atol=1e-5)


def test_object_breakdown_hand_computed():
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 9]])
    mask = np.array([[0.9, 0.1, 0.6, 0.6], [0.9, 0.2, 0.1, 1.0]], dtype=np.float32)
    out = ul.object_breakdown(mask, labels, 0.5, ["road", "tree"])
    assert out["object"].tolist() == ["road", "tree"]
    assert out["pixels"].tolist() == [4, 3]
    assert out["explained"].tolist() == [2, 2]  # the unlabelled 9 is ignored
    assert out["rate"].tolist() == pytest.approx([0.5, 2 / 3])
    assert out["share"].tolist() == pytest.approx([0.5, 0.5])
    col = ul.colorize_labels(labels, 2)
    assert col[1, 3].tolist() == [0, 0, 0] and col[0, 0].tolist() == col[1, 0].tolist()


def test_place_on_map_duplicate_lands_on_its_point():
    from cityviz.embed import MaskEmbedder, masks_to_features

    rng = np.random.default_rng(0)
    masks = rng.random((30, 16, 16)).astype(np.float32)
    emb = MaskEmbedder(method="pca", n_pca=5).fit(masks_to_features(masks, res=8))
    xy, near = ul.place_on_map(emb, masks[7], k=3)
    assert near[0] == 7 and len(near) == 3
    np.testing.assert_allclose(xy, emb.embedding_[7], atol=1e-5)


def test_sample_rows_spread_over_cities():
    test = pd.DataFrame({"row": range(10), "image_id": [f"i{i}" for i in range(10)],
                         "city": ["a"] * 6 + ["b"] * 4, "path": [""] * 10})  # fmt: skip
    out = ul.sample_rows(test, per_city=2)
    assert out["row"].tolist() == [0, 5, 6, 9]
    assert out["label"].iloc[0] == "a · test image 0"


# --------------------------------------------------------------------------- figures


def test_rpc_bars_one_trace_per_city_and_model_with_error_bars():
    t = pd.DataFrame(
        {
            "model_id": ["m1", "m2", "m1", "m2"],
            "city": ["a", "a", "a", "a"],
            "object": ["x", "x", "y", "y"],
            "value": [0.5, 0.4, 0.3, 0.2],
            "lo": [0.45, 0.3, 0.25, 0.1],
            "hi": [0.6, 0.5, 0.35, 0.3],
        }
    )
    fig = figures.rpc_bars(t, {"a": ["x", "y"]}, ["m1", "m2"], {"m1": "One", "m2": "Two"})
    assert [tr.name for tr in fig.data] == ["One", "Two"]
    assert list(fig.data[0].y) == [0.5, 0.3]
    np.testing.assert_allclose(fig.data[0].error_y.array, [0.1, 0.05])
    np.testing.assert_allclose(fig.data[1].error_y.arrayminus, [0.1, 0.1])
    assert [list(c) for c in fig.data[1].customdata] == [["a", "x", "m2"], ["a", "y", "m2"]]
    json.loads(fig.to_json())  # serialisable for st.plotly_chart


def test_other_figures():
    m = uc.ar_matrix(summary_frame(), ["a0", "a1", "b0"])
    heat = figures.ar_heatmap(m, ["A0", "A1", "B0"])
    np.testing.assert_array_equal(np.asarray(heat.data[0].z), m.to_numpy())
    bars = figures.prob_bars([0.2, 0.7, 0.1], ["p", "q", "r"])
    assert list(bars.data[0].marker.color).count("#e45756") == 1
    assert list(bars.data[0].marker.color).index("#e45756") == 1
    pts = pd.DataFrame({"row": [0, 1, 2], "city": ["a", "b", "a"], "x": [0, 1, 2],
                        "y": [0, 1, 0]})  # fmt: skip
    fig = figures.placement_map(pts, "x", "y", (0.5, 0.5), [1])
    assert fig.data[-1].name == "your photo" and list(fig.data[-1].x) == [0.5]
    assert list(fig.data[-2].x) == [1]
    hist = figures.ar_histogram(np.array([0.1, 0.2, 0.3]), "t", marker=0.2)
    assert list(hist.data[0].x) == [0.1, 0.2, 0.3]
