"""Every cache reader turns a missing or damaged file into one CacheError naming the file and the
command that rebuilds it (issue 9, fault 3: the store side; pages show the sentence)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cityviz.fake_cache import make_fake_cache
from cityviz.store import Cache, CacheError, stage_of

MID = "simple_s0"

# file -> (reader, the stage --force --stages names)
READERS = {
    "images.parquet": (lambda c: c.images(), "data"),
    "predictions.parquet": (lambda c: c.predictions(), "cams"),
    f"cams/{MID}.npy": (lambda c: c.cams(MID), "cams"),
    "labels.npy": (lambda c: c.labels(), "segment"),
    "classes.json": (lambda c: c.class_names(), "segment"),
    f"hist/{MID}.parquet": (lambda c: c.hist(MID), "stats"),
    "stats/rpc.parquet": (lambda c: c.rpc(), "stats"),
    "stats/ar.parquet": (lambda c: c.ar(), "stats"),
    "stats/ar_summary.parquet": (lambda c: c.ar_summary(), "stats"),
    "stats/arch_vs_seed.json": (lambda c: c.read_json("stats/arch_vs_seed.json", dict), "stats"),
    f"embed/{MID}.parquet": (lambda c: c.embedding(MID), "embed"),
    f"embed/{MID}_tsne.npz": (lambda c: c.embedder(MID, "tsne"), "embed"),
}


def _damages(rel: str):
    """(name, writer) pairs: ways a file of this kind gets damaged on a user's disk."""
    yield "garbage", lambda p: p.write_bytes(b"this is not what you think \x00\xff" * 3)
    yield "empty", lambda p: p.write_bytes(b"")
    yield "truncated", lambda p: p.write_bytes(p.read_bytes()[: max(1, p.stat().st_size // 2)])
    if rel.endswith(".parquet"):
        yield "no columns it needs", lambda p: pd.DataFrame({"zzz": [1, 2]}).to_parquet(p)
    if rel.endswith(".npy"):
        yield "strings", lambda p: np.save(p, np.array(["a", "b"]))
        yield "wrong rank", lambda p: np.save(p, np.zeros((3,), np.float32))
        yield "wrong length", lambda p: np.save(p, np.zeros((1, 4, 4), np.float32))
    if rel.endswith(".json"):
        yield "wrong JSON type", lambda p: p.write_text(json.dumps(3.5))
        if "classes" in rel:
            yield "list of numbers", lambda p: p.write_text(json.dumps([1, 2, 3]))
    if rel.endswith(".npz"):
        yield "foreign npz", lambda p: np.savez(p.with_suffix(""), other=np.zeros(3))


CASES = [(rel, name, w) for rel in READERS for name, w in _damages(rel)]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return make_fake_cache(
        tmp_path_factory.mktemp("pristine") / "cache",
        n_images=40,
        test_fraction=0.5,
        archs=("simple",),
        image_size=32,
        pool_size=8,
        with_thumbs=False,
    )


@pytest.fixture
def pristine(built) -> Path:
    """The module's cache; every file a test damages is restored afterwards (copying the whole
    cache, checkpoint included, for each of ~70 cases would dominate the run)."""
    saved = {p: p.read_bytes() for p in built.rglob("*") if p.is_file() and p.stat().st_size < 1e6}
    yield built
    for p in built.rglob("*"):
        if p.is_file() and p not in saved:
            p.unlink()
    for p, data in saved.items():
        if not p.exists() or p.read_bytes() != data:
            p.write_bytes(data)


@pytest.mark.parametrize(("rel", "how", "damage"), CASES, ids=[f"{r}-{n}" for r, n, _ in CASES])
def test_a_damaged_file_gives_one_sentence_naming_it_and_the_stage(
    pristine, tmp_path, rel, how, damage
):
    root = pristine
    reader, stage = READERS[rel]
    reader(Cache(root))  # undamaged: reads fine
    path = root / rel
    damage(path)
    if path.with_suffix("").with_suffix(".npz.npz").exists():  # np.savez appends .npz
        path.with_suffix("").with_suffix(".npz.npz").replace(path)
    with pytest.raises(CacheError) as info:
        reader(Cache(root))
    message = str(info.value)
    assert rel in message and f"--stages {stage}" in message, message
    assert "\n" not in message and len(message) < 600


@pytest.mark.parametrize("rel", sorted(READERS))
def test_a_missing_file_says_which_stage_builds_it(pristine, tmp_path, rel):
    root = pristine
    (root / rel).unlink()
    reader, stage = READERS[rel]
    if rel == "classes.json":  # no classes: a cache without a segmenter, not an error
        assert reader(Cache(root)) is None
        return
    with pytest.raises(CacheError, match=rf"{stage}"):
        reader(Cache(root))


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b"\xff\xfe", json.dumps({"format": "cityviz-cache"}).encode()],
    ids=["empty", "half", "list", "binary", "no version"],
)
def test_a_damaged_manifest_says_rebuild(pristine, tmp_path, content):
    root = pristine
    (root / "manifest.json").write_bytes(content)
    with pytest.raises(CacheError, match=r"manifest|cityviz cache|--fresh"):
        Cache(root)


def test_a_manifest_missing_its_sections_is_damaged(pristine, tmp_path):
    root = pristine
    m = json.loads((root / "manifest.json").read_text())
    for key in ("config", "dataset", "stages", "models"):
        broken = {k: v for k, v in m.items() if k != key}
        (root / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(CacheError, match=rf"damaged \(bad or missing {key}"):
            Cache(root)


def test_every_file_the_precompute_writes_maps_to_its_stage():
    assert stage_of("inputs/test_96px.npy") == "data"
    assert stage_of("models/vgg11_s0.safetensors") == "train"
    assert stage_of("thumbs/orig/0000.jpg") == "thumbs"
    assert stage_of("labels.npy") == "segment"
