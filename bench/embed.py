"""Time the mask maps: PCA-50 -> t-SNE (openTSNE) and PCA-50 -> UMAP at several sizes.

The data are realistic mask features: 32x32 normalised masks made of one to three gaussian
blobs whose positions and widths depend on a latent cluster (as Grad-CAM masks of one city and
one discriminative object look alike), plus jitter and noise. Each fit includes the PCA. A small
warm-up fit runs first so that one-off costs (imports, numba compilation in umap-learn) are
reported separately and not charged to the first size.

The settings per method run interleaved, round after round, so that a change in machine load
hits them alike: "old" (cityviz's settings before issue 10 goal 7: randomized PCA, openTSNE
125 + 250 iterations, UMAP with a spectral initialisation and 200 epochs), "new" (cityviz's
defaults: :data:`cityviz.embed.TSNE_DEFAULTS`, :data:`cityviz.embed.UMAP_DEFAULTS`) and, for
UMAP only, "unseeded" (the new settings without a seed: umap-learn's parallel layout). Per
method, size and setting it prints the best and median wall
time, the best CPU time, the 1-NN accuracy of the latent cluster in the 2-D map, and the largest
coordinate difference between rounds (same seed: 0 means reproducible).

    python -m bench.embed                      # 5k, 10k and 30k points, 2 rounds
    python -m bench.embed --sizes 30000 --rounds 3 --methods tsne --settings new
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from cityviz.embed import MaskEmbedder, masks_to_features


def synthetic_masks(
    n: int, n_clusters: int = 12, size: int = 32, seed: int = 0, layout_seed: int | None = None
):
    """``(masks [n, size, size] float32, cluster [n])`` with cluster-dependent blob layouts.

    The clusters' layouts are drawn from ``layout_seed`` when given (so that slices made with
    different ``seed`` share one set of clusters), else from ``seed`` like everything else."""
    rng = np.random.default_rng(seed)
    layout = rng if layout_seed is None else np.random.default_rng(layout_seed)
    n_blobs = layout.integers(1, 4, n_clusters)
    centres = layout.uniform(0.15, 0.85, (n_clusters, 3, 2)) * size
    widths = layout.uniform(0.06, 0.18, (n_clusters, 3)) * size
    cluster = rng.integers(0, n_clusters, n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    masks = np.zeros((n, size, size), dtype=np.float32)
    for b in range(3):
        on = (b < n_blobs[cluster]).astype(np.float32)
        cy = centres[cluster, b, 0] + rng.normal(0, 0.04 * size, n)
        cx = centres[cluster, b, 1] + rng.normal(0, 0.04 * size, n)
        sigma = widths[cluster, b] * rng.uniform(0.8, 1.25, n)
        weight = on * rng.uniform(0.5, 1.0, n)
        d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
        masks += (weight[:, None, None] * np.exp(-d2 / (2 * sigma[:, None, None] ** 2))).astype(
            np.float32
        )
    masks += 0.05 * rng.random(masks.shape, dtype=np.float32)
    lo = masks.min(axis=(1, 2), keepdims=True)
    hi = masks.max(axis=(1, 2), keepdims=True)
    return (masks - lo) / (hi - lo), cluster


def knn_accuracy(xy: np.ndarray, y: np.ndarray, n_eval: int = 2000, seed: int = 0) -> float:
    """Leave-one-out 1-NN accuracy of the latent cluster in 2-D, on a random subset of points."""
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(seed)
    sel = rng.choice(len(xy), min(n_eval, len(xy)), replace=False)
    _, idx = NearestNeighbors(n_neighbors=2).fit(xy).kneighbors(xy[sel])
    return float((y[idx[:, 1]] == y[sel]).mean())


SETTINGS = {
    # cityviz's settings before issue 10 goal 7: randomized PCA; openTSNE 125 + 250 iterations
    # with grid cells one unit wide; UMAP with a spectral initialisation and 200 epochs.
    "old": {
        "tsne": {
            "pca_solver": "randomized",
            "early_exaggeration_iter": 125,
            "n_iter": 250,
            "ints_in_interval": 1,
        },
        "umap": {"pca_solver": "randomized", "init": "spectral", "n_epochs": None},
    },
    "new": {"tsne": {}, "umap": {}},
    # UMAP unseeded: umap-learn's parallel layout, a different map on every run.
    "unseeded": {"umap": {"random_state": None}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 30000])
    parser.add_argument("--methods", nargs="+", default=["tsne", "umap"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n-jobs", type=int, default=-1)
    args = parser.parse_args()

    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()}")
    masks, cluster = synthetic_masks(max(args.sizes))
    features = masks_to_features(masks, res=32)
    del masks
    for method in args.methods:
        for setting in args.settings:
            if method not in SETTINGS[setting]:
                continue
            kwargs = dict(SETTINGS[setting][method])
            start = time.perf_counter()
            MaskEmbedder(method, n_jobs=args.n_jobs, **kwargs).fit(features[:500])
            elapsed = time.perf_counter() - start
            print(f"{method} {setting}: warm-up fit of 500 points (imports, JIT) {elapsed:.1f} s")

    # cpu s = CPU time of this process over all its threads: unlike wall time it does not grow
    # when other work shares the cores (wall >= cpu / cores on an idle machine).
    runs: dict[tuple, list[tuple[float, float, float, np.ndarray]]] = {}
    for r in range(args.rounds):
        for n in args.sizes:
            for method in args.methods:
                for setting in args.settings:
                    if method not in SETTINGS[setting]:
                        continue
                    kwargs = SETTINGS[setting][method]
                    start, cpu = time.perf_counter(), time.process_time()
                    xy = MaskEmbedder(method, n_jobs=args.n_jobs, **kwargs).fit_transform(
                        features[:n]
                    )
                    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
                    acc = knn_accuracy(xy, cluster[:n])
                    load = os.getloadavg()[0]
                    runs.setdefault((method, n, setting), []).append((elapsed, cpu, acc, xy))
                    print(
                        f"round {r}: {method} {n} {setting}: wall {elapsed:.1f} s, cpu {cpu:.1f} s,"
                        f" 1-NN {acc:.3f}, load {load:.1f}",
                        flush=True,
                    )

    print(f"\nload average at the end: {os.getloadavg()}")
    print(
        f"{'method':<6} {'points':>7} {'setting':<7} {'best s':>7} {'median s':>8} "
        f"{'cpu s':>6} {'1-NN acc':>8} {'max |dxy|':>9}"
    )
    for (method, n, setting), rs in runs.items():
        walls = [w for w, _, _, _ in rs]
        cpus = [c for _, c, _, _ in rs]
        accs = [a for _, _, a, _ in rs]
        drift = max(float(np.abs(xy - rs[0][3]).max()) for _, _, _, xy in rs)
        print(
            f"{method:<6} {n:>7} {setting:<7} {min(walls):>7.1f} {np.median(walls):>8.1f} "
            f"{min(cpus):>6.1f} {np.mean(accs):>8.3f} {drift:>9.2g}"
        )


if __name__ == "__main__":
    main()
