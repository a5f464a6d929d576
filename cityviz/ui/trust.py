"""Trust page logic and the trust badges: pure table and figure builders (no Streamlit).

The checks themselves are computed by the ``trust`` and ``stats`` precompute stages (issue 11);
this module reads their tables and turns them into what a planner reads:

* **Model-parameter randomisation test** (MPRT; Adebayo et al. 2018, *Sanity checks for
  saliency maps*): the model's layers are re-initialised from the logits down, and after each
  step the Spearman rank correlation and SSIM between the original and the randomised masks are
  recorded. A faithful explanation changes (similarity near zero) once the head is random.
* **Other-city (random-logit) test** (Sixt et al. 2020, *When explanations lie*): AR (the
  paper's eq. 2) between the mask of the predicted city and the mask of another city. AR near
  zero means the explanation does not depend on the class it claims to explain.
* **Deletion and insertion curves** (Petsiuk et al. 2018, *RISE*): the predicted city's
  probability as pixels are removed (or revealed) in the order of the mask, against a random
  order; the area under the curve (AUC, trapezoid rule over the fraction removed) is lower than
  random's for deletion and higher for insertion when the mask finds the pixels that matter.
* **Object removal**: per city and object, the object's pixels are painted out and the images
  re-predicted: the drop in accuracy against the drop for an equal-area random region.
* **Permutation null and city contrast of R_p^c** (eq. 1): R_p^c against the R_p^c of masks
  shuffled among the same city's images, and against the object's R_p^c in the other cities.

Every string from data (city, object and model names) is escaped here: Markdown sentences with
:func:`~cityviz.ui.safe_text.md_escape`, Plotly labels with
:func:`~cityviz.ui.safe_text.html_escape`; CSV downloads go through
:func:`~cityviz.ui.safe_text.csv_safe`. Tables meant for ``st.dataframe`` keep raw text (it is
shown as text, never rendered).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cityviz.store import Cache, damaged
from cityviz.ui.safe_text import csv_safe, html_escape, md_escape

# --------------------------------------------------------------------------- the cache tables

NULL_FILE = "stats/rpc_null.parquet"
CONTRAST_FILE = "stats/rpc_contrast.parquet"
VERDICT_FILE = "trust/verdict.json"

CHECK_NAMES = {
    "mprt": "Model-parameter randomisation (Adebayo et al. 2018)",
    "other_city": "Other-city test (Sixt et al. 2020)",
    "deletion": "Deletion curve (Petsiuk et al. 2018)",
}
VERDICT_ICONS = {"pass": ":material/check_circle:", "warn": ":material/warning:",
                 "fail": ":material/cancel:"}  # fmt: skip
VERDICT_WORDS = {"pass": "passes", "warn": "passes with a warning", "fail": "fails"}


def has_trust(cache: Cache) -> bool:
    """Whether the cache holds any trust check (the ``trust`` stage has written something)."""
    root = cache.root
    return (root / "trust").is_dir() and any((root / "trust").iterdir())


def not_built_message(root: object) -> str:
    """The "not built yet" sentence for a cache without the trust checks (Markdown-escaped)."""
    return md_escape(
        f"The trust checks are not built yet for the cache at {root}. Build them with "
        f"python -m precompute --cache {root} --stages trust (they need the models and their "
        "Grad-CAMs; R_p^c's permutation null comes with the stats stage)."
    )


def read_trust_table(cache: Cache, name: str) -> pd.DataFrame:
    """``trust/<name>.parquet`` (``mprt``, ``other_city``, ``curves``, ``auc``, ``removal``)
    through the cache's reader, which checks the columns of the contract
    (:data:`cityviz.store.REQUIRED_COLUMNS`, the one list of them).

    Raises :class:`~cityviz.store.CacheMissing` when the stage has not written it and
    :class:`~cityviz.store.CacheError` (naming the file and the rebuild command) when it is
    damaged or lacks a column of the contract.
    """
    return cache.trust_table(name)


def read_rpc_null(cache: Cache) -> pd.DataFrame:
    """``stats/rpc_null.parquet``: R_p^c against its permutation null, per threshold (columns
    checked by the cache's reader, as :func:`read_trust_table`)."""
    return cache.rpc_null()


def read_rpc_contrast(cache: Cache) -> pd.DataFrame:
    """``stats/rpc_contrast.parquet``: R_p^c in a city against the other cities (columns
    checked by the cache's reader, as :func:`read_trust_table`)."""
    return cache.rpc_contrast()


def read_verdicts(cache: Cache) -> dict[str, dict]:
    """``trust/verdict.json``: ``{model_id: {method, verdict, sentence, checks}}``.

    Raises :class:`~cityviz.store.CacheError` when it is not a JSON object of objects.
    """
    obj = cache.trust_verdict()
    if not isinstance(obj, dict) or not all(isinstance(v, dict) for v in obj.values()):
        raise damaged(cache.root, VERDICT_FILE, "is not a JSON object of per-model verdicts")
    return obj


def pairs(*tables: pd.DataFrame) -> list[tuple[str, str]]:
    """The ``(model_id, method)`` pairs found in any of ``tables``, sorted."""
    found: set[tuple[str, str]] = set()
    for t in tables:
        if {"model_id", "method"} <= set(t.columns):
            found |= {(str(m), str(k)) for m, k in zip(t["model_id"], t["method"], strict=True)}
    return sorted(found)


def method_name(method: str) -> str:
    """``"gradcam++"`` → ``"Grad-CAM++"`` (the name as the literature writes it)."""
    from cityviz.cam import METHOD_NAMES

    return METHOD_NAMES.get(method, method)


def _fmt(x: object, spec: str = ".2f") -> str:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(v) else format(v, spec)


# --------------------------------------------------------------------------- verdicts


def verdict_cards(
    verdicts: Mapping[str, Mapping[str, Any]], display: Mapping[str, str]
) -> list[dict[str, Any]]:
    """One card per model: ``{"model_id", "title", "sentence", "verdict", "checks"}``.

    ``title`` and ``sentence`` are Markdown-escaped (safe for ``st.markdown``); ``checks`` is a
    DataFrame ``check, passed, value, rule`` (raw text, for ``st.dataframe``). An unknown
    verdict word is shown as ``"unknown"`` rather than trusted.
    """
    cards = []
    for model_id, v in verdicts.items():
        word = str(v.get("verdict", "")).lower()
        word = word if word in VERDICT_ICONS else "unknown"
        name = display.get(model_id, model_id)
        method = method_name(str(v.get("method", "")))
        icon = VERDICT_ICONS.get(word, ":material/help:")
        title = (f"{icon} **{md_escape(name)}** with {md_escape(method)}: "
                 f"{VERDICT_WORDS.get(word, 'no verdict')}")  # fmt: skip
        rows = []
        checks = v.get("checks") if isinstance(v.get("checks"), Mapping) else {}
        for key, check in checks.items():
            if not isinstance(check, Mapping):
                continue
            passed = check.get("passed")
            rows.append(
                {
                    "check": CHECK_NAMES.get(str(key), str(key)),
                    "passed": "✓ yes" if passed is True else "✗ no" if passed is False else "?",
                    "value": _fmt(check.get("value"), ".3f"),
                    "rule": str(check.get("rule", "")),
                }
            )
        cards.append(
            {
                "model_id": model_id,
                "title": title,
                "sentence": md_escape(v.get("sentence", "")),
                "verdict": word,
                "checks": pd.DataFrame(rows, columns=["check", "passed", "value", "rule"]),
            }
        )
    return cards


# --------------------------------------------------------------------------- randomisation


def mprt_figure(mprt: pd.DataFrame, model_id: str, method: str, title: str = "") -> go.Figure:
    """Spearman rank correlation and SSIM between the original and the randomised masks, after
    each cascading randomisation step (logits first), with the bands ``*_lo``..``*_hi`` (the
    stage writes the median and quartiles over images; Adebayo et al. 2018, fig. 2).
    ``mprt`` has the columns of ``trust/mprt.parquet`` (:data:`cityviz.store.REQUIRED_COLUMNS`);
    x ticks are ``step: layer`` in step order (an empty layer name, the unrandomised model,
    reads "original").
    Raises ``ValueError`` when the table has no row for the model and method."""
    rows = mprt[(mprt["model_id"] == model_id) & (mprt["method"] == method)]
    if rows.empty:
        raise ValueError(f"no randomisation rows for {model_id} / {method}")
    rows = rows.sort_values("step")
    ticks = [f"{int(s)}: {html_escape(layer) if str(layer).strip() else 'original'}"
             for s, layer in zip(rows["step"], rows["layer"], strict=True)]  # fmt: skip
    bands = rows[["spearman_lo", "ssim_lo"]].to_numpy(float)
    bottom = min(-0.25, float(np.nanmin(bands)) - 0.05) if np.isfinite(bands).any() else -0.25
    fig = go.Figure()
    for col, name, colour, fill in (
        ("spearman", "Spearman rank correlation", "#1f77b4", "rgba(31,119,180,0.18)"),
        ("ssim", "SSIM", "#ff7f0e", "rgba(255,127,14,0.18)"),
    ):
        lo, hi = rows[f"{col}_lo"].to_numpy(float), rows[f"{col}_hi"].to_numpy(float)
        fig.add_trace(go.Scatter(x=ticks + ticks[::-1], y=np.r_[hi, lo[::-1]], fill="toself",
                                 fillcolor=fill, line={"width": 0}, hoverinfo="skip",
                                 showlegend=False, legendgroup=col))  # fmt: skip
        fig.add_trace(
            go.Scatter(
                x=ticks, y=rows[col].to_numpy(float), mode="lines+markers", name=name,
                line={"color": colour}, legendgroup=col,
                hovertemplate=f"%{{x}}<br>{name} = %{{y:.3f}}<extra></extra>",
            )
        )  # fmt: skip
    fig.add_hline(y=0, line_dash="dot", line_color="#888")
    fig.update_layout(
        title=html_escape(title),
        height=340,
        margin={"l": 50, "r": 10, "t": 40 if title else 10, "b": 60},
        xaxis={"title": "randomised down to (step: layer)", "type": "category"},
        yaxis={"title": "similarity to the original mask", "range": [bottom, 1.05]},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"},
    )
    return fig


# --------------------------------------------------------------------------- deletion, insertion

CURVES = ("deletion", "insertion")
ORDERS = ("mask", "random")


def curves_figure(
    curves: pd.DataFrame, auc: pd.DataFrame | None, model_id: str, method: str
) -> go.Figure:
    """Deletion and insertion curves side by side (Petsiuk et al. 2018): the predicted city's
    mean probability against the fraction of pixels removed / revealed, in mask order (solid)
    and random order (dashed); the legend gives each curve's AUC over all test images
    (``auc`` rows with ``city == "all"``; computed from the curve by the trapezoid rule when
    ``auc`` is None or lacks the row). Raises ``ValueError`` without rows for the pair."""
    rows = curves[(curves["model_id"] == model_id) & (curves["method"] == method)]
    if rows.empty:
        raise ValueError(f"no deletion/insertion curves for {model_id} / {method}")
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "Deletion: pixels removed, most important first (lower = better)",
        "Insertion: pixels revealed, most important first (higher = better)",
    ), horizontal_spacing=0.08)  # fmt: skip
    colours = {"mask": "#d62728", "random": "#7f7f7f"}
    for col, curve in enumerate(CURVES, start=1):
        for order in ORDERS:
            part = rows[(rows["curve"] == curve) & (rows["order"] == order)]
            part = part.sort_values("fraction")
            if part.empty:
                continue
            x, y = part["fraction"].to_numpy(float), part["prob"].to_numpy(float)
            value = curve_auc(auc, model_id, method, curve, order)
            if value is None:
                value = float(np.trapezoid(y, x))
            label = "mask order" if order == "mask" else "random order"
            fig.add_trace(
                go.Scatter(
                    x=x, y=y, mode="lines", name=f"{curve}, {label} (AUC {value:.3f})",
                    line={"color": colours[order], "dash": "solid" if order == "mask" else "dash"},
                    hovertemplate=f"{curve}, {label}<br>fraction %{{x:.2f}}: "
                                  "probability %{y:.3f}<extra></extra>",
                ),
                row=1, col=col,
            )  # fmt: skip
    fig.update_xaxes(title_text="fraction of pixels", range=[0, 1])
    fig.update_yaxes(title_text="probability of the predicted city", range=[0, 1.02], col=1)
    fig.update_yaxes(range=[0, 1.02], col=2)
    fig.update_layout(height=360, margin={"l": 50, "r": 10, "t": 40, "b": 40},
                      legend={"orientation": "h", "y": -0.2})  # fmt: skip
    return fig


def curve_auc(
    auc: pd.DataFrame | None, model_id: str, method: str, curve: str, order: str, city="all"
) -> float | None:
    """The stored AUC of one curve (``None`` when ``auc`` has no such row)."""
    if auc is None or auc.empty:
        return None
    hit = auc[(auc["model_id"] == model_id) & (auc["method"] == method) & (auc["city"] == city)
              & (auc["curve"] == curve) & (auc["order"] == order)]  # fmt: skip
    return float(hit["auc"].iloc[0]) if len(hit) else None


def auc_table(auc: pd.DataFrame, model_id: str, method: str) -> pd.DataFrame:
    """Per city (``"all"`` first) and curve: the AUC in mask and random order with the mask
    order's 95 % CI, their difference, and whether the mask beats random (deletion: lower AUC;
    insertion: higher). Raw text (for ``st.dataframe``)."""
    rows = auc[(auc["model_id"] == model_id) & (auc["method"] == method)]
    cols = ["city", "curve", "AUC, mask order", "CI low", "CI high", "AUC, random order",
            "mask − random", "mask beats random", "images"]  # fmt: skip
    out = []
    cities = sorted(rows["city"].astype(str).unique(), key=lambda c: (c != "all", c))
    for city in cities:
        for curve in CURVES:
            part = rows[(rows["city"] == city) & (rows["curve"] == curve)]
            mask = part[part["order"] == "mask"]
            rand = part[part["order"] == "random"]
            if mask.empty:
                continue
            m = float(mask["auc"].iloc[0])
            r = float(rand["auc"].iloc[0]) if len(rand) else math.nan
            better = (m < r) if curve == "deletion" else (m > r)
            out.append(
                {
                    "city": "all cities" if city == "all" else city,
                    "curve": curve,
                    "AUC, mask order": m,
                    "CI low": float(mask["auc_lo"].iloc[0]),
                    "CI high": float(mask["auc_hi"].iloc[0]),
                    "AUC, random order": r,
                    "mask − random": m - r,
                    "mask beats random": "?" if math.isnan(r) else ("✓" if better else "✗"),
                    "images": int(mask["n_images"].iloc[0]),
                }
            )
    return pd.DataFrame(out, columns=cols)


# --------------------------------------------------------------------------- other-city test


def other_city_table(other: pd.DataFrame, display: Mapping[str, str]) -> pd.DataFrame:
    """Per model and method: AR between the predicted city's and another city's masks, with
    its 95 % CI, their Spearman correlation and the number of images (raw text)."""
    out = pd.DataFrame(
        {
            "model": other["model_id"].map(lambda m: display.get(m, m)),
            "method": other["method"].map(method_name),
            "AR (predicted vs other city)": other["ar"].astype(float),
            "CI low": other["ar_lo"].astype(float),
            "CI high": other["ar_hi"].astype(float),
            "Spearman": other["spearman"].astype(float),
            "images": other["n_images"].astype(int),
        }
    )
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------- object removal

REMOVAL_RENAME = {
    "city": "city", "object": "object", "n_images": "images", "area": "area share",
    "acc_before": "accuracy", "acc_after": "accuracy without it",
    "acc_random": "accuracy, random region removed", "drop": "accuracy drop",
    "drop_random": "drop, random region", "drop_lo": "drop − random drop, CI low",
    "drop_hi": "drop − random drop, CI high",
    "prob_before": "probability", "prob_after": "probability without it",
}  # fmt: skip


def removal_table(removal: pd.DataFrame, display: Mapping[str, str]) -> pd.DataFrame:
    """The object-removal results for people: one row per model, city and object, the largest
    accuracy drop first; ``causal`` as ``"✓ yes"``/``"no"`` (raw text, for ``st.dataframe``)."""
    out = removal.sort_values(["drop", "city", "object"], ascending=[False, True, True])
    table = pd.DataFrame({"model": out["model_id"].map(lambda m: display.get(m, m))})
    for col, name in REMOVAL_RENAME.items():
        table[name] = out[col].to_numpy()
    table["removal drops accuracy"] = np.where(out["causal"].astype(bool), "✓ yes", "no")
    return table.reset_index(drop=True)


def removal_csv(removal: pd.DataFrame) -> bytes:
    """The raw object-removal table as CSV, safe to open in a spreadsheet (``csv_safe``)."""
    return csv_safe(removal).to_csv(index=False).encode()


def removal_sentences(
    removal: pd.DataFrame, display: Mapping[str, str], per_city: int = 2
) -> list[str]:
    """Markdown sentences a planner reads: per model and city, the objects whose removal drops
    accuracy the most (causal ones only), e.g. "Without **signboard**, **tokyo-like** accuracy
    falls from 98 % to 40 % (an equal-area random region: 96 %)". Names are escaped."""
    out = []
    causal = removal[removal["causal"].astype(bool)]
    causal = causal.sort_values(["model_id", "city", "drop"], ascending=[True, True, False])
    for (model_id, city), grp in causal.groupby(["model_id", "city"], sort=True):
        for r in grp.head(per_city).itertuples():
            out.append(
                f"{md_escape(display.get(model_id, model_id))}: without **{md_escape(r.object)}**"
                f", **{md_escape(city)}** accuracy falls from {r.acc_before:.0%} to "
                f"{r.acc_after:.0%} (an equal-area random region removed: {r.acc_random:.0%})."
            )
    return out


# --------------------------------------------------------------------------- badges

ABOVE, WITHIN = "✓", "~"
DISTINGUISHES = "◆"
CAUSAL = "✂"
BADGE_LEGEND = (
    f"**{ABOVE}** R_p^c above its permutation null (masks shuffled among the city's photos; "
    f"p < 0.05 after correcting for the number of objects) · **{WITHIN}** within the null: a "
    f"value that chance alone gives, not a finding · **{DISTINGUISHES}** "
    f"the object distinguishes the city (its R_p^c is higher than in the other cities) · "
    f"**{CAUSAL}** painting the object out drops the city's accuracy more than removing a "
    "random region of the same area"
)
"""The legend of the badges (Markdown, no text from data)."""
BADGE_COLUMNS = ("above null", "distinguishes", "removal drops accuracy")


def at_threshold(table: pd.DataFrame, threshold: float, tol: float = 1e-6) -> pd.DataFrame:
    """The rows of a threshold-aware table (``threshold`` column) at ``threshold``."""
    t = table["threshold"].to_numpy(dtype=float)
    return table[np.abs(t - float(threshold)) <= tol]


def thresholds_of(table: pd.DataFrame | None) -> list[float]:
    """The distinct thresholds a threshold-aware table holds, ascending."""
    if table is None or table.empty:
        return []
    return sorted({round(float(t), 6) for t in table["threshold"]})


def badges(
    null: pd.DataFrame | None,
    contrast: pd.DataFrame | None,
    removal: pd.DataFrame | None,
    threshold: float,
) -> pd.DataFrame:
    """Per ``(model_id, city, object)``: ``above_null``, ``distinguishes`` and ``causal`` as
    pandas nullable booleans (``<NA>`` where that check was not run), the first two read at
    ``threshold`` (rows of ``null`` / ``contrast`` at another threshold are ignored). A row
    whose ``p_adjusted`` is NaN was left out of the multiple-testing family (the stats stage
    tests only the objects that pass the pixel filter): not tested, so ``<NA>`` too."""
    keys = ["model_id", "city", "object"]
    parts = []
    for table, flag in ((null, "above_null"), (contrast, "distinguishes")):
        if table is None or table.empty:
            continue
        rows = at_threshold(table, threshold)
        part = rows[keys].copy()
        part[flag] = rows[flag].astype("boolean")
        if "p_adjusted" in rows:
            part.loc[rows["p_adjusted"].isna().to_numpy(), flag] = pd.NA
        parts.append(part)
    if removal is not None and not removal.empty:
        parts.append(removal[[*keys, "causal"]])
    out: pd.DataFrame | None = None
    for part in parts:
        part = part.drop_duplicates(keys)
        out = part if out is None else out.merge(part, on=keys, how="outer")
    if out is None:
        out = pd.DataFrame(columns=keys)
    for col in ("above_null", "distinguishes", "causal"):
        if col not in out:
            out[col] = pd.NA
        out[col] = out[col].astype("boolean")
    return out[[*keys, "above_null", "distinguishes", "causal"]].reset_index(drop=True)


def marker(above: object, distinguishes: object = None, causal: object = None) -> str:
    """The badge text of one value: ``"✓"``/``"~"`` (above / within the null), then ``"◆"`` when
    it distinguishes the city and ``"✂"`` when its removal drops accuracy; ``""`` when no check
    ran. Missing values (None, ``pd.NA``, NaN) mean "not tested" and add nothing."""
    out = ""
    if _is_true(above):
        out += ABOVE
    elif _is_false(above):
        out += WITHIN
    if _is_true(distinguishes):
        out += DISTINGUISHES
    if _is_true(causal):
        out += CAUSAL
    return out


def _is_true(v: object) -> bool:
    return v is True or (isinstance(v, np.bool_) and bool(v))


def _is_false(v: object) -> bool:
    return v is False or (isinstance(v, np.bool_) and not bool(v))


def badge_table(table: pd.DataFrame, marks: pd.DataFrame) -> pd.DataFrame:
    """``table`` (with ``model_id, city, object``) plus :data:`BADGE_COLUMNS` as text:
    ``"✓"``/``"~"``, ``"◆"``/``"–"``, ``"✂"``/``"–"``, blank where not tested."""
    merged = table.merge(marks, on=["model_id", "city", "object"], how="left")

    def text(col: str, yes: str, no: str) -> list[str]:
        return [yes if _is_true(v) else no if _is_false(v) else ""
                for v in merged[col].astype("boolean").tolist()]  # fmt: skip

    out = table.copy()
    out["above null"] = text("above_null", ABOVE, WITHIN) if len(merged) else []
    out["distinguishes"] = text("distinguishes", DISTINGUISHES, "–") if len(merged) else []
    out["removal drops accuracy"] = text("causal", CAUSAL, "–") if len(merged) else []
    return out


def mark_bars(fig: go.Figure, marks: pd.DataFrame) -> go.Figure:
    """Fade and hatch the bars of :func:`cityviz.ui.figures.rpc_bars` whose R_p^c lies within
    its permutation null, and add each bar's badges to its hover text (``hovertext``). Bars
    carry ``customdata = [city, object, model_id]`` (left as it is: a click hands it back);
    bars without a null (not tested) stay as they are. Modifies and returns ``fig``."""
    lookup = {
        (c, o, m): (a, d, k)
        for m, c, o, a, d, k in zip(
            marks["model_id"], marks["city"], marks["object"], marks["above_null"],
            marks["distinguishes"], marks["causal"], strict=True,
        )
    }  # fmt: skip
    for trace in fig.data:
        custom = trace.customdata
        if trace.type != "bar" or custom is None:
            continue
        opacity, shape, texts = [], [], []
        for data in custom:
            a, d, k = lookup.get(tuple(data[:3]), (pd.NA, pd.NA, pd.NA))
            within = _is_false(a)
            opacity.append(0.35 if within else 1.0)
            shape.append("/" if within else "")
            texts.append(html_escape(_badge_words(a, d, k)))
        trace.marker.opacity = opacity
        trace.marker.pattern = {"shape": shape, "fillmode": "overlay", "size": 6}
        trace.hovertext = texts
        if trace.hovertemplate and "%{hovertext}" not in trace.hovertemplate:
            trace.hovertemplate = trace.hovertemplate.replace(
                "<extra></extra>", "<br>%{hovertext}<extra></extra>"
            )
    return fig


def _badge_words(above: object, distinguishes: object, causal: object) -> str:
    words = []
    if _is_true(above):
        words.append(f"{ABOVE} above its permutation null")
    elif _is_false(above):
        words.append(f"{WITHIN} within its permutation null (chance level)")
    if _is_true(distinguishes):
        words.append(f"{DISTINGUISHES} distinguishes the city")
    if _is_true(causal):
        words.append(f"{CAUSAL} removal drops accuracy")
    return " · ".join(words) or "no trust check for this value"


def object_marks(marks: pd.DataFrame) -> pd.DataFrame:
    """Per ``(city, object)`` over models: how many models tested each badge and how many
    passed it: ``n_null, n_above, n_contrast, n_distinguishes, n_removal, n_causal`` (for the
    Overview's headline findings, which average over models)."""
    cols = ["city", "object", "n_null", "n_above", "n_contrast", "n_distinguishes",
            "n_removal", "n_causal"]  # fmt: skip
    if marks.empty:
        return pd.DataFrame(columns=cols)
    m = marks.assign(
        n_null=marks["above_null"].notna(), n_above=marks["above_null"].fillna(False),
        n_contrast=marks["distinguishes"].notna(),
        n_distinguishes=marks["distinguishes"].fillna(False),
        n_removal=marks["causal"].notna(), n_causal=marks["causal"].fillna(False),
    )  # fmt: skip
    agg = m.groupby(["city", "object"], as_index=False)[cols[2:]].sum()
    for c in cols[2:]:
        agg[c] = agg[c].astype(int)
    return agg[cols]


def finding_marker(row: Mapping[str, Any]) -> str:
    """The badge of one headline finding from :func:`object_marks` counts: ``"✓"`` when the
    R_p^c is above its null for every model that tested it, ``"~"`` when for none, ``"✓ 1/2"``
    when models disagree; ``"◆"``/``"✂"`` likewise for contrast and removal (a count when not
    unanimous). ``""`` when nothing was tested."""
    out = []
    for n_key, k_key, yes, no in (("n_null", "n_above", ABOVE, WITHIN),
                                  ("n_contrast", "n_distinguishes", DISTINGUISHES, None),
                                  ("n_removal", "n_causal", CAUSAL, None)):  # fmt: skip
        n, k = int(row.get(n_key, 0) or 0), int(row.get(k_key, 0) or 0)
        if not n:
            continue
        if k == n:
            out.append(yes)
        elif k == 0:
            if no:
                out.append(no)
        else:
            out.append(f"{yes} {k}/{n}")
    return " ".join(out)


# --------------------------------------------------------------------------- the live page

LIVE_DELETION_GUIDE = (
    "Deletion curve (Petsiuk et al. 2018): the photo's pixels are removed in the order of each "
    "model's Grad-CAM, most important first, and the predicted city's probability is recorded. "
    "A curve that drops fast (small AUC) means the mask found the pixels the model relies on; "
    "a slow, straight fall means the mask says little about this prediction."
)


def live_deletion_figure(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]], display: Mapping[str, str]
) -> go.Figure:
    """One deletion curve per model for an uploaded photo: ``curves`` holds ``(model_id,
    fractions [K], probs [K], auc)``; the legend names each model with its AUC."""
    from cityviz.ui.figures import model_colors

    colors = model_colors([c[0] for c in curves])
    fig = go.Figure()
    for model_id, x, y, area in curves:
        name = html_escape(f"{display.get(model_id, model_id)} (AUC {area:.3f})")
        fig.add_trace(go.Scatter(
            x=np.asarray(x, float), y=np.asarray(y, float), mode="lines+markers", name=name,
            line={"color": colors[model_id]}, marker={"size": 4},
            hovertemplate=f"{name}<br>%{{x:.0%}} removed: %{{y:.3f}}<extra></extra>",
        ))  # fmt: skip
    fig.update_layout(
        height=320, margin={"l": 50, "r": 10, "t": 10, "b": 40},
        xaxis={"title": "fraction of pixels removed (most important first)", "range": [0, 1],
               "tickformat": ".0%"},
        yaxis={"title": "probability of the predicted city", "range": [0, 1.02]},
        legend={"orientation": "h", "y": -0.25},
    )  # fmt: skip
    return fig


def threshold_note(null: pd.DataFrame | None, threshold: float) -> str | None:
    """A sentence when ``null`` holds rows but none at ``threshold`` (its badges are then not
    shown), naming the thresholds it has; None otherwise."""
    have = thresholds_of(null)
    if not have or at_threshold(null, threshold).shape[0]:
        return None
    listed = ", ".join(f"{t:.2f}" for t in have[:12]) + (" …" if len(have) > 12 else "")
    return (
        f"The permutation null was computed at thresholds {listed} only: move the slider to "
        "one of them to see which values are above chance."
    )


def causal_notes(head: pd.DataFrame, removal: pd.DataFrame | None) -> list[str]:
    """Per city of ``head`` (the headline objects: ``city, object``), one Markdown sentence
    on the object-removal test: which of those objects' removal drops the city's accuracy
    more than removing a random region of equal area (``CAUSAL`` badge), for how many of the
    models that tested it, and the mean accuracy before and after; or that none does. Names
    are escaped. Empty when ``removal`` is None or empty (the test did not run)."""
    if removal is None or removal.empty or head.empty:
        return []
    out = []
    for city, grp in head.groupby("city", sort=True):
        objs = list(dict.fromkeys(grp["object"]))
        rows = removal[(removal["city"] == city) & removal["object"].isin(objs)]
        parts = []
        for obj in objs:
            r = rows[rows["object"] == obj]
            k = int(r["causal"].astype(bool).sum())
            if not len(r) or not k:
                continue
            parts.append(
                f"**{md_escape(obj)}** for {k} of {len(r)} models (accuracy "
                f"{r['acc_before'].mean():.0%} → {r['acc_after'].mean():.0%})"
            )
        if parts:
            out.append(f"{CAUSAL} Painting out drops **{md_escape(city)}**'s accuracy: "
                       + "; ".join(parts) + ".")  # fmt: skip
        elif len(rows):
            out.append(
                f"{CAUSAL} Removing these objects from **{md_escape(city)}**'s photos drops "
                "accuracy no more than removing a random region of the same area."
            )
    return out


def badged_findings(
    top: pd.DataFrame,
    marks: pd.DataFrame,
    planted: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """One Markdown sentence per city from :func:`cityviz.ui.overview.top_objects` (``city,
    object, rpc``), each object followed by its badges over models (:func:`finding_marker` of
    :func:`object_marks` ``marks``), e.g. "In **tokyo-like** the networks look most at
    **signboard** ✓ ◆ ✂ (65 % of its pixels explained), **building** ~ (30 %)". Names are
    escaped (``md_escape``)."""
    counts = {(c, o): r for c, o, r in zip(marks["city"], marks["object"],
                                           marks.to_dict("records"), strict=True)}  # fmt: skip
    out = []
    for city, grp in top.groupby("city", sort=True):
        parts = []
        for r in grp.itertuples():
            mark = " (planted)" if planted and r.object in (planted.get(city) or ()) else ""
            badge = finding_marker(counts.get((city, r.object), {}))
            badge = f" {badge}" if badge else ""
            parts.append(f"**{md_escape(r.object)}**{mark}{badge} ({r.rpc:.0%} of its pixels "
                         "explained)")  # fmt: skip
        out.append(f"In **{md_escape(city)}** the networks look most at " + ", ".join(parts) + ".")
    return out
