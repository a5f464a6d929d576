"""Pure logic of the overview page: what the open cache holds and its headline findings."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
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


EVIDENCE_COLUMNS = [
    "model_id",
    "city",
    "object",
    "class_id",
    "rpc",
    "null_hi",
    "above_null",
    "rpc_others",
    "difference",
    "diff_lo",
    "diff_hi",
    "distinguishes",
    "evidence",
]
HEADLINE_COLUMNS = [
    "city",
    "rank",
    "object",
    "rpc",
    "rpc_others",
    "difference",
    "n_models",
    "n_evidence",
    "models_with",
    "models_without",
    "models_disagree",
    "evidence",
]


def evidence_table(null: pd.DataFrame, contrast: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per model, city and object at ``threshold``: is the object's R_p^c evidence that it
    *distinguishes* the city?

    ``null`` and ``contrast`` are ``stats/rpc_null.parquet`` and ``stats/rpc_contrast.parquet``
    (:mod:`cityviz.trust.nulls`; rows at other thresholds are ignored). ``evidence`` =
    ``above_null`` (R_p^c above its permutation null, BH 5 %) and ``distinguishes`` (R_p^c in
    the city above the other cities', BH 5 %, bootstrap CI above 0); an object missing from
    one of the tables (not in the null's image sample) counts as not shown. Columns
    :data:`EVIDENCE_COLUMNS`, sorted by model, city, then difference descending.
    """
    keys = ["model_id", "city", "object", "class_id"]
    n = null[np.isclose(null["threshold"].astype(float), threshold)]
    c = contrast[np.isclose(contrast["threshold"].astype(float), threshold)]
    n = n[[*keys, "rpc", "null_hi", "above_null"]]
    c = c[[*keys, "rpc_city", "rpc_others", "difference", "diff_lo", "diff_hi", "distinguishes"]]
    out = n.merge(c, on=keys, how="outer")
    out["rpc"] = out["rpc"].fillna(out["rpc_city"])
    for flag in ("above_null", "distinguishes"):
        out[flag] = out[flag].astype("boolean").fillna(False).astype(bool)
    out["evidence"] = out["above_null"] & out["distinguishes"]
    out = out.sort_values(["model_id", "city", "difference"], ascending=[True, True, False])
    return out[EVIDENCE_COLUMNS].reset_index(drop=True)


def headline_findings(
    null: pd.DataFrame, contrast: pd.DataFrame, threshold: float, n: int = 3
) -> pd.DataFrame:
    """The headline findings ranked by evidence that an object distinguishes its city.

    From :func:`evidence_table`: per city, the objects that are evidence for at least one
    model, ranked by how many models agree (``n_evidence``), then by the mean R_p^c difference
    to the other cities; the first ``n`` per city. An object that tops every city (the issue's
    "terrain") has no contrast and never appears; a city with no row has no such object.
    ``n_models`` counts the models that tested the object in the city; ``evidence`` maps each of
    them to its flag, ``models_with`` / ``models_without`` list them (tuples, table order), and
    ``models_disagree`` is True when some but not all of them show it. ``rpc``, ``rpc_others``
    and ``difference`` are means over those models. Columns :data:`HEADLINE_COLUMNS`.
    """
    ev = evidence_table(null, contrast, threshold)
    rows = []
    for (city, obj), grp in ev.groupby(["city", "object"], sort=True):
        flags = dict(zip(grp["model_id"], grp["evidence"], strict=True))
        with_ = tuple(m for m, f in flags.items() if f)
        if not with_:
            continue
        rows.append(
            {
                "city": city,
                "object": obj,
                "rpc": float(grp["rpc"].mean()),
                "rpc_others": float(grp["rpc_others"].mean()),
                "difference": float(grp["difference"].mean()),
                "n_models": len(flags),
                "n_evidence": len(with_),
                "models_with": with_,
                "models_without": tuple(m for m, f in flags.items() if not f),
                "models_disagree": len(with_) < len(flags),
                "evidence": flags,
            }
        )
    if not rows:
        return pd.DataFrame(columns=HEADLINE_COLUMNS)
    out = pd.DataFrame(rows).sort_values(
        ["city", "n_evidence", "difference", "object"], ascending=[True, False, False, True]
    )
    out = out.groupby("city", sort=True).head(n).copy()
    out["rank"] = out.groupby("city").cumcount() + 1
    return out[HEADLINE_COLUMNS].reset_index(drop=True)


def evidence_findings(
    head: pd.DataFrame,
    cities: Sequence[str],
    planted: Mapping[str, Sequence[str]] | None = None,
    display: Mapping[str, str] | None = None,
) -> list[str]:
    """One Markdown sentence per city from :func:`headline_findings`: the objects that tell it
    apart, for how many models, and which models disagree; or that none does. City, object and
    model names are escaped (``md_escape``), so the sentences are safe for ``st.markdown``."""
    display = display or {}
    out = []
    for city in cities:
        grp = head[head["city"] == city]
        name = md_escape(str(city))
        if grp.empty:
            out.append(
                f"No object distinguishes **{name}** from the other cities for any model: no "
                "R_p^c there is both above its permutation null and above the other cities'."
            )
            continue
        parts = []
        for r in grp.itertuples():
            mark = " (planted)" if planted and r.object in (planted.get(city) or ()) else ""
            text = (
                f"**{md_escape(str(r.object))}**{mark} for {r.n_evidence} of {r.n_models} "
                f"models (R_p^c {r.rpc:.2f} vs {r.rpc_others:.2f} in the other cities)"
            )
            if r.models_disagree:
                without = ", ".join(md_escape(str(display.get(m, m))) for m in r.models_without)
                text += f"; the models disagree: not for {without}"
            parts.append(text)
        out.append(f"What tells **{name}** apart: " + "; ".join(parts) + ".")
    return out
