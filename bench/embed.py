"""Time the mask maps: PCA-50 -> t-SNE (openTSNE) and PCA-50 -> UMAP at several sizes.

The data are realistic mask features: 32x32 normalised masks made of one to three gaussian
blobs whose positions and widths depend on a latent cluster (as Grad-CAM masks of one city and
one discriminative object look alike), plus jitter and noise. Each fit includes the PCA. A small
warm-up fit runs first so that one-off costs (imports, numba compilation in umap-learn) are
reported separately and not charged to the first size.

    python -m bench.embed                      # 5k, 10k and 30k points
    python -m bench.embed --sizes 2000 5000 --methods tsne
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from cityviz.embed import MaskEmbedder, masks_to_features


def synthetic_masks(n: int, n_clusters: int = 12, size: int = 32, seed: int = 0):
    """``(masks [n, size, size] float32, cluster [n])`` with cluster-dependent blob layouts."""
    rng = np.random.default_rng(seed)
    n_blobs = rng.integers(1, 4, n_clusters)
    centres = rng.uniform(0.15, 0.85, (n_clusters, 3, 2)) * size
    widths = rng.uniform(0.06, 0.18, (n_clusters, 3)) * size
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 30000])
    parser.add_argument("--methods", nargs="+", default=["tsne", "umap"])
    parser.add_argument("--n-jobs", type=int, default=-1)
    args = parser.parse_args()

    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    masks, cluster = synthetic_masks(max(args.sizes))
    features = masks_to_features(masks, res=32)
    del masks
    for method in args.methods:
        start = time.perf_counter()
        # umap-learn switches to (separately compiled) NN-descent from 4096 points: warm it too.
        extra = {"force_approximation_algorithm": True} if method == "umap" else {}
        MaskEmbedder(method, n_jobs=args.n_jobs, **extra).fit(features[:500])
        elapsed = time.perf_counter() - start
        print(f"{method}: warm-up fit of 500 points (imports, JIT) {elapsed:.1f} s")

    # cpu s = CPU time of this process over all its threads: unlike wall time it does not grow
    # when other work shares the cores (wall >= cpu / cores on an idle machine).
    print(f"\n{'method':<6} {'points':>7} {'wall s':>8} {'cpu s':>8} {'1-NN acc':>9} {'load':>5}")
    for n in args.sizes:
        for method in args.methods:
            start, cpu = time.perf_counter(), time.process_time()
            xy = MaskEmbedder(method, n_jobs=args.n_jobs).fit_transform(features[:n])
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            acc = knn_accuracy(xy, cluster[:n])
            load = os.getloadavg()[0]
            print(
                f"{method:<6} {n:>7} {elapsed:>8.1f} {cpu:>8.1f} {acc:>9.3f} {load:>5.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
