"""Thumbnail tiles and sprite sheets (cityviz.thumbs)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cityviz import thumbs
from cityviz.cam import overlay
from cityviz.store import thumb_location

RNG = np.random.default_rng(0)


def _images(b: int = 3, s: int = 16) -> np.ndarray:
    return RNG.integers(0, 256, size=(b, s, s, 3), dtype=np.uint8)


def test_orig_tiles_at_native_size_are_the_images():
    imgs = _images()
    out = thumbs.render_tiles(imgs, None, "orig", size=16)
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, imgs)


def test_orig_tiles_are_resized_to_96():
    flat = np.full((2, 32, 32, 3), 77, dtype=np.uint8)
    out = thumbs.render_tiles(flat, None, "orig")
    assert out.shape == (2, 96, 96, 3)
    assert (out == 77).all()  # resizing a constant image keeps it constant


def test_overlay_tiles_match_cam_overlay():
    imgs = _images()
    masks = RNG.random((3, 16, 16)).astype(np.float32)
    out = thumbs.render_tiles(imgs, masks, "overlay", size=16)
    np.testing.assert_array_equal(out, overlay(imgs, masks, 0.5))


def test_explanation_tiles_black_out_pixels_below_threshold():
    imgs = np.full((1, 4, 4, 3), 200, dtype=np.uint8)
    masks = np.array([[[0.0, 0.49, 0.5, 1.0]] * 4], dtype=np.float32)
    out = thumbs.render_tiles(imgs, masks, "expl", size=4, threshold=0.5)
    assert (out[0, :, :2] == 0).all()
    assert (out[0, :, 2:] == 200).all()


@pytest.mark.parametrize(
    ("images", "masks", "kind"),
    [
        (np.zeros((1, 8, 8, 3), np.uint8), None, "heatmap"),
        (np.zeros((1, 8, 8, 3), np.uint8), None, "expl"),
        (np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 4, 4)), "overlay"),
        (np.zeros((8, 8, 3), np.uint8), None, "orig"),
    ],
)
def test_render_tiles_rejects_bad_input(images, masks, kind):
    with pytest.raises(ValueError):
        thumbs.render_tiles(images, masks, kind)


def test_sheet_layout_and_background():
    tiles = np.stack([np.full((96, 96, 3), 10 * (i + 1), np.uint8) for i in range(18)])
    sheet = thumbs.sheet_image(tiles)
    assert sheet.shape == (1536, 1536, 3)
    # tile 17 is row 1, column 1
    assert (sheet[96:192, 96:192] == 180).all()
    assert (sheet[0:96, 0:96] == 10).all()
    assert (sheet[192:, :] == 0).all()  # unused tiles are black


def test_sheet_rejects_too_many_tiles():
    with pytest.raises(ValueError):
        thumbs.sheet_image(np.zeros((257, 96, 96, 3), np.uint8))


def test_write_sheet_and_crop_round_trip(tmp_path):
    tiles = np.stack([np.full((96, 96, 3), (i * 7) % 256, np.uint8) for i in range(40)])
    tiles[17, 10:20, 10:20] = (255, 0, 0)
    path = tmp_path / "orig" / "0001.jpg"
    thumbs.write_sheet(path, tiles)
    with Image.open(path) as im:
        assert im.format == "JPEG" and im.size == (1536, 1536)
    assert [p.name for p in path.parent.iterdir()] == ["0001.jpg"]  # no temp files left
    # row 256 + 17 lives on sheet 1 at tile (1, 1), like row 17 on sheet 0
    assert thumb_location(256 + 17)[1:] == thumb_location(17)[1:] == (1, 1)
    tile = thumbs.crop_tile(path, 256 + 17)
    assert tile.shape == (96, 96, 3)
    diff = np.abs(tile.astype(int) - tiles[17].astype(int))
    assert diff.mean() < 3
    assert tile[15, 15, 0] > 200 and tile[15, 15, 1] < 60


def test_crop_tiles_matches_crop_tile(tmp_path):
    for sheet in range(2):
        tiles = np.stack(
            [np.full((96, 96, 3), (sheet * 100 + i) % 256, np.uint8) for i in range(256)]
        )
        thumbs.write_sheet(tmp_path / f"{sheet:04d}.jpg", tiles)
    rows = [300, 3, 256, 40]
    got = thumbs.crop_tiles(lambda s: tmp_path / f"{s:04d}.jpg", rows)
    assert len(got) == 4
    for row, tile in zip(rows, got, strict=True):
        sheet = thumb_location(row)[0]
        np.testing.assert_array_equal(tile, thumbs.crop_tile(tmp_path / f"{sheet:04d}.jpg", row))
    assert abs(int(got[0].mean()) - (100 + 44)) <= 2  # row 300 = sheet 1, tile 44
