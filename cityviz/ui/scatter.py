"""The explanation-map component: plotly.js scattergl with client-side thumbnail tooltips.

The frontend (``scatter_component/``: index.html, main.js, style.css) is hand-written and speaks
Streamlit's components.v1 protocol directly, so no npm build is needed. plotly.js comes from the
plotly Python package (copied next to index.html on first use), so the map works offline.

Thumbnails: each cache's ``thumbs/`` directory is registered as a second, file-only component
(:func:`thumbs_component`), which makes Streamlit serve its sprite sheets at
``/component/<name>/<kind>/<sheet>.jpg`` straight from the cache (``image/jpeg``,
``Cache-Control: public``). Streamlit's ``static/`` folder would need copies or hard links of
every sheet: its handler resolves symlinks and refuses files outside ``static/``.

Streamlit is imported inside the functions that need it, so the rest of :mod:`cityviz` (and the
tests of the pure parts) never load it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from functools import cache
from pathlib import Path
from typing import Any

COMPONENT_DIR = Path(__file__).with_name("scatter_component")
PLOTLY_JS = "plotly.min.js"


def plotly_js_source() -> Path:
    """plotly.min.js as shipped inside the plotly Python package."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / PLOTLY_JS
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall the plotly package")
    return path


def ensure_plotly_js(component_dir: Path = COMPONENT_DIR) -> Path:
    """Copy plotly.min.js into the component folder unless an identical-size copy is there."""
    src = plotly_js_source()
    dst = component_dir / PLOTLY_JS
    if not dst.exists() or dst.stat().st_size != src.stat().st_size:
        tmp = dst.with_name(f".{PLOTLY_JS}.{os.getpid()}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    return dst


def thumbs_component_name(cache_root: str | Path) -> str:
    """A stable component name per cache directory (its resolved path's digest)."""
    digest = hashlib.sha1(str(Path(cache_root).resolve()).encode()).hexdigest()[:12]
    return f"thumbs_{digest}"


@cache
def _plotly_ready() -> Path:
    return ensure_plotly_js()


def _scatter_component():
    """Declared on every run: registration belongs to the running Streamlit runtime."""
    import streamlit.components.v1 as components

    _plotly_ready()
    return components.declare_component("explanation_map", path=str(COMPONENT_DIR))


def thumbs_component(cache_root: str | Path) -> str | None:
    """Register ``<cache>/thumbs`` for serving; returns the component's full name (the URL path
    segment after ``/component/``), or None when the cache has no thumbnails."""
    import streamlit.components.v1 as components

    thumbs = Path(cache_root) / "thumbs"
    if not thumbs.is_dir():
        return None
    return components.declare_component(thumbs_component_name(cache_root), path=str(thumbs)).name


def scatter_map(args: dict[str, Any], *, key: str) -> Any:
    """Draw the map (``args`` from :func:`cityviz.ui.map.payload`); returns the last selection
    sent by the browser (``{"rows": [...], "view": ...}``) or None."""
    return _scatter_component()(**args, key=key, default=None)
