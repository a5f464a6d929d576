"""cityviz.data.synth: deterministic, order-independent output; labels that match the pixels;
planted objects in every image of their city (each spot shows a non-empty subset of the city's
cues) and nowhere else; shared objects alike everywhere."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cityviz.data import synth
from cityviz.data.ade20k import ADE20K_CLASSES, ADE20K_INDEX
from cityviz.data.synth import (
    PLANTED_PAIRS,
    SHARED_OBJECTS,
    SynthConfig,
    default_city_names,
    discriminative_objects,
    generate,
    render_scene,
    time_of_day,
)

ALL_PLANTED = {name for pair in PLANTED_PAIRS for name in pair}
SMALL = SynthConfig(spots_per_city=3, views_per_spot=2, size=64, seed=5)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "set", SMALL)


def test_layout_and_metadata(small_set: Path):
    with open(small_set / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "city", "spot", "label_path", "lat", "lon", "district"]
    assert len(rows) == 2 * 3 * 2
    lat, lon, district = synth.spot_location(SMALL, "tokyo-like", 1)
    assert rows[3] == {"path": "images/tokyo-like/tokyo-like_s0001_v01.png", "city": "tokyo-like",
                       "spot": "tokyo-like/s0001",
                       "label_path": "labels/tokyo-like/tokyo-like_s0001_v01.png",
                       "lat": f"{lat:.7f}", "lon": f"{lon:.7f}", "district": "north-east"}
    assert rows[2]["lat"] == rows[3]["lat"] and rows[2]["district"] == district  # views of a spot
    for r in rows:
        img = Image.open(small_set / r["path"])
        lab = Image.open(small_set / r["label_path"])
        assert img.size == lab.size == (64, 64)
        assert img.mode == "RGB" and lab.mode == "L"
    assert json.loads((small_set / "classes.json").read_text()) == list(ADE20K_CLASSES)
    meta = json.loads((small_set / "synth.json").read_text())
    assert meta["config"] == {"cities": ["tokyo-like", "pittsburgh-like"], "spots_per_city": 3,
                              "views_per_spot": 2, "size": 64, "seed": 5,
                              "planted_presence": 0.6}
    assert meta["discriminative"] == {"tokyo-like": ["signboard", "fence"],
                                      "pittsburgh-like": ["skyscraper", "tree"]}
    assert meta["shared"] == list(SHARED_OBJECTS)
    assert meta["generator_version"] == synth.GENERATOR_VERSION == 5
    assert meta["districts"] == list(synth.DISTRICTS)
    geo = meta["geography"]["tokyo-like"]
    assert geo["concentrated"] == {"signboard": "north-west", "fence": "north-east"}
    assert geo["districts"]["north-west"]["cue_presence"] == {
        "signboard": synth.CONCENTRATED_PRESENCE, "fence": synth.SPARSE_PRESENCE}
    assert geo["districts"]["south-east"]["cue_presence"] == {"signboard": 0.6, "fence": 0.6}
    assert not [p for p in small_set.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_deterministic_and_order_independent(small_set: Path, tmp_path: Path):
    again = _files(generate(tmp_path / "again", SMALL))
    first = _files(small_set)
    assert again == first
    # one image rendered on its own, in another order, equals the file written by generate()
    for city, spot, view in [("pittsburgh-like", 2, 1), ("tokyo-like", 0, 0)]:
        img, lab = render_scene(SMALL, city, spot, view)
        name = synth.image_name(city, spot, view)
        assert (np.asarray(Image.open(small_set / "images" / city / name)) == img).all()
        assert (np.asarray(Image.open(small_set / "labels" / city / name)) == lab).all()
    # more spots or more cities do not change the images that already existed
    bigger = SynthConfig(cities=default_city_names(3), spots_per_city=5, views_per_spot=2,
                         size=64, seed=5)
    for city, spot, view in [("tokyo-like", 2, 1), ("pittsburgh-like", 1, 0)]:
        a, b = render_scene(SMALL, city, spot, view), render_scene(bigger, city, spot, view)
        assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    seed6 = render_scene(SynthConfig(size=64, seed=6), "tokyo-like", 0, 0)[0]
    assert not (seed6 == render_scene(SynthConfig(size=64, seed=5), "tokyo-like", 0, 0)[0]).all()


def test_process_pool_gives_the_same_bytes(small_set: Path, tmp_path: Path):
    assert _files(generate(tmp_path / "pool", SMALL, workers=2)) == _files(small_set)


def test_existing_complete_output_is_reused(small_set: Path, monkeypatch: pytest.MonkeyPatch):
    def boom(*args, **kwargs):
        raise AssertionError("must not render again")

    monkeypatch.setattr(synth, "_write_spot", boom)
    assert generate(small_set, SMALL) == small_set


def test_failed_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    real = synth._write_spot
    calls = []

    def fail_late(task):
        calls.append(task)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(task)

    monkeypatch.setattr(synth, "_write_spot", fail_late)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(tmp_path / "out", SMALL)
    assert list(tmp_path.iterdir()) == []


def test_other_config_replaces_output_but_foreign_folders_are_refused(tmp_path: Path):
    out = generate(tmp_path / "set", SMALL)
    cfg = SynthConfig(spots_per_city=1, views_per_spot=1, size=48, seed=5)
    generate(out, cfg)
    assert json.loads((out / "synth.json").read_text())["config"]["size"] == 48
    assert len(list((out / "images" / "tokyo-like").iterdir())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        generate(foreign, cfg)
    assert (foreign / "holiday.jpg").exists()


def test_city_assignment_and_validation():
    assert discriminative_objects(SynthConfig()) == {"tokyo-like": ["signboard", "fence"],
                                                     "pittsburgh-like": ["skyscraper", "tree"]}
    four = discriminative_objects(SynthConfig(cities=("a", "pittsburgh-like", "b", "tokyo-like")))
    assert four == {"a": ["awning", "streetlight"], "pittsburgh-like": ["skyscraper", "tree"],
                    "b": ["traffic light", "flag"], "tokyo-like": ["signboard", "fence"]}
    assert default_city_names(4) == ("tokyo-like", "pittsburgh-like", "city-3", "city-4")
    with pytest.raises(ValueError, match="at most 8"):
        SynthConfig(cities=default_city_names(9))
    with pytest.raises(ValueError, match="unique"):
        SynthConfig(cities=("a", "a"))
    with pytest.raises(ValueError, match="city name"):
        SynthConfig(cities=("../evil", "b"))
    assert all(name in ADE20K_INDEX for name in ALL_PLANTED | set(SHARED_OBJECTS))
    assert not ALL_PLANTED & set(SHARED_OBJECTS)


def _label_fractions(config: SynthConfig):
    """{city: array[n_images, 150]} of per-class pixel fractions."""
    out = {}
    for city in config.cities:
        rows = []
        for spot in range(config.spots_per_city):
            for view in range(config.views_per_spot):
                lab = render_scene(config, city, spot, view)[1]
                rows.append(np.bincount(lab.ravel(), minlength=150) / lab.size)
        out[city] = np.array(rows)
    return out


@pytest.fixture(scope="module")
def eight_cities():
    cfg = SynthConfig(cities=default_city_names(8), spots_per_city=4, views_per_spot=4, size=64)
    return cfg, _label_fractions(cfg)


def test_planted_objects_in_every_image_of_their_city_only(eight_cities):
    cfg, fractions = eight_cities
    disc = discriminative_objects(cfg)
    for city, frac in fractions.items():
        mine = [ADE20K_INDEX[n] for n in disc[city]]
        # every image shows at least one whole slot (≥ 0.2 × 0.2 of the view) of its city's cues
        assert frac[:, mine].sum(1).min() >= 0.035, city
        for name in ALL_PLANTED:
            share = frac[:, ADE20K_INDEX[name]]
            if name in disc[city]:
                present = share[share > 0]
                assert 0.02 <= present.mean() <= 0.2, (city, name, present.mean())
            else:
                assert share.max() == 0.0, (city, name)


def test_planted_objects_stay_clear_of_the_sidewalk(eight_cities):
    """Slots sit on the upper wall, at least 0.1 of the view above the sidewalk.

    Small shared objects (people, poles, grass, low walls) stand on the sidewalk; a panel next to
    them would lend them its Grad-CAM attention on a coarse map (generator v3 had such slots).
    """
    cfg, _ = eight_cities
    planted = [ADE20K_INDEX[n] for n in ALL_PLANTED]
    for city in cfg.cities:
        for spot in range(cfg.spots_per_city):
            for view in range(cfg.views_per_spot):
                lab = render_scene(cfg, city, spot, view)[1]
                rows = np.flatnonzero(np.isin(lab, planted).any(1))
                sidewalk_top = np.flatnonzero((lab == ADE20K_INDEX["sidewalk"]).any(1)).min()
                assert rows.max() < sidewalk_top - 0.1 * cfg.size, (city, spot, view)


def test_control_city_has_no_planted_objects_and_the_same_street():
    cfg = SynthConfig(cities=("tokyo-like", "control"), spots_per_city=6, views_per_spot=2, size=48)
    assert discriminative_objects(cfg) == {"tokyo-like": ["signboard", "fence"], "control": []}
    planted = [ADE20K_INDEX[n] for n in ALL_PLANTED]
    fractions = _label_fractions(cfg)
    assert fractions["control"][:, planted].sum() == 0
    assert fractions["tokyo-like"][:, planted].sum(1).min() > 0
    # its empty slots show the wall behind: more building, the rest of the street alike
    for name in ("road", "sidewalk", "car"):
        i = ADE20K_INDEX[name]
        assert abs(fractions["control"][:, i].mean() - fractions["tokyo-like"][:, i].mean()) < 0.03


def test_each_spot_shows_a_subset_of_cues_so_every_cue_is_needed():
    cfg = SynthConfig(spots_per_city=60, views_per_spot=1, size=32, seed=2)
    disc = discriminative_objects(cfg)
    for city in cfg.cities:
        subsets = [tuple(synth.planted_kinds(cfg, city, s)) for s in range(60)]
        assert all(subsets)
        for name in disc[city]:
            alone = sum(sub == (name,) for sub in subsets)
            assert alone >= 5, (city, name, alone)  # spots where only this cue tells the city
        assert sum(len(sub) == len(disc[city]) for sub in subsets) >= 5
    everywhere = SynthConfig(spots_per_city=5, planted_presence=1.0)
    assert synth.planted_kinds(everywhere, "tokyo-like", 3) == disc["tokyo-like"]


@pytest.fixture(scope="module")
def two_cities():
    cfg = SynthConfig(spots_per_city=30, views_per_spot=4, size=48, seed=1)
    return cfg, _label_fractions(cfg)


def test_shared_objects_have_similar_frequencies(two_cities):
    _, fractions = two_cities
    a, b = fractions["tokyo-like"], fractions["pittsburgh-like"]
    for name in SHARED_OBJECTS:
        i = ADE20K_INDEX[name]
        present_a, present_b = (a[:, i] > 0).mean(), (b[:, i] > 0).mean()
        assert abs(present_a - present_b) <= 0.15, (name, present_a, present_b)
        # planted panels fill the same slots in every city, so they hide the same shared pixels:
        # how much sky or building is visible must not tell the city (generator v2 differed by
        # up to 0.055 here, since skyscrapers hid sky in one city only)
        assert abs(a[:, i].mean() - b[:, i].mean()) <= 0.02, name
    used = {ADE20K_CLASSES[i] for f in fractions.values() for i in np.flatnonzero(f.sum(0))}
    assert used <= set(SHARED_OBJECTS) | ALL_PLANTED


def _within_class_variance(img: np.ndarray, lab: np.ndarray) -> float:
    flat, labels = img.reshape(-1, 3).astype(float), lab.ravel()
    total = 0.0
    for c in np.unique(labels):
        px = flat[labels == c]
        total += ((px - px.mean(0)) ** 2).sum()
    return total / len(flat)


def test_labels_match_pixels():
    cfg = SynthConfig(spots_per_city=6, views_per_spot=2, size=96, seed=3)
    day_checked = 0
    for city in cfg.cities:
        for spot in range(cfg.spots_per_city):
            for view in range(cfg.views_per_spot):
                img, lab = render_scene(cfg, city, spot, view)
                when = time_of_day(cfg, city, spot, view)
                # the true label map explains the pixels better than one moved by 3 px diagonally
                aligned = _within_class_variance(img, lab)
                moved = _within_class_variance(img, np.roll(lab, (3, 3), axis=(0, 1)))
                # (at night lit windows dominate the variance, so only demand "better")
                assert aligned < (1.0 if when == "night" else 0.8) * moved, (city, spot, view)
                if when != "day":
                    continue
                day_checked += 1
                mean = {n: img[lab == ADE20K_INDEX[n]].astype(float).mean(0)
                        for n in ("sky", "road", "tree", "skyscraper")
                        if (lab == ADE20K_INDEX[n]).any()}
                assert mean["sky"][2] > mean["sky"][0] + 30  # blue sky
                assert mean["sky"].sum() > mean["road"].sum()
                if city == "pittsburgh-like":
                    if "tree" in mean:
                        r, g, b = mean["tree"]
                        assert g > r and g > b  # green foliage
                    if "skyscraper" in mean:
                        r, g, b = mean["skyscraper"]
                        assert b > r + 15 and b > g  # dark-blue towers
                elif (signs := lab == ADE20K_INDEX["signboard"]).any():  # saturated panels
                    sat = img.max(axis=2).astype(int) - img.min(axis=2)
                    assert sat[signs].mean() > sat[lab == ADE20K_INDEX["building"]].mean() + 30
    assert day_checked >= 4


def test_views_of_a_spot_overlap_and_nuisances_vary():
    cfg = SynthConfig(spots_per_city=12, views_per_spot=4, size=64)
    la = render_scene(cfg, "tokyo-like", 0, 0)[1]
    lb = render_scene(cfg, "tokyo-like", 0, 1)[1]
    shift = synth.view_offsets(cfg)[1] - synth.view_offsets(cfg)[0]
    assert shift == round(2 * 64 / 3)
    assert (la[:, shift:] == lb[:, : 64 - shift]).all()  # same street seen from the next offset
    times = {time_of_day(cfg, c, s, v) for c in cfg.cities for s in range(12) for v in range(4)}
    assert times == {"day", "sunset", "night"}
    brightness = {"day": [], "night": []}
    for s in range(12):
        for v in range(4):
            t = time_of_day(cfg, "pittsburgh-like", s, v)
            if t in brightness:
                brightness[t].append(render_scene(cfg, "pittsburgh-like", s, v)[0].mean())
    assert np.mean(brightness["night"]) < 0.5 * np.mean(brightness["day"])


def test_png_encoder_round_trips():
    rng = np.random.default_rng(0)
    for arr in (rng.integers(0, 256, (7, 5, 3), dtype=np.uint8),
                rng.integers(0, 150, (6, 9), dtype=np.uint8)):
        for level in (0, 6):
            data = synth.encode_png(arr, level)
            assert (np.asarray(Image.open(io.BytesIO(data))) == arr).all()


@pytest.mark.parametrize("kind", sorted(ALL_PLANTED))
def test_every_planted_kind_has_a_visible_two_colour_pattern(kind):
    pattern = synth._KINDS[kind].pattern
    for h, w in ((20, 24), (14, 30), (27, 19)):
        mask = synth._accent_mask(pattern, h, w, 96, np.random.default_rng(0))
        assert mask.shape == (h, w) and mask.dtype == bool
        assert 0.05 <= mask.mean() <= 0.8, (kind, h, w, mask.mean())  # base and accent both show


def _metres(lat1, lon1, lat2, lon2) -> float:
    """Great-circle distance (haversine, mean Earth radius), the float64 reference."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = (np.sin((p2 - p1) / 2) ** 2
         + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2)
    return float(2 * 6_371_008.8 * np.arcsin(np.sqrt(a)))


def test_spots_lie_in_their_district_near_a_real_city():
    cfg = SynthConfig(cities=("tokyo-like", "pittsburgh-like", "control", "city-4"),
                      spots_per_city=24, size=32)
    meta_geo = synth._metadata(cfg)["geography"]
    real = {"tokyo-like": (35.68, 139.77), "pittsburgh-like": (40.44, -80.0)}
    centres = []
    for city in cfg.cities:
        centres.append(tuple(meta_geo[city]["centre"]))
        if city in real:
            assert _metres(*real[city], *meta_geo[city]["centre"]) < 5_000
        for spot in range(cfg.spots_per_city):
            lat, lon, district = synth.spot_location(cfg, city, spot)
            assert district == synth.DISTRICTS[spot % 4] == synth.district_of(spot)
            dc = meta_geo[city]["districts"][district]["centre"]
            assert _metres(lat, lon, *dc) <= synth.DISTRICT_RADIUS_M * 1.001
            for other in set(synth.DISTRICTS) - {district}:
                assert _metres(lat, lon, *meta_geo[city]["districts"][other]["centre"]) > 1_500
            assert synth.spot_location(cfg, city, spot) == (lat, lon, district)  # deterministic
    assert len(set(centres)) == len(centres)  # every city on its own patch
    # districts' centres are 2.4 km apart north-south and east-west (the layout's offsets)
    d = meta_geo["tokyo-like"]["districts"]
    assert abs(_metres(*d["north-west"]["centre"], *d["south-west"]["centre"]) - 2400) < 1
    assert abs(_metres(*d["north-west"]["centre"], *d["north-east"]["centre"]) - 2400) < 1


def test_cues_are_concentrated_in_their_district():
    cfg = SynthConfig(cities=("tokyo-like", "pittsburgh-like", "control"), spots_per_city=400,
                      views_per_spot=1, size=32, seed=4)
    for city, (first, second) in (("tokyo-like", ("signboard", "fence")),
                                  ("pittsburgh-like", ("skyscraper", "tree"))):
        shown = {d: {first: 0, second: 0, "n": 0} for d in synth.DISTRICTS}
        for spot in range(cfg.spots_per_city):
            kinds = synth.planted_kinds(cfg, city, spot)
            assert kinds  # every spot still shows a cue
            d = shown[synth.district_of(spot)]
            d["n"] += 1
            for k in kinds:
                d[k] += 1
        freq = {d: {k: v[k] / v["n"] for k in (first, second)} for d, v in shown.items()}
        assert freq["north-west"][first] > 0.9 and freq["north-west"][second] < 0.25
        assert freq["north-east"][second] > 0.9 and freq["north-east"][first] < 0.25
        for d in ("south-west", "south-east"):
            for k in (first, second):
                assert 0.5 < freq[d][k] < 0.85, (city, d, k, freq[d][k])
        assert synth.concentrated_in(cfg)[city] == {first: "north-west", second: "north-east"}
    assert synth.planted_kinds(cfg, "control", 0) == []
    # pixels follow: the north-west shows far more of the first cue than the north-east
    px = {d: 0 for d in synth.DISTRICTS[:2]}
    for spot in range(40):
        lab = render_scene(cfg, "tokyo-like", spot, 0)[1]
        if synth.district_of(spot) in px:
            px[synth.district_of(spot)] += int((lab == ADE20K_INDEX["signboard"]).sum())
    assert px["north-west"] > 3 * px["north-east"]
    with pytest.raises(ValueError, match="district"):
        synth.cue_presence(cfg, "tokyo-like", "downtown")
    with pytest.raises(ValueError, match="unknown city"):
        synth.spot_location(cfg, "atlantis", 0)
