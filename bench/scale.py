"""Scale-out figures: per-stage images/s of the local and Ray executors, and the embedding route.

1. A synthetic set at 224 px with at least ``--test-images`` test images (the split gives test most
   spots: training is not what is measured) and one ResNet18 trained for one epoch.
2. Rounds, interleaved: a hard-linked copy of that cache reruns ``cams,segment,stats`` with
   ``--executor local`` and then ``--executor ray`` (a local Ray started by the run, as a user's
   would be). Per stage it prints the images/s of the best round and the median, the run's CPU time
   and the load average before each round; the Ray figure includes starting its actors.
3. PCA-50 → t-SNE and UMAP at ``--embed-sizes`` masks (bench.embed's synthetic masks), one fit each.

    python -m bench.scale                              # 2 000 test images, 2 rounds, 100 000 masks
    python -m bench.scale --test-images 500 --rounds 1 --embed-sizes 10000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("cams", "segment", "stats")


def _precompute(args: list[str]) -> tuple[float, float]:
    """Run ``python -m precompute ARGS``; (wall seconds, CPU seconds of it and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "precompute", *args], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - t0, cpu


def _build(base: Path, test_images: int) -> Path:
    views = 4
    spots = -(-test_images // (2 * views * 0.85)) + 4
    cache = base / "cache"
    _precompute([
        "--cache", str(cache), "--data-dir", str(base / "data"), "--no-progress", "-q",
        "--cities", "tokyo-like,pittsburgh-like", "--spots-per-city", str(int(spots)),
        "--image-size", "224", "--archs", "resnet18", "--seeds", "0", "--epochs", "1",
        "--split", "10:5:85", "--segmenter", "annotations", "--stages", "data,train",
    ])  # fmt: skip
    return cache


def _clone(src: Path, dst: Path) -> Path:
    def link(a: str, b: str) -> None:
        os.link(a, b)

    shutil.copytree(src, dst, copy_function=link, ignore=shutil.ignore_patterns(".cityviz.lock"))
    (dst / "manifest.json").unlink()
    shutil.copy2(src / "manifest.json", dst / "manifest.json")
    return dst


def _stage_seconds(cache: Path) -> dict[str, float]:
    stages = json.loads((cache / "manifest.json").read_text())["stages"]
    return {s: float(stages[s]["seconds"]) for s in STAGES}


def executors(base: Path, cache: Path, rounds: int) -> None:
    from cityviz.store import Cache

    n = int(Cache(cache).n_test)
    print(f"\n{n} test images at 224 px, ResNet18 (Grad-CAM), annotation labels, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    for r in range(rounds):
        for name in ("local", "ray"):
            load = os.getloadavg()[0]
            work = _clone(cache, base / f"{name}-{r}")
            wall, cpu = _precompute([
                "--cache", str(work), "--no-progress", "-q", "--force",
                "--stages", ",".join(STAGES), "--executor", name,
            ])  # fmt: skip
            runs[name].append({"load": load, "wall": wall, "cpu": cpu, **_stage_seconds(work)})
            shutil.rmtree(work)
            print(f"  round {r + 1} {name:5s}: " + ", ".join(
                f"{s} {n / runs[name][-1][s]:.1f} img/s" for s in STAGES
            ) + f"  (run {wall:.0f} s wall, {cpu:.0f} s CPU, load {load:.1f})")  # fmt: skip
    print("\n| stage | local img/s best (median) | Ray img/s best (median) | Ray / local (best) |")
    print("|---|---|---|---|")
    for s in STAGES:
        rates = {k: [n / run[s] for run in v] for k, v in runs.items()}
        best = {k: max(v) for k, v in rates.items()}
        print(f"| {s} | {best['local']:.1f} ({statistics.median(rates['local']):.1f}) | "
              f"{best['ray']:.1f} ({statistics.median(rates['ray']):.1f}) | "
              f"{best['ray'] / best['local']:.2f} |")  # fmt: skip


def embeddings(sizes: list[int], executor: str = "local", methods=("tsne", "umap")) -> None:
    """PCA-50 -> t-SNE / UMAP of bench.embed's synthetic masks at each size, with cityviz's
    defaults: above cityviz.embed.SAMPLE_ABOVE masks the map is fitted on a seeded sample of
    SAMPLE_SIZE and the rest placed with the library's transform (issue 12 section 5). Prints
    wall and CPU seconds, the process's peak RSS so far, the load average, and the map's 1-NN
    accuracy of the latent cluster: over random points, and over placed points only."""
    import numpy as np
    from sklearn.neighbors import NearestNeighbors

    from bench.embed import knn_accuracy, synthetic_masks
    from cityviz.embed import MaskEmbedder, masks_to_features

    for n in sizes:
        feats, cluster = [], []
        for start in range(0, n, 50_000):  # in slices: 1 M masks of 32 x 32 float32 are 4 GB
            masks, c = synthetic_masks(min(50_000, n - start), seed=start + 1, layout_seed=0)
            feats.append(masks_to_features(masks))
            cluster.append(c)
            del masks
        X, y = np.concatenate(feats), np.concatenate(cluster)
        del feats
        for method in methods:
            load = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), time.process_time()
            emb = MaskEmbedder(method=method, executor=executor).fit(X)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            xy = emb.embedding_
            acc = knn_accuracy(xy, y)
            placed = np.setdiff1d(np.arange(n), emb.sample_)
            acc_placed = float("nan")
            if len(placed):
                sel = np.random.default_rng(0).choice(placed, min(2000, len(placed)), replace=False)
                _, idx = NearestNeighbors(n_neighbors=2).fit(xy).kneighbors(xy[sel])
                acc_placed = float((y[idx[:, 1]] == y[sel]).mean())
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"embed {method} at {n} masks ({executor}, fitted on {len(emb.sample_)}): "
                  f"{wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {rss:.0f} MB, "
                  f"1-NN {acc:.3f} (placed points {acc_placed:.3f}), load {load:.1f}",
                  flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--embed-sizes", default="100000", help="comma-separated; '' to skip")
    p.add_argument("--skip-executors", action="store_true")
    p.add_argument("--embed-executor", default="local", choices=("local", "ray"))
    p.add_argument("--embed-methods", default="tsne,umap")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cityviz-scale-") as tmp:
        base = Path(tmp)
        if not args.skip_executors:
            t0 = time.perf_counter()
            cache = _build(base, args.test_images)
            print(f"built the cache in {time.perf_counter() - t0:.0f} s")
            executors(base, cache, args.rounds)
    sizes = [int(s) for s in args.embed_sizes.split(",") if s.strip()]
    embeddings(sizes, args.embed_executor, tuple(args.embed_methods.split(",")))


if __name__ == "__main__":
    main()
