"""AppTest: the Live Grad-CAM page, driven through st.file_uploader with good and bad files."""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cityviz.fake_cache import make_fake_cache
from cityviz.store import Cache
from cityviz.ui import live as ul

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "live.py")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return make_fake_cache(
        tmp_path_factory.mktemp("live") / "cache",
        n_images=60,
        archs=("resnet18",),
        seeds=(0, 1),
        image_size=48,
        test_fraction=0.5,
        pool_size=12,
    )


@pytest.fixture(scope="module")
def page(cache_dir) -> AppTest:
    """One app session for the module: uploads follow one another like a user's."""
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["cache_path"] = str(cache_dir)
    at.run()
    assert not at.exception
    return at


# --------------------------------------------------------------------------- files


def street(w: int = 120, h: int = 90, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[: h // 2] = (120, 170, 230)
    img[h // 2 :] = (90, 90, 90)
    img[h // 4 : h // 2, w // 3 : w // 2] = (200, 40, 40)
    return Image.fromarray(np.clip(img + rng.integers(0, 25, img.shape), 0, 255).astype(np.uint8))


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))  # fmt: skip


def cmyk_jpeg() -> bytes:
    return encode(street(seed=1).convert("CMYK"), "JPEG")


def png16() -> bytes:
    grey = np.linspace(0, 65535, 90 * 120).reshape(90, 120).astype(np.uint16)
    return encode(Image.fromarray(grey), "PNG")


def palette_transparent_png() -> bytes:
    im = street(seed=2).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(im, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [street(seed=s).convert("P") for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8
    return encode(street(seed=3), "JPEG", exif=exif.tobytes())


def truncated_jpeg() -> bytes:
    data = encode(street(seed=4), "JPEG")
    return data[: len(data) // 2]


HANDLED = {  # odd but valid: a prediction plus a note saying what was done
    "cmyk.jpg": (cmyk_jpeg, "CMYK"),
    "deep.png": (png16, "16-bit"),
    "palette.png": (palette_transparent_png, "Transparent"),
    "anim.gif": (animated_gif, "first frame"),
    "rotated.jpg": (exif_rotated_jpeg, "EXIF"),
}
REFUSED = {  # cannot be analysed: one clear sentence
    "cut.jpg": (truncated_jpeg, "damaged or incomplete"),
    "noise.jpg": (lambda: np.random.default_rng(0).bytes(4096), "not a recognised image"),
    "bomb.png": (lambda: png_header_only(100_000, 100_000), "too large"),
    "huge.png": (lambda: png_header_only(6000, 6000), "too large"),
    "notes.txt": (lambda: b"just some text, not a photo", "not a recognised image"),
}


# --------------------------------------------------------------------------- checks


def probabilities(at: AppTest, n_cities: int) -> list[list[float]]:
    """Every model card's probability bars (``st.progress``, one per city, in card order), as
    the fractions their labels state ("tokyo-like 62.0%"), checked against the bar's value."""
    values = []
    for bar in at.get("progress"):
        percent = float(re.search(r"([0-9.]+)%\**$", bar.proto.text).group(1))
        assert 0 <= percent - bar.proto.value < 1 + 1e-9  # the bar (whole percent) fits its label
        values.append(percent / 100)
    assert len(values) % n_cities == 0
    return [values[i : i + n_cities] for i in range(0, len(values), n_cities)]


def assert_predictions(at: AppTest, cache_dir: Path) -> None:
    cache = Cache(cache_dir)
    names = [m["display"] for m in cache.models]
    lines = [m.value for m in at.markdown if " predicts " in m.value]
    assert [line.split("**")[1] for line in lines] == names
    probs = probabilities(at, len(cache.cities))
    assert len(probs) == len(names)
    for p in probs:  # labels round to 0.1 %
        assert sum(p) == pytest.approx(1.0, abs=0.0005 * len(p) + 1e-9)
    assert len(at.get("image")) >= 2 * len(names)


def upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader(key="live_upload").set_value((name, data, "application/octet-stream"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# --------------------------------------------------------------------------- tests


def test_page_renders_and_asks_for_a_photo(page):
    assert page.title[0].value == "Live Grad-CAM"
    assert page.file_uploader[0].label == "Upload a street photo"
    assert page.selectbox(key="live_method").options == ["gradcam", "gradcam++", "hirescam",
                                                          "layercam"]  # fmt: skip
    assert any("Upload a street photo" in i.value for i in page.info)
    assert not page.error


def test_good_photo_gives_every_model_a_prediction(page, cache_dir):
    at = upload(page, "street.jpg", encode(street(), "JPEG"))
    assert not at.error
    assert_predictions(at, cache_dir)
    table = at.dataframe[0].value
    assert len(table) == 2 and set(table["predicted city"]) <= set(Cache(cache_dir).cities)
    # An uploaded photo has no annotation, and the page says so.
    assert any(i.value == ul.ANNOTATIONS_MESSAGE for i in at.info)


@pytest.mark.parametrize("name", list(HANDLED))
def test_odd_but_valid_files_are_handled(page, cache_dir, name):
    make, note = HANDLED[name]
    at = upload(page, name, make())
    assert not at.error, [e.value for e in at.error]
    assert any(note in i.value for i in at.info), [i.value for i in at.info]
    assert_predictions(at, cache_dir)


@pytest.mark.parametrize("name", list(REFUSED))
def test_bad_files_get_a_clear_message(page, name):
    make, needle = REFUSED[name]
    at = upload(page, name, make())
    assert len(at.error) == 1 and needle in at.error[0].value
    assert not [m for m in at.markdown if " predicts " in m.value]


def test_page_keeps_serving_after_bad_files(page, cache_dir):
    upload(page, "noise.jpg", b"\x00\x01garbage")
    at = upload(page, "again.png", encode(street(seed=9), "PNG"))
    assert not at.error
    assert_predictions(at, cache_dir)


def test_threshold_and_method_change_the_explanation(page, cache_dir):
    at = upload(page, "street2.jpg", encode(street(seed=5), "JPEG"))
    at.slider(key="live_threshold").set_value(0.8).run()
    assert any("mask ≥ 0.80" in (img.proto.imgs[0].caption if img.proto.imgs else "")
               for img in at.get("image"))  # fmt: skip
    at.selectbox(key="live_method").set_value("layercam").run()
    assert not at.exception and not at.error
    assert_predictions(at, cache_dir)


def test_unexpected_failure_becomes_a_short_error(page, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("internal detail that users should not see")

    monkeypatch.setattr(ul, "predict", boom)
    at = upload(page, "fresh.jpg", encode(street(seed=11), "JPEG"))
    assert [e.value for e in at.error] == [ul.UNEXPECTED_MESSAGE]


def test_sample_picker_shows_segmentation_and_map(cache_dir):
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["cache_path"] = str(cache_dir)
    at.run()
    at.radio(key="live_source").set_value("Sample from the test set").run()
    assert not at.exception and not at.error
    assert_predictions(at, cache_dir)
    captions = [c.value for c in at.caption]
    assert any(c.startswith("The explanation is made of:") for c in captions)
    assert sum(c.startswith("test image ") for c in captions) == 6  # nearest test images
    maps = [img for img in at.get("image") if "your photo" in img.proto.imgs[0].caption]
    assert len(maps) == 1 and maps[0].proto.imgs[0].url  # the placement map, drawn as an image


def test_unavailable_hf_segmenter_is_a_warning_not_a_failure(tmp_path):
    root = make_fake_cache(tmp_path / "hf", n_images=20, archs=("resnet18",), image_size=32,
                           pool_size=4, with_thumbs=False)  # fmt: skip
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["segmenter"] = {"spec": "hf:/nonexistent/segmenter-dir", "name": "x", "n_classes": 150}
    (root / "manifest.json").write_text(json.dumps(manifest))
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["cache_path"] = str(root)
    at.run()
    at = upload(at, "street.jpg", encode(street(seed=6), "JPEG"))
    assert any("Cannot load the segmentation model" in w.value for w in at.warning)
    assert not at.error
    assert_predictions(at, root)


def test_cache_without_checkpoints_says_so(tmp_path):
    root = make_fake_cache(tmp_path / "nomodels", n_images=20, archs=("simple",), image_size=32,
                           pool_size=4, with_models=False, with_thumbs=False)  # fmt: skip
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["cache_path"] = str(root)
    at.run()
    assert not at.exception and not at.file_uploader
    assert any("no model checkpoints" in i.value for i in at.info)


# --------------------------------------------------------------------------- one upload limit


def test_upload_limit_is_stated_once_and_agrees_everywhere(page):
    import tomllib

    config = tomllib.loads((Path(PAGE).parents[1] / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == ul.MAX_UPLOAD_MB
    widget = page.file_uploader(key="live_upload")
    assert widget.proto.max_upload_size_mb == ul.MAX_UPLOAD_MB
    assert f"up to {ul.MAX_UPLOAD_MB} MB per file" in widget.help
    assert f"{ul.MAX_UPLOAD_PIXELS:,} pixels" in widget.help
    assert ul.MAX_UPLOAD_BYTES == ul.MAX_UPLOAD_MB * 2**20
    # the pixel limit is worded the same in the refusal as in the help text
    refusal = ul.read_upload(png_header_only(6000, 6000)).error
    assert f"the limit is {ul.MAX_UPLOAD_PIXELS:,} pixels" in refusal


@pytest.mark.parametrize(
    ("server", "limit"),
    [(None, ul.MAX_UPLOAD_MB), ("x", ul.MAX_UPLOAD_MB), (200, ul.MAX_UPLOAD_MB), (5, 5), (0, 1)],
)
def test_a_lower_server_cap_lowers_the_stated_limit(server, limit):
    assert ul.upload_limit_mb(server) == limit


def test_over_limit_upload_gets_a_clear_message(page):
    data = encode(street(), "JPEG")
    big = data + b"\x00" * (ul.MAX_UPLOAD_BYTES + 1 - len(data))
    at = upload(page, "big.jpg", big)
    assert [e.value for e in at.error] == [
        f"The file is 20.0 MB; the limit is {ul.MAX_UPLOAD_MB} MB per file. "
        "Please upload a smaller photo."
    ]
    at = upload(page, "fits.jpg", data + b"\x00" * (ul.MAX_UPLOAD_BYTES - len(data)))
    assert not at.error


# --------------------------------------------------------------------------- OOD caveat


def ood_warnings(at: AppTest) -> list[str]:
    return [w.value for w in at.warning if w.value == ul.OOD_MESSAGE]


def test_a_photo_unlike_the_test_photos_gets_the_caveat(page):
    flat = Image.new("RGB", (160, 120), (200, 30, 30))
    at = upload(page, "flat.png", encode(flat, "PNG"))
    assert not at.error
    assert ood_warnings(at)


def test_a_test_photo_gets_no_caveat(cache_dir):
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["cache_path"] = str(cache_dir)
    at.run()
    at.radio(key="live_source").set_value("Sample from the test set").run()
    assert not at.exception and not at.error
    assert len([m for m in at.markdown if " predicts " in m.value]) == 2
    assert not ood_warnings(at)


# --------------------------------------------------------------------------- light per-upload parts


def test_probability_rows_escape_names_and_bold_the_most_probable_city():
    rows = ul.probability_rows([0.25, 0.625, 0.125], ["a", "![b](http://x/y.png)", "**c**"])
    assert [v for v, _ in rows] == [0.25, 0.625, 0.125]
    assert rows[0][1] == "a 25.0%"
    assert rows[1][1].startswith("**") and rows[1][1].endswith(" 62.5%**")
    assert "![b](" not in rows[1][1] and "\\*\\*c\\*\\*" in rows[2][1]
    assert [v for v, _ in ul.probability_rows([1.2, -0.2], ["x", "y"])] == [1.0, 0.0]


def test_map_canvas_places_the_photo_where_its_coordinates_say():
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(50, 2)) * [4.0, 1.0]
    city = ["p" if x > 0 else "q<b>" + "L" * 80 for x in xy[:, 0]]
    canvas = ul.MapCanvas.draw(xy, city, {"p": "#ff0000", "q<b>" + "L" * 80: "#0000ff"})
    px = canvas.to_px(xy)
    w, h = ul.MAP_WIDTH, ul.MAP_HEIGHT
    assert px[:, 0].min() >= 0 and px[:, 0].max() <= w and px[:, 1].min() >= 0
    assert px[:, 1].max() <= h
    # one scale for both axes: the wide spread fills the width, distances keep their ratio
    assert px[:, 0].max() - px[:, 0].min() == pytest.approx(w - 28, abs=1e-6)
    d_map = np.hypot(*(xy[0] - xy[1]))
    assert np.hypot(*(px[0] - px[1])) == pytest.approx(d_map * canvas.scale[0])
    assert canvas.background.shape[0] > h  # the legend rows below the plot
    before = canvas.background.copy()
    photo = xy.mean(axis=0)
    out = canvas.place(photo, xy[:3])
    x, y = np.round(canvas.to_px(photo)).astype(int)
    assert tuple(out[y, x]) == (255, 212, 0)  # the star
    assert np.array_equal(canvas.background, before)  # drawn on a copy: shared between sessions
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        ul.MapCanvas.draw(xy[:, :1], city, {})
    with pytest.raises(ValueError, match="no finite"):
        ul.MapCanvas.draw(np.full((3, 2), np.nan), ["a"] * 3, {})


def test_run_times_append_whole_lines_from_many_threads(tmp_path, monkeypatch):
    import threading

    path = tmp_path / "times.jsonl"
    monkeypatch.setenv(ul.TIMING_ENV, str(path))

    def one(i: int) -> None:
        times = ul.RunTimes()
        with times.step("models"):
            sum(range(20_000))
        with times.step("models"):
            pass
        times.write(f"digest{i}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(r["digest"] for r in records) == sorted(f"digest{i}" for i in range(16))
    for r in records:
        assert r["start"] <= r["end"] and r["cpu"] >= 0 and set(r["steps"]) == {"models"}
        assert 0 < r["steps"]["models"] <= r["end"] - r["start"] + 1e-6
    monkeypatch.delenv(ul.TIMING_ENV)
    ul.RunTimes().write("nowhere")  # no file named: nothing written, nothing raised
    assert len(path.read_text().splitlines()) == 16


def test_ood_check_leaves_the_threads_openmp_setting_as_it_was():
    from threadpoolctl import threadpool_info

    from cityviz import ood

    rng = np.random.default_rng(1)
    reference = ood.fit_reference(rng.normal(size=(40, 8)))
    result = ul.ModelResult("m", np.array([0.5, 0.5]), 0, "a", np.zeros((4, 4)),
                            rng.normal(size=8).astype(np.float32))  # fmt: skip
    before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"]
    d, pct, _flag = ul.ood_check(reference, result)
    assert (d, pct) == tuple(float(v[0]) for v in ood.score(reference, result.features[None])[:2])
    assert [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"] == before
