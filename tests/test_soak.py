"""bench.soak: its "finished" check and its bounded waits, against a stand-in page in chromium.

The stand-in mimics the parts of Streamlit's DOM the bench reads (the app's script and connection
state attributes, the uploader's file chip, the first image, ``data-stale``) and plays one of
several scripted outcomes after a file is handed to its uploader, so each way an upload can end
is tested without a Streamlit server.
"""

from __future__ import annotations

import asyncio
import http.server
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "browser"))

from support import CHROMIUM, CHROMIUM_ARGS, require_chromium  # noqa: E402

from bench import soak  # noqa: E402

# The outcome is the first part of the URL path: /<outcome>/live.
OUTCOMES = {"normal", "batched", "collapsed", "stuck", "norun", "stale", "error"}
STAND_IN = """<!doctype html><html><body>
<div data-testid="stApp" data-test-script-state="notRunning" data-test-connection-state="CONNECTED">
 <div data-testid="stFileUploader"><input type="file"><div id="chips"></div></div>
 <div data-testid="stMain"><div data-testid="stImage"><img src="/media/old.png"></div>
  <p id="out">Simple predicts tokyo-like (60.0%)</p></div>
</div>
<script>
const outcome = location.pathname.split('/')[1];
const app = document.querySelector('[data-testid=stApp]');
const state = v => app.setAttribute('data-test-script-state', v);
const chip = (name, label) => document.getElementById('chips').innerHTML =
  `<div data-testid="stFileChip">${name}<div data-testid="stFileChipDeleteBtn">` +
  `<button aria-label="${label} ${name}"></button></div></div>`;
const later = (ms, f) => setTimeout(f, ms);
document.querySelector('input[type=file]').addEventListener('change', e => {
  const name = e.target.files[0].name;
  const img = document.querySelector('[data-testid=stImage] img');
  if (outcome === 'normal') {
    chip(name, 'Remove');
    later(50, () => state('running'));
    later(300, () => { img.src = '/media/' + name + '.png'; state('notRunning'); });
  } else if (outcome === 'batched') {  // both state changes within one task
    chip(name, 'Remove');
    later(300, () => { state('running'); img.src = '/media/' + name + '.png';
                       state('notRunning'); });
  } else if (outcome === 'collapsed') {  // the whole run rendered in one frame: no state change
    chip(name, 'Remove');
    later(300, () => { img.src = '/media/' + name + '.png'; });
  } else if (outcome === 'stuck') {  // the file never finishes uploading
    chip(name, 'Cancel upload of');
  } else if (outcome === 'norun') {  // uploaded, but no run follows (a lost rerun request)
    chip(name, 'Remove');
  } else if (outcome === 'stale') {  // the run ended but an element is still marked stale
    chip(name, 'Remove');
    later(50, () => state('running'));
    later(300, () => { img.parentElement.setAttribute('data-stale', 'true');
                       state('notRunning'); });
  } else if (outcome === 'error') {  // the run ends with an error message instead of results
    chip(name, 'Remove');
    later(50, () => state('running'));
    later(300, () => { document.getElementById('out').outerHTML =
        '<div data-testid="stAlertContentError">Something went wrong</div>';
      state('notRunning'); });
  }
});
</script></body></html>"""


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        known = self.path.split("/")[1] in OUTCOMES and self.path.endswith("/live")
        body = STAND_IN.encode() if known else b"<!doctype html><p>not a Streamlit app</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    require_chromium()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _uploads(url: str, seeds: list[int], timeout_s: float) -> tuple[list[float | None], dict]:
    """Upload ``seeds`` in a row through one bench Session: (latencies, how each run showed)."""
    from playwright.async_api import async_playwright

    async def go():
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            session = soak.Session(browser, url, timeout_s)
            try:
                await session.open()
                return [await session.upload(s) for s in seeds], session.how
            finally:
                await session.close()
                await browser.close()

    # in a thread of its own: the browser tests' session-wide sync Playwright keeps an event loop
    # running in the main thread, where asyncio.run() refuses to start another
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = asyncio.run(go())
        except BaseException as exc:  # re-raised in the test's thread
            out["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_a_normal_run_finishes_every_time(base_url):
    times, how = _uploads(base_url + "/normal", [1, 2, 3], timeout_s=20)
    assert all(t is not None and 0.2 < t < 20 for t in times)
    assert how == {"running": 3}


def test_a_run_the_browser_rendered_in_one_frame_still_finishes(base_url):
    # The old check waited for a 'running' state after the upload: here none ever shows.
    times, how = _uploads(base_url + "/collapsed", [4, 5], timeout_s=20)
    assert all(t is not None for t in times)
    assert how == {"image": 2}


def test_a_running_state_seen_only_inside_a_batch_still_finishes(base_url):
    # running -> notRunning in one task: the observer's callback reads 'notRunning' only.
    times, how = _uploads(base_url + "/batched", [10], timeout_s=20)
    assert times[0] is not None
    assert how == {"batched": 1}


def test_an_error_message_counts_as_the_end_of_the_run(base_url):
    times, _ = _uploads(base_url + "/error", [6], timeout_s=20)
    assert times[0] is not None


@pytest.mark.parametrize("outcome", ["stuck", "norun", "stale"])
def test_an_unfinished_upload_is_a_failure_and_the_soak_goes_on(base_url, outcome, capsys):
    times, _ = _uploads(f"{base_url}/{outcome}", [7, 8], timeout_s=2)
    assert times == [None, None]  # both tried: the first timeout did not stop the second
    out = capsys.readouterr().out
    assert out.count("did not finish") == 2
    assert "photo_7.jpg" in out and "reloading the session" in out
    assert "'connection': 'CONNECTED'" in out  # what the page showed is printed


def test_a_session_that_cannot_open_raises_instead_of_hanging(base_url):
    t0 = time.monotonic()
    with pytest.raises(Exception, match=r"Timeout 2000ms exceeded"):
        _uploads(base_url + "/blank", [9], timeout_s=2)
    assert time.monotonic() - t0 < 30


def test_photos_are_distinct_jpegs():
    photos = [soak.photo(s) for s in range(6)]
    assert len(set(photos)) == 6
    assert all(p[:3] == b"\xff\xd8\xff" for p in photos)


def test_slope_is_the_least_squares_rss_growth_per_upload():
    rng = np.random.default_rng(0)
    n = np.arange(100)
    flat = [(int(i), 1400.0 + float(r)) for i, r in zip(n, rng.normal(0, 5, 100), strict=True)]
    growing = [(i, r + 0.5 * i) for i, r in flat]
    assert abs(soak.slope_mb_per_upload(flat)) < 0.1
    assert soak.slope_mb_per_upload(growing) == pytest.approx(0.5, abs=0.1)
    assert soak.slope_mb_per_upload([(3, 1400.0)]) == 0.0
    assert soak.slope_mb_per_upload([(3, 1400.0), (3, 1500.0)]) == 0.0


@pytest.mark.parametrize("bad", ["OMP_NUM_THREADS", "=1", ""])
def test_compare_env_rejects_items_without_key_and_value(bad):
    with pytest.raises(ValueError, match="KEY=VALUE"):
        soak.parse_env([bad])
    assert soak.parse_env(["A=1", "B="]) == {"A": "1", "B": ""}


@pytest.mark.parametrize("argv", [["--every", "0"], ["--timeout", "-1"], ["--uploads", "-2"],
                                  ["--compare-env", "X"]])  # fmt: skip
def test_bad_arguments_get_one_sentence_not_a_traceback(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        soak.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


# --------------------------------------------------------------------------- where the time goes


def test_breakdown_splits_an_upload_into_its_parts():
    mark = {"digest": "d1", "t0": 100.0, "upload_end": 100.25, "ws_last": 101.5, "done": 102.0,
            "busy": 0.3}  # fmt: skip
    runs = [
        {"digest": "d1", "start": 100.5, "end": 100.75, "cpu": 0.2},  # first run with the photo
        {"digest": "d1", "start": 100.875, "end": 101.25, "cpu": 0.25},  # a rerun
        {"digest": "other", "start": 100.5, "end": 101.0, "cpu": 9.0},  # another session's
        {"digest": "d1", "start": 90.0, "end": 91.0, "cpu": 9.0},  # before this upload
    ]
    parts = soak.breakdown(mark, runs)
    assert parts["total"] == pytest.approx(2.0)
    assert parts["upload"] == pytest.approx(0.25)
    assert parts["wait"] == pytest.approx(0.25)  # upload answered -> first run starts
    assert parts["run"] == pytest.approx(0.375)  # the last run's wall time
    assert parts["cpu"] == pytest.approx(0.45)
    assert parts["server"] == pytest.approx(1.0)  # upload answered -> end of the last run
    assert parts["deliver"] == pytest.approx(0.25)
    assert parts["render"] == pytest.approx(0.5)
    assert parts["runs"] == 2 and parts["busy"] == pytest.approx(0.3)


def test_breakdown_without_server_records_or_page_marks_says_unknown():
    mark = {"digest": "d", "t0": 0.0, "upload_end": None, "ws_last": None, "done": 1.5}
    parts = soak.breakdown(mark, [])
    assert parts["total"] == pytest.approx(1.5) and parts["runs"] == 0
    assert parts["server"] is None and parts["run"] is None and parts["upload"] is None
    run = {"digest": "d", "start": 0.5, "end": 1.0, "cpu": 0.1}
    parts = soak.breakdown(mark, [run])
    assert parts["render"] == pytest.approx(0.5) and parts["server"] is None


def test_read_runs_skips_a_half_written_line(tmp_path):
    path = tmp_path / "times.jsonl"
    path.write_text('{"digest": "a", "start": 1, "end": 2, "cpu": 0.5}\n{"digest": "b", "sta')
    assert [r["digest"] for r in soak.read_runs(path)] == ["a"]
    assert soak.read_runs(tmp_path / "missing.jsonl") == []


def test_cpu_meter_counts_a_child_process_but_not_the_bench_itself():
    import subprocess

    meter = soak.CpuMeter(server_pids=[])
    meter.start()
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    child = subprocess.Popen([sys.executable, "-c", burn + "time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and soak.tree_cpu(child.pid).get(child.pid, 0) < 0.3:
            time.sleep(0.05)
        t = time.process_time()
        while time.process_time() - t < 0.2:  # the bench's own work is not the browser's
            pass
        server, other = meter.stop()
    finally:
        child.kill()
        child.wait()
    assert server == 0.0
    assert other >= 0.28  # the child's 0.3 s (other children, e.g. a browser, may add to it)
