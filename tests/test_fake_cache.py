"""The fake cache is complete and internally consistent: every reader of store.Cache works."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cityviz import stats
from cityviz.cam import mask_norm
from cityviz.embed import masks_to_features
from cityviz.fake_cache import make_fake_cache
from cityviz.models.checkpoint import load_checkpoint
from cityviz.store import Cache, thumb_location
from cityviz.thumbs import crop_tile, render_tiles


@pytest.fixture(scope="module")
def cache(fake_cache_dir) -> Cache:
    return Cache(fake_cache_dir)


def test_manifest_lists_everything(cache):
    m = cache.manifest
    assert cache.cities == ["tokyo-like", "pittsburgh-like"]
    assert cache.model_ids == ["simple_s0", "resnet18_s0"]
    assert m["models"][1]["display"] == "ResNet18 · seed 0"
    assert m["segmenter"]["spec"] == "annotations" and m["segmenter"]["n_classes"] == 150
    planted = m["dataset"]["discriminative"]
    assert set(planted) == set(cache.cities) and all(len(v) == 2 for v in planted.values())
    counts = m["dataset"]["split_counts"]
    assert sum(sum(c.values()) for c in counts.values()) == m["dataset"]["n_images"] == 200
    assert sum(c["test"] for c in counts.values()) == 100
    assert m["thumbs"]["kinds"] == [
        "orig", "simple_s0/overlay", "simple_s0/expl", "resnet18_s0/overlay", "resnet18_s0/expl"
    ]  # fmt: skip
    assert all(cache.stage_done(s) for s in ("train", "cams", "segment", "embed", "thumbs"))


def test_tables_and_arrays_have_matching_shapes(cache):
    test = cache.test_images()
    n = len(test)
    assert n == 100 and test["row"].tolist() == list(range(n))
    assert (test["split"] == "test").all()
    for m in cache.model_ids:
        pred = cache.predictions(m)
        assert len(pred) == n and set(pred["row"]) == set(range(n))
        probs = pred[["p0", "p1"]].to_numpy()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
        np.testing.assert_array_equal(probs.argmax(axis=1), pred["pred"])
        np.testing.assert_allclose(pred["confidence"], probs.max(axis=1))
        assert (pred["correct"] == (pred["pred"] == pred["target"])).all()
        assert cache.cams(m).shape == (n, 8, 8)
        assert cache.masks(m, [0, 1]).shape == (2, 64, 64)
        emb = cache.embedding(m)
        assert len(emb) == n and emb[["tsne_x", "umap_y"]].notna().all().all()
        assert {"cluster", "cluster_label", "dominant"} <= set(emb.columns)
    assert cache.labels().shape == (n, 64, 64)
    assert len(cache.class_names()) == 150
    assert len(cache.ar()) == n  # one pair of models
    assert cache.ar_summary()["kind"].tolist() == ["architecture"]


def test_histograms_match_masks_and_labels(cache):
    rows = np.array([0, 5, 63, 64, 99])  # 64 = pool size: row 64 reuses pool image 0
    test = cache.test_images()
    for m in cache.model_ids:
        masks = cache.masks(m, rows)
        img_row, cls, counts = stats.object_histograms(masks, cache.labels()[rows], 150)
        expect = stats.hist_frame(test["image_id"].to_numpy()[rows], img_row, cls, counts)
        hist = cache.hist(m)
        got = hist[hist["image_id"].isin(expect["image_id"])]
        key = ["image_id", "class_id"]
        pd.testing.assert_frame_equal(
            got.sort_values(key).reset_index(drop=True),
            expect.sort_values(key).reset_index(drop=True),
            check_dtype=False,
        )


def test_rpc_table_is_recomputable_and_finds_planted_objects(cache):
    test = cache.test_images()
    city_of = test.set_index("image_id")["city"]
    rpc = cache.rpc()
    assert set(rpc["model_id"]) == set(cache.model_ids)
    assert rpc[["ci_lo", "ci_hi"]].notna().all().all()
    for m in cache.model_ids:
        mine = rpc[rpc["model_id"] == m].drop(columns=["model_id", "ci_lo", "ci_hi"])
        ref = stats.rpc_table(
            cache.hist(m), city_of, 0.5, cache.class_names(),
            n_images_of=test["city"].value_counts(),
        )  # fmt: skip
        pd.testing.assert_frame_equal(mine.reset_index(drop=True), ref, check_dtype=False)
        planted = cache.manifest["dataset"]["discriminative"]
        for city in cache.cities:
            kept = mine[(mine["city"] == city) & mine["kept"]]
            assert set(kept["object"].head(2)) == set(planted[city])


def test_ar_is_the_mean_mask_difference(cache):
    ar = cache.ar()
    a, b = cache.model_ids
    rows = [3, 70]
    expect = stats.average_residual(cache.masks(a, rows), cache.masks(b, rows))
    ids = cache.test_images()["image_id"].to_numpy()[rows]
    got = ar.set_index("image_id").loc[ids, "ar"].to_numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-6)


def test_embedder_places_a_test_mask_on_its_own_point(cache):
    m = cache.model_ids[0]
    emb = cache.embedding(m).set_index("row")
    embedder = cache.embedder(m, "tsne")
    feats = masks_to_features(cache.masks(m, [7]), res=32)
    dist, idx = embedder.kneighbors(feats, k=3)
    # rows 7 and 71 show the same pool image (pool of 64): both at distance 0, nothing else
    assert sorted(idx[0, :2]) == [7, 71] and dist[0, 1] == 0 and dist[0, 2] > 0
    xy = embedder.transform(feats)[0]
    np.testing.assert_allclose(xy, emb.loc[[7, 71], ["tsne_x", "tsne_y"]].mean(), rtol=1e-5)


def test_thumbnails_show_the_image_and_its_explanation(cache):
    m = cache.model_ids[1]
    row = 37
    sheet, _, _ = thumb_location(row)
    path = cache.test_images().loc[row, "path"]
    img = np.asarray(Image.open(path).convert("RGB"))[None]
    mask = cache.masks(m, [row])
    for kind, sub in (("orig", "orig"), (f"{m}/expl", "expl"), (f"{m}/overlay", "overlay")):
        tile = crop_tile(cache.thumb_sheet(kind, sheet), row).astype(int)
        expect = render_tiles(img, None if sub == "orig" else mask, sub)[0].astype(int)
        assert np.abs(tile - expect).mean() < 8, kind


def test_checkpoints_load_and_predict(cache):
    for entry in cache.models:
        model, meta = load_checkpoint(cache.root / entry["checkpoint"])
        assert meta["classes"] == cache.cities and meta["arch"] == entry["arch"]
        with torch.no_grad():
            out = model(torch.zeros(1, 3, 64, 64))
        assert out.shape == (1, 2)


def test_bare_cache_has_no_object_data(bare_cache_dir):
    cache = Cache(bare_cache_dir)
    assert not cache.has_labels and cache.class_names() is None
    assert cache.manifest["segmenter"] is None and cache.thumbs is None
    assert not (cache.root / "hist").exists() and not (cache.root / "stats/rpc.parquet").exists()
    assert not (cache.root / "models/simple_s0.safetensors").exists()
    emb = cache.embedding("simple_s0")
    assert emb["cluster_label"].str.startswith("cluster ").all()
    assert emb["dominant"].isna().all()
    assert not cache.stage_done("segment")


def test_large_caches_reuse_a_pool(tmp_path):
    root = make_fake_cache(
        tmp_path / "c", n_images=600, test_fraction=1.0, archs=("simple",), image_size=32,
        pool_size=16, with_models=False,
    )  # fmt: skip
    cache = Cache(root)
    cams = cache.cams("simple_s0")
    assert cams.shape == (600, 8, 8)
    for r in (16, 300, 599):
        np.testing.assert_array_equal(cams[r], cams[r % 16])
    assert cache.thumbs["n_sheets"] == 3
    sheets = sorted((root / "thumbs/orig").iterdir())
    assert [p.name for p in sheets] == ["0000.jpg", "0001.jpg", "0002.jpg"]
    # 256 is a multiple of the pool size, so full sheets are identical; the last is partial
    assert sheets[0].read_bytes() == sheets[1].read_bytes() != sheets[2].read_bytes()
    np.testing.assert_array_equal(mask_norm(cams[[5]], 32), cache.masks("simple_s0", [5 + 16 * 20]))
    with pytest.raises(FileExistsError):
        make_fake_cache(root, n_images=10)


def test_pairs_cover_every_model_combination(tmp_path):
    root = make_fake_cache(
        tmp_path / "c", n_images=40, archs=("simple", "simpler"), seeds=(0, 1), image_size=32,
        pool_size=8, with_models=False, with_thumbs=False,
    )  # fmt: skip
    cache = Cache(root)
    pairs = set(map(tuple, cache.ar()[["model_a", "model_b"]].drop_duplicates().to_numpy()))
    assert pairs == set(itertools.combinations(cache.model_ids, 2))
    summary = cache.ar_summary()
    assert sorted(summary["kind"].value_counts().items()) == [("architecture", 4), ("seed", 2)]
    verdict = (cache.root / "stats/arch_vs_seed.json").read_text()
    assert '"n_seed_pairs": 2' in verdict
