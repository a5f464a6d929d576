"""Serving the dashboard and driving it with Playwright + Debian's chromium (tests, bench).

Uses ``/usr/bin/chromium`` (never ``playwright install``). Without it the browser tests are
skipped, except under CI (``$CI`` set), where they fail.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("CITYVIZ_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
VIEWPORT = {"width": 1400, "height": 1000}
START_TIMEOUT_S = 180


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"streamlit did not start within {timeout} s:\n{log.read_text()[-3000:]}")


def start_server(
    cache_dir: Path, log: Path, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """``streamlit run app.py -- --cache DIR`` on a free port of 127.0.0.1; ``extra_env`` is added
    to the server's environment (e.g. ``STREAMLIT_RUNNER_POST_SCRIPT_GC=false``)."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.headless", "true", "--server.address", "127.0.0.1",
        "--server.port", str(port), "--browser.gatherUsageStats", "false",
        "--", "--cache", str(cache_dir),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("CITYVIZ_CACHE", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log, START_TIMEOUT_S)
    except Exception:
        stop_server(proc)
        raise
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- page helpers


def wait_idle(page, timeout_ms: int = 120_000) -> None:
    """Wait until Streamlit has finished running the page's script."""
    page.wait_for_selector(
        "[data-testid=stApp][data-test-script-state=notRunning]", timeout=timeout_ms
    )
    page.wait_for_selector("[data-testid=stMain] h1", timeout=timeout_ms)


def error_texts(page) -> list[str]:
    """Texts of exception and st.error elements on the page."""
    sel = "[data-testid=stException], [data-testid=stAlertContentError]"
    return [e.inner_text() for e in page.query_selector_all(sel)]


def screenshot(page, name: str) -> Path:
    """Save ``artifacts/screenshots/<name>.png`` of the whole page (Streamlit scrolls inside
    its main block, so the viewport is stretched to the content first)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = page.evaluate(
        "() => { const m = document.querySelector('[data-testid=stMain]');"
        " return m ? m.scrollHeight : document.body.scrollHeight; }"
    )
    tall = max(VIEWPORT["height"], min(int(height), 4000))
    page.set_viewport_size({"width": VIEWPORT["width"], "height": tall})
    page.wait_for_timeout(600)
    # plotly charts draw asynchronously: wait (briefly) until each has its SVG
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('[data-testid=stPlotlyChart]'))"
        ".every(c => c.querySelector('.main-svg'))",
        timeout=15_000,
    )
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    page.set_viewport_size(VIEWPORT)
    return path


def map_frame(page):
    """The explanation-map component's frame, once its plot is drawn."""
    el = page.wait_for_selector("iframe[title*='explanation_map']")
    frame = el.content_frame()
    frame.wait_for_function("() => window.cityviz && window.cityviz.ready")
    return el, frame
