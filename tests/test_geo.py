"""Coordinates in the data model and per-cell object profiles (issue 13 §1).

Coordinates come from VPR / Tokyo 24/7 names, CSV ``lat,lon`` columns and EXIF GPS tags (a
JPEG written here with Pillow), in that priority after the CSV; photos without any keep NaN.
H3 cells and :func:`cityviz.geo.cell_profiles` are checked against hand-computed values, and on
a real pipeline run over the synthetic districts the per-cell profiles recover the planted
spatial answer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h3
import numpy as np
import pandas as pd
import pytest
from PIL import ExifTags, Image

from cityviz import geo
from cityviz.data import synth
from cityviz.data.datasets import gps_groups, latlon_from_name, load_dataset
from cityviz.data.geo_tags import dms_to_degrees, parse_latlon, read_exif_latlon
from cityviz.stats import bin_columns
from cityviz.store import Cache, read_json, read_table

TOKYO_VPR = "@0353071.54@3958812.24@54@S@035.75931@0139.86287@AbCdEfGhIjKlMnOpQrStUv@@@@@@@@.jpg"
# the district run below trains a model: on a loaded 2-core machine it can pass pytest's 600 s
pytestmark = pytest.mark.timeout(1500)

PITTS_VPR = "@0584337.49@4476912.49@17@T@040.44479@-079.99637@@@@@@@pitch1_yaw1@.jpg"


def _jpeg(path: Path, gps: dict | None = None, colour=(90, 120, 150)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", (32, 24), colour)
    exif = Image.Exif()
    if gps is not None:
        exif[ExifTags.IFD.GPSInfo] = gps
    im.save(path, exif=exif)
    return path


def _gps(lat: tuple, lat_ref: str, lon: tuple, lon_ref: str) -> dict:
    t = ExifTags.GPS
    return {
        t.GPSLatitudeRef: lat_ref,
        t.GPSLatitude: lat,
        t.GPSLongitudeRef: lon_ref,
        t.GPSLongitude: lon,
    }


def _metres(lat1, lon1, lat2, lon2) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * 6_371_008.8 * math.asin(math.sqrt(a))


# --------------------------------------------------------------------------- parsing


def test_vpr_names_give_latitude_and_longitude():
    assert latlon_from_name(TOKYO_VPR) == (35.75931, 139.86287)
    assert latlon_from_name("some/dir/" + PITTS_VPR) == (40.44479, -79.99637)
    assert latlon_from_name("@0353071.54@3958812.24@54@S@@@pano@@@.jpg") is None  # no lat/lon
    assert latlon_from_name("@0353071.54@3958812.24@54@S@095.1@0139.8@pano@@@.jpg") is None
    assert latlon_from_name("@1@2@54@S@north@east@pano@@@.jpg") is None
    assert latlon_from_name("000123_pitch1_yaw1.jpg") is None
    assert latlon_from_name("IMG_0001.jpg") is None


def test_parse_latlon_and_dms_validate():
    assert parse_latlon(" 35.5", "-0.25 ") == (35.5, -0.25)
    for lat, lon, why in (
        ("91", "0", "latitude"),
        ("0", "-180.5", "longitude"),
        ("nan", "1", "finite"),
        ("x", "1", "not numbers"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_latlon(lat, lon)
    assert dms_to_degrees((33, 51, 54.5), "S") == pytest.approx(-(33 + 51 / 60 + 54.5 / 3600))
    assert dms_to_degrees((151, 12.6), b"E\x00") == pytest.approx(151.21)
    with pytest.raises(ValueError, match="reference"):
        dms_to_degrees((1, 2, 3), "Q")
    with pytest.raises(ValueError):
        dms_to_degrees((1, -2, 3), "N")


def test_exif_gps_is_read_from_a_jpeg(tmp_path: Path):
    south = _jpeg(tmp_path / "a.jpg", _gps((33.0, 51.0, 54.5), "S", (151.0, 12.0, 36.0), "E"))
    lat, lon = read_exif_latlon(south)
    assert lat == pytest.approx(-(33 + 51 / 60 + 54.5 / 3600), abs=1e-9)
    assert lon == pytest.approx(151 + 12 / 60 + 36 / 3600, abs=1e-9)
    west = _jpeg(tmp_path / "b.jpg", _gps((40.0, 26.0, 40.0), "N", (79.0, 59.0, 45.0), "W"))
    assert read_exif_latlon(west) == pytest.approx(
        (40 + 26 / 60 + 40 / 3600, -(79 + 59 / 60 + 45 / 3600))
    )
    assert read_exif_latlon(_jpeg(tmp_path / "none.jpg")) is None  # no GPS IFD
    zero = _jpeg(tmp_path / "zero.jpg", _gps((0.0, 0.0, 0.0), "N", (0.0, 0.0, 0.0), "E"))
    assert read_exif_latlon(zero) is None  # "no fix" written as zeros
    bad = _jpeg(tmp_path / "bad.jpg", _gps((95.0, 0.0, 0.0), "N", (10.0, 0.0, 0.0), "E"))
    assert read_exif_latlon(bad) is None
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8not a jpeg")
    assert read_exif_latlon(tmp_path / "broken.jpg") is None
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    assert read_exif_latlon(tmp_path / "p.png") is None


def test_folder_photos_get_coordinates_from_names_and_exif(tmp_path: Path):
    root = tmp_path / "data"
    _jpeg(root / "tokyo" / TOKYO_VPR, colour=(1, 2, 3))
    near = _gps((35.0, 41.0, 22.0), "N", (139.0, 46.0, 1.0), "E")
    nearer = _gps((35.0, 41.0, 22.3), "N", (139.0, 46.0, 1.0), "E")  # 9 m north
    _jpeg(root / "tokyo" / "IMG_1.jpg", near, colour=(4, 5, 6))
    _jpeg(root / "tokyo" / "IMG_2.jpg", nearer, colour=(7, 8, 9))
    _jpeg(root / "tokyo" / "IMG_3.jpg", colour=(10, 11, 12))  # no coordinates at all
    _jpeg(root / "paris" / "p.jpg", _gps((48.0, 51.0, 24.0), "N", (2.0, 21.0, 5.0), "E"))
    ds = load_dataset(root)
    rec = {r.path.name: r for r in ds.records}
    assert (rec[TOKYO_VPR].lat, rec[TOKYO_VPR].lon, rec[TOKYO_VPR].geo_source) == (
        35.75931,
        139.86287,
        "name",
    )
    assert rec["IMG_1.jpg"].geo_source == "exif"
    assert rec["IMG_1.jpg"].lat == pytest.approx(35 + 41 / 60 + 22 / 3600)
    assert math.isnan(rec["IMG_3.jpg"].lat) and rec["IMG_3.jpg"].geo_source == "none"
    assert ds.geo_sources == {"csv": 0, "name": 1, "exif": 3, "none": 1}
    # GPS photos without a spot convention are joined by distance: 9 m apart, one spot
    assert rec["IMG_1.jpg"].spot == rec["IMG_2.jpg"].spot
    assert rec["IMG_1.jpg"].spot.startswith("gps:")
    assert rec["p.jpg"].spot != rec["IMG_1.jpg"].spot
    assert rec["IMG_3.jpg"].spot.startswith("file:")
    assert ds.spot_sources["gps"] == 3 and ds.spot_sources["file"] == 1
    frame = ds.to_frame().set_index("image_id")
    assert frame["lat"].dtype == np.float64 and frame["lat"].isna().sum() == 1
    assert "district" not in frame.columns


def test_gps_groups_join_within_the_radius_anywhere():
    lat0, lon0 = 64.1466, -21.9426  # far north: a degree of longitude is short
    dlat = 24.0 / 111_195  # ~24 m north
    dlon = 30.0 / (111_195 * math.cos(math.radians(lat0)))  # ~30 m east
    lat = [lat0, lat0 + dlat, lat0, -33.9, 0.0, 0.0]
    lon = [lon0, lon0, lon0 + dlon, 18.4, 179.99999, -179.99999]  # the last two: 2 m apart
    groups = gps_groups(lat, lon, 25.0)
    assert groups[0] == groups[1] != groups[2]
    assert groups[4] == groups[5]  # across the antimeridian
    assert len(set(groups.tolist())) == 4
    assert gps_groups(lat, lon, 35.0)[2] == gps_groups(lat, lon, 35.0)[0]
    with pytest.raises(ValueError, match="finite"):
        gps_groups([float("nan")], [0.0])
    with pytest.raises(ValueError, match="radius"):
        gps_groups([0.0], [0.0], 0)


def test_csv_coordinates_good_bad_and_missing(tmp_path: Path):
    for i in range(6):
        _jpeg(tmp_path / "img" / f"{i}.jpg", colour=(i, 2 * i, 3 * i))
    gps_photo = _jpeg(
        tmp_path / "img" / "g.jpg",
        _gps((1.0, 0.0, 0.0), "N", (2.0, 0.0, 0.0), "E"),
        colour=(50, 60, 70),
    )
    vpr = _jpeg(tmp_path / "img" / PITTS_VPR, colour=(80, 90, 100))
    (tmp_path / "list.csv").write_text(
        "path,city,Latitude,Longitude,district\n"
        "img/0.jpg,paris,48.8566,2.3522,centre\n"
        "img/1.jpg,paris,north,2.35,\n"
        "img/2.jpg,paris,48.85,,\n"
        "img/3.jpg,rome,41.9,200,\n"
        "img/4.jpg,rome,,,\n"
        f"{gps_photo.relative_to(tmp_path)},rome,41.89,12.49,\n"
        f"{vpr.relative_to(tmp_path)},rome,,,\n"
    )
    ds = load_dataset(tmp_path / "list.csv")
    rec = {r.path.name: r for r in ds.records}
    assert (rec["0.jpg"].lat, rec["0.jpg"].lon, rec["0.jpg"].district) == (
        48.8566,
        2.3522,
        "centre",
    )
    for name in ("1.jpg", "2.jpg", "3.jpg", "4.jpg"):
        assert math.isnan(rec[name].lat) and math.isnan(rec[name].lon), name
    assert (rec["g.jpg"].lat, rec["g.jpg"].geo_source) == (41.89, "csv")  # CSV beats EXIF
    assert rec[PITTS_VPR].geo_source == "name"  # empty CSV cells: the name's coordinates
    warned = dict(ds.geo_warnings)
    assert set(warned) == {"img/1.jpg", "img/2.jpg", "img/3.jpg"}
    assert "line 3" in warned["img/1.jpg"] and "not numbers" in warned["img/1.jpg"]
    assert "line 4" in warned["img/2.jpg"]
    assert "line 5" in warned["img/3.jpg"] and "longitude" in warned["img/3.jpg"]
    assert len(ds) == 7 and not ds.skipped  # never fatal
    frame = ds.to_frame()
    assert frame["district"].tolist().count("centre") == 1
    # coordinates given in the table are part of the data set's identity
    before = ds.fingerprint()
    text = (tmp_path / "list.csv").read_text().replace("48.8566", "48.8567")
    (tmp_path / "list.csv").write_text(text)
    assert load_dataset(tmp_path / "list.csv").fingerprint() != before


# --------------------------------------------------------------------------- H3 cells


def test_cells_follow_h3_and_skip_unknown_coordinates():
    lat = np.array([35.6812, np.nan, 40.4406, 91.0, 35.6813])
    lon = np.array([139.7671, 139.0, -79.9959, 0.0, np.inf])
    out = geo.cells(lat, lon, 8)
    assert out.dtype == object and out[1] is None and out[3] is None and out[4] is None
    assert out[0] == h3.latlng_to_cell(35.6812, 139.7671, 8)
    assert out[2] == h3.latlng_to_cell(40.4406, -79.9959, 8)
    assert h3.get_resolution(out[0]) == 8
    assert h3.get_resolution(geo.cells([35.6812], [139.7671], 5)[0]) == 5
    with pytest.raises(ValueError, match="resolution"):
        geo.cells([0.0], [0.0], 16)
    with pytest.raises(ValueError, match="lon has"):
        geo.cells([0.0, 1.0], [0.0], 8)


def test_cell_boundary_geojson_is_valid_and_closed():
    a = geo.cells([35.6812], [139.7671], 7)[0]
    b = geo.cells([35.75], [139.86], 7)[0]
    fc = geo.cell_boundary_geojson([a, None, b, a], {b: {"n_images": 3}})
    fc = json.loads(json.dumps(fc))  # plain JSON
    assert fc["type"] == "FeatureCollection" and [f["id"] for f in fc["features"]] == [a, b]
    assert fc["features"][1]["properties"] == {"cell": b, "n_images": 3}
    ring = fc["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 7
    lat_c, lon_c = geo.cell_centre(a)
    assert h3.latlng_to_cell(lat_c, lon_c, 7) == a
    lons, lats = zip(*ring, strict=True)
    assert min(lons) < lon_c < max(lons) and min(lats) < lat_c < max(lats)  # [lon, lat] order


# --------------------------------------------------------------------------- profiles


def _hist(rows: list[tuple[str, int, dict[int, int]]]) -> pd.DataFrame:
    """A histogram table from ``(image_id, class_id, {bin: pixels})`` rows (20 bins)."""
    cols = bin_columns(20)
    data = []
    for image_id, class_id, bins in rows:
        counts = np.zeros(20, np.int64)
        for k, v in bins.items():
            counts[k] = v
        data.append(
            {
                "image_id": image_id,
                "class_id": class_id,
                "n_pixels": int(counts.sum()),
                **dict(zip(cols, counts.tolist(), strict=True)),
            }
        )
    return pd.DataFrame(data)


def test_cell_profiles_match_hand_computed_values():
    a_lat, a_lon = 35.6812, 139.7671
    b_lat, b_lon = 35.7500, 139.8600  # ~11 km away: another cell at resolution 8
    images = pd.DataFrame(
        {
            "image_id": ["i1", "i2", "i3", "i4", "i5", "i6"],
            "city": ["x", "x", "x", "x", "x", "y"],
            "lat": [a_lat, a_lat + 1e-4, b_lat, np.nan, b_lat, a_lat],
            "lon": [a_lon, a_lon, b_lon, np.nan, b_lon + 1e-4, a_lon],
        }
    )
    # threshold 0.5 = bin 10: pixels in bins >= 10 are explained
    hist = _hist(
        [
            ("i1", 0, {15: 4, 2: 6}),
            ("i1", 1, {12: 5}),
            ("i2", 0, {19: 2, 0: 8}),
            ("i3", 1, {10: 3, 9: 7}),
            ("i3", 2, {1: 4}),
            ("i4", 0, {18: 10}),  # no coordinates: counts for the city only
            ("i6", 2, {11: 1}),  # i5 has no labelled pixel
        ]
    )
    prof = geo.cell_profiles(images, hist, 0.5, ["a", "b", "c"], resolution=8)
    assert list(prof.columns) == geo.PROFILE_COLUMNS
    cell_a, cell_b = geo.cells([a_lat, b_lat], [a_lon, b_lon], 8)
    assert cell_a != cell_b
    got = prof.set_index(["cell", "city", "object"])
    # city x: a = (4+2+10)/30, b = (5+3)/15, c = 0/4
    expected = {
        (cell_a, "x", "a"): dict(
            n_images=2,
            M=6,
            N=20,
            share=6 / 11,
            rpc_cell=6 / 20,
            rpc_city=16 / 30,
            lift=(6 / 20) / (16 / 30),
        ),
        (cell_a, "x", "b"): dict(
            n_images=2, M=5, N=5, share=5 / 11, rpc_cell=1.0, rpc_city=8 / 15, lift=1 / (8 / 15)
        ),
        (cell_b, "x", "b"): dict(
            n_images=2, M=3, N=10, share=1.0, rpc_cell=0.3, rpc_city=8 / 15, lift=0.3 / (8 / 15)
        ),
        (cell_b, "x", "c"): dict(
            n_images=2, M=0, N=4, share=0.0, rpc_cell=0.0, rpc_city=0.0, lift=np.nan
        ),
        (cell_a, "y", "c"): dict(
            n_images=1, M=1, N=1, share=1.0, rpc_cell=1.0, rpc_city=1.0, lift=1.0
        ),
    }
    assert set(got.index) == set(expected)
    for key, want in expected.items():
        row = got.loc[key]
        for col, value in want.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(row[col]), (key, col)
            else:
                assert row[col] == pytest.approx(value, rel=1e-12), (key, col)
        assert row["mean_pixels"] == pytest.approx(row["N"] / row["n_images"])
        assert (row["lat"], row["lon"]) == pytest.approx(h3.cell_to_latlng(key[0]))
        assert row["boundary"][0] == row["boundary"][-1]
    assert prof["M"].dtype == np.int64
    # sorted by cell, city, then M descending
    assert prof[["cell", "city"]].apply(tuple, axis=1).is_monotonic_increasing
    with pytest.raises(ValueError, match="class_id 2 has no name"):
        geo.cell_profiles(images, hist, 0.5, ["a", "b"], resolution=8)
    no_coords = images.assign(lat=np.nan, lon=np.nan)
    empty = geo.cell_profiles(no_coords, hist, 0.5, ["a", "b", "c"])
    assert empty.empty and list(empty.columns) == geo.PROFILE_COLUMNS


def _reference_profiles(images, hist, k, class_names, resolution):
    """cell_profiles written the plain way: dicts and loops over rows, float64 ratios."""
    city_of = dict(zip(images["image_id"], images["city"], strict=True))
    cell_of = {}
    for image_id, lat, lon in zip(images["image_id"], images["lat"], images["lon"], strict=True):
        if math.isfinite(lat) and math.isfinite(lon):
            cell_of[image_id] = h3.latlng_to_cell(float(lat), float(lon), resolution)
    n_img, per, city_mn = {}, {}, {}
    for image_id, cell in cell_of.items():
        n_img[cell, city_of[image_id]] = n_img.get((cell, city_of[image_id]), 0) + 1
    bins = [c for c in hist.columns if c.startswith("h")]
    for rec in hist.to_dict("records"):
        if rec["image_id"] not in city_of:
            continue
        counts = [rec[c] for c in bins]
        m, n = sum(counts[k:]), sum(counts)
        key = (city_of[rec["image_id"]], rec["class_id"])
        cm, cn = city_mn.get(key, (0, 0))
        city_mn[key] = (cm + m, cn + n)
        if rec["image_id"] in cell_of:
            gkey = (cell_of[rec["image_id"]], *key)
            gm, gn = per.get(gkey, (0, 0))
            per[gkey] = (gm + m, gn + n)
    cell_m = {}
    for (cell, city, _), (m, _) in per.items():
        cell_m[cell, city] = cell_m.get((cell, city), 0) + m
    rows = []
    for (cell, city, cls), (m, n) in per.items():
        rpc_city = city_mn[city, cls][0] / city_mn[city, cls][1]
        rows.append(
            {
                "cell": cell,
                "city": city,
                "object": class_names[cls],
                "class_id": cls,
                "n_images": n_img[cell, city],
                "M": m,
                "N": n,
                "mean_pixels": n / n_img[cell, city],
                "share": m / cell_m[cell, city] if cell_m[cell, city] else math.nan,
                "rpc_cell": m / n,
                "rpc_city": rpc_city,
                "lift": (m / n) / rpc_city if rpc_city else math.nan,
            }
        )
    ref = pd.DataFrame(rows)
    return ref.sort_values(["cell", "city", "M", "class_id"], ascending=[True, True, False, True])


def test_cell_profiles_equal_a_plain_reference_on_random_data():
    rng = np.random.default_rng(7)
    n_img, n_cls, k = 400, 7, 10
    # most images in ~20 clusters (many images per cell), a scattered few alone in their cell
    centre = rng.integers(0, 20, n_img)
    lat = 35.6 + 0.02 * centre + rng.normal(0, 0.001, n_img)
    lon = 139.7 + 0.02 * (centre % 5) + rng.normal(0, 0.001, n_img)
    lone = rng.random(n_img) < 0.05
    lat[lone] += rng.uniform(0.5, 2.0, lone.sum())
    lat[rng.random(n_img) < 0.1] = np.nan  # no coordinates
    lon[rng.random(n_img) < 0.05] = np.nan
    images = pd.DataFrame(
        {
            "image_id": [f"img{i:03d}" for i in range(n_img)],
            "city": rng.choice(["paris", "tokyo", "lima"], n_img),
            "lat": lat,
            "lon": lon,
        }
    )
    rows = []
    for i in range(n_img + 10):  # 10 histogram-only images (not in images): ignored
        if rng.random() < 0.05:
            continue  # no labelled pixel: counts in n_images only
        for cls in rng.choice(n_cls, rng.integers(1, n_cls + 1), replace=False):
            bins = {int(b): int(rng.integers(0, 500)) for b in rng.integers(0, 20, 4)}
            rows.append((f"img{i:03d}", int(cls), bins))
    rows.append(("img000", n_cls - 1, {0: 3}))  # nothing explained
    hist = _hist(rows)
    got = geo.cell_profiles(images, hist, k / 20, [f"o{c}" for c in range(n_cls)], resolution=9)
    want = _reference_profiles(images, hist, k, [f"o{c}" for c in range(n_cls)], 9)
    assert got["cell"].nunique() > 20 and (got["n_images"] == 1).any()
    assert len(got) == len(want)
    for col in ("cell", "city", "object", "class_id", "n_images", "M", "N"):
        assert got[col].tolist() == want[col].tolist(), col
    for col in ("mean_pixels", "share", "rpc_cell", "rpc_city", "lift"):
        np.testing.assert_allclose(
            got[col].to_numpy(np.float64), want[col].to_numpy(np.float64), rtol=1e-12, err_msg=col
        )
    assert all(geo.cell_boundary(c) == b for c, b in zip(got["cell"], got["boundary"], strict=True))


# --------------------------------------------------------------------------- known spatial answer


@pytest.fixture(scope="module")
def district_run(tmp_path_factory) -> Path:
    """A real precompute (data → stats) of the synthetic districts: 100 spots per city, half of
    them in the test split (about 35 test images per district and city), one Simple model
    trained for 2 epochs on 48 px images, explained with Grad-CAM++ (as the demo), labels from
    the set's own annotations. About 70 s of CPU time."""
    import cityviz.config as config
    from precompute.__main__ import main

    base = tmp_path_factory.mktemp("districts")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(
            config.PROFILES, "smoke", config.PROFILES["smoke"].replace(split_ratios=(0.4, 0.1, 0.5))
        )
        args = ["--profile", "smoke", "--spots-per-city", "100", "--archs", "simple",
                "--image-size", "48", "--epochs", "2", "--cam-method", "gradcam++",
                "--stages", "data,train,cams,segment,stats",
                "--cache", str(base / "cache"), "--data-dir", str(base / "data"),
                "--no-progress", "-q"]  # fmt: skip
        assert main(args) == 0
    return base / "cache"


def test_synthetic_images_carry_coordinates_and_districts(district_run: Path):
    cache = Cache(district_run)
    images = cache.images()
    assert images["lat"].dtype == images["lon"].dtype == np.float64
    assert images["lat"].notna().all()
    assert set(images["district"]) == set(synth.DISTRICTS)
    assert cache.manifest["dataset"]["geo_sources"]["csv"] == len(images)
    cfg = synth.SynthConfig(cities=tuple(cache.cities), spots_per_city=100)
    for _, row in images.sample(10, random_state=0).iterrows():
        spot = int(row["spot"].rsplit("/s", 1)[1])
        lat, lon, district = synth.spot_location(cfg, row["city"], spot)
        assert (row["district"], row["lat"], row["lon"]) == (
            district,
            pytest.approx(lat),
            pytest.approx(lon),
        )


def test_cell_profiles_recover_the_planted_spatial_answer(district_run: Path):
    """Per city and planted cue, the cells of the district where the cue was concentrated hold
    the highest share of it: cells are assigned to the district most of their images lie in
    (resolution 7: a district, 700 m across, spans one to three cells), and each district's
    share is its cells' explained pixels of the cue over all their explained pixels."""
    cache = Cache(district_run)
    test = cache.test_images()
    hist = read_table(district_run, "hist/simple_s0.parquet")
    names = read_json(district_run, "classes.json")
    prof = geo.cell_profiles(test, hist, 0.5, names, resolution=7)
    assert not prof.empty and prof["n_images"].sum() > 0
    cell_district = (
        pd.DataFrame({"cell": geo.cells(test["lat"], test["lon"], 7), "district": test["district"]})
        .groupby("cell")["district"]
        .agg(lambda s: s.mode().iloc[0])
    )
    prof["district"] = prof["cell"].map(cell_district)
    concentrated = synth.concentrated_in(synth.SynthConfig(cities=tuple(cache.cities)))
    checked = 0
    for city, cues in concentrated.items():
        mine = prof[prof["city"] == city]
        explained = mine.groupby("district")["M"].sum()
        for cue, district in cues.items():
            share = (
                mine[mine["object"] == cue]
                .groupby("district")["M"]
                .sum()
                .reindex(explained.index, fill_value=0)
                / explained
            )
            assert share.idxmax() == district, (city, cue, share.round(4).to_dict())
            # and the best single cell of that district beats every cell elsewhere
            cells = mine[(mine["object"] == cue) & (mine["n_images"] >= 6)]
            best = cells.loc[cells["share"].idxmax()]
            assert best["district"] == district, (city, cue, best.to_dict())
            checked += 1
    assert checked == 4


def test_fake_cache_images_carry_plausible_coordinates(fake_cache_dir: Path):
    cache = Cache(fake_cache_dir)
    images = cache.images()
    assert images["lat"].dtype == images["lon"].dtype == np.float64
    assert 0 < images["lat"].isna().sum() < len(images) / 10  # a few photos without GPS
    centres = synth.city_centres(cache.cities)
    for city, group in images.dropna(subset=["lat"]).groupby("city"):
        far = max(
            _metres(*centres[city], a, b) for a, b in zip(group["lat"], group["lon"], strict=True)
        )
        assert far < 3_000, city  # on the city's patch of districts
    assert set(images["district"]) == set(synth.DISTRICTS)
    hist = read_table(fake_cache_dir, f"hist/{cache.model_ids[0]}.parquet")
    prof = geo.cell_profiles(
        cache.test_images(), hist, 0.5, read_json(fake_cache_dir, "classes.json")
    )
    assert not prof.empty and prof["share"].between(0, 1).all()
    assert set(prof["city"]) == set(cache.cities)
