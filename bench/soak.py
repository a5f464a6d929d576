"""Soak and concurrency of the Live Grad-CAM page in a real browser on a real server.

    .venv/bin/python -m bench.soak                       # cache/synthetic-demo, else a fake cache
    .venv/bin/python -m bench.soak --cache DIR --uploads 60 --sessions 8 --rounds 3
    .venv/bin/python -m bench.soak --uploads 0 --rounds 3 --compare-env OMP_NUM_THREADS=1

Serves ``streamlit run app.py -- --cache DIR`` on 127.0.0.1 and drives Debian's chromium
(``/usr/bin/chromium``, headless) with Playwright. Photos are varied JPEGs made in memory with
PIL (a street-like scene with a random layout, size and noise: every upload has a new digest, so
no result cache is hit). Figures:

* **soak**: one browser session uploads ``--uploads`` photos in a row; the server's RSS (psutil
  if installed, else ``/proc/<pid>/status`` VmRSS, in MB of 2**20 bytes) after every upload,
  printed before, every ``--every`` uploads and after, with the load average; the growth in MB
  per upload is the least-squares slope of RSS against the upload count over the second half
  (after the caches have filled).
* **latency**: from handing the file to the uploader to the end of the script run it triggers,
  with this photo's results on the page (see :data:`DONE`). One session alone on the warm server
  (median of ``--alone`` uploads), then ``--sessions`` sessions uploading at the same moment:
  per-session latency, p50/p95 and their ratio to one session alone, repeated ``--rounds``
  times, each with the load average. Goal (issue 9): p50 within 3× one session alone. With
  ``--compare-env KEY=VALUE`` a second server with that environment runs beside the first and
  the rounds alternate between the two (A, B, A, B, …), so both see the same machine load.

Every wait is bounded (``--timeout`` seconds per upload): an upload that does not finish is
counted as a failure, what the page showed is printed, the session is reloaded, and the soak
goes on. The browser runs on the same machine as the server, so on few cores it takes CPU from
it: read the concurrent figures with the load average printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import statistics
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

from support import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, start_server, stop_server  # noqa: E402

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
MARK = "(crop) => { window.__from = performance.now(); window.__crop = crop; }"
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

    async def open(self) -> None:
        if self.page is not None:
            await self.close()
        context = await self.browser.new_context(viewport=VIEWPORT)
        self.page = await context.new_page()
        self.page.set_default_timeout(self.timeout_s * 1000)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("requestfailed", lambda r: self.errors.append(
            f"request failed: {r.method} {r.url.split('?')[0]} ({r.failure})"))  # fmt: skip
        self.page.on("response", self._response)
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

    async def upload(self, seed: int, timeout_s: float | None = None) -> float | None:
        """Seconds from handing photo ``seed`` to the uploader to the end of the run it triggers,
        with its results on the page; None (after printing what the page showed and reloading
        the session) when it did not finish within ``timeout_s`` (default: the session's)."""
        timeout_s = timeout_s or self.timeout_s
        data, name = photo(seed), f"photo_{seed}.jpg"
        self.errors.clear()
        t0 = time.perf_counter()
        try:
            await self.page.evaluate(MARK, await self.page.evaluate(CROP))
            t0 = time.perf_counter()
            picker = self.page.locator("[data-testid=stFileUploader] input[type=file]")
            await picker.set_input_files(
                {"name": name, "mimeType": "image/jpeg", "buffer": data}, timeout=timeout_s * 1000
            )
            left = max(1.0, timeout_s - (time.perf_counter() - t0))
            done = await self.page.wait_for_function(
                DONE, arg=name, timeout=left * 1000, polling=50
            )
            self.how[await done.json_value()] += 1
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
        return time.perf_counter() - t0


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


async def concurrent(browser, url: str, args, seed0: int) -> list[float | None]:
    sessions = [Session(browser, url, args.timeout) for _ in range(args.sessions)]
    try:
        await asyncio.gather(*(s.open() for s in sessions))
        return list(await asyncio.gather(*(
            s.upload(seed0 + i) for i, s in enumerate(sessions))))  # fmt: skip
    finally:
        await asyncio.gather(*(s.close() for s in sessions))


async def latency(browser, servers: list[tuple[str, str, int]], args) -> None:
    """One session alone, then all sessions at once, per round, alternating between servers."""
    rows = []
    for rnd in range(args.rounds):
        for k, (label, url, _pid) in enumerate(servers):
            alone_session = Session(browser, url, args.timeout)
            try:
                await alone_session.open()
                seed = 50_000 + 1000 * (rnd * len(servers) + k)
                alone = await single(alone_session, range(seed, seed + args.alone))
            finally:
                await alone_session.close()
            load_alone = os.getloadavg()[0]
            results = await concurrent(browser, url, args, seed + 500)
            ok = sorted(t for t in results if t is not None)
            fails = len(results) - len(ok)
            head = f"round {rnd + 1} [{label}]"
            if not ok or alone is None:
                print(f"{head}: no usable figures ({fails} of {len(results)} concurrent uploads "
                      "failed)", flush=True)  # fmt: skip
                continue
            p50, p95 = pct(ok, 50), pct(ok, 95)
            rows.append((label, alone, p50, p95))
            verdict = "meets" if p50 <= 3 * alone else "misses"
            print(f"{head}: one session alone (warm) median {alone:.2f} s of {args.alone} (load "
                  f"{load_alone:.2f}); {args.sessions} sessions at once: "
                  + ", ".join(f"{t:.2f}" for t in ok) + f" s, {fails} failed; p50 {p50:.2f} s, "
                  f"p95 {p95:.2f} s = {p50 / alone:.1f}x / {p95 / alone:.1f}x one session alone; "
                  f"{verdict} the 3x goal  ({load()})", flush=True)  # fmt: skip
    for label in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == label]
        print(f"latency [{label}] over {len(mine)} rounds: alone median "
              f"{statistics.median(r[1] for r in mine):.2f} s, p50 median "
              f"{statistics.median(r[2] for r in mine):.2f} s, p95 median "
              f"{statistics.median(r[3] for r in mine):.2f} s, p50 ratio median "
              f"{statistics.median(r[2] / r[1] for r in mine):.1f}x", flush=True)  # fmt: skip


async def run(servers: list[tuple[str, str, int]], args) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for label, url, pid in servers:  # models load on each server's first upload
                session = Session(browser, url, args.timeout)
                await session.open()
                first = await session.upload(0, timeout_s=3 * args.timeout)
                cold = "failed" if first is None else f"{first:.2f} s"
                print(f"[{label}] first upload (cold: models load) {cold}", flush=True)
                if label == servers[0][0] and args.uploads > 0:
                    await soak(session, pid, args)
                await session.close()
            if args.sessions > 0 and args.rounds > 0:
                await latency(browser, servers, args)
            for label, _url, pid in servers:
                print(f"[{label}] RSS at the end: {rss_mb(pid):.0f} MB", flush=True)
        finally:
            await browser.close()


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
    args = ap.parse_args(argv)
    try:
        compare = parse_env(args.compare_env)
    except ValueError as exc:
        ap.error(str(exc))
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
            variants = [("default", {})] + ([(" ".join(args.compare_env), compare)] if compare
                                              else [])  # fmt: skip
            for k, (label, env) in enumerate(variants):
                proc, url = start_server(cache, Path(tmp) / f"server{k}.log", extra_env=env)
                procs.append(proc)
                servers.append((label, url, proc.pid))
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
