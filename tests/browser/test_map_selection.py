"""Selections on the explanation map in a real browser, as *sequences* (issue 13 §5).

After every step the page's selection (its heading and the rows of its CSV export) must equal
the points inside the region just drawn, computed here from the cache's map coordinates and the
plot's axes, whatever was drawn or coloured before. Regions are placed so that no point lies
within 2 px of their edges (a point on an edge is ambiguous at the mouse's pixel resolution).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from support import map_frame, wait_idle

from cityviz.store import Cache

pytestmark = pytest.mark.browser

CLEAR_PX = 2.0


def plot_geometry(frame) -> dict:
    return frame.evaluate(
        """() => { const fl = document.getElementById('cv-plot')._fullLayout;
        const a = fl.xaxis, b = fl.yaxis;
        return {xo: a._offset, yo: b._offset, xl: a._length, yl: b._length,
                xr: a.range.slice(), yr: b.range.slice()}; }"""
    )


def pixels(coords: pd.DataFrame, g: dict) -> tuple[np.ndarray, np.ndarray]:
    """Frame-client pixel positions of the map's points (linear axes, y pointing up)."""
    (x0, x1), (y0, y1) = g["xr"], g["yr"]
    px = g["xo"] + (coords["x"].to_numpy() - x0) / (x1 - x0) * g["xl"]
    py = g["yo"] + (y1 - coords["y"].to_numpy()) / (y1 - y0) * g["yl"]
    return px, py


def clear_line(values: np.ndarray, target: float) -> float:
    """The whole pixel nearest ``target`` with no value within CLEAR_PX of it."""
    for step in range(200):
        for cand in (round(float(target)) + step, round(float(target)) - step):
            if np.all(np.abs(values - cand) >= CLEAR_PX):
                return float(cand)
    raise AssertionError("no clear line near the target")


def inside_polygon(px: np.ndarray, py: np.ndarray, poly: list[tuple[float, float]]) -> np.ndarray:
    inside = np.zeros(len(px), dtype=bool)
    for (xa, ya), (xb, yb) in zip(poly, poly[-1:] + poly[:-1], strict=True):
        crosses = (ya > py) != (yb > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = (xb - xa) * (py - ya) / (yb - ya) + xa
        inside ^= crosses & (px < x_at)
    return inside


def drag(page, iframe, path: list[tuple[float, float]]) -> None:
    box = iframe.bounding_box()
    page.mouse.move(box["x"] + path[0][0], box["y"] + path[0][1])
    page.mouse.down()
    for x, y in path[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=6)
    page.mouse.up()


def pick(page, group: str, label: str):
    page.locator(f".st-key-{group} button", has_text=label).click()
    wait_idle(page)
    return map_frame(page)


def colour_by(page, name: str):
    """Pick ``name`` in the "Colour by" select box (its list opens on a click on the box itself;
    a click that lands while the page reruns may not open it, so try again)."""
    box = page.locator("[data-testid=stSelectbox]").filter(has_text="Colour by")
    option = page.get_by_role("option", name=name, exact=True)
    for _ in range(5):
        wait_idle(page)
        box.click()
        try:
            option.wait_for(timeout=10_000)
            break
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    option.click()
    wait_idle(page)
    return map_frame(page)


def page_selection(page, expected_n: int) -> list[int]:
    """The test rows the page shows as selected, once its heading says ``expected_n`` images
    (read from the CSV export, so the download is checked too)."""
    heading = page.locator("[data-testid=stMain] h3", has_text=f"Selection: {expected_n} images")
    heading.wait_for(timeout=60_000)
    wait_idle(page)
    with page.expect_download() as info:
        page.locator(".st-key-map_export_csv button").click()
    table = pd.read_csv(io.BytesIO(Path(info.value.path()).read_bytes()))
    assert len(table) == expected_n
    return sorted(table["test_row"].tolist())


@pytest.fixture(scope="module")
def coords(fake_cache_dir) -> pd.DataFrame:
    cache = Cache(fake_cache_dir)
    emb = cache.embedding(cache.model_ids[0])
    return pd.DataFrame({"row": emb["row"], "x": emb["tsne_x"], "y": emb["tsne_y"]})


def test_selection_sequences_select_what_was_drawn(page, app_url, coords):
    page.goto(app_url + "/map")
    wait_idle(page)
    iframe, frame = pick(page, "map_drag", "Box select")
    g = plot_geometry(frame)
    px, py = pixels(coords, g)
    rows = coords["row"].to_numpy()

    def box(fx0, fy0, fx1, fy1):
        x0 = clear_line(px, g["xo"] + fx0 * g["xl"])
        x1 = clear_line(px, g["xo"] + fx1 * g["xl"])
        y0 = clear_line(py, g["yo"] + fy0 * g["yl"])
        y1 = clear_line(py, g["yo"] + fy1 * g["yl"])
        truth = rows[(px > x0) & (px < x1) & (py > y0) & (py < y1)]
        return [(x0, y0), (x1, y1)], sorted(truth.tolist())

    # 1. a box, then a lasso that starts inside it
    path, truth = box(0.15, 0.15, 0.6, 0.7)
    assert 0 < len(truth) < len(rows)
    drag(page, iframe, path)
    assert page_selection(page, len(truth)) == truth
    iframe, frame = pick(page, "map_drag", "Lasso")
    cx = clear_line(px, (path[0][0] + path[1][0]) / 2)
    cy = clear_line(py, (path[0][1] + path[1][1]) / 2)
    ex = clear_line(px, g["xo"] + 0.95 * g["xl"])
    ey = clear_line(py, g["yo"] + 0.95 * g["yl"])
    lasso = [(cx, cy), (ex, cy), (ex, ey), (cx, ey)]
    truth_lasso = sorted(rows[inside_polygon(px, py, lasso)].tolist())
    assert truth_lasso and truth_lasso != truth
    drag(page, iframe, [*lasso, (cx, cy + 0.5)])
    assert page_selection(page, len(truth_lasso)) == truth_lasso

    # 2. colour-by changes (8 -> 1 traces), then a box that starts inside the last region
    iframe, frame = colour_by(page, "Cluster")
    iframe, frame = colour_by(page, "Confidence")
    iframe, frame = pick(page, "map_drag", "Box select")
    g = plot_geometry(frame)  # the colour bar narrows the plot: the points move
    px, py = pixels(coords, g)
    path, truth = box(0.4, 0.45, 0.9, 0.9)
    assert truth and truth != truth_lasso
    drag(page, iframe, path)
    assert page_selection(page, len(truth)) == truth

    # 3. a click (zoom mode), then a box
    iframe, frame = pick(page, "map_drag", "Zoom")
    far = np.hypot(px[:, None] - px[None, :], py[:, None] - py[None, :])
    np.fill_diagonal(far, np.inf)
    inside = (px > g["xo"] + 10) & (px < g["xo"] + g["xl"] - 10)
    i = int(np.flatnonzero(inside & (far.min(axis=1) > 10))[0])
    b = iframe.bounding_box()
    x, y = b["x"] + float(px[i]), b["y"] + float(py[i])
    page.mouse.move(x - 20, y - 20)
    page.mouse.move(x, y, steps=4)
    page.mouse.click(x, y)
    assert page_selection(page, 1) == [int(rows[i])]
    iframe, frame = pick(page, "map_drag", "Box select")
    path, truth = box(0.05, 0.05, 0.45, 0.5)
    assert truth and truth != [int(rows[i])]
    drag(page, iframe, path)
    assert page_selection(page, len(truth)) == truth
