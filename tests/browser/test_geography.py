"""The Geography page in a real browser, offline: the tile-free map, hover thumbnails, an area
selection's gallery, the H3 cells on MapLibre's tile-free style, and the GeoJSON download.

Our machines have no internet, so these tests are the offline case the page must handle: no
error element anywhere, whichever view.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import shapely.geometry
from playwright.sync_api import expect
from support import REPO, error_texts, map_frame, screenshot, wait_idle

pytestmark = pytest.mark.browser


def open_geography(page, app_url: str):
    page.goto(app_url + "/geography")
    wait_idle(page)
    return map_frame(page)


def isolated_row(frame, min_px: float = 10.0) -> int | None:
    """A row whose point has no other point within ``min_px`` (so hovering picks it)."""
    return frame.evaluate(
        """(minPx) => {
        const c = window.cityviz, pts = [];
        for (let i = 0; i < c.nPoints; i++) {
          const row = c.rowAt(i), p = c.pointPixel(row);
          if (p) pts.push([row, p.x, p.y]);
        }
        for (const [row, x, y] of pts) {
          if (pts.every(([r2, x2, y2]) => r2 === row || Math.hypot(x - x2, y - y2) >= minPx))
            return row;
        }
        return null;
      }""",
        min_px,
    )


def test_geography_renders_offline_and_hover_shows_thumbnails(page, app_url):
    assert (REPO / "pages" / "geography.py").exists()
    iframe, frame = open_geography(page, app_url)
    assert error_texts(page) == []
    assert page.locator("[data-testid=stMain] h1").first.inner_text() == "Geography"
    assert "Tile-free view" in page.locator("[data-testid=stMain]").inner_text()
    assert frame.evaluate("window.cityviz.nPoints") > 10
    # equal scale: a metre east spans as many pixels as a metre north (x = lon·cos(lat0), y = lat)
    sx, sy = frame.evaluate(
        "() => { const l = document.getElementById('cv-plot')._fullLayout;"
        " const s = a => a._length / Math.abs(a.range[1] - a.range[0]);"
        " return [s(l.xaxis), s(l.yaxis)]; }"
    )
    assert sx == pytest.approx(sy, rel=0.01)
    iframe.scroll_into_view_if_needed()  # every point inside the viewport, so the mouse reaches it
    row = isolated_row(frame)
    assert row is not None
    box = iframe.bounding_box()
    p = frame.evaluate(f"window.cityviz.pointPixel({row})")
    page.mouse.move(box["x"] + p["x"] - 30, box["y"] + p["y"] - 30)
    page.mouse.move(box["x"] + p["x"], box["y"] + p["y"], steps=3)
    frame.wait_for_selector(f"#cv-tip[data-row='{row}'][data-loaded='1']", timeout=15_000)
    thumbs = frame.locator("#cv-tip canvas[data-testid=cv-thumb]")
    assert thumbs.count() == 3
    for i in range(3):
        # drawn from this row's sprite sheet, and not blank
        assert "/component/cityviz.ui.scatter.thumbs_" in thumbs.nth(i).get_attribute("data-sheet")
        lit = thumbs.nth(i).evaluate(
            "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
            ".some((v, j) => j % 4 !== 3 && v > 16)"
        )
        assert lit
    caption = frame.locator("#cv-tip-caption").inner_text()
    assert "tokyo-like" in caption or "pittsburgh-like" in caption
    screenshot(page, "geography-hover")


def test_an_area_selection_shows_its_gallery(page, app_url):
    iframe, frame = open_geography(page, app_url)
    page.locator(".st-key-geo_drag button", has_text="Box select").click()
    frame.wait_for_function(
        "() => document.getElementById('cv-plot')._fullLayout.dragmode === 'select'"
    )
    _, frame = map_frame(page)
    n = frame.evaluate("window.cityviz.nPoints")
    plot = frame.evaluate(
        "() => { const l = document.getElementById('cv-plot')._fullLayout;"
        " return [l.xaxis._offset, l.yaxis._offset, l.xaxis._length, l.yaxis._length]; }"
    )
    box = iframe.bounding_box()
    x0, y0 = box["x"] + plot[0] + 2, box["y"] + plot[1] + 2
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + plot[2] - 4, y0 + plot[3] - 4, steps=12)
    page.mouse.up()
    gallery = page.locator(".st-key-geo-gallery [data-testid=stImage] img")
    gallery.first.wait_for(timeout=60_000)
    heading = page.locator("[data-testid=stMain] h3", has_text="Selection:")
    assert heading.inner_text().startswith(f"Selection: {n} images")  # the whole area
    expect(gallery).to_have_count(min(n, 24), timeout=60_000)  # Streamlit sends them one by one
    assert gallery.first.evaluate("i => i.complete && i.naturalWidth") > 0
    assert page.get_by_text("Object profile").is_visible()
    assert error_texts(page) == []
    page.locator(".st-key-geo-gallery").scroll_into_view_if_needed()
    screenshot(page, "geography-selection")


def test_cells_view_draws_hexagons_offline_and_the_geojson_downloads(page, app_url):
    open_geography(page, app_url)
    page.locator(".st-key-geo_view button", has_text="H3 cells").click()
    wait_idle(page)
    chart = page.locator("[data-testid=stPlotlyChart]").first
    chart.locator("canvas").first.wait_for(timeout=60_000)  # MapLibre's WebGL canvas
    page.wait_for_function(
        "() => { const d = document.querySelector('[data-testid=stPlotlyChart] .js-plotly-plot');"
        " return d && d._fullLayout && d._fullLayout.map && d.data[0].type === 'choroplethmap'; }"
    )
    heading = page.locator("[data-testid=stMain] h3", has_text="Cell ")
    heading.wait_for()
    page.locator(".st-key-geo-gallery [data-testid=stImage] img").first.wait_for(timeout=60_000)
    assert error_texts(page) == []
    screenshot(page, "geography-cells")
    with page.expect_download() as info:
        page.locator("[data-testid=stDownloadButton] button", has_text="GeoJSON").click()
    doc = json.loads(Path(info.value.path()).read_text(encoding="utf-8"))
    assert doc["type"] == "FeatureCollection" and doc["features"]
    for feat in doc["features"]:
        assert shapely.geometry.shape(feat["geometry"]).geom_type == "Point"
        assert {"predicted_city", "confidence"} <= set(feat["properties"])
