"""The dashboard in a real browser: every page, hover thumbnails, selection, atlas, live upload."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from support import REPO, error_texts, map_frame, screenshot, wait_idle

from cityviz.fake_cache import builtin_scene
from cityviz.store import thumb_location

pytestmark = pytest.mark.browser

PAGES = {
    "overview": "/",
    "map": "/map",
    "objects": "/objects",
    "compare": "/compare",
    "live": "/live",
}


def open_page(page, app_url: str, path: str) -> None:
    page.goto(app_url + path)
    wait_idle(page)


@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_opens_without_errors(page, app_url, name):
    if name != "overview" and not (REPO / "pages" / f"{name}.py").exists():
        pytest.fail(f"pages/{name}.py does not exist")
    open_page(page, app_url, PAGES[name])
    if name == "map":
        map_frame(page)
    assert error_texts(page) == []
    assert page.locator("[data-testid=stMain] h1").first.is_visible()
    screenshot(page, name)


def isolated_row(frame, min_px: float = 10.0) -> int:
    """A test row whose point has no other point within ``min_px`` (so hover picks it)."""
    return frame.evaluate(
        """(minPx) => {
        const c = window.cityviz, pts = [];
        for (let i = 0; i < c.nPoints; i++) {
          const row = c.rowAt(i), p = c.pointPixel(row);
          if (p) pts.push([row, p.x, p.y]);
        }
        for (const [row, x, y] of pts) {
          let ok = true;
          for (const [r2, x2, y2] of pts) {
            if (r2 !== row && Math.hypot(x - x2, y - y2) < minPx) { ok = false; break; }
          }
          if (ok) return row;
        }
        return null;
      }""",
        min_px,
    )


TILE_MATCHES = """async (canvas, [src, x, y]) => {
  const s = canvas.width;
  const sheet = await createImageBitmap(await (await fetch(src)).blob());
  const ref = new OffscreenCanvas(s, s).getContext("2d");
  ref.drawImage(sheet, x * s, y * s, s, s, 0, 0, s, s);
  const want = ref.getImageData(0, 0, s, s).data;
  const got = canvas.getContext("2d").getImageData(0, 0, s, s).data;
  let same = want.length === got.length, lit = false;
  for (let i = 0; i < got.length; i++) {
    if (got[i] !== want[i]) { same = false; break; }
    if (i % 4 !== 3 && got[i] > 16) lit = true;
  }
  return [same, lit];
}"""


def hover_row(page, iframe, frame, row: int) -> None:
    box = iframe.bounding_box()
    p = frame.evaluate(f"window.cityviz.pointPixel({row})")
    page.mouse.move(box["x"] + p["x"] - 30, box["y"] + p["y"] - 30)
    page.mouse.move(box["x"] + p["x"], box["y"] + p["y"], steps=3)


def test_hovering_a_point_shows_its_thumbnails(page, app_url):
    open_page(page, app_url, "/map")
    iframe, frame = map_frame(page)
    row = isolated_row(frame)
    assert row is not None
    hover_row(page, iframe, frame, row)
    frame.wait_for_selector(f"#cv-tip[data-row='{row}'][data-loaded='1']", timeout=15_000)
    assert frame.locator("#cv-tip").is_visible()
    _, x, y = thumb_location(row)
    thumbs = frame.locator("#cv-tip canvas[data-testid=cv-thumb]")
    assert thumbs.count() == 3
    for i in range(3):
        tile = thumbs.nth(i)
        assert tile.is_visible()
        src = tile.get_attribute("data-sheet")
        assert tile.get_attribute("data-tile") == f"{x},{y}"  # this row's tile on its sheet
        assert "/component/cityviz.ui.scatter.thumbs_" in src and src.endswith(".jpg")
        resp = page.request.get(src)
        assert resp.ok and resp.headers["content-type"] == "image/jpeg"
        # the canvas shows exactly that tile of the sheet (decoded again here, by the same
        # decoder), and it is not blank
        same, lit = tile.evaluate(TILE_MATCHES, [src, x, y])
        assert same, f"tooltip tile {i} differs from tile ({x}, {y}) of {src}"
        assert lit
    caption = frame.locator("#cv-tip-caption").inner_text()
    assert "tokyo-like" in caption or "pittsburgh-like" in caption
    # the hover record is written on the animation frame after the thumbnails load (it times the
    # paint), so wait for it rather than read it at once: under load that frame can come late
    frame.wait_for_function(
        f"() => window.cityviz.lastHover !== null && window.cityviz.lastHover.row === {row}",
        timeout=15_000,
    )
    rec = frame.evaluate("window.cityviz.lastHover")
    assert 0 <= rec["pick"] <= rec["ready"] <= rec["ms"]  # move -> picked -> decoded -> frame
    screenshot(page, "map-hover")


def test_box_selection_shows_the_gallery(page, app_url):
    open_page(page, app_url, "/map")
    iframe, frame = map_frame(page)
    page.locator(".st-key-map_drag button", has_text="Box select").click()
    frame.wait_for_function(
        "() => document.getElementById('cv-plot')._fullLayout.dragmode === 'select'"
    )
    _, frame = map_frame(page)
    plot = frame.evaluate(
        "() => { const a = document.getElementById('cv-plot')._fullLayout.xaxis,"
        " b = document.getElementById('cv-plot')._fullLayout.yaxis;"
        " return [a._offset, b._offset, a._length, b._length]; }"
    )
    box = iframe.bounding_box()
    x0, y0 = box["x"] + plot[0] + 2, box["y"] + plot[1] + 2
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + plot[2] - 4, y0 + plot[3] - 4, steps=12)
    page.mouse.up()
    gallery = page.locator(".st-key-map-gallery [data-testid=stImage] img")
    gallery.first.wait_for(timeout=60_000)
    heading = page.locator("[data-testid=stMain] h3", has_text="Selection:")
    assert heading.inner_text().startswith("Selection: 100 images")  # the whole map
    assert gallery.count() == 24
    assert gallery.first.evaluate("i => i.complete && i.naturalWidth") == 96
    assert page.get_by_text("Object profile").is_visible()
    assert error_texts(page) == []
    page.locator(".st-key-map-gallery").scroll_into_view_if_needed()
    screenshot(page, "map-selection")
    # a new colouring redraws the map and keeps the selection
    page.locator("[data-testid=stSelectbox]").filter(has_text="Colour by").click()
    page.get_by_role("option", name="Correct / wrong").click()
    frame.wait_for_function(
        "() => { const d = document.getElementById('cv-plot').data;"
        " return d[0].name.startsWith('correct') &&"
        " d.reduce((n, t) => n + (t.selectedpoints || []).length, 0) === 100; }"
    )
    assert heading.inner_text().startswith("Selection: 100 images")


def test_atlas_draws_explanation_thumbnails(page, app_url):
    open_page(page, app_url, "/map")
    map_frame(page)
    page.locator(".st-key-map_view button", has_text="Atlas").click()
    _, frame = map_frame(page)
    frame.wait_for_function("() => window.cityviz.atlasDrawn > 0", timeout=30_000)
    drawn = frame.evaluate("window.cityviz.atlasDrawn")
    assert 10 <= drawn <= 100
    screenshot(page, "map-atlas")


def street_photo_png() -> bytes:
    img, _ = builtin_scene(0, 256, np.random.default_rng(3))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def upload(page, name: str, data: bytes, mime: str) -> None:
    uploader = page.locator("[data-testid=stFileUploader]").filter(has_text="Upload a street photo")
    uploader.locator("input[type=file]").set_input_files(
        {"name": name, "mimeType": mime, "buffer": data}
    )


def test_live_upload_shows_prediction_and_overlay(page, app_url):
    open_page(page, app_url, "/live")
    upload(page, "street.jpg", street_photo_png(), "image/jpeg")
    page.get_by_text("Grad-CAM overlay").first.wait_for(timeout=120_000)
    wait_idle(page)
    main = page.locator("[data-testid=stMain]")
    text = main.inner_text()
    assert "predicts" in text
    assert "tokyo-like" in text or "pittsburgh-like" in text
    overlay = page.locator("[data-testid=stImage]", has_text="Grad-CAM overlay").first
    assert overlay.locator("img").evaluate("i => i.complete && i.naturalWidth > 0")
    assert error_texts(page) == []
    screenshot(page, "live-upload")


def test_live_upload_of_a_non_image_is_an_error_message(page, app_url):
    open_page(page, app_url, "/live")
    upload(page, "notes.jpg", b"these are my notes, not a photo\n" * 20, "image/jpeg")
    alert = page.locator("[data-testid=stAlertContentError], [data-testid=stAlertContentWarning]")
    alert.first.wait_for(timeout=60_000)
    assert alert.first.inner_text().strip()
    assert page.locator("[data-testid=stException]").count() == 0
    assert "predicts" not in page.locator("[data-testid=stMain]").inner_text()
