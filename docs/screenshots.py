"""Refresh the README's screenshots from a real cache (needs /usr/bin/chromium and playwright).

    .venv/bin/python docs/screenshots.py --cache cache/synthetic-demo

Serves the cache with the same helpers as the browser tests, visits every page, hovers a point
of the explanation map, opens the atlas and uploads one of the cache's
own test images on the live page; PNGs go to ``docs/screenshots/``.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "browser")]

from support import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    SCREENSHOTS,
    VIEWPORT,
    map_frame,
    screenshot,
    start_server,
    stop_server,
    wait_idle,
)

OUT = REPO / "docs" / "screenshots"


def _hover_first_point(page) -> None:
    iframe, frame = map_frame(page)
    box = iframe.bounding_box()
    row = frame.evaluate("window.cityviz.rowAt(Math.floor(window.cityviz.nPoints / 3))")
    p = frame.evaluate(f"window.cityviz.pointPixel({row})")
    page.mouse.move(box["x"] + p["x"] - 30, box["y"] + p["y"] - 30)
    page.mouse.move(box["x"] + p["x"], box["y"] + p["y"], steps=3)
    frame.wait_for_selector("#cv-tip[data-loaded='1']", timeout=15_000)


def _test_image_jpeg(cache: Path) -> bytes:
    img = np.load(cache / "inputs" / "test.npy", mmap_mode="r")[0]
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img)).resize((384, 384), Image.BICUBIC).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=REPO / "cache" / "synthetic-demo")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    log = Path(tempfile.mkdtemp()) / "streamlit.log"
    proc, url = start_server(args.cache.resolve(), log)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.set_default_timeout(120_000)
            for name, path in (("overview", "/"), ("objects", "/objects"),
                               ("compare", "/compare")):  # fmt: skip
                page.goto(url + path)
                wait_idle(page)
                screenshot(page, name)
            page.goto(url + "/trust")
            wait_idle(page)
            page.get_by_text("Object removal").first.wait_for()  # the last part drawn
            screenshot(page, "trust")
            page.goto(url + "/map")
            wait_idle(page)
            map_frame(page)
            screenshot(page, "map")
            _hover_first_point(page)
            screenshot(page, "map-hover")
            page.locator(".st-key-map_view button", has_text="Atlas").click()
            _, frame = map_frame(page)
            frame.wait_for_function("() => window.cityviz.atlasDrawn > 0", timeout=30_000)
            screenshot(page, "map-atlas")
            page.goto(url + "/live")
            wait_idle(page)
            photo = {"name": "street.jpg", "mimeType": "image/jpeg",
                     "buffer": _test_image_jpeg(args.cache)}  # fmt: skip
            page.locator("[data-testid=stFileUploader] input[type=file]").set_input_files(photo)
            page.get_by_text("Grad-CAM overlay").first.wait_for()
            wait_idle(page)
            screenshot(page, "live-upload")
            browser.close()
    finally:
        stop_server(proc)
    OUT.mkdir(parents=True, exist_ok=True)
    names = ("overview", "objects", "compare", "trust", "map", "map-hover", "map-atlas",
             "live-upload")  # fmt: skip
    for name in names:
        shutil.copy(SCREENSHOTS / f"{name}.png", OUT / f"{name}.png")
        print(OUT / f"{name}.png")


if __name__ == "__main__":
    main()
