"""Real-browser fixtures: the dashboard served on a fake cache, driven by Playwright + chromium."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, require_chromium, start_server, stop_server


@pytest.fixture(scope="session")
def app_url(fake_cache_dir, tmp_path_factory) -> Iterator[str]:
    require_chromium()
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    proc, url = start_server(fake_cache_dir, log)
    yield url
    stop_server(proc)


@pytest.fixture(scope="session")
def browser():
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    pg.set_default_timeout(90_000)
    yield pg
    context.close()
