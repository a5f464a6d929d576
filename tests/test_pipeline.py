"""The precompute pipeline end to end on a tiny synthetic run: outputs, reuse, kill + resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cityviz.store import Cache, CacheStore
from precompute.__main__ import main
from precompute.summary import known_answer
from tests.helpers import smoke_args

ROOT = Path(__file__).resolve().parents[1]


_args = smoke_args


@pytest.fixture(scope="module")
def smoke(smoke_run) -> tuple[Path, Path]:
    return smoke_run


def test_every_stage_writes_its_outputs(smoke):
    cache = Cache(smoke[0])
    m = cache.manifest
    assert all(m["stages"][s]["status"] == "done" for s in
               ("data", "train", "cams", "segment", "stats", "embed", "thumbs"))  # fmt: skip
    assert cache.model_ids == ["simple_s0", "resnet18_s0"]
    test = cache.test_images()
    n = len(test)
    assert n > 0 and test["row"].tolist() == list(range(n))
    # spot-grouped split: no spot in two splits
    imgs = cache.images()
    assert imgs.groupby("spot")["split"].nunique().max() == 1
    preds = cache.predictions()
    assert len(preds) == 2 * n
    assert np.allclose(preds[["p0", "p1"]].sum(axis=1), 1, atol=1e-5)
    for mid in cache.model_ids:
        cams = cache.cams(mid)
        assert cams.shape[0] == n and (np.asarray(cams) >= 0).all()
        masks = cache.masks(mid, [0, 1])
        assert masks.shape == (2, 64, 64) and masks.min() >= 0 and masks.max() <= 1
        hist = cache.hist(mid)
        # every labelled pixel of every test image is counted exactly once
        per_image = hist.groupby("image_id")["n_pixels"].sum()
        assert len(per_image) == n and (per_image == 64 * 64).all()
        counts = hist[[c for c in hist.columns if c.startswith("h")]].to_numpy().sum(1)
        assert (counts == hist["n_pixels"].to_numpy()).all()
        emb = cache.embedding(mid)
        assert len(emb) == n and np.isfinite(emb[["tsne_x", "tsne_y"]].to_numpy()).all()
        placed = cache.embedder(mid, "tsne").transform(
            emb[["tsne_x"]].to_numpy().repeat(1024, 1).astype(np.float32)
        )
        assert placed.shape == (n, 2)
    rpc = cache.rpc()
    assert rpc["rpc"].between(0, 1).all()
    assert set(rpc["model_id"]) == set(cache.model_ids)
    ar = cache.ar()
    assert len(ar) == n and ar["ar"].between(0, 1).all()
    assert len(cache.labels()) == n and cache.class_names()[2] == "sky"
    # ResNet18 sees 96 px inputs (its own decoded copy); masks and labels stay at the cache's 64
    assert cache.model("resnet18_s0")["input_size"] == 96 and cache.image_size == 64
    assert np.load(smoke[0] / "inputs/test_96px.npy", mmap_mode="r").shape == (n, 96, 96, 3)
    assert cache.cams("resnet18_s0").shape[1:] == (3, 3)
    assert cache.masks("resnet18_s0", [0]).shape == (1, 64, 64)
    thumbs = m["thumbs"]
    assert thumbs["kinds"][0] == "orig" and cache.thumb_sheet("orig", 0).exists()
    assert cache.thumb_sheet("resnet18_s0/expl", 0).exists()


def test_second_run_reuses_everything(smoke, capsys):
    cache, data = smoke
    ckpt = cache / "models" / "simple_s0.safetensors"
    before = ckpt.stat().st_mtime_ns
    t0 = time.perf_counter()
    assert main(_args(cache, data)) == 0
    assert time.perf_counter() - t0 < 30
    assert ckpt.stat().st_mtime_ns == before
    out = capsys.readouterr().out
    assert "simple_s0" in out and "Average residual AR" in out
    models = out.split("Models")[1].split("Average residual")[0].splitlines()
    assert any(line.split()[:3] == ["resnet18_s0", "96", "px"] for line in models)
    # the known-answer lines name each model's Grad-CAM resolution (Simple at 64 px: 8×8,
    # ResNet18 at 96 px: 3×3)
    ka = out.split("Known answer")[1].splitlines()
    assert any(line.split()[:1] == ["simple_s0"] and "8×8 map" in line for line in ka)
    assert any(line.split()[:1] == ["resnet18_s0"] and "3×3 map" in line for line in ka)


def test_sigkill_during_cams_then_resume_equals_uninterrupted(smoke, tmp_path):
    ref, data = smoke
    work = tmp_path / "cache"
    shutil.copytree(ref, work)
    cmd = [sys.executable, "-m", "precompute", *_args(work, data)]
    env = {**os.environ, "CITYVIZ_TEST_UNIT_DELAY": "0.5", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([*cmd, "--stages", "cams", "--force"], cwd=ROOT, env=env)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            # the copied manifest says "done" until the forced rerun resets the stage
            st = CacheStore(work).stage("cams")
            if st["status"] == "running" and len(st["units"]) >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the cams stage never got going")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    interrupted = CacheStore(work)
    assert not interrupted.stage_done("cams")
    n_done = len(interrupted.stage("cams")["units"])
    assert n_done >= 2
    # resume (no delay): the finished shards are skipped, the rest computed
    rc = subprocess.run(
        [*cmd, "--stages", "cams"], cwd=ROOT, env={**env, "CITYVIZ_TEST_UNIT_DELAY": "0"}
    )
    assert rc.returncode == 0
    resumed = Cache(work)
    assert resumed.stage_done("cams")
    reference = Cache(ref)
    for mid in reference.model_ids:
        assert np.array_equal(np.asarray(resumed.cams(mid)), np.asarray(reference.cams(mid)))
    pd.testing.assert_frame_equal(resumed.predictions(), reference.predictions())


def test_known_answer_check():
    rpc = pd.DataFrame({
        "city": ["a"] * 4 + ["b"] * 3,
        "object": ["sign", "fence", "sky", "road", "tree", "sky", "road"],
        "rpc": [0.9, 0.7, 0.6, 0.2, 0.5, 0.55, 0.1],
        "kept": [True] * 7,
    })  # fmt: skip
    res = known_answer(rpc, {"a": ["sign", "fence"], "b": ["tree"]})
    assert res["a"]["ok"] and res["a"]["min_planted"] == 0.7 and res["a"]["max_shared"] == 0.6
    assert not res["b"]["ok"] and res["b"]["max_shared_object"] == "sky"
    # a planted object missing from the table fails, it is never silently skipped
    assert not known_answer(rpc, {"a": ["sign", "awning"]})["a"]["ok"]
    # a control city (no planted objects) has nothing to check
    assert set(known_answer(rpc, {"a": ["sign", "fence"], "b": []})) == {"a"}


def test_input_size_flag_merges_with_the_profile_and_rejects_bad_values(tmp_path, caplog):
    from precompute.__main__ import build_config, parse_args

    cfg = build_config(parse_args(["--profile", "smoke", "--input-size", "simple=80"]))
    assert cfg.input_sizes == {"resnet18": 96, "simple": 80}
    assert (cfg.input_size("simple"), cfg.input_size("vgg11"), cfg.render_size) == (80, 64, 96)
    assert cfg.decode_sizes == [64, 80, 96]  # the cache's size first, each size once
    for bad in ("resnet18:192", "resnet18=0", "resnet18=big"):
        with pytest.raises(SystemExit):
            parse_args(["--input-size", bad])
    assert main(_args(tmp_path / "c", tmp_path / "d", "--input-size", "resnet19=96")) == 2
    assert "unknown architecture" in caplog.text and not (tmp_path / "c").exists()
