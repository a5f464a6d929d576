"""The Trust page and the trust badges in a real browser (Chromium), on the session's fake cache."""

from __future__ import annotations

import json

import pytest
from support import error_texts, screenshot, wait_idle

pytestmark = pytest.mark.browser


def test_trust_page_shows_the_verdicts_and_no_error(page, app_url, fake_cache_dir):
    page.goto(app_url + "/trust")
    wait_idle(page)
    main = page.locator("[data-testid=stMain]")
    assert main.locator("h1").first.inner_text().startswith("Can I trust these explanations")
    verdicts = json.loads((fake_cache_dir / "trust/verdict.json").read_text())
    for v in verdicts.values():  # each model's plain-language verdict
        main.get_by_text(v["sentence"]).first.wait_for(timeout=60_000)
    main.get_by_text("Object removal").first.wait_for(timeout=60_000)
    text = main.inner_text()
    assert "passes" in text and "Deletion and insertion curves" in text
    # both figures drawn (randomisation, deletion/insertion), the removal table shown
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=stPlotlyChart] .main-svg').length >= 2",
        timeout=60_000,
    )
    main.locator("[data-testid=stDataFrame]").nth(3).wait_for(timeout=60_000)  # 4 or more tables
    assert error_texts(page) == []
    screenshot(page, "trust")


def test_objects_page_shows_the_badge_legend(page, app_url):
    page.goto(app_url + "/objects")
    wait_idle(page)
    legend = page.get_by_text("within the null: a value that chance alone gives", exact=False)
    legend.first.wait_for(timeout=60_000)
    assert error_texts(page) == []
