"""Shared fixtures: small fake caches built once per test session (cityviz.fake_cache)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cityviz.fake_cache import make_fake_cache
from tests.helpers import smoke_args


@pytest.fixture(scope="session")
def fake_cache_dir(tmp_path_factory) -> Path:
    """A complete cache: 2 cities, Simple + ResNet18 (real random-weight checkpoints), labels,
    histograms, statistics, embeddings and thumbnails; 100 test images at 64 px."""
    return make_fake_cache(
        tmp_path_factory.mktemp("fake") / "cache",
        n_images=200,
        test_fraction=0.5,
        archs=("simple", "resnet18"),
        seeds=(0,),
        image_size=64,
        pool_size=64,
    )


@pytest.fixture(scope="session")
def bare_cache_dir(tmp_path_factory) -> Path:
    """A cache without segmenter, thumbnails or checkpoint files (pages must degrade)."""
    return make_fake_cache(
        tmp_path_factory.mktemp("bare") / "cache",
        n_images=40,
        test_fraction=0.5,
        archs=("simple",),
        image_size=32,
        pool_size=8,
        with_models=False,
        with_labels=False,
        with_thumbs=False,
    )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> tuple[Path, Path]:
    """``(cache, data_dir)`` of one real smoke-profile precompute (2 models, every stage),
    built once per session. Tests that change it work on :func:`clone_cache` copies."""
    from precompute.__main__ import main

    base = tmp_path_factory.mktemp("smoke")
    cache, data = base / "cache", base / "data"
    assert main(smoke_args(cache, data)) == 0
    return cache, data
