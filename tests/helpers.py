"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def smoke_args(cache: Path, data: Path, *extra: str) -> list[str]:
    """``python -m precompute`` arguments for the tiny smoke profile."""
    return ["--profile", "smoke", "--cache", str(cache), "--data-dir", str(data),
            "--no-progress", "-q", *extra]  # fmt: skip


def clone_cache(src: Path, dst: Path) -> Path:
    """A copy of a cache that shares its (never rewritten in place) files by hard links: every
    cache write replaces a file atomically, so the original is never touched."""
    shutil.copytree(src, dst, copy_function=os.link, ignore=shutil.ignore_patterns(".cityviz.lock"))
    return dst
