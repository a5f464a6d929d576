"""The dashboard in a real browser on a large cache: start-up, map load, hover, model switch,
threshold; each figure beside the previous one.

    .venv/bin/python -m bench.dashboard                 # builds a 30 000-image fake cache
    .venv/bin/python -m bench.dashboard --cache DIR     # an existing cache (fake or real)
    .venv/bin/python -m bench.dashboard --rounds 3 --only startup,hover,threshold

Serves ``streamlit run app.py -- --cache DIR`` on 127.0.0.1 and drives Debian's chromium
(``/usr/bin/chromium``, headless, software WebGL) with Playwright. ``--rounds`` rounds are run one
after the other, each with a fresh server and every figure in turn (interleaved, so a burst of
load on the shared machine spoils one round rather than one figure); the report gives, per
figure, the issue's previous value ("before", measured at load 2-3), the best round and the
median over rounds, with the 1-minute load average (``os.getloadavg()``) of every round.
Figures:

* **start-up**: from ``streamlit run`` (process start) to the health check answering, and to the
  Overview's first dataframe visible in a fresh Chromium context (a usable Overview).
* **map**: until the component has drawn every point (``cityviz.ready``), three ways: a first
  visit (``page.goto("/map")`` in a fresh browser context: empty browser cache, so Streamlit's
  frontend and plotly.js are fetched, parsed and compiled from scratch), a return visit (reload:
  warm browser cache) and in-app navigation (the sidebar link from the overview); medians of
  ``--map-loads`` visits per round but the first, which also reads the tables and is reported
  apart.
* **hover**: in-page time (``cityviz.lastHover.ms``) from the ``mousemove`` event to the
  tooltip's three thumbnails drawn and the next animation frame, over ``--hovers`` points spread
  over every sprite sheet and visited in a shuffled order (fixed seed), so neither the sheets'
  order nor the order of their background prefetch matches the hover order; *round trip* adds
  Playwright's own latency (Python: move the mouse, then poll until the hover is recorded). The
  record's ``pick`` (to ``plotly_hover``) and ``ready`` (to every sheet decoded) split the time;
  the hovers that decoded or fetched a sheet are counted. Since issue 10 the in-page time
  includes decoding the sheets (``createImageBitmap``); before, it ended at the ``<img>`` load
  event and the decode happened later, at paint, uncounted.
* **switch model**: choosing another model in the selectbox until the map has redrawn.
* **threshold**: on the Objects page, one arrow-key step of the "Explanation threshold" slider
  until Streamlit reports the script run finished (MutationObserver on the app's script state).
* **server memory**: RSS and peak RSS (VmHWM) of the Streamlit process from /proc at the end.
* **geography** (``--only geo``, issue 13): the Geography page's tile-free map (the explanation
  map's component with longitude / latitude as x / y) until every located point is drawn, in a
  fresh browser context (first visit after start, then warm), hover in page (as *hover*), and
  switching to the H3 cells view (Plotly ``choroplethmap``) until the hexagons are drawn.
* **map libraries** (``--only geolibs``): Plotly ``scatter_map`` (MapLibre, tile-free
  ``white-bg`` style) against pydeck's ``ScatterplotLayer`` (``st.pydeck_chart``) on the same
  ``--n`` points around Tokyo, each alone on a page of a throw-away app: time to interactive
  (from ``page.goto`` to the first hover label of a point at the map's centre) and hover round
  trips (mouse moved onto that point until the library's label is shown).

Goals: issue 4: map <= 3 s, server <= 1.5 GB; issue 10: hover p95 <= 50 ms at 30 000 points,
threshold <= 150 ms, and the time to a usable Overview reported; issue 13: the Geography page
within the explanation map's goals.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "browser"))

from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402
from support import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    free_port,
    map_frame,
    screenshot,
    start_server,
    stop_server,
    wait_healthy,
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
    page.locator("[data-testid=stSidebar] a", has_text="Explanation map").click()
    map_frame(page)
    nav = time.perf_counter() - t0
    context.close()
    return first, reload, nav


def hover_rows(frame, n: int, seed: int = 0) -> list[int]:
    """``n`` on-screen rows spread over the whole test set (hence over all sprite sheets), in a
    shuffled order (``seed``): consecutive hovers then land on unrelated sheets, as when a user
    moves across a t-SNE map, whose neighbours come from any sheet."""
    rows = frame.evaluate(
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
    random.Random(seed).shuffle(rows)
    return rows


HOVER_WAIT_MS = 15_000


def time_hovers(
    page, n: int, seed: int = 0, rows: list[int] | None = None
) -> tuple[list[float], list[float], list[dict]]:
    """In-page and round-trip milliseconds per hover, and the in-page records
    (``cityviz.lastHover``: ms, pick, ready, fetched, decoded; see main.js). ``rows``: hover
    these rows instead of :func:`hover_rows`."""
    iframe, frame = map_frame(page)
    in_page, round_trip, records = [], [], []
    for row in hover_rows(frame, n, seed) if rows is None else rows:
        # the frame's place on the page, read again each time: the page may still reflow
        # (captions, tables drawn below or above the map) after the map itself is ready
        box = iframe.bounding_box()
        away = (box["x"] + 5, box["y"] + 5)  # the legend strip: no point there
        p = frame.evaluate(f"window.cityviz.pointPixel({row})")
        page.mouse.move(*away)
        frame.wait_for_function("() => window.cityviz.hoverRow === null")
        before = frame.evaluate("window.cityviz.hovers.length")
        t0 = time.perf_counter()
        page.mouse.move(box["x"] + p["x"], box["y"] + p["y"])
        try:
            frame.wait_for_function(
                f"() => window.cityviz.hovers.length > {before}", polling=5, timeout=HOVER_WAIT_MS
            )
        except PlaywrightTimeout:
            # a point hidden under another trace's point: reported as missed, not timed
            print(f"hover of row {row} not recorded within {HOVER_WAIT_MS / 1000:.0f} s: missed")
            continue
        round_trip.append((time.perf_counter() - t0) * 1000)
        rec = frame.evaluate("window.cityviz.lastHover")
        in_page.append(rec["ms"])
        records.append(rec)
    return in_page, round_trip, records


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


def time_threshold(page, url: str, repeats: int) -> tuple[list[float], int]:
    """Milliseconds per slider step, and the steps whose run was not seen (React can merge the
    "running" and "notRunning" script states of a very short run into one render, and then the
    attribute never changes: such a step is skipped after 10 s, not timed)."""
    page.goto(url + "/objects")
    wait_idle(page)
    page.evaluate(WATCH_SCRIPT_STATE)
    slider = page.locator("[data-testid=stSlider]").filter(has_text="Explanation threshold")
    thumb = slider.get_by_role("slider")
    out, unseen = [], 0
    for i in range(repeats):
        page.evaluate("() => { window.__states = []; window.__keyAt = null; }")
        thumb.focus()
        page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
        try:
            page.wait_for_function(RERUN_DONE, timeout=10_000)
        except PlaywrightTimeout:
            unseen += 1
            wait_idle(page)
            continue
        out.append(page.evaluate(RERUN_MS))
        page.wait_for_timeout(200)
    return out, unseen


def time_startup(browser, cache: Path, log: Path, extra_env: dict[str, str] | None = None):
    """Start the server: ``(proc, url, seconds to healthy, seconds to a usable Overview)``, both
    from the ``streamlit run`` process start; usable = the Overview's first dataframe visible in
    a fresh browser context."""
    t0 = time.perf_counter()
    proc, url = start_server(cache, log, extra_env)
    healthy = time.perf_counter() - t0
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(180_000)
    try:
        page.goto(url + "/")
        page.locator("[data-testid=stDataFrame]").first.wait_for(state="visible")
    except Exception:
        stop_server(proc)
        raise
    usable = time.perf_counter() - t0
    context.close()
    return proc, url, healthy, usable


def time_geography(browser, url: str, hovers: int, seed: int) -> dict[str, float]:
    """The Geography page: seconds to a drawn tile-free map (first visit after start, then in a
    second fresh context), in-page hover milliseconds, seconds to the H3 cells view."""
    out: dict[str, float] = {}
    for key in ("geo_cold", "geo_first"):
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(180_000)
        t0 = time.perf_counter()
        page.goto(url + "/geography")
        map_frame(page)
        out[key] = time.perf_counter() - t0
        if key == "geo_first":
            # every located image on one map (the page opens on one city when the cities are far
            # apart), then the map sits lower than the explanation map's: bring it into view
            _, frame = map_frame(page)
            renders = frame.evaluate("window.cityviz.renders")
            choose_option(page, "Area", "All cities")
            frame.wait_for_function(f"() => window.cityviz.renders > {renders}")
            page.locator("iframe[title*='explanation_map']").scroll_into_view_if_needed()
            in_page, _, _ = time_hovers(page, hovers, seed)
            out.update(geo_hover_median=statistics.median(in_page),
                       geo_hover_p95=pct(in_page, 95), geo_points=map_frame(page)[1].evaluate(
                           "window.cityviz.nPoints"))  # fmt: skip
            if seed == 0:
                screenshot(page, "geography-30k-hover")
            t0 = time.perf_counter()
            page.locator(".st-key-geo_view button", has_text="H3 cells").click()
            page.wait_for_function(
                "() => { const d = document.querySelector("
                "'[data-testid=stPlotlyChart] .js-plotly-plot'); return d && d.data &&"
                " d.data[0].type === 'choroplethmap' && d._fullLayout.map &&"
                " d._fullLayout.map._subplot.map.loaded(); }",
                polling=20,
            )
            out["geo_cells"] = time.perf_counter() - t0
        context.close()
    return out


LIBS_SCRIPT = """
import numpy as np, pandas as pd, streamlit as st
st.set_page_config(layout="wide")
n, lib = int(st.query_params.get("n", 30000)), st.query_params.get("lib", "plotly")
rng = np.random.default_rng(0)
lat0, lon0, hole = 35.68, 139.76, 0.004  # P0 at the centre, no other point within `hole` deg
d = rng.uniform(-0.05, 0.05, size=(4 * n, 2))
d = d[np.hypot(d[:, 0], d[:, 1]) > hole][: n - 1]
lat = np.r_[lat0, lat0 + d[:, 0]]
lon = np.r_[lon0, lon0 + d[:, 1]]
label = [f"P{i}" for i in range(len(lat))]
if lib == "plotly":
    import plotly.graph_objects as go
    fig = go.Figure(go.Scattermap(lat=lat, lon=lon, text=label, mode="markers",
                                  marker={"size": 5}, hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(map={"style": "white-bg", "center": {"lat": lat0, "lon": lon0},
                           "zoom": 13}, height=600, margin={"l": 0, "r": 0, "t": 0, "b": 0})
    st.plotly_chart(fig, key="m")
else:
    import pydeck as pdk
    data = pd.DataFrame({"lat": lat, "lon": lon, "label": label})
    layer = pdk.Layer("ScatterplotLayer", data=data, get_position=["lon", "lat"], get_radius=3,
                      radius_units="pixels", get_fill_color=[31, 119, 180], pickable=True)
    st.pydeck_chart(pdk.Deck(layers=[layer], map_style=None, tooltip={"text": "{label}"},
                             initial_view_state=pdk.ViewState(latitude=lat0, longitude=lon0,
                                                              zoom=13)), height=600)
"""

LIB_LABEL = {  # the hover label of P0 is shown
    "plotly": "() => Array.from(document.querySelectorAll('.hoverlayer .hovertext'))"
    ".some(e => e.textContent.includes('P0'))",
    "pydeck": "() => Array.from(document.querySelectorAll('.deck-tooltip'))"
    ".some(e => e.style.display !== 'none' && e.textContent.trim() === 'P0')",
}
LIB_CHART = {"plotly": "[data-testid=stPlotlyChart]", "pydeck": "[data-testid=stDeckGlJsonChart]"}


LIB_TIMEOUT_S = 120


def _time_library(page, url: str, lib: str, n: int, hovers: int) -> dict[str, float]:
    t0 = time.perf_counter()
    page.goto(f"{url}/?lib={lib}&n={n}")
    chart = page.locator(LIB_CHART[lib]).first
    chart.wait_for()
    while True:  # the first hover that shows P0's label: drawn and pickable
        box = chart.bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx - 40, cy - 40)
        page.mouse.move(cx, cy, steps=2)
        try:
            page.wait_for_function(LIB_LABEL[lib], timeout=500, polling="raf")
            break
        except PlaywrightTimeout:
            if time.perf_counter() - t0 > LIB_TIMEOUT_S:
                raise
    out = {f"lib_{lib}_ready": time.perf_counter() - t0}
    trips = []
    for _ in range(hovers):
        page.mouse.move(box["x"] + 5, box["y"] + 5)
        page.wait_for_function(f"() => !({LIB_LABEL[lib]})()", polling="raf")
        t0 = time.perf_counter()
        page.mouse.move(cx, cy)
        page.wait_for_function(LIB_LABEL[lib], polling="raf")
        trips.append((time.perf_counter() - t0) * 1000)
    out[f"lib_{lib}_hover"] = statistics.median(trips)
    out[f"lib_{lib}_hover_p95"] = pct(trips, 95)
    return out


def time_map_libraries(browser, n: int, hovers: int, log: Path) -> dict[str, float]:
    """Plotly scatter_map vs pydeck on ``n`` points (see the module docstring): seconds to
    interactive and hover round-trip milliseconds (median, p95) per library."""
    script = log.with_name("geo_libs_app.py")
    script.write_text(LIBS_SCRIPT)
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port),
           "--browser.gatherUsageStats", "false"]  # fmt: skip
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=script.parent, stdout=f, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log, 180)
    except Exception:
        stop_server(proc)
        raise
    out: dict[str, float] = {}
    try:
        for lib in ("plotly", "pydeck"):
            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            page.set_default_timeout(LIB_TIMEOUT_S * 1000)
            try:
                out.update(_time_library(page, url, lib, n, hovers))
            except PlaywrightTimeout:  # seen: pydeck hanging software-WebGL Chromium
                print(f"{lib}: not interactive within {LIB_TIMEOUT_S} s", flush=True)
                out[f"lib_{lib}_ready"] = float("nan")
            finally:
                context.close()
    finally:
        stop_server(proc)
    return out


# (key, label, unit, before): "before" is issue 10's measurement at load 2-3 (None: not measured).
FIGURES = [
    ("startup_healthy", "start-up: server healthy", "s", None),
    ("startup_usable", "start-up: Overview usable", "s", None),
    ("map_cold", "map, first visit after start", "s", None),
    ("map_first", "map, fresh browser", "s", None),
    ("map_reload", "map, reload", "s", None),
    ("map_nav", "map, sidebar link", "s", None),
    ("hover_median", "hover in page, median", "ms", 33.8),
    ("hover_p95", "hover in page, p95", "ms", 66.6),
    ("hover_max", "hover in page, max", "ms", 118.7),
    ("hover_again", "hover again (last 3 rows), median", "ms", None),
    ("hover_pick", "hover: move -> plotly_hover, med.", "ms", None),
    ("hover_ready", "hover: move -> decoded, median", "ms", None),
    ("hover_decoded", "hovers that decoded a sheet", "%", None),
    ("hover_fetched", "hovers that fetched a sheet", "%", None),
    ("rt_median", "hover round trip, median", "ms", None),
    ("rt_p95", "hover round trip, p95", "ms", 80.0),
    ("switch_cold", "switch model, first time", "s", None),
    ("switch_warm", "switch model, again", "s", None),
    ("threshold_median", "threshold step, median", "ms", 207.0),
    ("threshold_max", "threshold step, max", "ms", 272.0),
    ("threshold_unseen", "threshold steps not seen", "", None),
    ("geo_points", "geography: points on the map", "", None),
    ("geo_cold", "geography, first visit after start", "s", None),
    ("geo_first", "geography, fresh browser", "s", None),
    ("geo_hover_median", "geography hover in page, median", "ms", None),
    ("geo_hover_p95", "geography hover in page, p95", "ms", None),
    ("geo_cells", "geography: switch to H3 cells", "s", None),
    ("lib_plotly_ready", "scatter_map: to interactive", "s", None),
    ("lib_plotly_hover", "scatter_map: hover round trip med", "ms", None),
    ("lib_plotly_hover_p95", "scatter_map: hover round trip p95", "ms", None),
    ("lib_pydeck_ready", "pydeck: to interactive", "s", None),
    ("lib_pydeck_hover", "pydeck: hover round trip med", "ms", None),
    ("lib_pydeck_hover_p95", "pydeck: hover round trip p95", "ms", None),
    ("rss", "server RSS at the end", "MB", None),
    ("peak", "server peak RSS", "MB", None),
]


def one_round(browser, cache: Path, log: Path, args, seed: int) -> dict[str, float]:
    """Every figure once, on a fresh server; returns {figure key: value}."""
    out: dict[str, float] = {"load_start": os.getloadavg()[0]}
    proc, url, healthy, usable = time_startup(browser, cache, log, args.server_env)
    out.update(startup_healthy=healthy, startup_usable=usable)
    try:
        if "map" in args.only and args.map_loads:
            maps = [time_map(browser, url) for _ in range(args.map_loads)]
            out["map_cold"] = maps[0][0]  # also reads the tables (st.cache_resource)
            warm = maps[1:] or maps
            for i, k in enumerate(("map_first", "map_reload", "map_nav")):
                out[k] = statistics.median(m[i] for m in warm)
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(180_000)
        if "hover" in args.only:
            page.goto(url + "/map")
            map_frame(page)
            in_page, round_trip, recs = time_hovers(page, args.hovers, seed)
            out.update(
                hover_median=statistics.median(in_page), hover_p95=pct(in_page, 95),
                hover_max=max(in_page), rt_median=statistics.median(round_trip),
                rt_p95=pct(round_trip, 95),
            )  # fmt: skip
            # the last hovers' rows again: their sheets are still decoded (main.js's LRU)
            again, _, _ = time_hovers(page, 0, rows=[r["row"] for r in recs[-3:]])
            out["hover_again"] = statistics.median(again)
            if "pick" in recs[0]:  # the records of issue 10's main.js
                out.update(
                    hover_pick=statistics.median(r["pick"] for r in recs),
                    hover_ready=statistics.median(r["ready"] for r in recs),
                    hover_decoded=100 * sum(bool(r["decoded"]) for r in recs) / len(recs),
                    hover_fetched=100 * sum(bool(r["fetched"]) for r in recs) / len(recs),
                )
            if seed == 0:
                screenshot(page, "map-30k-hover")
            first, second = [m.get("display") or m["model_id"] for m in Cache(cache).models[:2]]
            out["switch_cold"] = time_model_switch(page, second)
            time_model_switch(page, first)
            out["switch_warm"] = time_model_switch(page, second)
        if "geo" in args.only and "lat" in Cache(cache).images().columns:  # has coordinates
            out.update(time_geography(browser, url, args.hovers, seed))
        if "threshold" in args.only:
            steps, unseen = time_threshold(page, url, args.thresholds)
            out["threshold_unseen"] = unseen
            if steps:
                out.update(threshold_median=statistics.median(steps), threshold_max=max(steps))
        context.close()
        out["rss"], out["peak"] = rss_mb(proc.pid)
    finally:
        stop_server(proc)
    if "geolibs" in args.only:
        out.update(time_map_libraries(browser, args.n_libs, args.hovers, log))
    out["load_end"] = os.getloadavg()[0]
    return out


def report(rounds: list[dict[str, float]]) -> None:
    """The before / best round / median-of-rounds table (best = lowest)."""
    loads = ", ".join(f"{r['load_start']:.1f}-{r['load_end']:.1f}" for r in rounds)
    print(f"\n{len(rounds)} rounds; 1-min load average (start-end) per round: {loads}")
    print(f"{'figure':32s} {'before':>9s} {'best':>9s} {'median':>9s}  unit   every round")
    for key, label, unit, before in FIGURES:
        values = [r[key] for r in rounds if key in r]
        if not values:
            continue
        prec = 2 if unit == "s" else 1 if unit == "ms" else 0
        b = "-" if before is None else f"{before:.{prec}f}"
        every = " ".join(f"{v:.{prec}f}" for v in values)
        print(f"{label:32s} {b:>9s} {min(values):9.{prec}f} {statistics.median(values):9.{prec}f}"
              f"  {unit:5s}  {every}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, help="an existing cache (default: build a fake one)")
    ap.add_argument("--n", type=int, default=30_000, help="test images of the fake cache")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hovers", type=int, default=60, help="per round")
    ap.add_argument("--map-loads", type=int, default=3, help="per round (the first is cold)")
    ap.add_argument("--thresholds", type=int, default=8, help="per round")
    ap.add_argument("--only", default="startup,map,hover,threshold,geo",
                    help="comma-separated parts (start-up is always measured), "
                    "also geolibs")  # fmt: skip
    ap.add_argument("--n-libs", type=int, default=30_000,
                    help="points of scatter_map vs pydeck (--only geolibs)")  # fmt: skip
    ap.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                    help="add to the server's environment, e.g. "
                    "STREAMLIT_RUNNER_POST_SCRIPT_GC=false (repeatable)")  # fmt: skip
    args = ap.parse_args(argv)
    args.only = set(args.only.split(","))
    args.server_env = dict(kv.split("=", 1) for kv in args.server_env)
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

    rounds = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            for i in range(args.rounds):
                rounds.append(one_round(browser, cache, Path(tmp.name) / "streamlit.log", args, i))
                print(f"round {i + 1}/{args.rounds} done, load {os.getloadavg()[0]:.1f}",
                      flush=True)  # fmt: skip
            browser.close()
    finally:
        tmp.cleanup()
    print(f"cache: {cache if args.cache else f'fake, {args.n} test images'}; server env: "
          f"{args.server_env or 'default'}")  # fmt: skip
    report(rounds)


if __name__ == "__main__":
    main()
