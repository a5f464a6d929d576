"""The explanation-map component: plotly.js scattergl with client-side thumbnail tooltips.

The frontend (``scatter_component/``: index.html, main.js, style.css) is hand-written and speaks
Streamlit's components.v1 protocol directly, so no npm build is needed. plotly.js is the official
gl2d partial bundle (``plotly-gl2d.min.js``, plotly.js 3.7.0 from npm, MIT, vendored next to
index.html): it works offline and is a third of the full bundle's 4.8 MB, which a fresh browser
parses about a second sooner.

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
from pathlib import Path
from typing import Any

COMPONENT_DIR = Path(__file__).with_name("scatter_component")
PLOTLY_JS = "plotly-gl2d.min.js"


def thumbs_component_name(cache_root: str | Path) -> str:
    """A stable component name per cache directory (its resolved path's digest)."""
    digest = hashlib.sha1(str(Path(cache_root).resolve()).encode()).hexdigest()[:12]
    return f"thumbs_{digest}"


def _scatter_component():
    """Declared on every run: registration belongs to the running Streamlit runtime."""
    import streamlit.components.v1 as components

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


def thumb_args(cache, model_id: str) -> dict | None:
    """The scatter component's ``thumbs`` argument for ``model_id``: the cache's sprite-sheet
    layout and the thumbnail kinds it holds (original, mask overlay, explanation), or None when
    the cache has no thumbnails. ``cache``: a :class:`cityviz.store.Cache`."""
    layout = cache.thumbs
    name = thumbs_component(cache.root) if layout else None
    if not layout or name is None:
        return None
    have = set(layout.get("kinds", []))
    kinds = [
        [label, kind]
        for label, kind in (
            ("Original", "orig"),
            ("Mask overlay", f"{model_id}/overlay"),
            ("Explanation", f"{model_id}/expl"),
        )
        if kind in have
    ]
    return {
        "component": name,
        "size": int(layout["size"]),
        "per_row": int(layout["per_row"]),
        "kinds": kinds,
    }
