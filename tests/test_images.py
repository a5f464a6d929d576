"""cityviz.data.images: every odd or hostile input decodes correctly or fails with
ImageDecodeError; resize_center_crop keeps labels exact and aligned with their images;
image_batches gives the same batches, in order, with or without loader processes."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torchvision.transforms.functional as TF
from PIL import Image, ImageFile

from cityviz.data.images import (
    ImageDecodeError,
    crop_geometry,
    decode_image,
    decode_resized,
    display_path,
    image_batches,
    resize_center_crop,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width×height`` pixels (no pixel data at all)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- modes


def test_cmyk_jpeg_becomes_rgb():
    im = Image.new("CMYK", (16, 12), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(_save(im, "JPEG", quality=95))
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    r, g, b = out.reshape(-1, 3).mean(0)
    assert r > 230 and g < 25 and b < 25


def test_16bit_png_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100, 40000, 65535]], dtype=np.uint16)
    im = Image.fromarray(values)
    assert im.mode == "I;16"
    out = decode_image(_save(im, "PNG"))
    assert out.shape == (1, 4, 3)
    # 65535 -> 255, 25700 -> 100, 40000 -> round(40000 / 257) = 156 (clipping would give 255)
    assert out[0, :, 0].tolist() == [0, 100, 156, 255]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_32bit_integer_image_in_16bit_range_is_scaled():
    im = Image.fromarray(np.array([[0, 65535, 32896]], dtype=np.int32), mode="I")
    out = decode_image(_save(im, "TIFF"))
    assert out[0, :, 0].tolist() == [0, 255, 128]


def test_greyscale_and_grey_alpha():
    grey = Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint8), mode="L")
    assert decode_image(_save(grey, "PNG"))[0].tolist() == [[0] * 3, [128] * 3, [255] * 3]
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (0, 0))  # fully transparent black -> white
    la.putpixel((1, 0), (0, 255))  # opaque black stays black
    assert decode_image(_save(la, "PNG"))[0].tolist() == [[255] * 3, [0] * 3]


def test_palette_with_transparency_composites_on_white():
    im = Image.new("P", (4, 2), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    im.putpixel((0, 0), 1)
    im.info["transparency"] = 0
    data = _save(im, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = decode_image(data)
    assert tuple(out[0, 0]) == RED
    assert tuple(out[1, 3]) == WHITE  # index 0 is transparent


def test_rgba_half_transparent_blends_with_white():
    im = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    out = decode_image(_save(im, "PNG"))
    # 0 * 128/255 + 255 * 127/255 = 127
    assert tuple(out[0, 0]) == (127, 127, 127)


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = decode_image(data)
    assert out.shape == (8, 8, 3)
    assert np.abs(out.astype(int) - RED).max() <= 2


def test_exif_orientation_is_applied():
    arr = np.zeros((20, 40, 3), np.uint8)  # 20 high, 40 wide: left half red, right half blue
    arr[:, :20] = RED
    arr[:, 20:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    out = decode_image(_save(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes()))
    assert out.shape == (40, 20, 3)  # portrait after rotation
    top, bottom = out[5, 10].astype(int), out[34, 10].astype(int)
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_paths_and_file_objects(tmp_path: Path):
    p = tmp_path / "x.png"
    Image.new("RGB", (3, 2), BLUE).save(p)
    for src in (p, str(p), io.BytesIO(p.read_bytes()), bytearray(p.read_bytes())):
        out = decode_image(src)
        assert out.shape == (2, 3, 3) and tuple(out[0, 0]) == BLUE


# --------------------------------------------------------------------------- failures


def _fails(src, match: str, **kw) -> ImageDecodeError:
    with pytest.raises(ImageDecodeError, match=match) as info:
        decode_image(src, **kw)
    err = info.value
    assert type(err) is ImageDecodeError and isinstance(err, ValueError)
    assert str(err)[0].isupper() and str(err).endswith(".")  # a sentence for a user
    return err


def test_truncated_jpeg_is_an_error_not_a_partial_image():
    rng = np.random.default_rng(0)
    data = _save(Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)), "JPEG")
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    _fails(data[: len(data) // 2], "damaged or incomplete")


def test_random_bytes_and_text_are_not_images():
    _fails(np.random.default_rng(1).bytes(2048), "not a recognised image")
    _fails(b"hello, this is a text file\n", "not a recognised image")


def test_empty_and_missing_files(tmp_path: Path):
    _fails(b"", "empty")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    _fails(empty, "empty")
    _fails(tmp_path / "nope.jpg", "does not exist")
    _fails(tmp_path, "folder")


def test_display_path_is_printable_text_for_any_name():
    assert display_path(b"caf\xe9.jpg") == "caf\\xe9.jpg"
    assert display_path(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"  # surrogate escapes
    assert display_path("a\nb\tc\u2028.jpg") == "a\\nb\\tc\\u2028.jpg"
    assert display_path(Path("café/日本 の.png")) == "café/日本 の.png"
    rng = np.random.default_rng(0)
    for _ in range(300):
        raw = rng.bytes(int(rng.integers(1, 40)))
        shown = display_path(raw)
        shown.encode("utf-8")  # never a lone surrogate
        assert shown.isprintable() and display_path(os.fsdecode(raw)) == shown


def test_odd_paths_fail_with_a_printable_sentence(tmp_path: Path):
    empty = os.fsencode(tmp_path) + b"/caf\xe9\n.jpg"
    open(empty, "wb").close()
    with pytest.raises(ImageDecodeError, match=r"The file caf\\xe9\\n\.jpg is empty") as info:
        decode_image(os.fsdecode(empty))
    str(info.value).encode("utf-8")
    with pytest.raises(ImageDecodeError, match=r"could not be read \(file name too long\)"):
        decode_image(tmp_path / ("x" * 300 + ".jpg"))
    with pytest.raises(ImageDecodeError, match="not a valid file name"):
        decode_image(str(tmp_path / "nul\0.jpg"))


def test_bomb_header_rejected_before_decoding(monkeypatch: pytest.MonkeyPatch):
    data = _png_header_only(20_000, 20_000)  # 400 Mpx claimed by a 45-byte file
    assert len(data) < 100

    def no_decoding(self):
        raise AssertionError("pixel data must not be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    _fails(data, "too large")
    # within PIL's own limit but above ours: our check still fires first
    _fails(_png_header_only(5000, 5000), "too large", max_pixels=1_000_000)


def test_real_compressed_bomb_with_small_limit():
    data = _save(Image.new("L", (3000, 3000), 0), "PNG", optimize=True)
    assert len(data) < 50_000
    err = _fails(data, "3000×3000", max_pixels=1_000_000)
    assert "1,000,000" in str(err)


def test_pil_bomb_error_and_warning_are_converted():
    # our limit set above PIL's: PIL's own DecompressionBombError must still come out as ours
    assert 2 * Image.MAX_IMAGE_PIXELS < 20_000 * 20_000
    _fails(_png_header_only(20_000, 20_000), "too large", max_pixels=10**12)
    side = int((Image.MAX_IMAGE_PIXELS * 1.5) ** 0.5)  # between PIL's warning and error limits
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        _fails(_png_header_only(side, side), "too large", max_pixels=10**12)


# --------------------------------------------------------------------------- geometry


def test_crop_geometry_matches_hand_computation():
    # landscape 480×640 -> 224×int(224*640/480)=298, left = round(74 / 2) = 37
    assert crop_geometry(480, 640, 224) == (224, 298, 0, 37)
    # portrait 300×200 -> int(96*300/200)=144×96, top = round(48 / 2) = 24
    assert crop_geometry(300, 200, 96) == (144, 96, 24, 0)
    assert crop_geometry(50, 50, 64) == (64, 64, 0, 0)


@pytest.mark.parametrize(
    "h,w,size", [(480, 640, 224), (300, 200, 96), (37, 51, 64), (1080, 1920, 112)]
)
def test_resize_matches_torchvision(h: int, w: int, size: int):
    rng = np.random.default_rng(h * w)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    lab = rng.integers(0, 150, (h, w), dtype=np.uint8)
    ours = resize_center_crop(img, size)
    ref = np.asarray(TF.center_crop(TF.resize(Image.fromarray(img), size), size))
    assert ours.shape == (size, size, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - ref).max() <= 1
    ours_lab = resize_center_crop(lab, size, nearest=True)
    ref_lab = np.asarray(
        TF.center_crop(
            TF.resize(Image.fromarray(lab), size, interpolation=TF.InterpolationMode.NEAREST), size
        )
    )
    assert (ours_lab == ref_lab).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_nearest_keeps_exact_labels_any_dtype(dtype):
    rng = np.random.default_rng(3)
    hi = min(np.iinfo(dtype).max, 100_000)
    lab = rng.integers(0, hi, (57, 83), dtype=dtype)
    out = resize_center_crop(lab, 40, nearest=True)
    assert out.dtype == lab.dtype and out.shape == (40, 40)
    assert set(np.unique(out)) <= set(np.unique(lab))
    # hand-check one pixel: rows scale 57/40, cols scale 83/int(40*83/57)=83/58, left = 9
    new_h, new_w, top, left = crop_geometry(57, 83, 40)
    assert (new_h, new_w, top, left) == (40, 58, 0, 9)
    i, j = 17, 5
    assert out[i, j] == lab[int((i + 0.5) * 57 / 40), int((left + j + 0.5) * 83 / 58)]


def test_image_and_label_stay_aligned():
    """An image painted from its label map must agree with the resized labels away from edges."""
    rng = np.random.default_rng(7)
    blocks = rng.integers(0, 6, (20, 25))
    lab = np.kron(blocks, np.ones((18, 18), dtype=np.int64))  # 360×450, 18 px cells
    palette = rng.integers(0, 256, (6, 3)).astype(np.uint8)
    img = palette[lab]
    size = 119  # cells become ~6 px
    out_img = resize_center_crop(img, size).astype(int)
    out_lab = resize_center_crop(lab, size, nearest=True)
    interior = np.zeros((size, size), bool)
    interior[1:-1, 1:-1] = True
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = np.roll(np.roll(out_lab, dy, 0), dx, 1)
            interior &= shifted == out_lab
    assert interior.mean() > 0.3
    diff = np.abs(out_img - palette[out_lab].astype(int)).max(axis=2)
    assert diff[interior].max() <= 1
    # a one-pixel shift of the labels breaks this agreement: the test can fail
    moved = np.roll(out_lab, 2, 1)
    assert (np.abs(out_img - palette[moved].astype(int)).max(axis=2) > 1).mean() > 0.05


def test_resize_rejects_bilinear_labels_and_keeps_identity():
    with pytest.raises(ValueError, match="nearest=True"):
        resize_center_crop(np.zeros((10, 10), np.int32), 5)
    img = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    out = resize_center_crop(img, 64)  # no scaling needed: a pure centre crop
    assert (out == img[:, 8:72]).all()


# ---- batched loading (DataLoader) ----------------------------------------------------------


@pytest.fixture(scope="module")
def photo_paths(tmp_path_factory) -> list[Path]:
    """Seven small photos of different sizes and modes (JPEG, PNG, greyscale)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        h, w = 24 + 5 * i, 40 - 2 * i
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        im = Image.fromarray(arr).convert("L") if i == 3 else Image.fromarray(arr)
        path = root / f"p{i}.{'png' if i % 2 else 'jpg'}"
        im.save(path)
        paths.append(path)
    return paths


def test_image_batches_equal_with_and_without_workers(photo_paths):
    from cityviz.data.datasets import load_uint8_batch

    want = load_uint8_batch(photo_paths, 16)  # how the data stage decoded before
    for workers in (0, 2):
        batches = list(image_batches(photo_paths, 3, size=16, num_workers=workers))
        assert [len(b) for b in batches] == [3, 3, 1]
        assert all(str(b.dtype) == "torch.uint8" and not b.is_pinned() for b in batches)
        np.testing.assert_array_equal(np.concatenate([b.numpy() for b in batches]), want)
    arr = np.lib.format.open_memmap(photo_paths[0].parent / "x.npy", "w+", np.uint8, want.shape)
    arr[:] = want
    for workers in (0, 2):
        got = [b.numpy() for b in image_batches(arr, 4, num_workers=workers)]
        assert [len(b) for b in got] == [4, 3]
        np.testing.assert_array_equal(np.concatenate(got), want)
    np.testing.assert_array_equal(decode_resized(photo_paths[2], 16), want[2])
    assert list(image_batches(want[:0], 4)) == []


def test_image_batches_name_a_bad_file_in_one_sentence(photo_paths, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image at all")
    for workers in (0, 1):
        with pytest.raises(ImageDecodeError) as info:
            list(image_batches([photo_paths[0], bad], 2, size=16, num_workers=workers))
        assert str(info.value).startswith("broken.jpg: The file is not a recognised image")
        assert "Traceback" not in str(info.value)
    with pytest.raises(ValueError, match="size="):
        list(image_batches(photo_paths, 2))
    with pytest.raises(ValueError, match="batch_size"):
        list(image_batches(photo_paths, 0, size=16))
    with pytest.raises(ValueError, match="num_workers"):
        list(image_batches(photo_paths, 2, size=16, num_workers=-1))


def test_predictions_and_cams_equal_with_and_without_loader_workers():
    import torch

    from cityviz.cam import Explainer
    from cityviz.config import RunConfig
    from cityviz.models.archs import build_model
    from cityviz.models.train import predict
    from precompute.workers import cam_shard

    torch.manual_seed(0)
    model = build_model("simpler", 3).eval()
    test = np.random.default_rng(1).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    truth = np.array([0, 1, 2, 0, 1, 2, 0])
    explainer = Explainer(model, "simpler")
    out = {}
    for workers in (0, 2):
        cfg = RunConfig(
            batch_size=3, num_workers=workers, cam_method="gradcam++", cam_target="true"
        )
        out[workers] = (
            predict(model, "simpler", test, torch.device("cpu"), 3, num_workers=workers),
            cam_shard(explainer, test, truth, cfg, slice(1, 7)),
        )
    np.testing.assert_array_equal(out[0][0], out[2][0])
    assert out[0][0].shape == (7, 3)
    for key in ("cams", "probs", "target"):
        np.testing.assert_array_equal(out[0][1][key], out[2][1][key])
    np.testing.assert_array_equal(out[0][1]["target"], truth[1:7])
    alone = explainer(test[4:7], target=torch.from_numpy(truth[4:7]), method="gradcam++")
    np.testing.assert_array_equal(out[2][1]["cams"][3:6], alone.cams.numpy())
