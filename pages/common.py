"""Streamlit-side helpers shared by every page: which cache is open, cached readers, errors.

Only this module and the page files import Streamlit. Heavy objects (the cache reader, models)
live in ``st.cache_resource`` and are shared by all sessions; tables go through
``st.cache_data``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import streamlit as st

from cityviz.store import Cache, CacheError, find_caches

DEFAULT_CACHE = Path("cache/synthetic-demo")
CACHE_BASE = Path("cache")


def cache_arg() -> Path:
    """The cache directory: ``streamlit run app.py -- --cache DIR``, $CITYVIZ_CACHE, or default."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--cache", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:])
    return Path(args.cache or os.environ.get("CITYVIZ_CACHE") or DEFAULT_CACHE)


def available_caches() -> list[Path]:
    found = find_caches(CACHE_BASE) if CACHE_BASE.exists() else []
    start = cache_arg()
    if start not in found and (start / "manifest.json").exists():
        found.insert(0, start)
    return found


@st.cache_resource(show_spinner=False)
def _open_cache(path: str, mtime: float) -> Cache:
    return Cache(path)


def leave_legacy_pages_mode() -> None:
    """Rerun as a ``st.navigation`` app if Streamlit started this run as a v1 multipage app.

    Streamlit treats an app with a ``pages/`` folder as a v1 multipage app until the entry
    script has called ``st.navigation`` once in the process, so when the very first visit goes
    straight to ``/map`` it runs ``pages/map.py`` alone (without app.py: no page config, no
    navigation, no cache picker). Clearing the flag and rerunning fixes that run and all later.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without the v1 multipage machinery
        return
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()


def current_cache() -> Cache:
    """The cache chosen in this session (the sidebar picker), or stop with a message."""
    leave_legacy_pages_mode()
    path = Path(st.session_state.get("cache_path") or cache_arg())
    try:
        mtime = (path / "manifest.json").stat().st_mtime
    except OSError:
        fail(
            f"No cityviz cache at `{path}`. Build one with `make demo` (or "
            f"`python -m precompute --cache {path}`), or start the app with `-- --cache DIR`."
        )
    try:
        return _open_cache(str(path), mtime)
    except CacheError as exc:
        fail(str(exc))


def fail(message: str) -> None:
    """Show a user-facing error and stop this page's run (never a traceback in the browser)."""
    st.error(message)
    st.stop()


def cache_mtime(cache: Cache) -> float:
    """The manifest's mtime: part of every ``st.cache_*`` key, so a rebuilt cache is re-read."""
    return (cache.root / "manifest.json").stat().st_mtime


def model_labels(cache: Cache) -> dict[str, str]:
    """model_id -> display name ("VGG11 · seed 0"), in manifest order."""
    return {m["model_id"]: m.get("display") or m["model_id"] for m in cache.models}
