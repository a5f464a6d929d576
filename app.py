"""cityviz dashboard: ``streamlit run app.py -- --cache DIR`` (or set $CITYVIZ_CACHE).

The entry script only sets the page up, draws the app's own navigation (sidebar links), offers a
cache picker when several caches exist, and hands over to the page files in ``pages/``.

Streamlit's built-in navigation menu is hidden (``position="hidden"``): a folder named
``pages/`` makes Streamlit list every file in it (``common`` included) until ``st.navigation``
has run once, so the app draws its own links with ``st.page_link`` instead. The Overview is the
default page and lives at ``/``; ``/overview`` is a hidden alias that switches to it, so an old
or hand-typed link never opens Streamlit's "Page not found" dialog.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages.common import available_caches, cache_arg, guard

HERE = Path(__file__).resolve().parent
HOME_URL = "home"  # reserved by the default page, which Streamlit serves at "/"

PAGES = (
    # file, title, icon, url path
    ("pages/overview.py", "Overview", ":material/home:", "overview"),
    ("pages/map.py", "Explanation map", ":material/scatter_plot:", "map"),
    ("pages/geography.py", "Geography", ":material/map:", "geography"),
    ("pages/objects.py", "Objects", ":material/category:", "objects"),
    ("pages/gallery.py", "Galleries", ":material/photo_library:", "gallery"),
    ("pages/compare.py", "Compare models", ":material/compare_arrows:", "compare"),
    ("pages/live.py", "Live Grad-CAM", ":material/photo_camera:", "live"),
    ("pages/trust.py", "Trust", ":material/verified:", "trust"),
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


def _alias(target: st.Page, url_path: str) -> st.Page:
    """A hidden page at ``/url_path`` that switches to ``target`` (the default page at ``/``)."""

    def go() -> None:
        st.switch_page(target)

    go.__name__ = f"alias_{url_path}"
    return st.Page(go, title=target.title, url_path=url_path, visibility="hidden")


def main() -> None:
    st.set_page_config(page_title="cityviz", page_icon=":material/location_city:", layout="wide")
    # The default page is served at "/" but still reserves its own url_path, so it gets a
    # private one ("home") and a hidden alias owns "/overview" and switches to "/".
    pages = [
        st.Page(
            str(HERE / f),
            title=title,
            icon=icon,
            url_path=HOME_URL if i == 0 else url,
            default=(i == 0),
        )
        for i, (f, title, icon, url) in enumerate(PAGES)
        if (HERE / f).exists()
    ]
    aliases = [_alias(pages[0], PAGES[0][3])] if pages else []
    nav = st.navigation([*pages, *aliases], position="hidden")
    with st.sidebar.container(key="cityviz-nav"):
        for page in pages:
            st.page_link(page)
    with st.sidebar:
        guard(cache_picker)
    nav.run()


main()
