"""A hostile cache in a real browser: no injected image, link or bold text, no planted request;
and the app's own navigation from the very first visit (issue 10).

One fresh server on a copy of a small fake cache whose city, object, model and cluster names
carry Markdown and HTML payloads (tests/hostile.py). The tests run in file order: the first
one is the first visit to the fresh server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import VIEWPORT, map_frame, require_chromium, start_server, stop_server, wait_idle

from cityviz.fake_cache import make_fake_cache
from tests.hostile import make_hostile

pytestmark = pytest.mark.browser

PAGES = {"overview": "/", "map": "/map", "objects": "/objects", "compare": "/compare",
         "live": "/live"}  # fmt: skip
TITLES = ["Overview", "Explanation map", "Geography", "Objects", "Galleries",
          "Compare models", "Live Grad-CAM", "Trust"]  # fmt: skip
PLANTED_HOST = "127.0.0.1:9"

# Records, from the first byte of the document, every sidebar navigation entry and dialog text.
RECORDER = """
window.__seen = {nav: [], dialogs: []};
new MutationObserver(() => {
  document.querySelectorAll('[data-testid=stSidebarNav] a, [data-testid=stSidebarNavLink]')
    .forEach(a => window.__seen.nav.push(a.textContent.trim()));
  document.querySelectorAll('[role=dialog]')
    .forEach(d => window.__seen.dialogs.push(d.textContent.trim()));
}).observe(document, {subtree: true, childList: true});
"""

# Elements a payload could have created, in one frame's DOM (Plotly's SVG included).
INJECTED = """
() => {
  const out = [];
  for (const img of document.querySelectorAll('img, image')) {
    const src = img.getAttribute('src') || img.getAttribute('href') || '';
    const url = new URL(src, document.baseURI);
    if (!['data:', 'blob:'].includes(url.protocol) && url.origin !== location.origin
        && location.protocol !== 'about:') out.push('img ' + src);
    if (src === 'x') out.push('img x');
  }
  for (const a of document.querySelectorAll('a')) {
    const href = a.getAttribute('href') || a.getAttribute('xlink:href') || '';
    if (href.includes('127.0.0.1:9') || href.startsWith('javascript:')) out.push('a ' + href);
  }
  for (const b of document.querySelectorAll('b, strong, tspan[style*="bold"]')) {
    const t = b.textContent.trim();
    if (['x', 'm', 'c', 'bold'].includes(t)) out.push('bold ' + t);
  }
  return out;
}
"""


@pytest.fixture(scope="module")
def hostile_url(tmp_path_factory) -> Iterator[str]:
    require_chromium()
    base = tmp_path_factory.mktemp("hostile")
    tiny = make_fake_cache(
        base / "tiny", n_images=24, test_fraction=0.5, archs=("simple", "resnet18"),
        image_size=32, pool_size=8, with_models=False,
    )  # fmt: skip
    root = make_hostile(tiny, base / "cache")
    proc, url = start_server(root, base / "streamlit.log")
    yield url
    stop_server(proc)


@pytest.fixture
def tab(browser):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.add_init_script(RECORDER)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.requests = requests  # type: ignore[attr-defined]
    yield page
    context.close()


def test_first_visit_shows_only_the_apps_navigation(tab, hostile_url):
    tab.goto(hostile_url + "/")
    wait_idle(tab)
    seen = tab.evaluate("window.__seen")
    assert not seen["nav"], f"Streamlit's own page list appeared: {sorted(set(seen['nav']))}"
    links = tab.locator("[data-testid=stSidebar] [data-testid=stPageLink]").all_inner_texts()
    assert [t.strip().splitlines()[-1] for t in links] == TITLES  # icon ligature first


def test_overview_path_opens_the_overview_without_a_dialog(tab, hostile_url):
    tab.goto(hostile_url + "/overview")
    wait_idle(tab)
    tab.wait_for_timeout(500)
    assert "what does a city-recognition network look at" in tab.locator("h1").first.inner_text()
    seen = tab.evaluate("window.__seen")
    assert not any("not found" in d.lower() for d in seen["dialogs"]), seen["dialogs"]
    assert not tab.locator("[role=dialog]").count()


def test_hostile_names_inject_nothing_on_any_page(tab, hostile_url):
    for name, path in PAGES.items():
        tab.goto(hostile_url + path)
        wait_idle(tab)
        if name == "map":
            map_frame(tab)
        if tab.locator("[data-testid=stPlotlyChart]").count():
            tab.wait_for_selector("[data-testid=stPlotlyChart] .main-svg")
        assert not tab.locator("[data-testid=stException]").count(), name
        for frame in tab.frames:
            assert frame.evaluate(INJECTED) == [], (name, frame.url)
    planted = [u for u in tab.requests if PLANTED_HOST in u or u.startswith("javascript:")]
    assert planted == []
