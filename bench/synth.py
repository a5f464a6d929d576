"""Synthetic data set throughput: images per second for generate() (render + PNG + manifest),
single process, at 224 and 96 px; render-only figures alongside for reference.

    .venv/bin/python bench/synth.py [--spots 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cityviz.data import synth


def _best_of(repeat: int, fn) -> tuple[float, float]:
    """Best (wall seconds, CPU seconds of this process) over ``repeat`` runs.

    CPU time is reported too because the machines are shared: under load the wall-clock rate
    says more about the neighbours than about the code.
    """
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - w0, time.process_time() - c0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spots", type=int, default=50, help="spots per city (4 views each)")
    ap.add_argument("--repeat", type=int, default=3, help="report the best of this many runs")
    args = ap.parse_args()
    synth._noise_bank()  # one-off per process; not part of the steady-state rate
    for size in (224, 96):
        cfg = synth.SynthConfig(spots_per_city=args.spots, size=size)
        n = len(cfg.cities) * cfg.spots_per_city * cfg.views_per_spot
        tmp = Path(tempfile.mkdtemp(prefix="cityviz-bench-"))

        def run(tmp: Path = tmp, cfg: synth.SynthConfig = cfg) -> None:
            shutil.rmtree(tmp / "out", ignore_errors=True)
            synth.generate(tmp / "out", cfg)

        def render(cfg: synth.SynthConfig = cfg) -> None:
            for city in cfg.cities:
                for spot in range(cfg.spots_per_city):
                    pano = synth._render_spot(cfg, city, spot)
                    for view in range(cfg.views_per_spot):
                        synth._finish_view(cfg, city, spot, view, pano)

        try:
            (gen_wall, gen_cpu) = _best_of(args.repeat, run)
            mb = sum(p.stat().st_size for p in (tmp / "out").rglob("*") if p.is_file()) / 1e6
            (ren_wall, ren_cpu) = _best_of(args.repeat, render)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"{size:4d} px  generate(): {n / gen_wall:6.1f} images/s wall, "
              f"{n / gen_cpu:6.1f} per CPU-second ({n} images, {mb:.1f} MB on disk);  "
              f"render only: {n / ren_wall:6.1f} wall, {n / ren_cpu:6.1f} per CPU-second")


if __name__ == "__main__":
    main()
