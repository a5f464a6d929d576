"""Soak and concurrency of the Live Grad-CAM page in a real browser on a real server.

    .venv/bin/python -m bench.soak                       # cache/synthetic-demo, else a fake cache
    .venv/bin/python -m bench.soak --cache DIR --uploads 60 --sessions 8 --rounds 3
    .venv/bin/python -m bench.soak --uploads 0 --rounds 3 --compare-env OMP_NUM_THREADS=1
    .venv/bin/python -m bench.soak --uploads 0 --rounds 3 --compare-repo /tmp/old  # A/B

Serves ``streamlit run app.py -- --cache DIR`` on 127.0.0.1 and drives Debian's chromium
(``/usr/bin/chromium``, headless) with Playwright. Photos are varied JPEGs made in memory with
PIL (a street-like scene with a random layout, size and noise: every upload has a new digest, so
no result cache is hit). Figures:

* **soak**: one browser session uploads ``--uploads`` photos in a row; the server's RSS (psutil
  if installed, else ``/proc/<pid>/status`` VmRSS, in MB of 2**20 bytes) after every upload,
  printed before, every ``--every`` uploads and after, with the load average; the growth in MB
  per upload is the least-squares slope of RSS against the upload count over the second half
  (after the caches have filled).
* **latency**, two figures per round, each as one session alone on the warm server (median of
  ``--alone`` uploads) vs ``--sessions`` sessions uploading at the same moment (p50/p95 and
  their ratio to one session alone), repeated ``--rounds`` times with the load average:

  - **BROWSER-MEASURED** (the issue's figure): from handing the file to the uploader to the end
    of the script run it triggers, with this photo's results drawn (see :data:`DONE`). The
    browsers run on the same cores as the server, so with few cores this includes their work.
  - **SERVER-SIDE**: from the server's answer to the file's upload (the browser's own network
    timing of the PUT) to the end of the script run that sends the last delta (the live page's
    timing log, ``$CITYVIZ_LIVE_TIMING``, see :class:`cityviz.ui.live.RunTimes`).

  Then where the time went (:func:`breakdown`: upload, wait for the run, the run, its CPU,
  delivery to the page, drawing, the page's long tasks, runs per photo) and the CPU seconds per
  upload of the server and of the browser with Playwright's driver (``/proc``; the bench's own
  process is not counted). Goal (issue 9): p50 within 3× one session alone.

With ``--compare-env KEY=VALUE`` a second server with that environment, or with
``--compare-repo DIR`` the app of another checkout (``git worktree add /tmp/old <commit>``),
runs beside the first and the rounds alternate between the two (A, B, A, B, …), so both see
the same machine load: prefer such ratios to figures from separate runs on a busy machine.

Every wait is bounded (``--timeout`` seconds per upload): an upload that does not finish is
counted as a failure, what the page showed is printed, the session is reloaded, and the soak
goes on. The browser runs on the same machine as the server, so on few cores it takes CPU from
it: read the concurrent figures with the load average printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "browser"))

from support import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    START_TIMEOUT_S,
    VIEWPORT,
    free_port,
    start_server,
    stop_server,
    wait_healthy,
)

from cityviz.ui.live import TIMING_ENV  # noqa: E402

DEFAULT_CACHE = REPO / "cache" / "synthetic-demo"
TIMEOUT_S = 120.0

WATCH = """() => {  // every change of the app's script and connection state, with its time
  window.__log = [];
  window.__from = performance.now();
  const app = document.querySelector('[data-testid=stApp]');
  new MutationObserver(records => { for (const r of records) window.__log.push(
      [r.attributeName.replace('data-test-', ''), r.oldValue, app.getAttribute(r.attributeName),
       performance.now()]); })
    .observe(app, {attributes: true, attributeOldValue: true,
                   attributeFilter: ['data-test-script-state', 'data-test-connection-state']});
}"""
CROP = """() => {  // the src of the page's first image ("What the models see"): new photo, new src
  const img = document.querySelector('[data-testid=stMain] [data-testid=stImage] img');
  return img ? img.getAttribute('src') : null;
}"""
INSTRUMENT = """(() => {  // before the app's scripts: when websocket messages arrive, long tasks
  window.__ws = [];  // arrival times (Unix ms) of the websocket messages, the last 500
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', () => {
        window.__ws.push(performance.timeOrigin + performance.now());
        if (window.__ws.length > 500) window.__ws.splice(0, 250);
      });
    }
  };
  window.__long = [];
  try {
    new PerformanceObserver(list => { for (const e of list.getEntries())
      window.__long.push([performance.timeOrigin + e.startTime, e.duration]); })
      .observe({type: 'longtask', buffered: true});
  } catch (e) { /* no long-task timing in this browser: busy stays null */ }
})();"""
MARK = """(crop) => {
  window.__from = performance.now(); window.__crop = crop; window.__long = window.__long || [];
  return performance.timeOrigin + window.__from;
}"""
TIMES = """([t0, done]) => {  // Unix ms: the last websocket message before done (later ones,
  // e.g. the session's status after the run, are not this upload's); ms of long tasks since t0
  const before = (window.__ws || []).filter(t => t >= t0 && t <= done);
  return {
    ws_last: before.length ? before[before.length - 1] : null,
    busy: window.__long ? window.__long.filter(e => e[0] >= t0).reduce((a, e) => a + e[1], 0)
                        : null,
  };
}"""
DONE = """(name) => {
  // Finished with this photo when: the server is connected and no script runs; the uploader holds
  // exactly this file, uploaded (its delete button says "Remove", not "Cancel upload"); a run
  // happened since MARK (a script-state change was seen) or the first image changed (a run whose
  // states the browser rendered in one frame leaves no trace in the attribute); no element is
  // stale; and the page shows a prediction or an error.
  const app = document.querySelector('[data-testid=stApp]');
  if (app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (app.getAttribute('data-test-connection-state') !== 'CONNECTED') return false;
  const chips = document.querySelectorAll('[data-testid=stFileUploader] [data-testid=stFileChip]');
  if (chips.length !== 1) return false;
  const del = chips[0].querySelector('[data-testid=stFileChipDeleteBtn] button');
  if (!del || del.getAttribute('aria-label') !== 'Remove ' + name) return false;
  const seen = window.__log.filter(e => e[0] === 'script-state' && e[3] >= window.__from);
  const ran = seen.length > 0;
  const img = document.querySelector('[data-testid=stMain] [data-testid=stImage] img');
  const src = img ? img.getAttribute('src') : null;
  if (!ran && src === window.__crop) return false;
  const main = document.querySelector('[data-testid=stMain]');
  if (main.querySelector('[data-stale=true]')) return false;
  const shown = main.innerText.includes(' predicts ')
    || main.querySelector('[data-testid=stAlertContentError]') !== null;
  // How the run showed itself: 'running' seen by the observer (all the old check knew), only
  // as the old value of a batch of changes, or not at all (only the new image tells).
  return shown && (seen.some(e => e[2] === 'running') ? 'running' : ran ? 'batched' : 'image');
}"""
SHOWN = """() => {  // what the page shows, for the message of an upload that did not finish
  const app = document.querySelector('[data-testid=stApp]');
  const main = document.querySelector('[data-testid=stMain]');
  const chips = [...document.querySelectorAll('[data-testid=stFileChip]')];
  const alerts = [...document.querySelectorAll('[data-testid=stAlert], [data-testid=stException]')];
  return {
    script: app && app.getAttribute('data-test-script-state'),
    connection: app && app.getAttribute('data-test-connection-state'),
    uploader: chips.map(c => (c.getAttribute('aria-label') || '') + ' | ' + c.innerText
        .replace(/\\s+/g, ' ') + ' | ' + ((c.querySelector('button') || {}).ariaLabel || '')),
    stale: main ? main.querySelectorAll('[data-stale=true]').length : -1,
    predicts: main ? main.innerText.includes(' predicts ') : false,
    alerts: alerts.map(a => a.innerText.replace(/\\s+/g, ' ').slice(0, 160)),
    states: (window.__log || []).filter(e => e[3] >= (window.__from || 0) - 1)
        .slice(-8).map(e => `${e[0]}: ${e[1]} -> ${e[2]} @${Math.round(e[3] - window.__from)}ms`),
  };
}"""


def rss_mb(pid: int) -> float:
    """The resident set size of process ``pid`` in MB (2**20 bytes)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _stat(pid: int) -> tuple[int, float] | None:
    """``(parent pid, CPU seconds user + system)`` of a live process from /proc, else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> dict[int, float]:
    """CPU seconds (user + system) of ``root`` and every live descendant, by pid (Linux /proc)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = st
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in out:
            out[pid] = stats[pid][1]
            todo += [p for p, (parent, _) in stats.items() if parent == pid]
    return out


class CpuMeter:
    """CPU seconds spent by the servers and by everything else this bench started (the browser,
    Playwright's driver) between :meth:`start` and :meth:`stop`."""

    def __init__(self, server_pids: list[int]) -> None:
        self.servers = set(server_pids)

    def start(self) -> None:
        self._before = tree_cpu(os.getpid())

    def stop(self) -> tuple[float, float]:
        """``(server seconds, other seconds)`` since :meth:`start`; processes that ended in
        between are not counted."""
        after = tree_cpu(os.getpid())
        server = other = 0.0
        me = os.getpid()
        for pid, cpu in after.items():
            used = cpu - self._before.get(pid, 0.0)
            if pid in self.servers:
                server += used
            elif pid != me:
                other += used
        return server, other


def read_runs(path: Path) -> list[dict]:
    """The live page's timing records (:class:`cityviz.ui.live.RunTimes`), one JSON object a
    line; a missing file or an unreadable line (one being written) is skipped."""
    runs = []
    with contextlib.suppress(OSError):
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                runs.append(json.loads(line))
    return runs


def breakdown(mark: dict, runs: list[dict]) -> dict[str, float | None]:
    """Where one upload's time went, in seconds, from the page's marks (:attr:`Session.marks`)
    and the server's script runs that analysed the same photo (matched by digest):

    ``total`` handed over → finished; ``upload`` handed over → the PUT's answer in the browser;
    ``wait`` upload answered → the first script run with the photo starts (the rerun request,
    other sessions' runs holding the GIL); ``run`` that run's wall time (the last run's, when
    several analysed the photo); ``cpu`` the runs' script-thread CPU seconds; ``deliver`` end of
    the last run → last websocket message seen by the page; ``render`` → finished (the browser
    drawing the results; includes the 50 ms polling); ``busy`` the page's long tasks; ``server``
    upload answered → end of the last run (the server-side latency); ``runs`` how many script
    runs analysed the photo. A part that cannot be told is None.
    """
    mine = [r for r in runs if r.get("digest") == mark["digest"] and r["end"] >= mark["t0"]]
    up, ws, done = mark.get("upload_end"), mark.get("ws_last"), mark["done"]
    out: dict[str, float | None] = dict.fromkeys(
        ("upload", "wait", "run", "cpu", "deliver", "render", "server")
    )
    out.update(total=done - mark["t0"], busy=mark.get("busy"), runs=float(len(mine)))
    if up is not None:
        out["upload"] = up - mark["t0"]
    if not mine:
        return out
    first, last = min(mine, key=lambda r: r["start"]), max(mine, key=lambda r: r["end"])
    out.update(run=last["end"] - last["start"], cpu=sum(r["cpu"] for r in mine))
    if up is not None:
        out.update(wait=first["start"] - up, server=last["end"] - up)
    if ws is not None:
        out.update(deliver=ws - last["end"], render=done - max(ws, last["end"]))
    else:
        out["render"] = done - last["end"]
    return out


def load() -> str:
    return "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def photo(seed: int) -> bytes:
    """A street-like JPEG: sky, road, facades and a few coloured panels; size and layout vary."""
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(320, 1280)), int(rng.integers(240, 960))
    im = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(100, 240, 3)))
    draw = ImageDraw.Draw(im)
    horizon = int(h * rng.uniform(0.35, 0.6))
    draw.rectangle((0, horizon, w, h), fill=tuple(int(v) for v in rng.integers(60, 120, 3)))
    for _ in range(int(rng.integers(3, 12))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, horizon))
        x1, y1 = x0 + int(rng.integers(20, w // 3)), y0 + int(rng.integers(20, h // 2))
        draw.rectangle((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    arr = np.asarray(im, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=88)
    return buf.getvalue()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def slope_mb_per_upload(samples: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS (MB) against the upload count; 0.0 for fewer than 2 points."""
    if len(samples) < 2 or len({n for n, _ in samples}) < 2:
        return 0.0
    n, r = np.asarray(samples, dtype=float).T
    return float(np.polyfit(n, r, 1)[0])


@dataclass
class Session:
    """One browser tab on the live page, with the browser-side errors seen since the last MARK."""

    browser: object
    url: str
    timeout_s: float
    page: object = None
    errors: list[str] = field(default_factory=list)
    how: Counter = field(default_factory=Counter)
    """Finished uploads by how their run showed in the page (see :data:`DONE`): ``running``
    (a 'running' state was observed), ``batched`` (only as the old value of a batch of state
    changes) or ``image`` (no state change at all, only the new image)."""
    marks: list[dict] = field(default_factory=list)
    """One dict per finished upload, times as Unix seconds (see :func:`breakdown`): ``digest``,
    ``t0`` (file handed over), ``upload_end`` (the browser has the server's answer to the file's
    PUT), ``ws_last`` (last websocket message the page received), ``done`` (finished, as
    :data:`DONE` says), ``busy`` (seconds of the page's long tasks, > 50 ms each, since t0)."""
    _put_end: float | None = None

    async def open(self) -> None:
        if self.page is not None:
            await self.close()
        context = await self.browser.new_context(viewport=VIEWPORT)
        await context.add_init_script(INSTRUMENT)
        self.page = await context.new_page()
        self.page.set_default_timeout(self.timeout_s * 1000)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("requestfailed", lambda r: self.errors.append(
            f"request failed: {r.method} {r.url.split('?')[0]} ({r.failure})"))  # fmt: skip
        self.page.on("response", self._response)
        self.page.on("requestfinished", self._finished)
        await self.page.goto(self.url + "/live")
        await self._ready()

    async def reload(self) -> None:
        """Start a new Streamlit session in the same tab; a fresh tab if the reload fails."""
        try:
            await self.page.reload()
            await self._ready()
        except Exception:  # a wedged tab: throw it away
            await self.open()

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # already gone with the browser
            await self.page.context.close()
        self.page = None

    async def _ready(self) -> None:
        await self.page.wait_for_selector("[data-testid=stApp][data-test-script-state=notRunning]")
        await self.page.wait_for_selector(
            "[data-testid=stFileUploader] input[type=file]", state="attached"
        )
        await self.page.evaluate(WATCH)

    def _console(self, msg) -> None:
        if msg.type in ("error", "warning"):
            self.errors.append(f"console {msg.type}: {msg.text[:200]}")

    def _response(self, response) -> None:
        if response.status >= 400:
            self.errors.append(f"HTTP {response.status} {response.url.split('?')[0]}")

    def _finished(self, request) -> None:
        """The end of a file's PUT to Streamlit's upload endpoint, from the browser's own
        network timing (Unix ms start + ms to the response's end)."""
        if request.method == "PUT" and "/_stcore/upload_file" in request.url:
            timing = request.timing
            if timing.get("responseEnd", -1) >= 0:
                self._put_end = (timing["startTime"] + timing["responseEnd"]) / 1000

    async def upload(self, seed: int, timeout_s: float | None = None) -> float | None:
        """Seconds from handing photo ``seed`` to the uploader to the end of the run it triggers,
        with its results on the page; None (after printing what the page showed and reloading
        the session) when it did not finish within ``timeout_s`` (default: the session's)."""
        timeout_s = timeout_s or self.timeout_s
        data, name = photo(seed), f"photo_{seed}.jpg"
        self.errors.clear()
        self._put_end = None
        t0 = time.perf_counter()
        try:
            t0_page = await self.page.evaluate(MARK, await self.page.evaluate(CROP))
            t0, t0_unix = time.perf_counter(), time.time()
            picker = self.page.locator("[data-testid=stFileUploader] input[type=file]")
            await picker.set_input_files(
                {"name": name, "mimeType": "image/jpeg", "buffer": data}, timeout=timeout_s * 1000
            )
            left = max(1.0, timeout_s - (time.perf_counter() - t0))
            done = await self.page.wait_for_function(
                DONE, arg=name, timeout=left * 1000, polling=50
            )
            elapsed, done_unix = time.perf_counter() - t0, time.time()
            self.how[await done.json_value()] += 1
            page = await self.page.evaluate(TIMES, [t0_page, done_unix * 1000])
        except Exception as exc:  # Playwright's TimeoutError or a closed page: report, go on
            waited = time.perf_counter() - t0
            reason = str(exc).splitlines()[0][:160]
            try:
                shown = await asyncio.wait_for(self.page.evaluate(SHOWN), 15)
            except Exception as inner:  # the page itself is gone or frozen
                shown = {"page": f"unreadable ({str(inner).splitlines()[0][:120]})"}
            print(f"  ! upload of {name} did not finish after {waited:.0f} s ({reason}); the page "
                  f"showed {shown}; browser errors {self.errors[-6:] or 'none'}; reloading the "
                  "session and going on", flush=True)  # fmt: skip
            await self.reload()
            return None
        ws_last, busy = page.get("ws_last"), page.get("busy")
        self.marks.append({
            "digest": hashlib.sha256(data).hexdigest()[:16], "t0": t0_unix, "done": done_unix,
            "upload_end": self._put_end, "ws_last": None if ws_last is None else ws_last / 1000,
            "busy": None if busy is None else busy / 1000,
        })  # fmt: skip
        return elapsed


async def single(session: Session, seeds: range) -> float | None:
    """Median warm latency of one session alone over ``seeds`` (None if every upload failed)."""
    times = [t for s in seeds if (t := await session.upload(s)) is not None]
    return statistics.median(times) if times else None


async def soak(session: Session, pid: int, args) -> None:
    rss = [(0, rss_mb(pid))]
    print(f"RSS before the soak: {rss[0][1]:.0f} MB  ({load()})", flush=True)
    times, failed = [], 0
    for i in range(1, args.uploads + 1):
        t = await session.upload(1000 + i)
        failed += t is None
        times += [] if t is None else [t]
        rss.append((i, rss_mb(pid)))
        if i % args.every == 0 or i == args.uploads:
            last = "failed" if t is None else f"{t:.2f} s"
            print(f"  after {i:4d} uploads: RSS {rss[-1][1]:.0f} MB, last upload {last}, "
                  f"{failed} failed so far  ({load()})", flush=True)  # fmt: skip
    if not times:
        print(f"soak: all {args.uploads} uploads failed", flush=True)
        return
    half = [(n, r) for n, r in rss if n >= args.uploads // 2]
    print(f"soak: finished uploads by how the run showed in the page: {dict(session.how)} "
          "(only 'running' ones would satisfy a check that waits for a 'running' state)",
          flush=True)  # fmt: skip
    print(f"soak: {args.uploads} uploads, {failed} failed; RSS {rss[0][1]:.0f} -> {rss[-1][1]:.0f}"
          f" MB, max {max(r for _, r in rss):.0f} MB; slope {slope_mb_per_upload(rss[1:]):+.3f} MB "
          f"per upload over all, {slope_mb_per_upload(half):+.3f} MB per upload over the second "
          f"half (least squares); upload p50 {pct(times, 50):.2f} s, p95 {pct(times, 95):.2f} s",
          flush=True)  # fmt: skip


@dataclass
class Server:
    """One served app: its label in the output, URL, process id and the live page's timing log."""

    label: str
    url: str
    pid: int
    times: Path


async def concurrent(
    browser, url: str, args, seed0: int, cpu: CpuMeter
) -> tuple[list[float | None], list, tuple[float, float]]:
    """All sessions upload at the same moment: (latencies, the sessions' marks, the CPU
    seconds of the uploads, not of opening the sessions: see :meth:`CpuMeter.stop`)."""
    sessions = [Session(browser, url, args.timeout) for _ in range(args.sessions)]
    try:
        await asyncio.gather(*(s.open() for s in sessions))
        cpu.start()
        times = list(await asyncio.gather(*(
            s.upload(seed0 + i) for i, s in enumerate(sessions))))  # fmt: skip
        return times, [m for s in sessions for m in s.marks], cpu.stop()
    finally:
        await asyncio.gather(*(s.close() for s in sessions))


PARTS = ("upload", "wait", "run", "cpu", "deliver", "render", "busy", "runs")


def _median(parts: list[dict], key: str) -> float | None:
    values = [p[key] for p in parts if p.get(key) is not None]
    return statistics.median(values) if values else None


def _fmt(value: float | None, unit: str = "") -> str:
    return "?" if value is None else f"{value:.2f}{unit}"


def _parts_line(alone: list[dict], many: list[dict], n: int) -> str:
    cells = [f"{k} {_fmt(_median(alone, k))} | {_fmt(_median(many, k))}" for k in PARTS]
    return f"    where the time goes (median s; 1 alone | {n} at once): " + ", ".join(cells)


async def latency(browser, servers: list[Server], args) -> None:
    """One session alone, then all sessions at once, per round, alternating between servers.

    Two figures per round: the **browser-measured** latency (file handed to the uploader →
    results drawn, the issue's figure: the browsers render on the same cores as the server) and
    the **server-side** latency (the upload's PUT answered → the end of the script run that
    sends the last delta, from the page's timing log), each as one session alone vs all at once.
    """
    rows = []
    for rnd in range(args.rounds):
        for k, srv in enumerate(servers):
            cpu = CpuMeter([s.pid for s in servers])
            alone_session = Session(browser, srv.url, args.timeout)
            try:
                await alone_session.open()
                seed = 50_000 + 1000 * (rnd * len(servers) + k)
                cpu.start()
                alone = await single(alone_session, range(seed, seed + args.alone))
                cpu_alone = cpu.stop()
            finally:
                await alone_session.close()
            load_alone = os.getloadavg()[0]
            results, marks, cpu_many = await concurrent(browser, srv.url, args, seed + 500, cpu)
            ok = sorted(t for t in results if t is not None)
            fails = len(results) - len(ok)
            head = f"round {rnd + 1} [{srv.label}]"
            if not ok or alone is None:
                print(f"{head}: no usable figures ({fails} of {len(results)} concurrent uploads "
                      "failed)", flush=True)  # fmt: skip
                continue
            runs = read_runs(srv.times)
            parts_alone = [breakdown(m, runs) for m in alone_session.marks]
            parts_many = [breakdown(m, runs) for m in marks]
            p50, p95 = pct(ok, 50), pct(ok, 95)
            verdict = "meets" if p50 <= 3 * alone else "misses"
            print(f"{head}: BROWSER-MEASURED (handed to the uploader -> results drawn): one "
                  f"session alone (warm) median {alone:.2f} s of {args.alone} (load "
                  f"{load_alone:.2f}); {args.sessions} sessions at once: "
                  + ", ".join(f"{t:.2f}" for t in ok) + f" s, {fails} failed; p50 {p50:.2f} s, "
                  f"p95 {p95:.2f} s = {p50 / alone:.1f}x / {p95 / alone:.1f}x one session alone; "
                  f"{verdict} the 3x goal  ({load()})", flush=True)  # fmt: skip
            srv_alone = [p["server"] for p in parts_alone if p["server"] is not None]
            srv_many = [p["server"] for p in parts_many if p["server"] is not None]
            server_row = None
            if srv_alone and srv_many:
                s1 = statistics.median(srv_alone)
                s50, s95 = pct(srv_many, 50), pct(srv_many, 95)
                server_row = (s1, s50, s95)
                print(f"    SERVER-SIDE (upload answered -> last delta of the script run): alone "
                      f"median {s1:.2f} s; {args.sessions} at once p50 {s50:.2f} s, p95 "
                      f"{s95:.2f} s = {s50 / s1:.1f}x / {s95 / s1:.1f}x", flush=True)  # fmt: skip
            print(_parts_line(parts_alone, parts_many, args.sessions), flush=True)
            n_alone, n_many = max(1, len(alone_session.marks)), max(1, len(ok))
            print(f"    CPU s per upload (server | browser + driver): alone "
                  f"{cpu_alone[0] / n_alone:.2f} | {cpu_alone[1] / n_alone:.2f}; "
                  f"{args.sessions} at once {cpu_many[0] / n_many:.2f} | "
                  f"{cpu_many[1] / n_many:.2f}", flush=True)  # fmt: skip
            rows.append((srv.label, alone, p50, p95, server_row))
    for label in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == label]
        print(f"latency [{label}] over {len(mine)} rounds, BROWSER-MEASURED: alone median "
              f"{statistics.median(r[1] for r in mine):.2f} s, p50 median "
              f"{statistics.median(r[2] for r in mine):.2f} s, p95 median "
              f"{statistics.median(r[3] for r in mine):.2f} s, p50 ratio median "
              f"{statistics.median(r[2] / r[1] for r in mine):.1f}x, p95 ratio median "
              f"{statistics.median(r[3] / r[1] for r in mine):.1f}x", flush=True)  # fmt: skip
        srv = [r[4] for r in mine if r[4] is not None]
        if srv:
            print(f"latency [{label}] over {len(srv)} rounds, SERVER-SIDE: alone median "
                  f"{statistics.median(r[0] for r in srv):.2f} s, p50 median "
                  f"{statistics.median(r[1] for r in srv):.2f} s, p95 median "
                  f"{statistics.median(r[2] for r in srv):.2f} s, p50 ratio median "
                  f"{statistics.median(r[1] / r[0] for r in srv):.1f}x, p95 ratio median "
                  f"{statistics.median(r[2] / r[0] for r in srv):.1f}x", flush=True)  # fmt: skip


async def run(servers: list[Server], args) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for srv in servers:  # models load on each server's first upload
                session = Session(browser, srv.url, args.timeout)
                await session.open()
                first = await session.upload(0, timeout_s=3 * args.timeout)
                cold = "failed" if first is None else f"{first:.2f} s"
                print(f"[{srv.label}] first upload (cold: models load) {cold}", flush=True)
                if srv is servers[0] and args.uploads > 0:
                    await soak(session, srv.pid, args)
                await session.close()
            if args.sessions > 0 and args.rounds > 0:
                await latency(browser, servers, args)
            for srv in servers:
                print(f"[{srv.label}] RSS at the end: {rss_mb(srv.pid):.0f} MB", flush=True)
        finally:
            await browser.close()


def serve(cache: Path, log: Path, env: dict[str, str], repo: Path) -> tuple[subprocess.Popen, str]:
    """``streamlit run app.py -- --cache DIR`` of this checkout (tests/browser/support.py's
    server) or of another one (``repo``, run with this interpreter); ``(process, url)``."""
    if repo == REPO:
        return start_server(cache, log, extra_env=env)
    port = free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port),
           "--browser.gatherUsageStats", "false", "--", "--cache", str(cache)]  # fmt: skip
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    full.pop("CITYVIZ_CACHE", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=repo, stdout=out, stderr=subprocess.STDOUT, env=full)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log, START_TIMEOUT_S)
    except Exception:
        stop_server(proc)
        raise
    return proc, url


def parse_env(items: list[str]) -> dict[str, str]:
    """``["KEY=VALUE", …]`` → dict; ValueError naming the item without ``=``."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--compare-env wants KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=None,
                    help=f"a built cache (default {DEFAULT_CACHE.relative_to(REPO)}, else a "
                    "small fake cache)")  # fmt: skip
    ap.add_argument("--uploads", type=int, default=200, help="uploads in a row (0: no soak)")
    ap.add_argument("--every", type=int, default=25, help="print RSS every N uploads")
    ap.add_argument("--alone", type=int, default=5, help="uploads of one session alone per round")
    ap.add_argument("--sessions", type=int, default=8, help="sessions uploading at once")
    ap.add_argument("--rounds", type=int, default=3, help="repeats of the concurrent phase")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S,
                    help="seconds one upload may take before it counts as failed")  # fmt: skip
    ap.add_argument("--compare-env", action="append", default=[], metavar="KEY=VALUE",
                    help="also serve with this environment and alternate the rounds")  # fmt: skip
    ap.add_argument("--compare-repo", type=Path, default=None, metavar="DIR",
                    help="also serve the app of another checkout (e.g. a `git worktree` of an "
                    "older commit) with this .venv, and alternate the rounds")  # fmt: skip
    args = ap.parse_args(argv)
    try:
        compare = parse_env(args.compare_env)
    except ValueError as exc:
        ap.error(str(exc))
    if compare and args.compare_repo is not None:
        ap.error("give --compare-env or --compare-repo, not both")
    if args.compare_repo is not None and not (args.compare_repo / "app.py").is_file():
        ap.error(f"--compare-repo {args.compare_repo} has no app.py")
    if args.every < 1 or args.timeout <= 0 or min(args.uploads, args.alone, args.sessions) < 0:
        ap.error("--every and --timeout must be positive, the counts not negative")
    if not CHROMIUM.exists():
        sys.exit(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium).")
    procs = []
    with tempfile.TemporaryDirectory(prefix="cityviz-soak-") as tmp:
        try:
            cache = args.cache or DEFAULT_CACHE
            if not (cache / "manifest.json").exists():
                if args.cache is not None:
                    sys.exit(f"No cityviz cache at {cache} (no manifest.json).")
                from cityviz.fake_cache import make_fake_cache

                cache = make_fake_cache(Path(tmp) / "cache", n_images=400, archs=("simple",
                                        "resnet18"), image_size=64, pool_size=64)  # fmt: skip
                print(f"built a fake cache at {cache}")
            print(f"cache {cache}; {load()}", flush=True)
            servers = []
            variants = [("default", {}, REPO)]
            if compare:
                variants.append((" ".join(args.compare_env), compare, REPO))
            if args.compare_repo is not None:
                variants.append((f"repo {args.compare_repo}", {}, args.compare_repo.resolve()))
            for k, (label, env, repo) in enumerate(variants):
                times = Path(tmp) / f"server{k}-times.jsonl"
                env = {**env, TIMING_ENV: str(times)}
                proc, url = serve(cache, Path(tmp) / f"server{k}.log", env, repo)
                procs.append(proc)
                servers.append(Server(label, url, proc.pid, times))
            asyncio.run(run(servers, args))
        except KeyboardInterrupt:
            sys.exit("soak interrupted.")
        except Exception as exc:  # one sentence, never a traceback
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            sys.exit(f"soak stopped: {first}")
        finally:
            for proc in procs:
                stop_server(proc)


if __name__ == "__main__":
    main()
