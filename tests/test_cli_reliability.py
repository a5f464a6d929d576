"""The CLI as a careless or hostile user meets it (issue 9 faults 1 and 6, the lock, Ctrl-C;
issue 10 goals 1, 3 and 4): nothing outside a cityviz cache is ever deleted, every environment
failure is one sentence with exit code 2, everything checkable is checked before training, and
explicit flags beat profiles."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import precompute.stages as stages
from cityviz.store import Cache, CacheStore
from precompute.__main__ import build_config_with_sources, main, parse_args
from tests.helpers import clone_cache, smoke_args

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if anything starts training (preflight must stop the run before)."""

    def refuse(*a, **kw):
        raise AssertionError("training started although a preflight check should have failed")

    monkeypatch.setattr(stages, "train_model", refuse)


def photo_folder(root: Path, cities=("rome", "oslo"), n=10, size=40) -> Path:
    """A folder data set of distinct noise photos with plain names (no spot information)."""
    rng = np.random.default_rng(0)
    for city in cities:
        (root / city).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / city / f"photo{i:02d}.png")
    return root


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


# ---- fault 1: --fresh deletes only a cityviz cache, and only after validation ---------------


def test_fresh_with_bad_data_deletes_nothing(tmp_path, caplog):
    (tmp_path / "x" / "precious").mkdir(parents=True)
    (tmp_path / "x" / "precious" / "thesis.tex").write_text("years of work")
    rc = main(["--profile", "smoke", "--fresh", "--cache", str(tmp_path / "x"), "--data",
               str(tmp_path / "nonexistent"), "--no-progress", "-q"])  # fmt: skip
    assert rc != 0
    assert (tmp_path / "x" / "precious" / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("extra", [["--fresh"], []], ids=["fresh", "plain"])
def test_a_folder_that_is_not_a_cache_is_never_written_or_deleted(tmp_path, caplog, extra):
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    (home / "docs" / "a.txt").write_text("mine")
    (home / ".bashrc").write_text("export X=1")
    before = _tree(home)
    rc = main(smoke_args(home, tmp_path / "data", *extra))
    assert rc == 2
    assert "not a cityviz cache" in caplog.text
    assert _tree(home) == before and sorted(p.name for p in home.iterdir()) == [".bashrc", "docs"]


def test_fresh_on_a_cache_removes_only_what_cityviz_wrote(smoke_run, tmp_path, caplog):
    cache, data = smoke_run
    work = clone_cache(cache, tmp_path / "cache")
    (work / "my-notes.txt").write_text("keep me")
    (work / "mine").mkdir()
    (work / "mine" / "x.bin").write_bytes(b"\x00\x01")
    (work / "models" / "old_model.safetensors").write_bytes(b"stale")  # inside a cityviz folder
    assert main(smoke_args(work, data, "--fresh", "--stages", "data")) == 0
    assert (work / "my-notes.txt").read_text() == "keep me"
    assert (work / "mine" / "x.bin").read_bytes() == b"\x00\x01"
    assert not (work / "models").exists() and not (work / "cams").exists()
    assert Cache(work).stage_done("data") and not Cache(work).stage_done("train")
    assert "did not write" in caplog.text and "my-notes.txt" in caplog.text


# ---- fault 6: environment failures: one sentence, exit 2, the cache consistent --------------


def test_a_cache_path_that_is_a_file_is_refused(tmp_path, caplog):
    f = tmp_path / "file.txt"
    f.write_text("not a directory")
    for cache in (f, f / "sub"):
        assert main(smoke_args(cache, tmp_path / "data")) == 2
    assert f.read_text() == "not a directory"
    assert "is a file, not a directory" in caplog.text and "Traceback" not in caplog.text


def test_an_unwritable_cache_location_fails_before_any_work(tmp_path, caplog, monkeypatch,
                                                             no_training):  # fmt: skip
    import tempfile

    def denied(*a, **kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    assert main(smoke_args(tmp_path / "c", tmp_path / "data")) == 2
    assert "cannot write" in caplog.text and not (tmp_path / "c").exists()


def test_too_little_disk_fails_before_any_work(tmp_path, caplog, monkeypatch, no_training):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    assert main(smoke_args(tmp_path / "c", tmp_path / "data")) == 2
    assert "GB free" in caplog.text and not (tmp_path / "c").exists()


class SafetensorError(Exception):
    """Stands in for safetensors' own error type (raised on a failed write)."""


@pytest.mark.parametrize(
    "fault",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"),
        PermissionError(errno.EACCES, "Permission denied"),
        OSError(errno.EROFS, "Read-only file system"),
    ],
    ids=["disk-full", "safetensors", "permission", "read-only"],
)
def test_a_failing_write_during_training_is_one_sentence_and_keeps_the_cache(
    smoke_run, tmp_path, monkeypatch, capsys, caplog, fault
):
    cache, data = smoke_run
    work = clone_cache(cache, tmp_path / "cache")

    def failing_save(*a, **kw):
        raise fault

    monkeypatch.setattr(stages, "save_checkpoint", failing_save)
    rc = main(smoke_args(work, data, "--archs", "simple", "--epochs", "2"))
    assert rc == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "Cannot write the cache" in errors[0].getMessage()
    assert "rerun the same command" in errors[0].getMessage()
    assert "Traceback" not in capsys.readouterr().err
    c = Cache(work)  # still a readable, consistent cache
    assert not c.stage_done("train")
    assert (work / "models/simple_s0.safetensors").read_bytes() == (
        cache / "models/simple_s0.safetensors"
    ).read_bytes()


# ---- concurrent runs: the second is refused --------------------------------------------------


def test_a_second_run_on_the_same_cache_is_refused(smoke_run, tmp_path, caplog):
    cache, data = smoke_run
    work = clone_cache(cache, tmp_path / "cache")
    before = (work / "manifest.json").read_bytes()
    with CacheStore(work).lock():
        assert main(smoke_args(work, data)) == 2
        assert (work / "manifest.json").read_bytes() == before
    assert "Another precompute" in caplog.text
    assert main(smoke_args(work, data)) == 0  # the lock is released with its holder


def test_a_lock_held_by_another_process_is_refused(smoke_run, tmp_path):
    cache, data = smoke_run
    work = clone_cache(cache, tmp_path / "cache")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CITYVIZ_TEST_UNIT_DELAY": "3"}
    cmd = [sys.executable, "-m", "precompute", *smoke_args(work, data)]
    first = subprocess.Popen([*cmd, "--stages", "cams", "--force"], cwd=ROOT, env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and CacheStore(work).stage("cams")["status"] == "done":
            time.sleep(0.05)
        second = subprocess.run(
            cmd,
            cwd=ROOT,
            env={**env, "CITYVIZ_TEST_UNIT_DELAY": "0"},
            capture_output=True,
            text=True,
        )
        assert second.returncode == 2 and "Another precompute" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.wait(300)
    assert first.returncode == 0 and Cache(work).stage_done("cams")


# ---- Ctrl-C: one line saying what is kept, then a rerun resumes ------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupting_a_run_prints_one_line_and_resumes(smoke_run, tmp_path, sig):
    cache, data = smoke_run
    work = clone_cache(cache, tmp_path / "cache")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CITYVIZ_TEST_UNIT_DELAY": "0.5"}
    cmd = [sys.executable, "-m", "precompute", *smoke_args(work, data)]
    proc = subprocess.Popen([*cmd, "--stages", "cams", "--force"], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 180
    while time.time() < deadline:
        st = CacheStore(work).stage("cams")
        if st["status"] == "running" and len(st["units"]) >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = [line for line in err.splitlines() if "Interrupted" in line]
    assert len(lines) == 1 and "stage cams" in lines[0] and "rerun the same command" in lines[0]
    done = len(CacheStore(work).stage("cams")["units"])
    assert done >= 1
    again = subprocess.run(cmd, cwd=ROOT, env={**env, "CITYVIZ_TEST_UNIT_DELAY": "0"})
    assert again.returncode == 0 and Cache(work).stage_done("cams")


# ---- issue 10 goal 1: preflight before any training -----------------------------------------


def test_a_missing_segmenter_fails_before_training(tmp_path, caplog, no_training):
    rc = main(smoke_args(tmp_path / "c", tmp_path / "d", "--segmenter", "hf:/no/such/model"))
    assert rc == 1 and "/no/such/model" in caplog.text


def test_annotations_on_photos_without_labels_fail_before_training(tmp_path, caplog, no_training):
    photos = photo_folder(tmp_path / "photos")
    rc = main(["--data", str(photos), "--cache", str(tmp_path / "c"), "--segmenter",
               "annotations", "--no-progress", "-q"])  # fmt: skip
    assert rc == 1 and "no label maps" in caplog.text


def test_missing_pretrained_weights_fail_before_training(tmp_path, caplog, monkeypatch,
                                                         no_training):  # fmt: skip
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    rc = main(smoke_args(tmp_path / "c", tmp_path / "d", "--pretrained"))
    assert rc == 1 and "--pretrained" in caplog.text and "ResNet18" in caplog.text


def test_an_unavailable_device_is_refused(tmp_path, caplog, no_training):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(smoke_args(tmp_path / "c", tmp_path / "d", "--device", "cuda")) == 2
    assert not (tmp_path / "c").exists()


def test_a_dry_run_estimates_and_writes_nothing(tmp_path, capsys, caplog, no_training):
    caplog.set_level(logging.INFO, logger="precompute")
    photos = photo_folder(tmp_path / "photos")
    rc = main(["--data", str(photos), "--cache", str(tmp_path / "c"), "--segmenter", "none",
               "--dry-run", "--no-progress"])  # fmt: skip
    assert rc == 0 and not (tmp_path / "c").exists()
    assert "estimated time" in caplog.text and "Dry run" in capsys.readouterr().out


def test_the_estimate_counts_split_shares_at_any_scale(monkeypatch, tmp_path, no_training):
    """``--split 36:12:126`` is shares of the spots, as 0.21:0.07:0.72 is: the time estimate must
    see 288 training images of 1 392, not 36 × 1 392 (it once announced 16 h for a 5-min demo)."""
    from precompute import preflight

    assert preflight.split_sizes(1392, (36, 12, 126)) == {"train": 288, "val": 96, "test": 1008}
    assert preflight.split_sizes(1392, (36, 12, 126)) == preflight.split_sizes(
        1392, (36 / 174, 12 / 174, 126 / 174)
    )
    assert preflight.split_sizes(10, (0.6, 0.2, 0.2)) == {"train": 6, "val": 2, "test": 2}
    for bad in [(1, 1), (1, -1, 1), (0, 0, 0)]:
        with pytest.raises(ValueError, match="split ratios"):
            preflight.split_sizes(10, bad)
    seen = []
    real = preflight.estimate_run
    def spy(cfg, sizes, *rest):
        seen.append(sizes)
        return real(cfg, sizes, *rest)

    monkeypatch.setattr(preflight, "estimate_run", spy)
    photos = photo_folder(tmp_path / "photos")
    rc = main(["--data", str(photos), "--cache", str(tmp_path / "c"), "--segmenter", "none",
               "--split", "30:10:60", "--dry-run", "--no-progress"])  # fmt: skip
    assert rc == 0 and len(seen) == 1
    n = sum(seen[0].values())
    assert 0 < n <= sum(1 for p in photos.rglob("*") if p.is_file()) + 3
    assert seen[0]["test"] > seen[0]["train"] > seen[0]["val"]


def test_a_long_run_is_announced_with_advice(monkeypatch, caplog, tmp_path, no_training):
    from precompute import preflight

    monkeypatch.setattr(preflight, "time_train_step", lambda *a, **kw: 5.0)  # a slow machine
    photos = photo_folder(tmp_path / "photos")
    rc = main(["--data", str(photos), "--profile", "paper", "--cache", str(tmp_path / "c"),
               "--segmenter", "none", "--dry-run", "--no-progress"])  # fmt: skip
    assert rc == 0
    assert "consider" in caplog.text and "--profile cpu" in caplog.text and " h " in caplog.text


# ---- issue 10 goal 3: profiles that respect the user ----------------------------------------


def test_photos_without_a_profile_get_real_photo_settings():
    cfg, sources = build_config_with_sources(parse_args(["--data", "/tmp/p"]), cuda=False)
    assert cfg.archs == ("simple", "resnet18") and cfg.cam_method == "gradcam"
    assert cfg.input_sizes == {} and sources["archs"] == "profile cpu"
    cfg, _ = build_config_with_sources(parse_args(["--data", "/tmp/p"]), cuda=True)
    assert cfg.epochs == 30 and cfg.image_size == 224  # the paper's setting on a GPU
    cfg, _ = build_config_with_sources(parse_args([]), cuda=False)
    assert cfg.data == "synthetic" and cfg.input_sizes == {"resnet18": 160}  # the demo


def test_explicit_flags_always_win_over_the_profile():
    args = parse_args(["--profile", "demo", "--image-size", "128"])
    cfg, sources = build_config_with_sources(args, cuda=False)
    assert cfg.image_size == 128 and cfg.input_size("resnet18") == 128  # not the demo's 160
    assert sources["image_size"] == "--image-size" and sources["epochs"] == "profile demo"
    args = parse_args(["--profile", "demo", "--image-size", "128", "--input-size", "vgg11=160"])
    cfg, sources = build_config_with_sources(args, cuda=False)
    assert cfg.input_size("vgg11") == 160 and cfg.input_size("resnet18") == 160
    args = parse_args(["--profile", "demo", "--cam-method", "layercam", "--batch-size", "4"])
    cfg, sources = build_config_with_sources(args, cuda=False)
    assert (cfg.cam_method, cfg.batch_size) == ("layercam", 4)
    assert sources["cam_method"] == "--cam-method" and sources["batch_size"] == "--batch-size"


# ---- issue 10 goal 4: say what is unknown ------------------------------------------------------


def test_photos_without_spot_information_are_announced(tmp_path, caplog, no_training):
    photos = photo_folder(tmp_path / "photos", n=10)
    rc = main(["--data", str(photos), "--cache", str(tmp_path / "c"), "--segmenter", "none",
               "--dry-run", "--no-progress", "-q"])  # fmt: skip
    assert rc == 0
    assert "20 of 20 photos have no spot information" in caplog.text


def test_a_bug_is_one_sentence_and_its_traceback_is_saved(smoke_run, tmp_path, monkeypatch,
                                                          caplog, capsys):  # fmt: skip
    cache, data = smoke_run
    work = clone_cache(cache, tmp_path / "cache")

    def broken(ctx):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(stages.STAGE_FUNCS, "thumbs", broken)
    assert main(smoke_args(work, data, "--stages", "thumbs", "--force")) == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "ZeroDivisionError: a bug" in errors[0]
    saved = work / "parts" / "last-error.txt"
    assert str(saved) in errors[0] and "Traceback" in saved.read_text()
    assert "Traceback" not in capsys.readouterr().err
