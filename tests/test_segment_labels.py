"""Label maps that mean what they say (issue 9, fault 10).

* Annotation PNGs: 1-based labels (ADE20K's release) are refused with the fix, or read with
  ``reduce_labels``; values beyond the class list, colour-coded, empty and corrupt files are
  refused naming the file; 8-bit, 16-bit and palette PNGs are read by value; label maps are
  cropped pixel for pixel like their (non-square, even EXIF-rotated) photos, by nearest neighbour.
* Hugging Face processors that resize, centre-crop or pad cannot shift the label maps: a stand-in
  model whose logits follow the pixel colour labels the red third of a crop "red".
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cityviz.data.ade20k import ADE20K_CLASSES
from cityviz.data.images import decode_image, resize_center_crop
from cityviz.segment import (
    AnnotationSegmenter,
    HFSegmenter,
    model_input_size,
    segmenter_from_spec,
)

N_ADE = len(ADE20K_CLASSES)


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    """Write ``array`` as an image: 8-bit "L", 16-bit "I;16", "P" (palette index = value, with a
    scrambled palette), or whatever PIL infers from the array."""
    array = np.ascontiguousarray(array)
    if mode == "P":
        h, w = array.shape
        im = Image.frombytes("P", (w, h), array.astype(np.uint8).tobytes())
        rng = np.random.default_rng(1)
        im.putpalette(rng.integers(0, 256, size=768, dtype=np.uint8).tobytes())
    elif mode == "I;16":
        im = Image.fromarray(array.astype(np.uint16))
    elif mode == "L":
        im = Image.fromarray(array.astype(np.uint8))
    else:
        im = Image.fromarray(array)
    im.save(path)
    return path


def _crops(n: int = 1, size: int = 8) -> np.ndarray:
    return np.zeros((n, size, size, 3), np.uint8)


# ---------------------------------------------------------------- label values


def _one_based_ade(height: int = 8, width: int = 8) -> np.ndarray:
    """ADE20K-release labels: 0 other, 1 wall, 2 building, 3 sky, 150 flag, 255 ignore."""
    label = np.zeros((height, width), np.int64)
    label[:, 1] = 1
    label[:, 2] = 2
    label[:, 3] = 3
    label[:, 4] = 150
    label[:, 5] = 255
    return label


@pytest.mark.parametrize("mode", ["L", "I;16", "P"])
def test_one_based_labels_are_refused_with_the_fix(tmp_path: Path, mode: str) -> None:
    path = _save(tmp_path / "ade_0001.png", _one_based_ade(), mode)
    seg = AnnotationSegmenter({"a": path}, ADE20K_CLASSES)
    with pytest.raises(ValueError) as info:
        seg.segment(_crops(), ["a"])
    message = str(info.value)
    assert "ade_0001.png" in message
    assert "value 150" in message
    assert "1-based" in message
    assert "--reduce-labels" in message
    assert "\n" not in message


@pytest.mark.parametrize("mode", ["L", "I;16", "P"])
def test_reduce_labels_gives_each_pixel_its_own_name(tmp_path: Path, mode: str) -> None:
    path = _save(tmp_path / "ade.png", _one_based_ade(), mode)
    seg = segmenter_from_spec(
        "annotations", label_paths={"a": path}, class_names=ADE20K_CLASSES, reduce_labels=True
    )
    assert isinstance(seg, AnnotationSegmenter)
    out = seg.segment(_crops(), ["a"])[0]
    row = out[0]
    assert row[0] == 255 and row[5] == 255  # "other" and the ignore value: unlabelled
    assert [ADE20K_CLASSES[v] for v in row[1:5]] == ["wall", "building", "sky", "flag"]
    assert (out[:, 6:] == 255).all()  # the zero columns are "other" too


@pytest.mark.parametrize(
    ("values", "names", "reduce", "match"),
    [
        ([0, 42], 11, False, r"value 42, beyond the 11 class names"),
        ([0, 11], 11, False, r"value 11 with 11 class names: labels look 1-based"),
        ([1, 13], 11, True, r"value 13, beyond the 11 class names after --reduce-labels"),
        ([0, 254], N_ADE, False, r"value 254, beyond the 150"),
        ([0, 300], 299, False, r"value 300, beyond the 299"),
    ],
)
def test_values_beyond_the_class_list_are_refused(
    tmp_path: Path, values: list[int], names: int, reduce: bool, match: str
) -> None:
    label = np.array([values * 4] * 8, dtype=np.uint16)
    mode = "I;16" if max(values) > 255 else "L"
    path = _save(tmp_path / "bad.png", label, mode)
    seg = AnnotationSegmenter({"a": path}, [f"c{i}" for i in range(names)], reduce_labels=reduce)
    with pytest.raises(ValueError, match=match) as info:
        seg.load_label("a")
    assert "bad.png" in str(info.value)


def test_negative_values_are_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "neg.tif", np.array([[0, -3], [1, 2]], dtype=np.int32))
    seg = AnnotationSegmenter({"a": path}, ["x", "y", "z"])
    with pytest.raises(ValueError, match=r"neg\.tif has the negative value -3"):
        seg.load_label("a")


def test_ignore_values_are_unlabelled_in_8_and_16_bit(tmp_path: Path) -> None:
    eight = _save(tmp_path / "e.png", np.array([[0, 149, 255, 7]] * 4), "L")
    sixteen = _save(tmp_path / "s.png", np.array([[0, 149, 255, 65535]] * 4), "I;16")
    seg = AnnotationSegmenter({"e": eight, "s": sixteen}, ADE20K_CLASSES)
    out = seg.segment(_crops(2, 4), ["e", "s"])
    np.testing.assert_array_equal(out[0, 0], [0, 149, 255, 7])
    np.testing.assert_array_equal(out[1, 0], [0, 149, 255, 255])


def test_palette_index_is_the_label_not_the_colour(tmp_path: Path) -> None:
    label = np.array([[0, 2, 9, 2]] * 4, dtype=np.uint8)
    path = _save(tmp_path / "p.png", label, "P")
    with Image.open(path) as im:
        assert im.mode == "P"
    seg = AnnotationSegmenter({"a": path}, [f"c{i}" for i in range(10)])
    np.testing.assert_array_equal(seg.load_label("a"), label)


def test_no_class_zero_anywhere_warns_once_per_data_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = {
        k: _save(tmp_path / f"{k}.png", np.full((4, 4), v), "L") for k, v in (("a", 1), ("b", 3))
    }
    seg = AnnotationSegmenter(paths, ADE20K_CLASSES)
    with caplog.at_level(logging.WARNING, logger="cityviz.segment"):
        seg.segment(_crops(1, 4), ["a"])
        seg.segment(_crops(1, 4), ["b"])
    warnings = [r for r in caplog.records if "1-based" in r.getMessage()]
    assert len(warnings) == 1
    assert "no pixel of the 2 label maps has value 0 (wall)" in warnings[0].getMessage()

    caplog.clear()
    paths["c"] = _save(tmp_path / "c.png", np.zeros((4, 4)), "L")
    for reduce in (False, True):  # a class-0 pixel, or 1-based labels declared: no warning
        seg = AnnotationSegmenter(paths, ADE20K_CLASSES, reduce_labels=reduce)
        with caplog.at_level(logging.WARNING, logger="cityviz.segment"):
            seg.segment(_crops(1, 4), ["a"])
    assert not [r for r in caplog.records if "1-based" in r.getMessage()]


def test_a_bad_map_anywhere_in_the_data_set_is_refused_before_work(tmp_path: Path) -> None:
    good = _save(tmp_path / "good.png", np.zeros((4, 4)), "L")
    bad = _save(tmp_path / "train_bad.png", np.full((4, 4), N_ADE), "L")
    seg = AnnotationSegmenter({"good": good, "bad": bad}, ADE20K_CLASSES)
    with pytest.raises(ValueError, match=r"train_bad\.png has value 150"):
        seg.segment(_crops(1, 4), ["good"])


# ---------------------------------------------------------------- bad files


def _truncated_png() -> bytes:
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 9, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "PNG")
    data = buf.getvalue()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", r"is an empty file"),
        (b"this is not an image at all", r"damaged or not an image"),
        ("truncated", r"damaged or not an image"),
        (None, r"cannot read label map .*missing\.png"),
    ],
)
def test_empty_corrupt_and_missing_files_are_refused(
    tmp_path: Path, content: bytes | str | None, match: str
) -> None:
    path = tmp_path / "missing.png" if content is None else tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(_truncated_png() if content == "truncated" else content)
    seg = AnnotationSegmenter({"a": path}, ADE20K_CLASSES)
    with pytest.raises(ValueError, match=match) as info:
        seg.segment(_crops(), ["a"])
    assert path.name in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("array", "suffix", "match"),
    [
        (np.zeros((4, 4, 3), np.uint8), ".png", r"has 3 channels \(PIL mode RGB\)"),
        (np.zeros((4, 4, 4), np.uint8), ".png", r"has 4 channels \(PIL mode RGBA\)"),
        (np.zeros((4, 4, 2), np.uint8), ".png", r"has 2 channels \(PIL mode LA\)"),
        (np.zeros((4, 4), np.float32), ".tif", r"floating-point values \(PIL mode F\)"),
    ],
)
def test_colour_and_float_label_maps_are_refused(
    tmp_path: Path, array: np.ndarray, suffix: str, match: str
) -> None:
    path = _save(tmp_path / f"colour{suffix}", array)
    seg = AnnotationSegmenter({"a": path}, ADE20K_CLASSES)
    with pytest.raises(ValueError, match=match) as info:
        seg.load_label("a")
    assert "single-channel" in str(info.value)
    assert path.name in str(info.value)


# ---------------------------------------------------------------- geometry


def _left_third(height: int, width: int, inside, outside) -> np.ndarray:
    shape = (height, width) if np.ndim(inside) == 0 else (height, width, len(inside))
    out = np.empty(shape, np.uint8)
    out[:, : width // 3] = inside
    out[:, width // 3 :] = outside
    return out


@pytest.mark.parametrize(("height", "width"), [(60, 90), (90, 60), (60, 60)])
@pytest.mark.parametrize("label_scale", [1, 2])
def test_label_maps_are_cropped_like_their_photos(
    tmp_path: Path, height: int, width: int, label_scale: int
) -> None:
    """A label map whose left third is class 1 lands on the photo's red left third, at the
    photo's size or at half of it (nearest neighbour: no other value appears)."""
    photo = _left_third(height, width, (255, 0, 0), (0, 0, 255))
    photo_path = tmp_path / "photo.png"
    Image.fromarray(photo).save(photo_path)
    lh, lw = height // label_scale, width // label_scale
    label_path = _save(tmp_path / "label.png", _left_third(lh, lw, 1, 2), "L")
    seg = AnnotationSegmenter(
        {"a": label_path}, ["other", "red", "blue"], image_paths={"a": photo_path}
    )
    size = 40
    crop = resize_center_crop(decode_image(photo_path), size)
    out = seg.segment(crop[None], ["a"])[0]

    assert set(np.unique(out)) <= {1, 2}
    red = crop[..., 0] > 128
    if label_scale == 1:
        np.testing.assert_array_equal(
            out, resize_center_crop(_left_third(lh, lw, 1, 2), size, nearest=True)
        )
        np.testing.assert_array_equal(out == 1, red)
    else:  # the half-size map rounds the boundary its own way: one crop column may differ
        wrong_cols = np.nonzero((out != np.where(red, 1, 2)).any(axis=0))[0]
        assert len(wrong_cols) <= 1
        assert (out == 1).any() == red.any()


def test_label_map_of_another_aspect_ratio_is_refused(tmp_path: Path) -> None:
    photo_path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((60, 90, 3), np.uint8)).save(photo_path)
    label_path = _save(tmp_path / "label.png", np.zeros((60, 60)), "L")
    seg = AnnotationSegmenter({"a": label_path}, ["x"], image_paths={"a": photo_path})
    with pytest.raises(ValueError, match=r"label\.png is 60x60 pixels but its photo .* is 90x60"):
        seg.segment(_crops(1, 40), ["a"])


def test_exif_rotated_photo_is_measured_as_decoded(tmp_path: Path) -> None:
    stored = np.zeros((40, 60, 3), np.uint8)  # 60 wide, 40 high; orientation 6 → 40 wide
    exif = Image.Exif()
    exif[0x0112] = 6
    photo_path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(photo_path, exif=exif)
    assert decode_image(photo_path).shape[:2] == (60, 40)
    upright = _save(tmp_path / "upright.png", np.zeros((60, 40)), "L")
    sideways = _save(tmp_path / "sideways.png", np.zeros((40, 60)), "L")
    seg = AnnotationSegmenter(
        {"u": upright, "s": sideways}, ["x"], image_paths={"u": photo_path, "s": photo_path}
    )
    assert seg.segment(_crops(1, 20), ["u"]).shape == (1, 20, 20)
    with pytest.raises(ValueError, match="another aspect ratio"):
        seg.segment(_crops(1, 20), ["s"])


# ---------------------------------------------------------------- Hugging Face processors


class ColourModel:
    """Stand-in segmentation model: logits at 1/4 resolution, class 0 ("red") = R − B and
    class 1 ("blue") = B − R of the normalised pixels, average-pooled over 4×4 blocks."""

    def __init__(self) -> None:
        self.config = SimpleNamespace(id2label={0: "red", 1: "blue"})
        self.seen: list[tuple[int, int]] = []

    def __call__(self, pixel_values):
        import torch
        import torch.nn.functional as F

        h, w = pixel_values.shape[-2:]
        assert h % 4 == 0 and w % 4 == 0, f"stand-in needs sizes divisible by 4, got {h}x{w}"
        self.seen.append((h, w))
        diff = pixel_values[:, 0] - pixel_values[:, 2]
        logits = F.avg_pool2d(torch.stack([diff, -diff], dim=1), 4)
        return SimpleNamespace(logits=logits)


def _processors() -> dict:
    from transformers import (
        BeitImageProcessor,
        ConvNextImageProcessor,
        DPTImageProcessor,
        Mask2FormerImageProcessor,
        SegformerImageProcessor,
    )

    return {
        "segformer": SegformerImageProcessor(size={"height": 32, "width": 32}),
        "convnext-crop-pct": ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875),
        "beit-center-crop": BeitImageProcessor(
            size={"height": 48, "width": 48},
            do_center_crop=True,
            crop_size={"height": 32, "width": 32},
        ),
        "dpt-pad-aspect": DPTImageProcessor(
            size={"height": 40, "width": 40},
            keep_aspect_ratio=True,
            ensure_multiple_of=8,
            do_pad=True,
            size_divisor=16,
        ),
        "mask2former": Mask2FormerImageProcessor(
            size={"shortest_edge": 32, "longest_edge": 64}, size_divisor=32
        ),
    }


def _stand_in_segmenter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processor) -> HFSegmenter:
    """An HFSegmenter built through its constructor, with ``processor`` and :class:`ColourModel`
    in place of a checkpoint's."""
    monkeypatch.setattr(HFSegmenter, "_load", lambda self, ref, local: (processor, ColourModel()))
    return HFSegmenter(tmp_path, batch_size=2)


def _boundary_errors(labels: np.ndarray, width: int, red_left: bool = True) -> np.ndarray:
    """Distances (crop pixels) from the left-third boundary of every wrongly labelled pixel."""
    cols = np.arange(width)
    left = cols < width // 3
    expected = np.where(left == red_left, 0, 1)[None, :]
    _, wrong_cols = np.nonzero(labels != expected)
    return np.abs(wrong_cols + 0.5 - width // 3)


@pytest.mark.parametrize("shape", [(48, 48), (48, 72), (72, 48)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("which", list(_processors()))
def test_hf_label_maps_align_with_the_crop_whatever_the_processor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str, shape: tuple[int, int]
) -> None:
    h, w = shape
    processor = _processors()[which]
    seg = _stand_in_segmenter(tmp_path, monkeypatch, processor)
    red, blue = (255, 0, 0), (0, 0, 255)
    images = np.stack([_left_third(h, w, red, blue), _left_third(h, w, blue, red)])
    out = seg.segment(images)

    assert out.shape == (2, h, w)
    assert tuple(seg.class_names) == ("red", "blue")
    assert seg.model.seen == [model_input_size(processor, h, w)]  # one batch of two
    for labels, red_left in zip(out, (True, False), strict=True):
        errors = _boundary_errors(labels, w, red_left)
        assert errors.size == 0 or errors.max() <= 1.0, (which, shape, errors.max())
        assert (labels[:, : w // 3 - 1] == (0 if red_left else 1)).all()


def test_the_alignment_check_catches_a_centre_cropping_processor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old path (the processor's own resize + centre crop, then logits stretched over the
    crop) shifts the boundary by several pixels; the check above would fail on it."""
    import torch
    import torch.nn.functional as F

    processor = _processors()["convnext-crop-pct"]
    h, w = 48, 72
    image = _left_third(h, w, (255, 0, 0), (0, 0, 255))
    pixels = processor(images=[image], return_tensors="pt", input_data_format="channels_last")
    logits = ColourModel()(pixels["pixel_values"]).logits
    naive = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    naive_labels = naive.argmax(dim=1)[0].numpy()
    assert _boundary_errors(naive_labels, w).max() > 3

    seg = _stand_in_segmenter(tmp_path, monkeypatch, processor)
    with torch.inference_mode():
        fixed = seg.segment(image[None])[0]
    assert _boundary_errors(fixed, w).max(initial=0.0) <= 1.0


@pytest.mark.parametrize(
    ("which", "shape", "expected"),
    [
        ("segformer", (48, 72), (32, 32)),
        ("convnext-crop-pct", (48, 72), (32, 48)),
        ("beit-center-crop", (48, 72), (32, 32)),
        ("dpt-pad-aspect", (48, 72), (48, 64)),
        ("mask2former", (48, 72), (32, 64)),
        ("mask2former", (40, 200), (32, 64)),
    ],
)
def test_model_input_size_follows_the_processor(
    which: str, shape: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert model_input_size(_processors()[which], *shape) == expected


def test_reduce_labels_is_refused_for_model_segmenters() -> None:
    with pytest.raises(ValueError, match="--reduce-labels applies to --segmenter annotations"):
        segmenter_from_spec("hf:/nowhere", reduce_labels=True)
