"""cityviz dashboard: ``streamlit run app.py -- --cache DIR`` (or set $CITYVIZ_CACHE).

The entry script only sets the page up, offers a cache picker when several caches exist, and
hands over to the page files in ``pages/``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages.common import available_caches, cache_arg

HERE = Path(__file__).resolve().parent

PAGES = (
    # file, title, icon, url path
    ("pages/overview.py", "Overview", ":material/home:", "overview"),
    ("pages/map.py", "Explanation map", ":material/scatter_plot:", "map"),
    ("pages/objects.py", "Objects", ":material/category:", "objects"),
    ("pages/compare.py", "Compare models", ":material/compare_arrows:", "compare"),
    ("pages/live.py", "Live Grad-CAM", ":material/photo_camera:", "live"),
)


def cache_picker() -> None:
    """A sidebar picker (session_state["cache_path"]) when more than one cache is available."""
    seen: dict[Path, str] = {}
    for path in [cache_arg(), *available_caches()]:
        if (path / "manifest.json").exists():
            seen.setdefault(path.resolve(), str(path))
    if len(seen) < 2:
        return
    options = list(seen.values())
    if st.session_state.get("cache_path") not in options:
        st.session_state["cache_path"] = options[0]
    st.sidebar.selectbox(
        "Cache",
        options,
        key="cache_path",
        help="Cache directories found under ./cache and the one given at start.",
    )


def main() -> None:
    st.set_page_config(page_title="cityviz", page_icon=":material/location_city:", layout="wide")
    pages = [
        st.Page(str(HERE / f), title=title, icon=icon, url_path=url, default=(i == 0))
        for i, (f, title, icon, url) in enumerate(PAGES)
        if (HERE / f).exists()
    ]
    nav = st.navigation(pages)
    cache_picker()
    nav.run()


main()
