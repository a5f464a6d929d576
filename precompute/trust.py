"""The ``trust`` stage: model-side checks of every model's explanations (issue 11, section 2).

Per model (one unit of work, resumable), on the test split, with the cache's CAM method:

* the model-parameter randomisation test and the other-city test (:mod:`cityviz.trust.sanity`),
  and deletion/insertion curves in the mask's and a random order
  (:mod:`cityviz.trust.faithfulness`), on a sample of ``trust_sample`` test images (default
  32, balanced over the cities, seeded). These are the costly checks: the randomisation test
  computes the sample's CAMs once per layer group (about 7–12 groups), and the curves take
  ``4 × (trust_steps + 1)`` forward passes per image;
* object removal (:mod:`cityviz.trust.removal`) per city and object, on at most
  ``trust_removal_max`` test images of the city (default 32) where the object covers at least
  ``min_pixels`` pixels; skipped (an empty table) when the cache has no label maps;
* the verdict (:mod:`cityviz.trust.verdict`).

Each model's results are written under ``parts/trust/`` and the unit is recorded; then all
current models' parts are gathered into ``trust/{mprt,other_city,curves,auc,removal}.parquet``
and ``trust/verdict.json`` (columns: :data:`cityviz.store.REQUIRED_COLUMNS`).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from cityviz.models.archs import normalize
from cityviz.models.checkpoint import load_checkpoint
from cityviz.models.train import predict
from cityviz.store import REQUIRED_COLUMNS, atomic_write_json, save_table
from cityviz.trust import faithfulness, removal, sanity, verdict
from cityviz.trust.bootstrap import bootstrap_mean_ci

TABLES = ("mprt", "other_city", "curves", "auc", "removal")


def sample_rows(city_idx: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """At most ``k`` test rows, balanced over the cities: each city's rows in a seeded random
    order, taken round-robin; returned sorted (int64)."""
    city_idx = np.asarray(city_idx)
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(np.flatnonzero(city_idx == c))) for c in np.unique(city_idx)]
    out: list[int] = []
    while len(out) < k and any(queues):
        for q in queues:
            if q and len(out) < k:
                out.append(int(q.pop(0)))
    return np.sort(np.asarray(out, dtype=np.int64))


def _quartiles(v: np.ndarray) -> tuple[float, float, float]:
    v = np.asarray(v, dtype=np.float64)
    if not np.isfinite(v).any():
        return float("nan"), float("nan"), float("nan")
    lo, med, hi = np.nanpercentile(v, [25, 50, 75])
    return float(med), float(lo), float(hi)


def mprt_frame(res: sanity.MprtResult, model_id: str, method: str) -> pd.DataFrame:
    """``trust/mprt.parquet`` rows of one model: per step the median and quartiles over images."""
    rows = []
    for step, layer in enumerate(res.layers):
        s, s_lo, s_hi = _quartiles(res.spearman[step])
        q, q_lo, q_hi = _quartiles(res.ssim[step])
        rows.append({"model_id": model_id, "method": method, "step": step, "layer": layer,
                     "spearman": s, "spearman_lo": s_lo, "spearman_hi": s_hi, "ssim": q,
                     "ssim_lo": q_lo, "ssim_hi": q_hi,
                     "n_images": int(np.isfinite(res.spearman[step]).sum())})  # fmt: skip
    return pd.DataFrame(rows)


def curve_frames(
    probs: dict[tuple[str, str], np.ndarray],
    fractions: np.ndarray,
    cities: np.ndarray,
    model_id: str,
    method: str,
    n_boot: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``trust/curves.parquet`` and ``trust/auc.parquet`` rows from per-image curves
    ``probs[(curve, order)]`` float [B, K] and the images' city names [B]."""
    curves, aucs = [], []
    for (curve, order), p in probs.items():
        curves.append(pd.DataFrame({"model_id": model_id, "method": method, "curve": curve,
                                    "order": order, "fraction": fractions,
                                    "prob": p.mean(0)}))  # fmt: skip
        per_image = np.atleast_1d(faithfulness.auc(fractions, p))
        for city in ["all", *sorted(set(cities))]:
            sel = per_image if city == "all" else per_image[cities == city]
            lo, hi = bootstrap_mean_ci(sel, n_boot)
            aucs.append({"model_id": model_id, "method": method, "city": city, "curve": curve,
                         "order": order, "auc": float(sel.mean()), "auc_lo": lo, "auc_hi": hi,
                         "n_images": len(sel)})  # fmt: skip
    return pd.concat(curves, ignore_index=True), pd.DataFrame(aucs)


def check_model(
    model: torch.nn.Module,
    arch: str,
    images: np.ndarray,
    explained: np.ndarray,
    truth: np.ndarray,
    cities: list[str],
    *,
    labels: np.ndarray | None,
    class_names: list[str] | None,
    method: str,
    size: int,
    sample: int,
    steps: int,
    removal_max: int,
    min_pixels: float,
    n_boot: int,
    device: torch.device,
    model_id: str,
    probs_before: np.ndarray | None = None,
    precision: str = "fp32",
    tick=lambda: None,
) -> tuple[dict[str, pd.DataFrame], dict]:
    """Every check of one model: its five tables and its verdict (module docstring).

    ``images``: the test images at the model's input size, uint8 [N,P,P,3]; ``explained``: the
    class each cached CAM explains [N]; ``truth``: the true city index [N]; ``labels``: label
    maps [N,S,S] at the cache's size ``size`` (or None); ``probs_before`` [N,C]: the cache's
    predicted probabilities of the test images (predicted again when None); ``precision``: the
    run's resolved precision (:func:`cityviz.models.train.amp_dtype`), so that re-predictions
    match the cache's; ``tick()`` is called after each check.
    """
    rows = sample_rows(truth, sample)
    x = normalize(torch.from_numpy(np.ascontiguousarray(images[rows])).permute(0, 3, 1, 2)
                  .to(device), arch)  # fmt: skip
    target = np.asarray(explained)[rows]
    res = sanity.mprt(model, arch, x, target, method=method, size=size)
    mprt_df = mprt_frame(res, model_id, method)
    tick()
    oc = sanity.other_city(model, arch, x, method=method, size=size)
    ar_lo, ar_hi = bootstrap_mean_ci(oc.ar, n_boot)
    other_df = pd.DataFrame([{"model_id": model_id, "method": method, "ar": float(oc.ar.mean()),
                              "ar_lo": ar_lo, "ar_hi": ar_hi,
                              "spearman": float(np.nanmedian(oc.spearman))
                              if np.isfinite(oc.spearman).any() else float("nan"),
                              "n_images": len(rows)}])  # fmt: skip
    tick()
    # the sample's masks at the input's size, the order in which the curves take pixels
    masks = sanity.cam_masks(model, arch, x, torch.as_tensor(target, device=device), method,
                             int(x.shape[-1]))  # fmt: skip
    probs = {(c, o): faithfulness.curve_probs(model, x, masks, target, curve=c, order=o,
                                              steps=steps)
             for c in faithfulness.CURVES for o in faithfulness.ORDERS}  # fmt: skip
    curves_df, auc_df = curve_frames(probs, faithfulness.fractions_of(steps),
                                     np.asarray(cities, dtype=object)[truth[rows]], model_id,
                                     method, n_boot)  # fmt: skip
    tick()
    if labels is not None and class_names is not None:
        removal_df = removal.removal_table(
            lambda imgs: predict(model, arch, imgs, device, precision=precision), images, labels,
            truth, cities, class_names, min_pixels=min_pixels, max_images=removal_max,
            n_boot=n_boot, model_id=model_id, probs_before=probs_before)  # fmt: skip
    else:
        removal_df = pd.DataFrame(columns=list(removal.COLUMNS))
    tick()
    fr = faithfulness.fractions_of(steps)
    checks = {
        "mprt": verdict.mprt_check(res.spearman, res.head_steps),
        "other_city": verdict.other_city_check(oc.spearman),
        "deletion": verdict.deletion_check(
            faithfulness.auc(fr, probs[("deletion", "mask")]),
            faithfulness.auc(fr, probs[("deletion", "random")]),
            n_boot,
        ),
    }
    tables = {"mprt": mprt_df, "other_city": other_df, "curves": curves_df, "auc": auc_df,
              "removal": removal_df}  # fmt: skip
    return tables, verdict.model_verdict(method, checks)


def _probs(pred: pd.DataFrame) -> np.ndarray | None:
    """One model's ``p0…`` columns of ``predictions.parquet`` (rows in test order) as [N,C]."""
    cols = sorted((c for c in pred.columns if c[:1] == "p" and c[1:].isdigit()),
                  key=lambda c: int(c[1:]))  # fmt: skip
    return pred[cols].to_numpy(np.float64) if cols else None


def _part(store, mid: str, name: str, suffix: str = ".parquet"):
    return store.part_path("trust", f"{mid}-{name}", suffix)


def stage_trust(ctx) -> None:
    """Run :func:`check_model` for every model of the cache (one unit each), then gather."""
    from precompute.stages import _test_delay

    cfg, store = ctx.cfg, ctx.store
    df = ctx.images()
    test_df = df[df["row"] >= 0].sort_values("row")
    truth = test_df["city_idx"].to_numpy()
    cities = [str(c) for c in ctx.dataset.cities]
    has_labels = bool(store.manifest.get("segmenter")) and store.path("labels.npy").exists()
    labels = store.load_array("labels.npy") if has_labels else None
    class_names = store.read_json("classes.json") if has_labels else None
    preds = store.read_table("predictions.parquet")
    models = ctx.models()
    bar = ctx.bar(4 * len(models), "trust", unit="check")
    for m in models:
        mid = m["model_id"]
        parts = [_part(store, mid, t) for t in TABLES] + [_part(store, mid, "verdict", ".json")]
        if ctx.done("trust", mid) and all(p.exists() for p in parts):
            bar.update(4)
            continue
        model, meta = load_checkpoint(store.path(m["checkpoint"]), ctx.device)
        p = preds[preds["model_id"] == mid].sort_values("row")
        explained = p["explained"].to_numpy() if "explained" in p else p["pred"].to_numpy()
        tables, result = check_model(
            model, meta["arch"], ctx.inputs("test", int(meta["input_size"])), explained, truth,
            cities, labels=labels, class_names=class_names, method=cfg.cam_method,
            size=ctx.size, sample=max(1, cfg.trust_sample), steps=max(1, cfg.trust_steps),
            removal_max=max(1, cfg.trust_removal_max), min_pixels=cfg.min_pixels,
            n_boot=cfg.bootstrap, device=ctx.device, model_id=mid, probs_before=_probs(p),
            precision=cfg.precision, tick=lambda: bar.update(1))  # fmt: skip
        for name, table in tables.items():
            save_table(_part(store, mid, name), table)
        atomic_write_json(_part(store, mid, "verdict", ".json"), result)
        ctx.mark("trust", mid)
        _test_delay()
    bar.close()
    mids = [m["model_id"] for m in models]
    for name in TABLES:
        frames = [pd.read_parquet(_part(store, mid, name)) for mid in mids]
        frames = [f for f in frames if len(f)]
        cols = list(REQUIRED_COLUMNS[f"trust/{name}.parquet"])
        table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
        store.save_table(f"trust/{name}.parquet", table)
    verdicts = {mid: json.loads(_part(store, mid, "verdict", ".json").read_text()) for mid in mids}
    store.save_json("trust/verdict.json", verdicts)
