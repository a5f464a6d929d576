"""Streamlit-side helpers shared by every page: which cache is open, cached readers, errors.

Only this module and the page files import Streamlit. Heavy objects (the cache reader, models)
live in ``st.cache_resource`` and are shared by all sessions; tables go through
``st.cache_data``.

Errors never reach the browser as a traceback: each part of a page runs inside
:func:`section`, which turns a :class:`~cityviz.store.CacheError` (a damaged or missing cache
file) into one escaped ``st.error`` sentence and any other exception into a one-sentence message
(traceback in the server log), and then lets the rest of the page run. :func:`guard` does the
same for a whole page, as the last resort.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import streamlit as st

from cityviz.store import Cache, CacheError, CacheMissing, find_caches
from cityviz.ui.safe_text import md_escape

log = logging.getLogger("cityviz.app")

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
    """Show ``message`` (escaped: it may hold paths and names from data) as an error and stop
    this page's run (never a traceback in the browser)."""
    st.error(md_escape(message))
    st.stop()


@contextlib.contextmanager
def section(name: str) -> Iterator[None]:
    """Run one part of a page; if it fails, show one sentence instead and go on with the rest.

    A :class:`~cityviz.store.CacheError` (a cache file missing, truncated or of the wrong
    format, dtype or shape) is shown as ``"<name> is not available: <message>"``; the store's
    message names the file and the ``python -m precompute … --force --stages X`` command that
    rebuilds it. Any other exception is logged with its traceback on the server and shown as one
    sentence. Streamlit's own control flow (``st.stop``, ``st.rerun``, ``st.switch_page``)
    derives from ``BaseException`` and passes through untouched. Text is Markdown-escaped.
    """
    try:
        yield
    except CacheMissing as exc:
        st.info(f"{md_escape(name)} is not built yet: {md_escape(exc)}")
    except CacheError as exc:
        log.info("section %r: %s", name, exc)
        st.error(f"{md_escape(name)} is not available: {md_escape(exc)}")
    except Exception as exc:
        log.exception("section %r failed", name)
        st.error(
            f"{md_escape(name)} could not be shown ({md_escape(type(exc).__name__)}: "
            f"{md_escape(_short(exc))}); the details are in the server log."
        )


def guard(main: Callable[[], Any]) -> None:
    """Run a page's ``main`` with :func:`section`'s handling as the last resort for the page."""
    with section("This page"):
        main()


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def json_object(cache: Cache, rel: str, stage: str) -> dict | None:
    """The JSON object in cache file ``rel``, or None when the file is absent (stage not run).

    Raises :class:`~cityviz.store.CacheError` naming the file and the command that rebuilds it
    when the file is unreadable, not JSON, or JSON of another type than an object.
    """
    path = cache.root / rel
    if not path.exists():
        return None
    redo = f"rebuild it with `python -m precompute --cache {cache.root} --force --stages {stage}`"
    reader = getattr(cache, "read_json", None)
    try:
        value = reader(rel) if reader is not None else _read_json(path)
    except (OSError, ValueError) as exc:
        raise CacheError(f"{path} cannot be read ({exc}); {redo}.") from exc
    if not isinstance(value, dict):
        raise CacheError(f"{path} holds a JSON {type(value).__name__}, not an object; {redo}.")
    return value


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def cache_mtime(cache: Cache) -> float:
    """The manifest's mtime: part of every ``st.cache_*`` key, so a rebuilt cache is re-read."""
    return (cache.root / "manifest.json").stat().st_mtime


def model_labels(cache: Cache) -> dict[str, str]:
    """model_id -> display name ("VGG11 · seed 0"), in manifest order (raw text: escape it with
    ``md_escape`` / ``html_escape`` where it is shown as Markdown or HTML)."""
    out: dict[str, str] = {}
    for m in cache.models:
        if isinstance(m, dict) and isinstance(m.get("model_id"), str):
            out[m["model_id"]] = str(m.get("display") or m["model_id"])
    return out
