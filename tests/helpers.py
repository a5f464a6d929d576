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
    """A copy of a cache whose large files (weights, arrays) are hard links to the original's:
    cityviz replaces every file atomically, so the original is never touched. Files under 1 MB
    (the manifest, tables) are real copies, so a test may even edit them in place."""

    def copy(a: str, b: str) -> None:
        if os.path.getsize(a) > 1_000_000:
            os.link(a, b)
        else:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=copy, ignore=shutil.ignore_patterns(".cityviz.lock"))
    return dst
