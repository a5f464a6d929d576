"""A structurally complete cache with made-up but internally consistent contents.

For dashboard tests and benchmarks: every table and array of the cache format, written through
:class:`cityviz.store.CacheStore`, in seconds instead of a training run. Images are procedural
street scenes (``cityviz.data.synth.render_scene`` when that module exists, else a small built-in
generator) with pixel labels; Grad-CAMs are blobs on each city's planted objects;
histograms, R_p^c, AR and cluster profiles are computed from those with :mod:`cityviz.stats`, and
thumbnails with :mod:`cityviz.thumbs`. Model checkpoints are real (random weights), so the live
page can run them.

Large caches stay cheap because test rows reuse a pool of at most ``pool_size`` distinct images:
row ``r`` shows pool image ``r % pool`` with that image's masks, labels and thumbnails, so all
statistics remain consistent while only the pool is rendered.

``python -m cityviz.fake_cache DIR --n 30000`` writes one from the command line.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import logging
import math
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cityviz import stats
from cityviz.cam import DEFAULT_THRESHOLD, mask_norm
from cityviz.data.ade20k import ADE20K_CLASSES, ADE20K_INDEX
from cityviz.store import (
    THUMB_SIZE,
    THUMBS_PER_ROW,
    THUMBS_PER_SHEET,
    CacheStore,
    atomic_write_bytes,
    predictions_frame,
    save_arrays,
    thumb_sheet_rel,
)
from cityviz.thumbs import render_tiles, sheet_bytes

log = logging.getLogger(__name__)

CAM_RES = 8
EMBED_RES = 32  # RunConfig.embed_res: the feature grid of the stored embedders
# Objects planted in each city (cycled for more cities) and objects every city shares.
PLANTED = (
    ("signboard", "awning"),
    ("tree", "bridge"),
    ("skyscraper", "flag"),
    ("palm", "fence"),
    ("streetlight", "bus"),
)
SHARED = ("car", "person", "pole")
_ACCURACY = {"simple": 0.93, "simpler": 0.9, "vgg11": 0.98, "resnet18": 0.97}
_STAGES = ("data", "train", "cams", "segment", "stats", "embed", "thumbs")


# --------------------------------------------------------------------------- scenes


def _class_colours() -> np.ndarray:
    """A fixed, distinct-ish RGB colour per ADE20K class."""
    rng = np.random.default_rng(12345)
    colours = rng.integers(40, 230, size=(len(ADE20K_CLASSES), 3)).astype(np.int16)
    colours[ADE20K_INDEX["sky"]] = (135, 190, 235)
    colours[ADE20K_INDEX["road"]] = (90, 90, 95)
    colours[ADE20K_INDEX["building"]] = (170, 150, 130)
    colours[ADE20K_INDEX["sidewalk"]] = (185, 180, 170)
    return colours


_COLOURS = _class_colours()


def _rect(
    lab: np.ndarray,
    rng: np.random.Generator,
    cls: int,
    y0: float,
    y1: float,
    hmin: float,
    hmax: float,
    wmin: float,
    wmax: float,
) -> None:
    s = lab.shape[0]
    h = max(2, int(s * rng.uniform(hmin, hmax)))
    w = max(2, int(s * rng.uniform(wmin, wmax)))
    top = int(s * rng.uniform(y0, y1))
    left = int(rng.integers(0, max(1, s - w)))
    lab[top : top + h, left : left + w] = cls


def builtin_scene(
    city_idx: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A crude street scene ``(uint8 [S,S,3], labels uint8 [S,S])``: sky, buildings, sidewalk,
    road, shared objects and the city's two planted objects."""
    s = size
    lab = np.full((s, s), ADE20K_INDEX["building"], dtype=np.uint8)
    block = rng.uniform(0.1, 0.45, size=s // 8 + 1)
    skyline = (np.repeat(block, 8)[:s] * s).astype(int)
    lab[np.arange(s)[:, None] < skyline[None, :]] = ADE20K_INDEX["sky"]
    lab[int(s * 0.72) :, :] = ADE20K_INDEX["sidewalk"]
    lab[int(s * 0.8) :, :] = ADE20K_INDEX["road"]
    planted = PLANTED[city_idx % len(PLANTED)]
    for name in SHARED:
        if rng.random() < 0.7:
            _rect(lab, rng, ADE20K_INDEX[name], 0.6, 0.75, 0.08, 0.2, 0.08, 0.25)
    for name in planted:
        for _ in range(int(rng.integers(1, 3))):
            _rect(lab, rng, ADE20K_INDEX[name], 0.2, 0.6, 0.1, 0.3, 0.1, 0.3)
    noise = rng.normal(0, 12, size=(s, s, 3))
    img = np.clip(_COLOURS[lab] + noise, 0, 255).astype(np.uint8)
    return img, lab


def _scene_renderer(cities: Sequence[str], size: int):
    """``(render(city_idx, spot, rng), planted {city: [objects]})``: the synthetic data set's
    renderer when it knows these cities, else the built-in generator."""
    try:
        from cityviz.data.synth import SynthConfig, discriminative_objects, render_scene

        config = SynthConfig(cities=tuple(cities), size=max(32, size), planted_presence=1.0)
        planted = discriminative_objects(config)
        render_scene(config, cities[0], 0, 0)
    except Exception as exc:  # no synth module, or cities / sizes it does not support
        log.info("fake cache: using the built-in scene generator (%s)", exc)
        planted = {c: list(PLANTED[i % len(PLANTED)]) for i, c in enumerate(cities)}
        return (lambda c, spot, rng: builtin_scene(c, size, rng)), planted

    def render(c: int, spot: int, rng: np.random.Generator):
        img, lab = render_scene(config, cities[c], spot, 0)
        if img.shape[0] != size:
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
            lab = np.asarray(Image.fromarray(lab).resize((size, size), Image.Resampling.NEAREST))
        return img, lab

    return render, planted


# --------------------------------------------------------------------------- CAMs


def blob_cams(
    labels: np.ndarray,
    targets: Sequence[Sequence[int]],
    rng: np.random.Generator,
    sigma: float,
    res: int = CAM_RES,
) -> np.ndarray:
    """Raw CAMs ``float32 [P,res,res]``: a Gaussian blob on a random pixel of the image's target
    objects (a random spot when none is present), jittered, plus a little noise."""
    p, s, _ = labels.shape
    centres = rng.uniform(0.2, 0.8, size=(p, 2))
    ys, xs = np.mgrid[0:s, 0:s] / s
    for i in range(p):
        hit = np.flatnonzero(np.isin(labels[i], targets[i]))
        if len(hit):
            pick = rng.choice(hit)
            centres[i] = ys.flat[pick], xs.flat[pick]
    centres += rng.normal(0, 0.03, size=centres.shape)
    g = (np.arange(res) + 0.5) / res
    dy = (g[None, :] - centres[:, :1]) ** 2
    dx = (g[None, :] - centres[:, 1:]) ** 2
    cams = np.exp(-(dy[:, :, None] + dx[:, None, :]) / (2 * sigma**2))
    cams += rng.uniform(0, 0.05, size=cams.shape)
    return (cams * rng.uniform(0.5, 3.0, size=(p, 1, 1))).astype(np.float32)


# --------------------------------------------------------------------------- tables


def _expand_hist(
    image_row: np.ndarray,
    class_id: np.ndarray,
    counts: np.ndarray,
    pool_of_row: np.ndarray,
    n_pool: int,
) -> tuple[np.ndarray, ...]:
    """Repeat pool histograms for every test row: returns ``(row, class_id, counts)``."""
    n_per = np.bincount(image_row, minlength=n_pool)
    start = np.concatenate([[0], np.cumsum(n_per)[:-1]])
    lengths = n_per[pool_of_row]
    rows = np.repeat(np.arange(len(pool_of_row)), lengths)
    offset = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    entry = np.repeat(start[pool_of_row], lengths) + offset
    return rows, class_id[entry], counts[entry]


def _predictions(
    model_id: str, arch: str, test: pd.DataFrame, n_cities: int, rng: np.random.Generator
) -> pd.DataFrame:
    n = len(test)
    target = test["city_idx"].to_numpy()
    correct = rng.random(n) < _ACCURACY.get(arch, 0.9)
    other = (target + rng.integers(1, n_cities, size=n)) % n_cities if n_cities > 1 else target
    pred = np.where(correct, target, other)
    lo = 1.0 / n_cities
    conf = np.where(correct, lo + (1 - lo) * rng.beta(5, 1.2, n), lo + (1 - lo) * rng.beta(2, 3, n))
    rest = rng.dirichlet(np.ones(max(n_cities - 1, 1)), size=n) * (1 - conf)[:, None]
    probs = np.zeros((n, n_cities))
    probs[np.arange(n), pred] = conf
    others = np.array([[c for c in range(n_cities) if c != p] for p in range(n_cities)])
    if n_cities > 1:
        probs[np.arange(n)[:, None], others[pred]] = rest
    return predictions_frame(model_id, test, target, probs)


def _coordinates(cities: Sequence[str], city_idx: np.ndarray, seed: int):
    """``(lat, lon, district)`` of every image, laid out like the synthetic set's districts
    (:mod:`cityviz.data.synth`): image ``i`` in district ``i % 4`` of its city's patch. Every
    25th image has no coordinates (NaN), as photos without GPS would. Drawn from their own
    random stream, so the rest of the cache does not change."""
    from cityviz.data.synth import DISTRICTS, city_centres, district_points

    n = len(city_idx)
    rng = np.random.default_rng([seed, 13])
    u, v = rng.random(n), rng.random(n)
    district = np.arange(n) % len(DISTRICTS)
    lat, lon = np.full(n, np.nan), np.full(n, np.nan)
    for c, (clat, clon) in enumerate(city_centres(list(cities)).values()):
        sel = city_idx == c
        lat[sel], lon[sel] = district_points((clat, clon), district[sel], u[sel], v[sel])
    unknown = np.arange(n) % 25 == 24
    lat[unknown] = lon[unknown] = np.nan
    return lat, lon, np.asarray(DISTRICTS, dtype=object)[district]


def _map_coords(cluster: np.ndarray, rng: np.random.Generator, spread: float, sd: float):
    k = int(cluster.max()) + 1 if len(cluster) else 1
    angle = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 2 * np.pi)
    radius = spread * rng.uniform(0.4, 1.0, size=k)
    centres = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    xy = centres[cluster] + rng.normal(0, sd, size=(len(cluster), 2))
    return xy.astype(np.float32)


# --------------------------------------------------------------------------- the cache


def make_fake_cache(
    root: str | Path,
    *,
    n_images: int = 400,
    cities: Sequence[str] = ("tokyo-like", "pittsburgh-like"),
    archs: Sequence[str] = ("simple", "resnet18"),
    seeds: Sequence[int] = (0,),
    image_size: int = 64,
    with_models: bool = True,
    with_labels: bool = True,
    with_thumbs: bool = True,
    seed: int = 0,
    test_fraction: float = 0.2,
    pool_size: int = 256,
    progress: bool = False,
    with_trust: bool = True,
) -> Path:
    """Write a fake cache to ``root`` (which must not hold a cache yet) and return its path.

    ``n_images`` counts all splits; ``test_fraction`` of them (at least one per city) form the
    test split that every per-image table covers. ``with_models=False`` skips the checkpoint
    files (the manifest still lists the models); ``with_labels=False`` makes a cache without a
    segmenter (no labels, histograms or R_p^c); ``with_thumbs=False`` skips the sprite sheets;
    ``with_trust=False`` skips the trust checks (``trust/``, ``stats/rpc_null.parquet``,
    ``stats/rpc_contrast.parquet``; see :func:`_save_trust`).
    """
    t0 = time.perf_counter()
    root = Path(root)
    store = CacheStore(root)
    if store.exists():
        raise FileExistsError(f"{root} already holds a cache")
    cities = list(cities)
    n_cities = len(cities)
    if n_images < n_cities or not 0 < test_fraction <= 1:
        raise ValueError("need at least one image per city and 0 < test_fraction <= 1")
    rng = np.random.default_rng(seed)

    # -- images: a pool of distinct scenes, and every image pointing at one of them ------------
    n_pool = min(pool_size, n_images)
    render, planted = _scene_renderer(cities, image_size)
    pool_city = np.arange(n_pool) % n_cities
    pool_img = np.empty((n_pool, image_size, image_size, 3), dtype=np.uint8)
    pool_lab = np.empty((n_pool, image_size, image_size), dtype=np.uint8)
    img_dir = root / "inputs" / "photos"  # inside a folder the cache format owns
    for p in range(n_pool):
        pool_img[p], pool_lab[p] = render(int(pool_city[p]), p // n_cities, rng)

    n_test = min(n_images, max(n_cities, round(n_images * test_fraction)))
    n_val = (n_images - n_test) // 4
    idx = np.arange(n_images)
    pool_of = idx % n_pool
    split = np.where(idx < n_test, "test", np.where(idx < n_test + n_val, "val", "train"))
    city_idx = pool_city[pool_of]
    images = pd.DataFrame(
        {
            "image_id": [f"{cities[c]}/{i:06d}" for c, i in zip(city_idx, idx, strict=True)],
            "path": [str((img_dir / f"pool_{p:04d}.png").resolve()) for p in pool_of],
            "city": np.asarray(cities, dtype=object)[city_idx],
            "city_idx": city_idx.astype(np.int64),
            "spot": idx.astype(np.int64),
            "split": split,
            "row": np.where(idx < n_test, idx, -1).astype(np.int64),
        }
    )
    images["lat"], images["lon"], images["district"] = _coordinates(cities, city_idx, seed)
    test = images[images["row"] >= 0].reset_index(drop=True)
    test_pool = pool_of[:n_test]
    split_counts = {
        c: {
            s: int(((images["city"] == c) & (images["split"] == s)).sum())
            for s in ("train", "val", "test")
        }
        for c in cities
    }
    fingerprint = hashlib.sha1(f"fake|{n_images}|{cities}|{seed}".encode()).hexdigest()[:16]
    dataset = {
        "source": "fake cache (cityviz.fake_cache)",
        "kind": "synthetic",
        "fingerprint": fingerprint,
        "n_images": n_images,
        "cities": cities,
        "discriminative": planted,
        "split_counts": split_counts,
    }
    store.init(_config(image_size, archs, seeds), dataset)
    img_dir.mkdir(parents=True, exist_ok=True)
    for p in range(n_pool):
        Image.fromarray(pool_img[p]).save(img_dir / f"pool_{p:04d}.png")
    store.save_table("images.parquet", images)

    class_names = list(ADE20K_CLASSES)
    if with_labels:
        store.save_array("labels.npy", pool_lab[test_pool])
        store.save_json("classes.json", class_names)
    city_of = test.set_index("image_id")["city"]
    n_images_of = test["city"].value_counts()

    # -- models ---------------------------------------------------------------------------------
    models, preds, masks_of, hists, rpcs = [], [], {}, {}, []
    thumb_kinds: dict[str, np.ndarray] = {}
    if with_thumbs:
        thumb_kinds["orig"] = render_tiles(pool_img, None, "orig")
    targets = [[ADE20K_INDEX[o] for o in planted[cities[c]]] for c in pool_city]
    combos = list(itertools.product(archs, seeds))
    for arch, s in _progress(combos, progress, "models"):
        model_id = f"{arch}_s{s}"
        mrng = np.random.default_rng([seed, s, zlib_hash(arch)])
        sigma = {"resnet18": 0.2, "vgg11": 0.15}.get(arch, 0.17)
        cams_pool = blob_cams(pool_lab, targets, mrng, sigma)
        store.save_array(f"cams/{model_id}.npy", cams_pool[test_pool])
        masks = mask_norm(cams_pool, image_size)
        masks_of[model_id] = masks
        pred = _predictions(model_id, arch, test, n_cities, mrng)
        preds.append(pred)
        acc = float(pred["correct"].mean())
        models.append(_model_entry(store, arch, s, model_id, cities, image_size, acc, with_models))

        dominant = pd.Series([None] * n_test, dtype=object)
        if with_labels:
            prow, pcls, pcounts = stats.object_histograms(masks, pool_lab, len(class_names))
            rows, cls, counts = _expand_hist(prow, pcls, pcounts, test_pool, n_pool)
            hist = stats.hist_frame(test["image_id"].to_numpy(), rows, cls, counts)
            store.save_table(f"hist/{model_id}.parquet", hist)
            hists[model_id] = hist
            dom = stats.dominant_object(hist, DEFAULT_THRESHOLD, class_names)
            dominant = test["image_id"].map(dom).astype(object)
            rpc = stats.rpc_table(
                hist, city_of, DEFAULT_THRESHOLD, class_names, n_images_of=n_images_of
            )
            ci = stats.rpc_bootstrap(hist, city_of, DEFAULT_THRESHOLD, n_boot=100, seed=s)
            rpc = rpc.merge(ci, on=["city", "class_id"], how="left")
            rpc.insert(0, "model_id", model_id)
            rpcs.append(rpc)
        emb = _embedding(test, pred, dominant, hists.get(model_id), class_names, mrng)
        store.save_table(f"embed/{model_id}.parquet", emb)
        _save_embedders(store, model_id, masks, test_pool, emb, EMBED_RES)
        if with_thumbs:
            thumb_kinds[f"{model_id}/overlay"] = render_tiles(pool_img, masks, "overlay")
            thumb_kinds[f"{model_id}/expl"] = render_tiles(pool_img, masks, "expl")

    store.save_table("predictions.parquet", pd.concat(preds, ignore_index=True))
    if rpcs:
        store.save_table("stats/rpc.parquet", pd.concat(rpcs, ignore_index=True))
    if with_trust:
        _save_trust(store, models, preds, hists, test, class_names, planted, seed)
    _save_ar(store, models, masks_of, test, test_pool)

    # -- thumbnails -----------------------------------------------------------------------------
    n_sheets = math.ceil(n_test / THUMBS_PER_SHEET)
    if with_thumbs:
        for kind, tiles in _progress(list(thumb_kinds.items()), progress, "thumbs"):
            _write_sheets(store, kind, tiles, n_test, n_pool)
        store.update(
            thumbs={
                "size": THUMB_SIZE,
                "per_row": THUMBS_PER_ROW,
                "kinds": list(thumb_kinds),
                "n_sheets": n_sheets,
                "threshold": DEFAULT_THRESHOLD,
            }
        )

    segmenter = (
        {"spec": "annotations", "name": "synthetic annotations", "n_classes": len(class_names)}
        if with_labels
        else None
    )
    store.update(models=models, segmenter=segmenter)
    elapsed = time.perf_counter() - t0
    for name in _STAGES:
        if (name == "segment" and not with_labels) or (name == "thumbs" and not with_thumbs):
            continue
        store.finish_stage(name, elapsed / len(_STAGES))
    if with_trust:
        store.finish_stage("trust", 0.0)
    return root


def zlib_hash(text: str) -> int:
    return zlib.crc32(text.encode())


def _config(image_size: int, archs: Sequence[str], seeds: Sequence[int]) -> dict:
    try:
        from cityviz.config import RunConfig

        return RunConfig(image_size=image_size, archs=tuple(archs), seeds=tuple(seeds)).to_dict()
    except ImportError:
        return {
            "image_size": image_size,
            "threshold": DEFAULT_THRESHOLD,
            "n_bins": stats.N_BINS,
            "min_pixels": 100.0,
            "cam_method": "gradcam",
            "embed_methods": ["tsne", "umap"],
            "archs": list(archs),
            "seeds": list(seeds),
        }


def _model_entry(
    store: CacheStore,
    arch: str,
    seed: int,
    model_id: str,
    cities: list[str],
    image_size: int,
    acc: float,
    write: bool,
) -> dict:
    from cityviz.models.archs import get_arch

    spec = get_arch(arch)
    entry = {
        "model_id": model_id,
        "arch": arch,
        "seed": seed,
        "display": f"{spec.display} · seed {seed}",
        "input_size": image_size,
        "test_accuracy": round(acc, 4),
        "val_accuracy": round(min(1.0, acc + 0.01), 4),
        "train_accuracy": round(min(1.0, acc + 0.03), 4),
        "checkpoint": f"models/{model_id}",
    }
    if write:
        import torch

        from cityviz.models.archs import build_model
        from cityviz.models.checkpoint import save_checkpoint

        torch.manual_seed(seed)
        model = build_model(arch, len(cities))
        meta = {
            "arch": arch,
            "classes": cities,
            "input_size": image_size,
            "model_id": model_id,
            "seed": seed,
            "test_accuracy": entry["test_accuracy"],
        }
        save_checkpoint(store.root / entry["checkpoint"], model, meta)
    return entry


def _embedding(
    test: pd.DataFrame,
    pred: pd.DataFrame,
    dominant: pd.Series,
    hist: pd.DataFrame | None,
    class_names: list[str],
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Clustered 2-D blobs: one blob per (true city, dominant object) group."""
    key = test["city"].astype(str) + "|" + dominant.fillna("—").astype(str)
    if hist is None:
        key = test["city"].astype(str) + "|" + pred["correct"].astype(str)
    cluster, _ = pd.factorize(key, sort=True)
    cluster = cluster.astype(np.int64)
    tsne = _map_coords(cluster, rng, 40.0, 4.0)
    umap = _map_coords(cluster, rng, 8.0, 0.7)
    if hist is not None:
        cluster_of = pd.Series(cluster, index=test["image_id"].to_numpy())
        prof = stats.cluster_profiles(hist, cluster_of, DEFAULT_THRESHOLD, class_names, top=2)
        label_of = dict(zip(prof["cluster"], prof["label"], strict=True))
    else:
        label_of = {}
    return pd.DataFrame(
        {
            "image_id": test["image_id"].to_numpy(),
            "row": test["row"].to_numpy(),
            "tsne_x": tsne[:, 0],
            "tsne_y": tsne[:, 1],
            "umap_x": umap[:, 0],
            "umap_y": umap[:, 1],
            "cluster": cluster,
            "cluster_label": [label_of.get(c, f"cluster {c}") for c in cluster],
            "dominant": dominant.to_numpy(),
        }
    )


def _save_embedders(
    store: CacheStore,
    model_id: str,
    masks: np.ndarray,
    test_pool: np.ndarray,
    emb: pd.DataFrame,
    res: int,
) -> None:
    """Embedder states whose fitted points are the map's points (PCA fitted on the pool)."""
    from cityviz.embed import MaskEmbedder, masks_to_features

    feats = masks_to_features(masks, res=res).astype(np.float64)
    mean = feats.mean(axis=0)
    _, _, vt = np.linalg.svd(feats - mean, full_matrices=False)
    emb_state = MaskEmbedder(method="pca", n_pca=min(20, len(vt)))
    emb_state.pca_mean_ = mean
    emb_state.pca_components_ = vt[: emb_state.n_pca]
    fit_pca = emb_state._project(feats)[test_pool]
    for method in ("tsne", "umap"):
        emb_state.method = method
        emb_state.fit_pca_ = fit_pca
        emb_state.embedding_ = emb[[f"{method}_x", f"{method}_y"]].to_numpy(np.float32)
        save_arrays(store.path(f"embed/{model_id}_{method}.npz"), **emb_state.state_dict())


def _save_ar(
    store: CacheStore,
    models: list[dict],
    masks_of: dict[str, np.ndarray],
    test: pd.DataFrame,
    test_pool: np.ndarray,
) -> None:
    frames = []
    for a, b in itertools.combinations([m["model_id"] for m in models], 2):
        ar_pool = stats.average_residual(masks_of[a], masks_of[b])
        frames.append(
            pd.DataFrame(
                {
                    "model_a": a,
                    "model_b": b,
                    "image_id": test["image_id"].to_numpy(),
                    "ar": ar_pool[test_pool],
                }
            )
        )
    cols = ["model_a", "model_b", "image_id", "ar"]
    ar = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    store.save_table("stats/ar.parquet", ar)
    arch_of = {m["model_id"]: m["arch"] for m in models}
    if frames:
        store.save_table("stats/ar_summary.parquet", stats.ar_summary(ar, arch_of, n_boot=200))
        verdict = stats.arch_vs_seed(ar, arch_of, n_boot=200)
    else:
        store.save_table(
            "stats/ar_summary.parquet",
            pd.DataFrame(
                columns=[
                    "model_a",
                    "model_b",
                    "arch_a",
                    "arch_b",
                    "kind",
                    "mean_ar",
                    "ci_lo",
                    "ci_hi",
                    "n_images",
                ]
            ),
        )
        verdict = {
            "mean_arch": math.nan,
            "mean_seed": math.nan,
            "diff": math.nan,
            "ci_lo": math.nan,
            "ci_hi": math.nan,
            "ci": 0.95,
            "n_images": 0,
            "n_arch_pairs": 0,
            "n_seed_pairs": 0,
            "claim_holds": None,
        }
    store.save_json("stats/arch_vs_seed.json", verdict)


# --------------------------------------------------------------------------- trust checks

TRUST_THRESHOLDS = (0.25, 0.5, 0.75)
"""Thresholds at which the fake cache writes the permutation null and the city contrast."""
_MPRT_LAYERS = ("logits", "block 4", "block 3", "block 2", "block 1")
_FRACTIONS = np.linspace(0.0, 1.0, 21)


def _save_trust(
    store: CacheStore,
    models: list[dict],
    preds: list[pd.DataFrame],
    hists: dict[str, pd.DataFrame],
    test: pd.DataFrame,
    class_names: list[str],
    planted: dict[str, list[str]],
    seed: int,
) -> None:
    """Made-up, internally consistent trust tables (the table contract of issue 11).

    ``trust/{mprt,other_city,curves,auc,removal}.parquet`` and ``trust/verdict.json`` for every
    model with the config's CAM method, and, when the cache has histograms,
    ``stats/rpc_null.parquet`` and ``stats/rpc_contrast.parquet`` at :data:`TRUST_THRESHOLDS`.
    The null is the city's average explained rate with a binomial-width interval and the
    contrast a normal approximation: shapes and columns as the real stages write them, values
    chosen so planted objects come out above the null and causal, shared ones mostly not. The
    second model's other-city masks are made near-identical, so its verdict is "warn".
    """
    method = str(store.manifest["config"].get("cam_method", "gradcam"))
    cities = [str(c) for c in store.manifest["dataset"]["cities"]]
    n_cities = len(cities)
    pred_of = {str(p["model_id"].iloc[0]): p for p in preds}
    mprt, other, curves, aucs, removal, verdict = [], [], [], [], [], {}
    for i, entry in enumerate(models):
        model_id = entry["model_id"]
        rng = np.random.default_rng([seed, i, 7])
        n_test = len(test)
        # model-parameter randomisation: similarity falls to about zero once the head is random
        decay = np.r_[1.0, np.exp(-np.arange(1, len(_MPRT_LAYERS)) * rng.uniform(1.2, 2.0))]
        for step, layer in enumerate(_MPRT_LAYERS):
            sp = float(np.clip(decay[step] * 0.9 + rng.normal(0, 0.02), -0.1, 1.0))
            ss = float(np.clip(decay[step] * 0.8 + 0.05 + rng.normal(0, 0.02), 0.0, 1.0))
            mprt.append((model_id, method, step, layer, sp, sp - 0.06, sp + 0.06,
                         ss, ss - 0.05, ss + 0.05, n_test))  # fmt: skip
        ar = 0.02 if i == 1 else float(rng.uniform(0.2, 0.35))
        other.append((model_id, method, ar, ar * 0.8, ar * 1.2, 1 - 2 * ar, n_test))
        # deletion / insertion curves of the predicted city's probability
        pred = pred_of[model_id]
        p0, chance = float(pred["confidence"].mean()), 1.0 / max(n_cities, 1)
        rate = rng.uniform(5.0, 9.0)
        f = _FRACTIONS
        shapes = {
            ("deletion", "mask"): chance + (p0 - chance) * np.exp(-rate * f),
            ("deletion", "random"): chance + (p0 - chance) * (1 - f) ** 0.6,
            ("insertion", "mask"): chance + (p0 - chance) * (1 - np.exp(-rate * f)),
            ("insertion", "random"): chance + (p0 - chance) * f**1.6,
        }
        for (curve, order), prob in shapes.items():
            curves += [(model_id, method, curve, order, float(x), float(y))
                       for x, y in zip(f, prob, strict=True)]  # fmt: skip
            auc = float(np.trapezoid(prob, f))
            for city in ["all", *cities]:
                a = auc if city == "all" else float(np.clip(auc + rng.normal(0, 0.02), 0, 1))
                n = n_test if city == "all" else int((test["city"] == city).sum())
                aucs.append((model_id, method, city, curve, order, a, a - 0.03, a + 0.03, n))
        deletion = {o: np.trapezoid(shapes[("deletion", o)], f) for o in ("mask", "random")}
        checks = {
            "mprt": {"passed": bool(decay[1] < 0.4), "value": round(float(decay[1] * 0.9), 3),
                     "rule": "Spearman rank correlation below 0.4 once the logits layer is "
                             "randomised"},
            "other_city": {"passed": ar >= 0.1, "value": round(ar, 3),
                           "rule": "AR between the predicted city's mask and another city's "
                                   "mask at least 0.1"},
            "deletion": {"passed": bool(deletion["mask"] < deletion["random"]),
                         "value": round(float(deletion["mask"] - deletion["random"]), 3),
                         "rule": "deletion AUC in mask order below the AUC in random order"},
        }  # fmt: skip
        failed = [k for k, c in checks.items() if not c["passed"]]
        word = "pass" if not failed else "warn" if failed == ["other_city"] else "fail"
        words = {"mprt": "the randomisation test", "other_city": "the other-city test",
                 "deletion": "the deletion test"}  # fmt: skip
        sentence = (
            "Its explanations depend on the weights, on the city explained and on the pixels "
            "that change the prediction."
            if not failed
            else f"Not passed: {' and '.join(words[k] for k in failed)}; read its findings "
            "with care."
        )
        verdict[model_id] = {"method": method, "verdict": word, "sentence": sentence,
                             "checks": checks}  # fmt: skip
        # object removal, per city and object present in its test images
        hist = hists.get(model_id)
        if hist is None:
            continue
        city_rows = pred.merge(test[["image_id", "city"]], on="image_id")
        pixels = hist.groupby(["class_id", "image_id"], as_index=False)["n_pixels"].sum()
        pixels = pixels.merge(test[["image_id", "city"]], on="image_id")
        area = pixels.groupby(["city", "class_id"])["n_pixels"].agg(["sum", "count"])
        size2 = float(store.manifest["config"]["image_size"]) ** 2
        for (city, class_id), row in area.iterrows():
            if row["count"] < 2:
                continue
            obj = class_names[int(class_id)]
            mine = city_rows[city_rows["city"] == city]
            acc0 = float(mine["correct"].mean())
            prob0 = float(mine["confidence"].mean())
            strong = obj in (planted.get(city) or ())
            keep = rng.uniform(0.05, 0.35) if strong else rng.uniform(0.96, 1.0)
            acc1, acc_r = acc0 * keep, acc0 * rng.uniform(0.96, 1.0)
            prob1, prob_r = prob0 * keep, prob0 * rng.uniform(0.96, 1.0)
            drop, drop_r = acc0 - acc1, acc0 - acc_r
            removal.append((model_id, city, obj, int(class_id), int(row["count"]),
                            float(row["sum"] / row["count"] / size2), acc0, acc1, acc_r,
                            prob0, prob1, prob_r, drop, drop_r, drop - drop_r - 0.05,
                            drop - drop_r + 0.05, bool(drop - drop_r - 0.05 > 0)))  # fmt: skip
    _table = store.save_table
    _table("trust/mprt.parquet", pd.DataFrame(mprt, columns=[
        "model_id", "method", "step", "layer", "spearman", "spearman_lo", "spearman_hi",
        "ssim", "ssim_lo", "ssim_hi", "n_images"]))  # fmt: skip
    _table("trust/other_city.parquet", pd.DataFrame(other, columns=[
        "model_id", "method", "ar", "ar_lo", "ar_hi", "spearman", "n_images"]))  # fmt: skip
    _table("trust/curves.parquet", pd.DataFrame(curves, columns=[
        "model_id", "method", "curve", "order", "fraction", "prob"]))  # fmt: skip
    _table("trust/auc.parquet", pd.DataFrame(aucs, columns=[
        "model_id", "method", "city", "curve", "order", "auc", "auc_lo", "auc_hi",
        "n_images"]))  # fmt: skip
    _table("trust/removal.parquet", pd.DataFrame(removal, columns=[
        "model_id", "city", "object", "class_id", "n_images", "area", "acc_before", "acc_after",
        "acc_random", "prob_before", "prob_after", "prob_random", "drop", "drop_random",
        "drop_lo", "drop_hi", "causal"]))  # fmt: skip
    store.save_json("trust/verdict.json", verdict)
    if hists:
        null, contrast = _fake_rpc_null(hists, test, class_names)
        _table("stats/rpc_null.parquet", null)
        _table("stats/rpc_contrast.parquet", contrast)


def _normal_sf(z: np.ndarray) -> np.ndarray:
    """Upper tail of the standard normal distribution."""
    return 0.5 * np.vectorize(math.erfc)(np.asarray(z, dtype=float) / math.sqrt(2))


def _fake_rpc_null(
    hists: dict[str, pd.DataFrame], test: pd.DataFrame, class_names: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rpc_null, rpc_contrast)`` tables from the models' real R_p^c at
    :data:`TRUST_THRESHOLDS`, with a normal-approximation null (see :func:`_save_trust`)."""
    city_of = test.set_index("image_id")["city"]
    n_images_of = test["city"].value_counts()
    nulls, contrasts = [], []
    for model_id, hist in hists.items():
        for t in TRUST_THRESHOLDS:
            rpc = stats.rpc_table(hist, city_of, t, class_names, n_images_of=n_images_of)
            rpc = rpc[rpc["N"] > 0].copy()
            city_m = rpc.groupby("city")["M"].transform("sum")
            city_n = rpc.groupby("city")["N"].transform("sum")
            mean = (city_m / city_n).to_numpy()
            n_img = rpc["city"].map(n_images_of).to_numpy(dtype=float)
            sd = np.sqrt(mean * (1 - mean) / n_img) + 1e-3
            z = (rpc["rpc"].to_numpy() - mean) / sd
            p = _normal_sf(z)
            n_obj = rpc.groupby("city")["object"].transform("count").to_numpy()
            p_adj = np.minimum(1.0, p * n_obj)  # Bonferroni across each city's objects
            lo, hi = np.clip(mean - 1.96 * sd, 0, 1), np.clip(mean + 1.96 * sd, 0, 1)
            nulls.append(pd.DataFrame({
                "model_id": model_id, "city": rpc["city"].to_numpy(),
                "object": rpc["object"].to_numpy(), "class_id": rpc["class_id"].to_numpy(),
                "threshold": t, "rpc": rpc["rpc"].to_numpy(), "null_mean": mean,
                "null_lo": lo, "null_hi": hi, "p_value": p, "p_adjusted": p_adj,
                "above_null": (rpc["rpc"].to_numpy() > hi) & (p_adj < 0.05),
                "n_images": n_img.astype(np.int64), "n_permutations": 1000,
            }))  # fmt: skip
            wide = rpc.pivot_table(index="class_id", columns="city", values="rpc")
            others = []
            for city, cls in zip(rpc["city"], rpc["class_id"], strict=True):
                rest = wide.loc[cls].drop(labels=[city]).dropna()
                others.append(float(rest.mean()) if len(rest) else 0.0)
            diff = rpc["rpc"].to_numpy() - np.asarray(others)
            dsd = sd * math.sqrt(2)
            pd_ = _normal_sf(diff / dsd)
            pd_adj = np.minimum(1.0, pd_ * n_obj)
            contrasts.append(pd.DataFrame({
                "model_id": model_id, "city": rpc["city"].to_numpy(),
                "object": rpc["object"].to_numpy(), "class_id": rpc["class_id"].to_numpy(),
                "threshold": t, "rpc_city": rpc["rpc"].to_numpy(), "rpc_others": others,
                "difference": diff, "diff_lo": diff - 1.96 * dsd, "diff_hi": diff + 1.96 * dsd,
                "p_value": pd_, "p_adjusted": pd_adj,
                "distinguishes": (diff - 1.96 * dsd > 0) & (pd_adj < 0.05),
            }))  # fmt: skip
    return pd.concat(nulls, ignore_index=True), pd.concat(contrasts, ignore_index=True)


def _write_sheets(store: CacheStore, kind: str, tiles: np.ndarray, n_test: int, n_pool: int):
    """Sheets for rows ``0..n_test-1`` where row r shows pool tile ``r % n_pool``; identical
    sheets (same first pool tile and count) are encoded once."""
    encoded: dict[tuple[int, int], bytes] = {}
    for sheet in range(math.ceil(n_test / THUMBS_PER_SHEET)):
        first = sheet * THUMBS_PER_SHEET
        count = min(THUMBS_PER_SHEET, n_test - first)
        key = (first % n_pool, count)
        if key not in encoded:
            encoded[key] = sheet_bytes(tiles[(first + np.arange(count)) % n_pool])
        atomic_write_bytes(store.path(thumb_sheet_rel(kind, sheet)), encoded[key])


def _progress(items: list, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write a fake cityviz cache (for tests/benchmarks).")
    ap.add_argument("root", type=Path)
    ap.add_argument("--n", type=int, default=400, help="number of images (all splits)")
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--cities", default="tokyo-like,pittsburgh-like")
    ap.add_argument("--archs", default="simple,resnet18")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--no-models", action="store_true")
    ap.add_argument("--no-labels", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    path = make_fake_cache(
        args.root,
        n_images=args.n,
        test_fraction=args.test_fraction,
        cities=args.cities.split(","),
        archs=args.archs.split(","),
        seeds=[int(s) for s in args.seeds.split(",")],
        image_size=args.image_size,
        with_models=not args.no_models,
        with_labels=not args.no_labels,
        seed=args.seed,
        progress=True,
    )
    print(f"fake cache written to {path} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
