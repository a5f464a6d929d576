"""Pure logic of the overview page: what the open cache holds and its headline findings."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from cityviz.ui.safe_text import md_escape

SPLITS = ("train", "val", "test")


def split_table(dataset: Mapping[str, Any]) -> pd.DataFrame:
    """Images per city and split, with a total column and a "all cities" row."""
    counts = dataset.get("split_counts") or {}
    cities = list(dataset.get("cities") or counts)
    rows = [
        {"city": c, **{s: int((counts.get(c) or {}).get(s, 0)) for s in SPLITS}} for c in cities
    ]
    table = pd.DataFrame(rows, columns=["city", *SPLITS])
    if not table.empty:
        total = {"city": "all cities", **{s: int(table[s].sum()) for s in SPLITS}}
        table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    table["total"] = table[list(SPLITS)].sum(axis=1).astype(int)
    return table


def models_table(models: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per model: name, architecture, seed and accuracies (as fractions)."""
    return pd.DataFrame(
        [
            {
                "model": m.get("display") or m["model_id"],
                "architecture": m.get("arch"),
                "seed": m.get("seed"),
                "test accuracy": m.get("test_accuracy"),
                "val accuracy": m.get("val_accuracy"),
            }
            for m in models
        ],
        columns=["model", "architecture", "seed", "test accuracy", "val accuracy"],
    )


def top_objects(rpc: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """The ``n`` most discriminative objects per city, agreed over models.

    Only objects passing the pixel filter (``kept``) count; for each city and object R_p^c and
    lift are averaged over the models that kept it. Sorted by city, then mean R_p^c. Columns
    ``city, rank, object, rpc, lift, n_models``.
    """
    cols = ["city", "rank", "object", "rpc", "lift", "n_models"]
    kept = rpc[rpc["kept"].astype(bool)] if "kept" in rpc else rpc
    if kept.empty:
        return pd.DataFrame(columns=cols)
    agg = kept.groupby(["city", "object"], as_index=False).agg(
        rpc=("rpc", "mean"), lift=("lift", "mean"), n_models=("model_id", "nunique")
    )
    agg = agg.sort_values(["city", "rpc", "object"], ascending=[True, False, True])
    agg = agg.groupby("city", sort=True).head(n).copy()
    agg["rank"] = agg.groupby("city").cumcount() + 1
    return agg[cols].reset_index(drop=True)


def findings(top: pd.DataFrame, planted: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """One Markdown sentence per city from :func:`top_objects` (marking planted objects, if
    known). City and object names come from the data and are escaped (``md_escape``), so the
    sentences are safe for ``st.markdown``."""
    out = []
    for city, grp in top.groupby("city", sort=True):
        parts = []
        for r in grp.itertuples():
            mark = " (planted)" if planted and r.object in (planted.get(city) or ()) else ""
            parts.append(f"**{md_escape(r.object)}**{mark} ({r.rpc:.0%} of its pixels explained)")
        out.append(f"In **{md_escape(city)}** the networks look most at " + ", ".join(parts) + ".")
    return out


def planted_recovered(top: pd.DataFrame, planted: Mapping[str, Sequence[str]]) -> dict[str, bool]:
    """city -> whether all its top objects are among the planted ones (synthetic data only)."""
    out = {}
    for city, objs in planted.items():
        found = top.loc[top["city"] == city, "object"].tolist()
        k = min(len(objs), len(found))
        out[city] = bool(k) and set(found[:k]) <= set(objs)
    return out


def fmt_accuracy(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.1%}"


def progress_summary(progress: Mapping[str, Any]) -> tuple[float, str]:
    """``(fraction done of the current stage, sentence)`` for a running precompute's progress
    record (see :meth:`cityviz.store.Cache.running`)."""
    stage = str(progress.get("stage", "?"))
    index, n_stages = int(progress.get("index", 0)), int(progress.get("n_stages", 1) or 1)
    done, total = int(progress.get("units_done", 0)), int(progress.get("units_total", 0) or 0)
    frac = min(1.0, done / total) if total else 0.0
    eta = progress.get("eta_seconds")
    eta_text = ""
    if isinstance(eta, int | float) and eta > 0:
        eta_text = f", about {fmt_duration(float(eta))} left in this stage"
    return frac, (
        f"A precompute is writing this cache: stage {md_escape(stage)} ({index + 1} of "
        f"{n_stages}), {done} of {total} units done{eta_text}. Pages show what is finished; "
        "reload them for more."
    )


def fmt_duration(seconds: float) -> str:
    """``1 h 05 min`` / ``12 min`` / ``40 s``."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 60} min" if s >= 120 else f"{s} s"


def settings_table(manifest: Mapping[str, Any]) -> pd.DataFrame:
    """Each setting that differs from the defaults, its value and where it came from (a profile
    or a command-line flag), from the manifest's ``config_sources``."""
    sources = manifest.get("config_sources") or {}
    config = manifest.get("config") or {}
    rows = [
        {"setting": k, "value": str(config.get(k)), "from": str(v)}
        for k, v in sources.items()
        if isinstance(sources, Mapping)
    ]
    return pd.DataFrame(rows, columns=["setting", "value", "from"])


def unknown_spots_warning(dataset: Mapping[str, Any]) -> str | None:
    """The caveat for photos without spot information, or None (issue: nearby photos may sit in
    train and test when each photo is its own spot)."""
    sources = dataset.get("spot_sources") or {}
    n = int(sources.get("file", 0) or 0) if isinstance(sources, Mapping) else 0
    if not n:
        return None
    return (
        f"{n} of {int(dataset.get('n_images', n) or n)} photos have no spot information (no spot "
        "column, no Pittsburgh or VPR file name): each is its own spot, so nearby photos may "
        "sit in train and test, and test accuracy may be optimistic."
    )
