"""The dashboard in a real browser on a large cache: map load, hover, model switch, threshold.

    .venv/bin/python -m bench.dashboard                 # builds a 30 000-image fake cache
    .venv/bin/python -m bench.dashboard --cache DIR     # an existing cache (fake or real)

Serves ``streamlit run app.py -- --cache DIR`` on 127.0.0.1 and drives Debian's chromium
(``/usr/bin/chromium``, headless, software WebGL) with Playwright. Figures:

* **map**: until the component has drawn every point (``cityviz.ready``), three ways: a first
  visit (``page.goto("/map")`` in a fresh browser context: empty browser cache, so Streamlit's
  frontend and plotly.js are fetched, parsed and compiled from scratch), a return visit (reload:
  warm browser cache) and in-app navigation (the sidebar link from the overview). The very
  first load after the server starts also reads the tables (``st.cache_resource``) and is
  reported apart; the others are medians of ``--map-loads - 1`` rounds.
* **hover**: in-page time from the ``mousemove`` event to the tooltip's three thumbnails loaded
  and the next animation frame painted, over ``--hovers`` points spread over every sprite sheet
  (most hovers need a sheet not fetched yet); *round trip* adds Playwright's own latency
  (Python: move the mouse, then poll until the tooltip reports loaded).
* **switch model**: choosing another model in the selectbox until the map has redrawn.
* **threshold**: on the Objects page, one arrow-key step of the "Explanation threshold" slider
  until Streamlit reports the script run finished (MutationObserver on the app's script state).
* **server memory**: RSS and peak RSS (VmHWM) of the Streamlit process from /proc at the end.

Goals (issue 4): map <= 3 s, hover p95 <= 100 ms, threshold <= 300 ms, server <= 1.5 GB.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "browser"))

from support import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    map_frame,
    screenshot,
    start_server,
    stop_server,
    wait_idle,
)

from cityviz.fake_cache import make_fake_cache  # noqa: E402
from cityviz.store import Cache  # noqa: E402


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def time_map(browser, url: str) -> tuple[float, float, float]:
    """Seconds to a drawn map: first visit (fresh browser profile), return visit (reload, warm
    browser cache) and in-app navigation (sidebar link from the overview)."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(180_000)
    t0 = time.perf_counter()
    page.goto(url + "/map")
    map_frame(page)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    page.reload()
    map_frame(page)
    reload = time.perf_counter() - t0
    page.goto(url + "/")
    wait_idle(page)
    t0 = time.perf_counter()
    page.locator("[data-testid=stSidebarNav] a", has_text="Explanation map").click()
    map_frame(page)
    nav = time.perf_counter() - t0
    context.close()
    return first, reload, nav


def hover_rows(frame, n: int) -> list[int]:
    """``n`` on-screen rows spread over the whole test set (hence over all sprite sheets)."""
    return frame.evaluate(
        """(n) => {
        const c = window.cityviz, out = [];
        const step = Math.max(1, Math.floor(c.nPoints / (n * 3)));
        for (let i = 0; i < c.nPoints && out.length < n; i += step) {
          const row = c.rowAt(i);
          if (c.pointPixel(row)) out.push(row);
        }
        return out;
      }""",
        n,
    )


def time_hovers(page, n: int) -> tuple[list[float], list[float]]:
    iframe, frame = map_frame(page)
    box = iframe.bounding_box()
    away = (box["x"] + 5, box["y"] + 5)  # the legend strip: no point there
    in_page, round_trip = [], []
    for row in hover_rows(frame, n):
        p = frame.evaluate(f"window.cityviz.pointPixel({row})")
        page.mouse.move(*away)
        frame.wait_for_function("() => window.cityviz.hoverRow === null")
        before = frame.evaluate("window.cityviz.hovers.length")
        t0 = time.perf_counter()
        page.mouse.move(box["x"] + p["x"], box["y"] + p["y"])
        frame.wait_for_function(f"() => window.cityviz.hovers.length > {before}", polling=5)
        round_trip.append((time.perf_counter() - t0) * 1000)
        in_page.append(frame.evaluate("window.cityviz.lastHover.ms"))
    return in_page, round_trip


def choose_option(page, label: str, option: str) -> None:
    page.locator("[data-testid=stSelectbox]").filter(has_text=label).click()
    page.get_by_role("option", name=option).click()


def time_model_switch(page, option: str) -> float:
    _, frame = map_frame(page)
    renders = frame.evaluate("window.cityviz.renders")
    t0 = time.perf_counter()
    choose_option(page, "Model", option)
    frame.wait_for_function(f"() => window.cityviz.renders > {renders} && window.cityviz.ready")
    return time.perf_counter() - t0


WATCH_SCRIPT_STATE = """() => {
  window.__states = [];
  const app = document.querySelector('[data-testid=stApp]');
  new MutationObserver(() => window.__states.push(
      [app.getAttribute('data-test-script-state'), performance.now()]))
    .observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
  window.__keyAt = null;
  document.addEventListener('keydown', () => { window.__keyAt = performance.now(); }, true);
}"""

RERUN_DONE = """() => {
  if (window.__keyAt === null) return false;
  const after = window.__states.filter(s => s[1] >= window.__keyAt);
  const i = after.findIndex(s => s[0] === 'running');
  return i >= 0 && after.slice(i).some(s => s[0] === 'notRunning');
}"""

RERUN_MS = """() => {
  const after = window.__states.filter(s => s[1] >= window.__keyAt);
  const i = after.findIndex(s => s[0] === 'running');
  return after.slice(i).find(s => s[0] === 'notRunning')[1] - window.__keyAt;
}"""


def time_threshold(page, url: str, repeats: int) -> list[float]:
    page.goto(url + "/objects")
    wait_idle(page)
    page.evaluate(WATCH_SCRIPT_STATE)
    slider = page.locator("[data-testid=stSlider]").filter(has_text="Explanation threshold")
    thumb = slider.get_by_role("slider")
    out = []
    for i in range(repeats):
        page.evaluate("() => { window.__states = []; window.__keyAt = null; }")
        thumb.focus()
        page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
        page.wait_for_function(RERUN_DONE, timeout=120_000)
        out.append(page.evaluate(RERUN_MS))
        page.wait_for_timeout(200)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, help="an existing cache (default: build a fake one)")
    ap.add_argument("--n", type=int, default=30_000, help="test images of the fake cache")
    ap.add_argument("--hovers", type=int, default=60)
    ap.add_argument("--map-loads", type=int, default=4)
    ap.add_argument("--thresholds", type=int, default=8)
    args = ap.parse_args(argv)
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install chromium")

    tmp = tempfile.TemporaryDirectory(prefix="cityviz-bench-")
    cache = args.cache
    if cache is None:
        t0 = time.perf_counter()
        cache = make_fake_cache(
            Path(tmp.name) / "cache", n_images=args.n, test_fraction=1.0, pool_size=256
        )
        print(f"fake cache: {args.n} test images, 2 models, built in "
              f"{time.perf_counter() - t0:.0f} s")  # fmt: skip

    from playwright.sync_api import sync_playwright

    proc, url = start_server(cache, Path(tmp.name) / "streamlit.log")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            # The first run of any page imports torch & co.: not part of the map figure.
            warm = browser.new_context(viewport=VIEWPORT).new_page()
            warm.set_default_timeout(180_000)
            t0 = time.perf_counter()
            warm.goto(url + "/")
            wait_idle(warm)
            first_page = time.perf_counter() - t0

            maps = [time_map(browser, url) for _ in range(args.map_loads)]

            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            page.set_default_timeout(180_000)
            page.goto(url + "/map")
            map_frame(page)
            in_page, round_trip = time_hovers(page, args.hovers)
            screenshot(page, "map-30k-hover")
            first, second = [m.get("display") or m["model_id"] for m in Cache(cache).models[:2]]
            switch_cold = time_model_switch(page, second)
            switch_back = time_model_switch(page, first)
            switch_warm = time_model_switch(page, second)
            thresholds = time_threshold(page, url, args.thresholds)
            rss, peak = rss_mb(proc.pid)
            browser.close()
    finally:
        stop_server(proc)
        tmp.cleanup()

    n = len(in_page)
    print(f"\ncache: {cache if args.cache else f'fake, {args.n} test images'}")
    print(f"first page after server start (imports):  {first_page:6.2f} s")
    first, reload, nav = (statistics.median(m[i] for m in maps[1:]) for i in range(3))
    print(f"map drawn, very first load (cold server): {maps[0][0]:6.2f} s")
    print(f"map drawn after page load, fresh browser: {first:6.2f} s   (median of {len(maps) - 1})")
    print(f"map drawn after page load, warm browser:  {reload:6.2f} s   (reload)")
    print(f"map drawn after in-app navigation:        {nav:6.2f} s   (sidebar link)")
    print(f"hover -> thumbnails, in page ({n} hovers):  median {statistics.median(in_page):5.1f} ms"
          f"   p95 {pct(in_page, 95):5.1f} ms   max {max(in_page):5.1f} ms")  # fmt: skip
    rt = statistics.median(round_trip)
    print(f"hover -> thumbnails, round trip:          median {rt:5.1f} ms"
          f"   p95 {pct(round_trip, 95):5.1f} ms")  # fmt: skip
    print(f"switch model (first time / back / again): {switch_cold:5.2f} / {switch_back:5.2f} / "
          f"{switch_warm:5.2f} s")  # fmt: skip
    print(f"Objects page, threshold step ({len(thresholds)}):     median "
          f"{statistics.median(thresholds):5.0f} ms   max {max(thresholds):5.0f} ms")  # fmt: skip
    print(f"server memory:                            RSS {rss:6.0f} MB   peak {peak:6.0f} MB")


if __name__ == "__main__":
    main()
