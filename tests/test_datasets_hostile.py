"""cityviz.data.datasets against hostile user data: odd file names never stop a run, one file is
one record (links, hard links, copies), spots join photos by distance, folder label maps."""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cityviz.data.datasets import (
    LABELS_DIR,
    SPOT_RADIUS_M,
    SPOT_SOURCES,
    grouped_split,
    load_dataset,
    spatial_groups,
)
from cityviz.data.images import display_path


def _img(path: Path | bytes, size=(24, 16)) -> Path | bytes:
    """A small PNG of noise unique to ``path`` (bytes paths allowed for non-UTF-8 names)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    seed = zlib.crc32(os.fsencode(path))
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.fsdecode(path), "PNG")
    return path


def _storable(ds) -> None:
    """Everything the cache writes from a data set encodes as UTF-8 (Parquet and JSON)."""
    ds.to_frame().to_parquet(io.BytesIO())
    pd.DataFrame({"a": [p for p, _ in ds.skipped], "b": [r for _, r in ds.skipped]}).to_parquet(
        io.BytesIO())
    json.dumps([list(s) for s in ds.skipped], ensure_ascii=False).encode("utf-8")
    assert len(ds.fingerprint()) == 64


# --------------------------------------------------------------------------- fault 4: names


BAD_BYTES = [b"caf\xe9.png", b"\xff\xfe.png", b"\x80abc.png", b"ok\xc3(.png"]
CONTROL = ["new\nline.png", "tab\there.png", "cr\rhere.png", "bell\x07.png", "sep\u2028x.png"]
FINE = ["é" * 125 + ".png",  # 254 bytes: near NAME_MAX
        "café.png", "cafe\u0301.png", "日本の街.png", " lead space.png", "semi;colon,comma.png",
        "@@@@@.png", "back\\slash.png", "quote\"'.png", "-dash.png"]


def test_odd_file_names_are_skipped_or_loaded_never_fatal(tmp_path: Path):
    root = tmp_path / "data"
    for raw in BAD_BYTES:
        _img(os.fsencode(root / "tokyo") + b"/" + raw)
    for name in CONTROL + FINE:
        _img(root / "tokyo" / name)
    _img(root / "paris" / "p.png")
    ds = load_dataset(root)
    _storable(ds)
    loaded = {r.path.name for r in ds.records if r.city == "tokyo"}
    assert loaded == set(FINE)
    reasons = dict(ds.skipped)
    for raw in BAD_BYTES:
        shown = "tokyo/" + raw.decode("utf-8", "backslashreplace")
        assert "not valid UTF-8" in reasons[shown], shown
    for name in CONTROL:
        shown = display_path("tokyo/" + name)
        assert "\n" not in shown and "control character" in reasons[shown], shown
    assert len(ds.skipped) == len(BAD_BYTES) + len(CONTROL)


def test_odd_city_and_sub_folder_names(tmp_path: Path):
    root = tmp_path / "data"
    _img(os.fsencode(root) + b"/z\xfcrich/a.png")
    _img(os.fsencode(root) + b"/tokyo/sub\xe9/b.png")
    _img(os.fsencode(root) + b"/tokyo/sub\xe9/c.png")
    _img(root / "tokyo" / "d.png")
    _img(root / "line\nbreak" / "e.png")
    _img(root / "paris" / "f.png")
    (root / "stray\xff.png").write_bytes(b"x")  # a valid str name at the root: not in a city
    os.close(os.open(os.fsencode(root) + b"/stray\xe9.png", os.O_CREAT | os.O_WRONLY))
    ds = load_dataset(root)
    _storable(ds)
    assert ds.cities == ["paris", "tokyo"] and len(ds) == 2
    reasons = dict(ds.skipped)
    assert "the city is skipped" in reasons["z\\xfcrich/"]
    assert "the city is skipped" in reasons["line\\nbreak/"]
    assert "its files are skipped" in reasons["tokyo/sub\\xe9/"]
    assert reasons["stray\\xe9.png"].startswith("file name is not valid UTF-8")
    assert reasons["stray\u00ff.png"] == "not inside a city folder"


def test_a_non_utf8_data_set_path_is_a_clear_error(tmp_path: Path):
    root = os.fsencode(tmp_path) + b"/d\xe9j\xe0"
    _img(root + b"/a/x.png")
    _img(root + b"/b/y.png")
    with pytest.raises(ValueError, match=r"d\\xe9j\\xe0 is not valid UTF-8"):
        load_dataset(os.fsdecode(root))


def test_special_files_and_links(tmp_path: Path):
    root = tmp_path / "data"
    _img(root / "tokyo" / "a.png")
    _img(root / "paris" / "b.png")
    os.mkfifo(root / "tokyo" / "pipe.png")  # opening it would block forever
    (root / "tokyo" / "dead.png").symlink_to(tmp_path / "nowhere.png")
    (root / "tokyo" / "folder.png").mkdir()
    (root / "tokyo" / "self.png").symlink_to(root / "tokyo" / "self.png")
    ds = load_dataset(root)
    reasons = dict(ds.skipped)
    assert reasons["tokyo/pipe.png"] == "not a regular file"
    assert reasons["tokyo/dead.png"] == "broken symbolic link"
    assert reasons["tokyo/self.png"] == "symbolic link loop"
    assert len(ds) == 2


# --------------------------------------------------------------------------- fault 4: tables


def _two_city_files(root: Path) -> None:
    for name in ("r1", "r2", "p1", "p2"):
        _img(root / "img" / f"{name}.png")


def test_csv_with_hostile_lines_skips_each_and_names_the_line(tmp_path: Path):
    _two_city_files(tmp_path)
    long_name = "x" * 300 + ".png"
    text = ("\ufeffPath , CITY,spot\n"  # a BOM, odd case and spaces in the header
            "img/r1.png,rome,\n"
            "\n"
            "img/p1.png,paris,s1\n"
            "img/r2.png,rome,s2,extra\n"
            f"img/{long_name},rome,\n"
            "~nosuchuser__/x.png,rome,\n"
            "img/p2.png,,\n"
            '"img/p2\nx.png",paris,\n'
            ",paris,\n"
            "img/p2.png,paris,t\tab\n")
    data = text.encode("utf-8") + b"img/caf\xe9.png,paris,\n" + b"img/p2.png,z\xfcrich,\n"
    (tmp_path / "list.csv").write_bytes(data)
    ds = load_dataset(tmp_path / "list.csv")
    _storable(ds)
    assert sorted(r.image_id for r in ds.records) == ["img/p1", "img/r1"]
    reasons = [r for _, r in ds.skipped]
    expected = {5: "has 4 fields", 6: "file name too long", 7: "cannot be resolved",
                8: "no city given", 9: "path name holds a control character", 11: "empty path",
                12: "spot name holds a control character", 13: "path name is not valid UTF-8",
                14: "city name is not valid UTF-8"}
    for line, what in expected.items():
        assert any(what in r and r.endswith(f"(list.csv line {line})") for r in reasons), what
    # the quoted field with a newline spans lines 9-10, so the next line is 11
    assert ("img/p2\\nx.png", "path name holds a control character (such as a newline or tab); "
            "rename it (list.csv line 9)") in ds.skipped


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    ("path,city\n".encode("utf-16"), "UTF-16"),
    (b"file,town\na.png,x\n", "columns path and city"),
    (b"path,city,path\na.png,x,b\n", "'path' appears more than once"),
    (b"path,city\nimg/r1.png,rome\nimg/p\x001.png,paris\n", "line 3"),
    (b"p\xe4th,city\n", "line 1: the header is not valid UTF-8"),
    (b"path,city\nimg/r1.png,rome\n", "at least two cities"),
])
def test_unreadable_tables_are_one_clear_value_error(tmp_path: Path, content: bytes, message):
    _two_city_files(tmp_path)
    (tmp_path / "t.csv").write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        load_dataset(tmp_path / "t.csv")
    str(info.value).encode("utf-8")  # printable


def test_a_city_with_no_usable_photo_is_reported(tmp_path: Path):
    _two_city_files(tmp_path)
    (tmp_path / "t.csv").write_text("path,city\nimg/r1.png,rome\nimg/p1.png,paris\n"
                                    "img/missing.png,oslo\n")
    ds = load_dataset(tmp_path / "t.csv")
    assert ("t.csv: city oslo", "no usable images: the city is left out") in ds.skipped
    (tmp_path / "folders" / "empty").mkdir(parents=True)
    _img(tmp_path / "folders" / "a" / "1.png")
    _img(tmp_path / "folders" / "b" / "2.png")
    assert ("empty/", "no usable images: the city is left out") in load_dataset(
        tmp_path / "folders").skipped


def test_random_byte_tables_never_raise_anything_but_value_error(tmp_path: Path):
    """Fuzz: random bytes spliced into a valid table give a data set or a ValueError."""
    _two_city_files(tmp_path)
    good = b"path,city,spot,label_path\nimg/r1.png,rome,a,\nimg/r2.png,rome,b,\n" \
           b"img/p1.png,paris,c,\nimg/p2.png,paris,d,\n"
    rng = np.random.default_rng(7)
    outcomes = set()
    for i in range(60):
        data = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, len(data)))
            data[at:at + int(rng.integers(0, 3))] = rng.bytes(int(rng.integers(1, 4)))
        (tmp_path / f"f{i}.csv").write_bytes(bytes(data))
        try:
            ds = load_dataset(tmp_path / f"f{i}.csv", check_images=False)
        except ValueError as err:
            str(err).encode("utf-8")
            outcomes.add("error")
        else:
            _storable(ds)
            outcomes.add("loaded")
    assert outcomes == {"error", "loaded"}


# --------------------------------------------------------------------------- fault 5: one file


def test_city_folder_linked_to_the_root_is_an_error_not_a_double_count(tmp_path: Path):
    root = tmp_path / "data"
    _img(root / "tokyo" / "a.png")
    _img(root / "paris" / "b.png")
    (root / "all").symlink_to(root)  # also a loop: all/all/all/...
    with pytest.raises(ValueError, match="belong to two cities") as info:
        load_dataset(root)
    message = str(info.value)
    assert "in city 'all'" in message and "all/paris/b.png" in message
    assert "paris/b.png in city 'paris' is the same file as all/paris/b.png" in message


def test_links_and_loops_inside_a_city_give_one_record(tmp_path: Path):
    root = tmp_path / "data"
    _img(root / "tokyo" / "a.png")
    _img(root / "tokyo" / "sub" / "b.png")
    (root / "tokyo" / "sub" / "up").symlink_to(root / "tokyo")  # a loop
    (root / "tokyo" / "again").symlink_to(root / "tokyo" / "sub")  # a folder reached twice
    (root / "tokyo" / "link.png").symlink_to(root / "tokyo" / "a.png")
    os.link(root / "tokyo" / "a.png", root / "tokyo" / "hard.png")
    _img(tmp_path / "elsewhere" / "c.png")
    (root / "paris").symlink_to(tmp_path / "elsewhere")  # a city kept elsewhere is fine
    ds = load_dataset(root)
    assert sorted(r.image_id for r in ds.records) == ["paris/c", "tokyo/a", "tokyo/again/b"]
    reasons = dict(ds.skipped)
    assert reasons["tokyo/link.png"] == "same file as tokyo/a.png"
    assert reasons["tokyo/hard.png"] == "same file as tokyo/a.png"
    assert reasons["tokyo/sub/"].startswith("same folder as tokyo/again/")
    assert reasons["tokyo/again/up/"].startswith("same folder as tokyo/")


def test_hard_link_across_cities_is_an_error(tmp_path: Path):
    _img(tmp_path / "tokyo" / "a.png")
    _img(tmp_path / "paris" / "b.png")
    os.link(tmp_path / "tokyo" / "a.png", tmp_path / "paris" / "a.png")
    with pytest.raises(ValueError, match=r"tokyo/a\.png in city 'tokyo' is the same file as "
                                         r"paris/a\.png in city 'paris'"):
        load_dataset(tmp_path)


def test_copies_are_one_record_in_a_city_and_none_across_cities(tmp_path: Path):
    root = tmp_path / "data"
    _img(root / "tokyo" / "a.png")
    shutil.copy(root / "tokyo" / "a.png", root / "tokyo" / "copy.png")
    _img(root / "tokyo" / "b.png")
    _img(root / "paris" / "c.png")
    _img(root / "paris" / "d.png")
    shutil.copy(root / "paris" / "d.png", root / "tokyo" / "d-too.png")
    ds = load_dataset(root)
    assert sorted(r.image_id for r in ds.records) == ["paris/c", "tokyo/a", "tokyo/b"]
    reasons = dict(ds.skipped)
    assert reasons["tokyo/copy.png"] == "same content as tokyo/a.png (a copy)"
    assert "in city 'tokyo'" in reasons["paris/d.png"]
    assert "in city 'paris'" in reasons["tokyo/d-too.png"]


def test_equal_size_files_differing_after_the_first_64_kib_are_both_kept(tmp_path: Path):
    head = np.random.default_rng(0).bytes(70_000)
    for city, tail in (("a", b"1"), ("b", b"2")):
        (tmp_path / city).mkdir()
        (tmp_path / city / "x.jpg").write_bytes(head + tail)
    (tmp_path / "b" / "y.jpg").write_bytes(head + b"3")
    ds = load_dataset(tmp_path, check_images=False)
    assert len(ds) == 3 and ds.skipped == []


def test_csv_lists_one_file_twice(tmp_path: Path):
    _two_city_files(tmp_path)
    (tmp_path / "img" / "alias.png").symlink_to(tmp_path / "img" / "r1.png")
    (tmp_path / "ok.csv").write_text("path,city\nimg/r1.png,rome\n./img/r1.png,rome\n"
                                     "img/alias.png,rome\nimg/p1.png,paris\n")
    ds = load_dataset(tmp_path / "ok.csv")
    assert len(ds) == 2
    assert dict(ds.skipped) == {"./img/r1.png": "same file as img/r1.png (ok.csv line 3)",
                                "img/alias.png": "same file as img/r1.png (ok.csv line 4)"}
    (tmp_path / "bad.csv").write_text("path,city\nimg/r1.png,rome\nimg/p1.png,paris\n"
                                      "img/alias.png,paris\n")
    with pytest.raises(ValueError, match=r"img/alias.png \(bad.csv line 4\) in city 'paris' is "
                                         r"the same file as img/r1.png \(bad.csv line 2\)"):
        load_dataset(tmp_path / "bad.csv")


# --------------------------------------------------------------------------- fault 11: spots


def _components(zones, xy, radius):
    """Reference: connected components of "within radius" by brute force (union-find)."""
    parent = list(range(len(zones)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in itertools.combinations(range(len(zones)), 2):
        if zones[i] == zones[j] and np.hypot(*(xy[i] - xy[j])) <= radius:
            parent[find(i)] = find(j)
    return [find(i) for i in range(len(zones))]


def _same_partition(a, b) -> bool:
    return len(set(zip(a, b, strict=True))) == len(set(a)) == len(set(b))


@pytest.mark.parametrize("seed", range(5))
def test_spatial_groups_equal_brute_force_components(seed: int):
    rng = np.random.default_rng(seed)
    n = 150
    zones = [str(z) for z in rng.choice(["17N", "18N", "17S"], n)]
    xy = rng.uniform(0, 400, (n, 2)) + np.array([584_300.0, 4_476_900.0])
    groups = spatial_groups(zones, xy[:, 0], xy[:, 1])
    assert groups.dtype == np.int64 and groups.shape == (n,)
    assert _same_partition(groups.tolist(), _components(zones, xy, SPOT_RADIUS_M))
    for i, j in itertools.combinations(range(n), 2):  # the promise, stated directly
        if zones[i] == zones[j] and np.hypot(*(xy[i] - xy[j])) < SPOT_RADIUS_M:
            assert groups[i] == groups[j]
        if zones[i] != zones[j]:
            assert groups[i] != groups[j]


def test_spatial_groups_cell_edges_chains_zones_and_same():
    # 2 cm apart across any old 5 m cell edge: one group; 26 m apart: two
    g = spatial_groups(["17N"] * 4, [2.49, 2.51, 1000.0, 1026.0], [0, 0, 0, 0])
    assert g[0] == g[1] and g[2] != g[3]
    # a chain with 20 m steps is one place; a 30 m gap splits it
    east = [0, 20, 40, 60, 90, 110]
    g = spatial_groups(["33N"] * 6, east, [0] * 6)
    assert len(set(g[:4])) == 1 and len(set(g[4:])) == 1 and g[0] != g[4]
    # equal coordinates in other zones or hemispheres are not comparable
    assert len(set(spatial_groups(["17N", "18N", "17S"], [5, 5, 5], [7, 7, 7]))) == 3
    # "same" joins far points (one pano) and points without coordinates
    g = spatial_groups(["17N", "17N", None, "17N"], [0, 500, 0, 1000], [0, 0, 0, 0],
                       same=["p", "", "p", "p"])
    assert g[0] == g[2] == g[3] != g[1]
    assert spatial_groups([], [], []).shape == (0,)
    for bad in (dict(radius_m=0), dict(radius_m=float("nan")), dict(radius_m=-3)):
        with pytest.raises(ValueError, match="radius_m"):
            spatial_groups(["17N"], [0], [0], **bad)
    with pytest.raises(ValueError, match="same length"):
        spatial_groups(["17N", "17N"], [0], [0, 1])
    with pytest.raises(ValueError, match="finite"):
        spatial_groups(["17N"], [float("inf")], [0])


def _vpr(east: float, north: float, zone="17", letter="T", pano="") -> str:
    return f"@{east:.2f}@{north:.2f}@{zone}@{letter}@@@{pano}@@@@@@@@.png"


def test_loader_joins_close_photos_and_counts_spot_sources(tmp_path: Path):
    root = tmp_path / "data"
    e0, n0 = 584_337.49, 4_476_912.49  # on a 5 m cell corner
    names = {
        "tokyo": [_vpr(e0, n0), _vpr(e0 + 0.02, n0 + 0.02),  # 3 cm apart: one spot
                  _vpr(e0 + 200, n0), _vpr(e0 + 200, n0, zone="18"),  # another zone
                  _vpr(e0 + 210, n0, pano="PANO1"), _vpr(e0 + 999, n0, pano="PANO1"),
                  "a1B2c3D4e5F6g7H8i9_-Kz_012_030.png", "IMG_1.png"],
        "paris": ["000123_pitch1_yaw1.png", "000123_pitch2_yaw1.png", "photo.png"],
    }
    for city, files in names.items():
        for name in files:
            _img(root / city / name)
    ds = load_dataset(root)
    spot = {r.path.name: r.spot for r in ds.records}
    t = names["tokyo"]
    assert spot[t[0]] == spot[t[1]] == "utm:17T:584337.49:4476912.49"
    assert len({spot[t[2]], spot[t[3]], spot[t[0]]}) == 3
    assert spot[t[2]] == spot[t[4]] == spot[t[5]] == "pano:PANO1"  # 10 m from a pano: joined
    assert ds.spot_sources == {"csv": 0, "pittsburgh": 2, "tokyo-pano": 1, "vpr-pano": 2,
                               "vpr-utm": 4, "gps": 0, "file": 2}
    assert list(ds.spot_sources) == list(SPOT_SOURCES)
    narrow = load_dataset(root, spot_radius_m=0.01)
    assert len({r.spot for r in narrow.records}) == len({r.spot for r in ds.records}) + 2


def test_no_two_photos_within_the_radius_are_in_different_splits(tmp_path: Path):
    rng = np.random.default_rng(3)
    root = tmp_path / "data"
    points = {"tokyo": rng.uniform(0, 600, (60, 2)), "paris": rng.uniform(0, 600, (60, 2))}
    offset = {"tokyo": (380_000, 3_950_000), "paris": (450_000, 5_410_000)}
    for city, xy in points.items():
        for x, y in xy:
            _img(root / city / _vpr(offset[city][0] + x, offset[city][1] + y, zone="31",
                                    letter="U"))
    ds = load_dataset(root, check_images=False)
    frame = ds.to_frame()
    frame["split"] = grouped_split(frame["spot"].tolist(), seed=0, strata=frame["city"].tolist())
    assert set(frame["split"]) == {"train", "val", "test"}
    for city, group in frame.groupby("city"):
        xy = np.array([[float(v) for v in Path(p).name.split("@")[1:3]] for p in group["path"]])
        dist = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
        close = dist < SPOT_RADIUS_M
        split = group["split"].to_numpy()
        assert (split[:, None] == split[None, :])[close].all(), city


# --------------------------------------------------------------------------- label maps


def test_folder_label_maps_and_classes_json(tmp_path: Path):
    root = tmp_path / "data"
    for rel in ("tokyo/a.png", "tokyo/sub/b.png", "paris/c.png", "paris/d.png", "paris/e.png",
                "paris/f.png"):
        _img(root / rel, size=(24, 16))
    labels = root / LABELS_DIR
    for rel in ("tokyo/a.png", "tokyo/sub/b.png", "paris/c.png"):
        (labels / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ones((16, 24), np.uint8)).save(labels / rel)
    Image.fromarray(np.ones((10, 10), np.uint8)).save(labels / "paris" / "d.png")
    Image.new("RGB", (24, 16)).save(labels / "paris" / "e.png")
    with pytest.raises(ValueError, match=r"classes\.json"):
        load_dataset(root)
    (root / "classes.json").write_text('["road", "building"]')
    ds = load_dataset(root)
    assert ds.class_names == ["road", "building"] and "_labels" not in ds.cities
    assert {r.image_id: r.label_path for r in ds.records} == {
        "tokyo/a": labels / "tokyo/a.png", "tokyo/sub/b": labels / "tokyo/sub/b.png",
        "paris/c": labels / "paris/c.png"}
    reasons = dict(ds.skipped)
    assert reasons["paris/d.png"] == "label map is 10×10 pixels but the photo is 24×16"
    assert reasons["paris/e.png"].startswith("label map has 3 channels")
    assert reasons["paris/f.png"] == "no label map _labels/paris/f.png"
