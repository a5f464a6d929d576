"""cityviz.data.datasets: spots from real file-name conventions, spot-grouped 6:2:2 splits per city,
and loading from folders / CSV / manifests with bad files skipped and reported."""

from __future__ import annotations

import io
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cityviz.data.datasets import (
    ImageRecord,
    TorchImages,
    grouped_split,
    load_dataset,
    load_uint8_batch,
    parse_spot,
    split_counts,
)
from cityviz.data.synth import SynthConfig, generate

# --------------------------------------------------------------------------- spots


def test_parse_spot_real_names():
    assert parse_spot("@0584334.39@4476910.88@17@T@040.43857@-080.00562@004561@00@@@@@@"
                      "pitch1_yaw1@.jpg") == "pano:004561"
    # no pano id: the UTM position itself (to the cm); the loader joins photos within 25 m
    assert parse_spot("queries/@0584334.39@4476910.88@17@T@040.43857@-080.00562@@00@@@@@@"
                      "pitch1_yaw1@.jpg") == "utm:17T:584334.39:4476910.88"
    assert parse_spot("@0584336.9@4476913.1@17@T@@@@@@@@@@@.jpg") == "utm:17T:584336.90:4476913.10"
    assert parse_spot("000/000000_pitch1_yaw1.jpg") == "pitts:000000"
    assert parse_spot("000000_pitch2_yaw12.jpg") == "pitts:000000"
    assert parse_spot("003/003417_pitch1_yaw7.jpg") == "pitts:003417"
    # Tokyo 24/7 database cut-outs and Tokyo Time Machine: 22-character Street View pano ids
    assert parse_spot("03814/a1B2c3D4e5F6g7H8i9_-Kz_012_030.png") == "pano:a1B2c3D4e5F6g7H8i9_-Kz"
    assert parse_spot("t201503/a1B2c3D4e5F6g7H8i9_-Kz_330_012.jpg") == "pano:a1B2c3D4e5F6g7H8i9_-Kz"
    for name in ("IMG_0001.jpg", "photo.png", "@a@b@@@.jpg", "@@@@@.jpg", "12_pitch_yaw.jpg"):
        assert parse_spot(name) is None, name


# --------------------------------------------------------------------------- splits


def test_split_counts_hand_computed():
    assert split_counts(10, (0.6, 0.2, 0.2)) == [6, 2, 2]
    assert split_counts(7, (0.6, 0.2, 0.2)) == [4, 2, 1]  # 4.2/1.4/1.4 -> largest remainders
    assert split_counts(3, (0.6, 0.2, 0.2)) == [1, 1, 1]  # every split gets a spot if possible
    assert split_counts(2, (0.6, 0.2, 0.2)) == [1, 1, 0]
    assert split_counts(1, (0.6, 0.2, 0.2)) == [1, 0, 0]
    assert split_counts(5, (1, 0, 0)) == [5, 0, 0]
    with pytest.raises(ValueError):
        split_counts(5, (-1, 1, 1))


def _spots_and_cities(rng: np.random.Generator, sizes: dict[str, int]):
    spots, cities = [], []
    for city, n in sizes.items():
        for s in range(n):
            k = int(rng.integers(1, 25))  # 1..24 views per place
            spots += [f"{city}:{s}"] * k
            cities += [city] * k
    order = rng.permutation(len(spots))
    return [spots[i] for i in order], [cities[i] for i in order]


def test_grouped_split_keeps_spots_together_and_6_2_2_per_city():
    spots, cities = _spots_and_cities(np.random.default_rng(0), {"a": 50, "b": 30, "c": 20})
    split = grouped_split(spots, seed=3, strata=cities)
    assert set(split) == {"train", "val", "test"}
    per_spot: dict[str, set] = {}
    for s, sp in zip(spots, split, strict=True):
        per_spot.setdefault(s, set()).add(sp)
    assert all(len(v) == 1 for v in per_spot.values())
    for city, n in {"a": 50, "b": 30, "c": 20}.items():
        counts = Counter(next(iter(per_spot[s])) for s in per_spot if s.startswith(city + ":"))
        assert [counts["train"], counts["val"], counts["test"]] == split_counts(n, (0.6, 0.2, 0.2))
    assert (grouped_split(spots, seed=3, strata=cities) == split).all()
    assert (grouped_split(spots, seed=4, strata=cities) != split).any()


def test_grouped_split_per_city_is_independent_of_other_cities():
    spots, cities = _spots_and_cities(np.random.default_rng(1), {"a": 20, "b": 10})
    both = grouped_split(spots, strata=cities)
    only_a = [i for i, c in enumerate(cities) if c == "a"]
    alone = grouped_split([spots[i] for i in only_a], strata=["a"] * len(only_a))
    assert (both[only_a] == alone).all()


def test_grouped_split_without_strata_and_shared_spot_names():
    spots = [f"s{i // 3}" for i in range(300)]  # 100 spots of 3 items
    split = grouped_split(spots, ratios=(0.5, 0.25, 0.25), seed=1)
    assert Counter(split) == {"train": 150, "val": 75, "test": 75}
    # one spot name appearing under two strata still lands in a single split
    split = grouped_split(["x", "x", "x", "y"], strata=["a", "a", "b", "b"])
    assert split[0] == split[1] == split[2]


# --------------------------------------------------------------------------- loading


def _jpeg(path: Path, color=None, size=(40, 30)) -> Path:
    """A small JPEG: plain ``color``, else noise unique to the path (the loader skips copies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if color is None:
        rng = np.random.default_rng(zlib.crc32(str(path).encode()))
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    else:
        Image.new("RGB", size, color).save(path, "JPEG")
    return path


def _make_folder_set(root: Path) -> None:
    _jpeg(root / "tokyo" / "a.jpg")
    _jpeg(root / "tokyo" / "sub" / "000123_pitch1_yaw3.JPG")
    Image.new("RGB", (30, 30), (0, 0, 200)).save(root / "tokyo" / "sub" / "c.PNG")
    (root / "tokyo" / "notes.txt").write_text("not an image")
    (root / "tokyo" / "broken.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        good, "JPEG")
    (root / "tokyo" / "cut.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (root / "tokyo" / ".DS_Store").write_bytes(b"\0\0")
    _jpeg(root / "pittsburgh" / "x.jpeg", (10, 120, 10))
    Image.new("RGB", (20, 20), (5, 5, 5)).save(root / "pittsburgh" / "y.webp", "WEBP")
    (root / "README.md").write_text("hello")


def test_folder_loading_skips_and_reports(tmp_path: Path):
    _make_folder_set(tmp_path)
    ds = load_dataset(tmp_path)
    assert ds.cities == ["pittsburgh", "tokyo"]
    assert sorted(r.image_id for r in ds.records) == [
        "pittsburgh/x", "pittsburgh/y", "tokyo/a", "tokyo/sub/000123_pitch1_yaw3", "tokyo/sub/c"]
    reasons = dict(ds.skipped)
    assert set(reasons) == {"tokyo/notes.txt", "tokyo/broken.jpg", "tokyo/cut.jpg", "README.md"}
    assert reasons["tokyo/notes.txt"] == "not an image file type (.txt)"
    assert reasons["tokyo/broken.jpg"] == "not a readable image"
    assert reasons["tokyo/cut.jpg"] == "truncated or damaged image"
    spots = {r.image_id: r.spot for r in ds.records}
    assert spots["tokyo/sub/000123_pitch1_yaw3"] == "pitts:000123"
    assert spots["tokyo/a"] == "file:tokyo/a"
    assert all(r.path.is_absolute() and r.label_path is None for r in ds.records)
    # without the image check only the non-image file types are skipped
    unchecked = load_dataset(tmp_path, check_images=False)
    assert len(unchecked) == 7 and {p for p, _ in unchecked.skipped} == {"tokyo/notes.txt",
                                                                        "README.md"}


def test_csv_loading(tmp_path: Path):
    _jpeg(tmp_path / "img" / "1.jpg")
    _jpeg(tmp_path / "img" / "2.jpg")
    other = _jpeg(tmp_path.parent / f"{tmp_path.name}_elsewhere" / "3.jpg")
    (tmp_path / "img" / "bad.jpg").write_bytes(b"GIF89a but not really")
    (tmp_path / "img" / "doc.txt").write_text("x")
    lab = tmp_path / "lab" / "1.png"
    lab.parent.mkdir()
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(lab)
    (tmp_path / "classes.json").write_text('["road", "sidewalk"]')
    (tmp_path / "list.csv").write_text(
        "path,city,spot,label_path\n"
        "img/1.jpg,rome,p1,lab/1.png\n"
        "img/2.jpg,rome,,\n"
        f"{other},paris,p9,\n"
        "img/bad.jpg,paris,,\n"
        "img/doc.txt,paris,,\n"
        "img/missing.jpg,paris,,\n"
        "img/2.jpg,rome,,\n")
    ds = load_dataset(tmp_path / "list.csv")
    assert ds.cities == ["paris", "rome"] and len(ds) == 3
    by_id = {r.image_id: r for r in ds.records}
    assert by_id["img/1"].spot == "p1" and by_id["img/1"].label_path == lab
    assert by_id["img/2"].spot == "file:img/2"
    far = next(r for r in ds.records if r.city == "paris")
    assert far.path == other and far.spot == "p9" and far.image_id.endswith("_elsewhere/3")
    assert dict(ds.skipped) == {"img/bad.jpg": "not a readable image (list.csv line 5)",
                                "img/doc.txt": "not an image file type (.txt) (list.csv line 6)",
                                "img/missing.jpg": "file not found (list.csv line 7)",
                                "img/2.jpg": "listed more than once (list.csv line 8)"}
    assert ds.spot_sources["csv"] == 2 and ds.spot_sources["file"] == 1
    assert ds.class_names == ["road", "sidewalk"]
    frame = ds.to_frame()
    assert list(frame.columns) == ["image_id", "path", "city", "city_idx", "spot", "label_path",
                                   "lat", "lon"]  # no district column: no record has one
    assert frame["lat"].dtype == frame["lon"].dtype == np.float64 and frame["lat"].isna().all()
    assert frame.set_index("image_id").loc["img/1", "city_idx"] == 1  # rome after paris
    assert pd.isna(frame.set_index("image_id").loc["img/2", "label_path"])


def test_bad_tables_and_too_few_cities(tmp_path: Path):
    _jpeg(tmp_path / "one" / "a.jpg")
    with pytest.raises(ValueError, match="at least two cities"):
        load_dataset(tmp_path)
    (tmp_path / "t.csv").write_text("file,town\na.jpg,x\n")
    with pytest.raises(ValueError, match="columns path and city"):
        load_dataset(tmp_path / "t.csv")
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "nope")


def test_duplicate_stems_get_unique_ids(tmp_path: Path):
    _jpeg(tmp_path / "a" / "p.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "p.png")
    _jpeg(tmp_path / "b" / "q.jpg")
    ids = sorted(r.image_id for r in load_dataset(tmp_path).records)
    assert ids == ["a/p.jpg", "a/p.png", "b/q"]


def test_synthetic_manifest_and_fingerprint(tmp_path: Path):
    cfg = SynthConfig(spots_per_city=2, views_per_spot=2, size=48)
    root = generate(tmp_path / "synth", cfg)
    ds = load_dataset(root)
    assert len(ds) == 8 and ds.skipped == []
    assert ds.discriminative == {"tokyo-like": ["signboard", "fence"],
                                 "pittsburgh-like": ["skyscraper", "tree"]}
    assert ds.class_names is not None and len(ds.class_names) == 150
    assert ds.records[0].spot == "tokyo-like/s0000" and ds.records[0].label_path.is_file()
    fp = ds.fingerprint()
    assert len(fp) == 64 and load_dataset(root).fingerprint() == fp
    shuffled = type(ds)(ds.root, ds.records[::-1], ds.cities)
    assert shuffled.fingerprint() == fp  # order does not matter
    with open(ds.records[0].path, "ab") as fh:  # a changed file size changes the fingerprint
        fh.write(b"\0")
    assert load_dataset(root, check_images=False).fingerprint() != fp


def test_torch_images_and_batches(tmp_path: Path):
    p1 = _jpeg(tmp_path / "a.jpg", (250, 0, 0), size=(80, 40))
    p2 = tmp_path / "b.png"
    Image.new("RGBA", (30, 60), (0, 0, 0, 0)).save(p2)  # transparent -> white
    recs = [ImageRecord("a", p1, "x", "s1"), ImageRecord("b", p2, "y", "s2")]
    data = TorchImages(recs, 24, labels=[0, 1])
    x, y = data[0]
    assert x.dtype == torch.uint8 and tuple(x.shape) == (3, 24, 24) and y == 0
    assert x[0].float().mean() > 230 and x[1].float().mean() < 20
    assert TorchImages(recs, 24)[1][1] == -1
    batch = load_uint8_batch([p1, p2], 24)
    assert batch.shape == (2, 24, 24, 3) and batch.dtype == np.uint8
    assert (batch[1] == 255).all()
    assert (torch.from_numpy(batch[0]).permute(2, 0, 1) == x).all()
    assert load_uint8_batch([], 24).shape == (0, 24, 24, 3)
