"""Plotly figure builders for the Objects, Compare and Live pages (pure: data in, figure out).

Callers pass raw names (cities, objects, model display names, titles made from them): every
string that Plotly shows as a label (titles, legends, axis ticks, hover templates, annotations)
is HTML-escaped here with :func:`cityviz.ui.safe_text.html_escape`, since plotly.js renders a
subset of HTML in labels (``<a href>``, ``<b>``, ``<br>``). Values handed back to Python on a
click (``customdata``) stay raw. Callers must not escape again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from cityviz.ui.safe_text import html_escape

MODEL_COLORS = qualitative.D3 + qualitative.Set2
CITY_COLORS = qualitative.Plotly + qualitative.Dark24
_ROW_HEIGHT = 280


def model_colors(model_ids: Sequence[str]) -> dict[str, str]:
    """A stable colour per model (in the order given)."""
    return {m: MODEL_COLORS[i % len(MODEL_COLORS)] for i, m in enumerate(model_ids)}


def city_colors(cities: Sequence[str]) -> dict[str, str]:
    return {c: CITY_COLORS[i % len(CITY_COLORS)] for i, c in enumerate(cities)}


def rpc_bars(
    table: pd.DataFrame,
    objects_by_city: Mapping[str, Sequence[str]],
    model_ids: Sequence[str],
    display: Mapping[str, str],
    value_label: str = "R_p^c",
) -> go.Figure:
    """The paper's Figure 5: per city a grouped bar chart, one group per object, one bar per model.

    ``table`` has ``model_id, city, object, value, lo, hi`` (see ui.objects.with_value). Error
    bars span ``[lo, hi]``; each bar's ``customdata`` is ``[city, object, model_id]`` so a click
    tells the page what to drill into. The figure is assembled as a plain dict (stacked axes
    instead of ``make_subplots``): this runs on every threshold change, and plotly's per-trace
    validation would cost more than all the statistics.
    """
    cities = [c for c in objects_by_city if objects_by_city[c]]
    n = max(1, len(cities))
    gap = min(0.12, 0.4 / n) if n > 1 else 0.0
    height = (1 - gap * (n - 1)) / n
    colors = model_colors(model_ids)
    cols = [table[c].to_numpy() for c in ("city", "object", "model_id", "value", "lo", "hi")]
    lookup = {
        (c, o, m): (float(v), float(lo), float(hi))
        for c, o, m, v, lo, hi in zip(*cols, strict=True)
    }
    nan3 = (np.nan, np.nan, np.nan)
    data: list[dict] = []
    layout: dict = {
        "barmode": "group",
        "height": max(320, _ROW_HEIGHT * n + 100),
        "margin": {"l": 60, "r": 20, "t": 90, "b": 40},
        "legend": {"orientation": "h", "yref": "container", "yanchor": "top", "y": 0.995, "x": 0},
        "clickmode": "event+select",
        "annotations": [],
    }
    for row, city in enumerate(cities, start=1):
        suffix = "" if row == 1 else str(row)
        top = 1 - (row - 1) * (height + gap)
        layout[f"xaxis{suffix}"] = {"anchor": f"y{suffix}", "domain": [0, 1]}
        layout[f"yaxis{suffix}"] = {
            "anchor": f"x{suffix}",
            "domain": [max(0.0, top - height), top],
            "title": {"text": html_escape(value_label)},
            "rangemode": "tozero",
        }
        layout["annotations"].append(
            {"text": html_escape(city), "x": 0.5, "y": top, "xref": "paper", "yref": "paper",
             "xanchor": "center", "yanchor": "bottom", "showarrow": False,
             "font": {"size": 14}}
        )  # fmt: skip
        objects = list(objects_by_city[city])
        ticks = [html_escape(o) for o in objects]
        for model_id in model_ids:
            vals = np.array([lookup.get((city, o, model_id), nan3) for o in objects], dtype=float)
            value, lo, hi = vals.T if len(vals) else (np.zeros(0),) * 3
            name = html_escape(display.get(model_id, model_id))
            data.append(
                {
                    "type": "bar",
                    "x": ticks,
                    "y": value,
                    "name": name,
                    "legendgroup": model_id,
                    "showlegend": row == 1,
                    "marker": {"color": colors[model_id]},
                    "error_y": {
                        "type": "data",
                        "symmetric": False,
                        "array": np.nan_to_num(np.clip(hi - value, 0, None)),
                        "arrayminus": np.nan_to_num(np.clip(value - lo, 0, None)),
                        "thickness": 1,
                        "width": 2,
                    },
                    "customdata": [[city, o, model_id] for o in objects],
                    "hovertemplate": (
                        f"<b>%{{x}}</b> · {html_escape(city)}<br>{name}<br>"
                        f"{html_escape(value_label)} = %{{y:.3f}}<extra></extra>"
                    ),
                    "xaxis": f"x{suffix}",
                    "yaxis": f"y{suffix}",
                }
            )
    return go.Figure({"data": data, "layout": layout}, _validate=False)


def ar_heatmap(matrix: pd.DataFrame, labels: Sequence[str] | None = None) -> go.Figure:
    """Square AR matrix as an annotated heat map (0 = identical masks)."""
    labels = list(labels) if labels is not None else [str(c) for c in matrix.columns]
    labels = [html_escape(x) for x in labels]
    z = matrix.to_numpy(dtype=float)
    text = [["" if np.isnan(v) else f"{v:.3f}" for v in row] for row in z]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=labels,
            y=labels,
            text=text,
            texttemplate="%{text}",
            colorscale="Viridis",
            zmin=0,
            zmax=float(np.nanmax(z)) if np.isfinite(z).any() and np.nanmax(z) > 0 else 1,
            colorbar={"title": "mean AR"},
            hovertemplate="%{y} vs %{x}<br>mean AR = %{z:.4f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    side = max(360, 60 * len(labels) + 120)
    fig.update_layout(height=side, margin={"l": 10, "r": 10, "t": 30, "b": 10})
    return fig


def ar_histogram(values: Sequence[float] | np.ndarray, title: str, marker: float | None = None):
    """Distribution of per-image AR for one model pair, with the selected image marked."""
    values = np.asarray(values, dtype=float)
    fig = go.Figure(go.Histogram(x=values, nbinsx=40, marker_color="#4c78a8", name="images"))
    fig.add_vline(
        x=float(values.mean()) if len(values) else 0.0,
        line_dash="dash",
        annotation_text="mean",
    )
    if marker is not None:
        fig.add_vline(x=float(marker), line_color="#e45756", annotation_text="this image")
    fig.update_layout(
        title=html_escape(title),
        xaxis_title="per-image AR",
        yaxis_title="images",
        height=300,
        margin={"l": 40, "r": 10, "t": 40, "b": 40},
        bargap=0.05,
    )
    return fig


def prob_bars(probs: Sequence[float], cities: Sequence[str], title: str = "") -> go.Figure:
    """Horizontal bars of one model's class probabilities, the predicted city highlighted."""
    probs = np.asarray(probs, dtype=float)
    best = int(np.argmax(probs)) if len(probs) else -1
    colors = ["#e45756" if i == best else "#9ecae9" for i in range(len(probs))]
    fig = go.Figure(
        go.Bar(
            x=probs,
            y=[html_escape(c) for c in cities],
            orientation="h",
            marker_color=colors,
            text=[f"{p:.1%}" for p in probs],
            textposition="auto",
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=html_escape(title),
        xaxis={"range": [0, 1], "tickformat": ".0%", "tickvals": [0, 0.25, 0.5, 0.75, 1]},
        yaxis={"autorange": "reversed"},
        height=max(150, 60 + 32 * len(probs)),
        margin={"l": 10, "r": 30, "t": 30 if title else 10, "b": 10},
    )
    return fig


def placement_map(
    points: pd.DataFrame,
    x: str,
    y: str,
    photo_xy: tuple[float, float],
    neighbours: Sequence[int] = (),
    title: str = "",
) -> go.Figure:
    """The test images' explanation map coloured by city, the new photo as a star on top.

    ``points`` has ``row, city`` and the coordinate columns ``x``, ``y``; ``neighbours`` are the
    test rows nearest to the photo (ringed).
    """
    fig = go.Figure()
    colors = city_colors(sorted(points["city"].unique()))
    for city, grp in points.groupby("city", sort=True):
        fig.add_trace(
            go.Scattergl(
                x=grp[x],
                y=grp[y],
                mode="markers",
                name=html_escape(city),
                marker={"size": 4, "color": colors[city], "opacity": 0.5},
                hoverinfo="skip",
            )
        )
    near = points[points["row"].isin(list(neighbours))]
    if len(near):
        fig.add_trace(
            go.Scatter(
                x=near[x],
                y=near[y],
                mode="markers",
                name="nearest test images",
                marker={
                    "size": 11,
                    "color": "rgba(0,0,0,0)",
                    "line": {"width": 2, "color": "#111"},
                },
                hoverinfo="skip",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[photo_xy[0]],
            y=[photo_xy[1]],
            mode="markers",
            name="your photo",
            marker={"size": 18, "symbol": "star", "color": "#ffd400", "line": {"width": 1.5}},
        )
    )
    fig.update_layout(
        title=html_escape(title),
        height=420,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        xaxis={"showticklabels": False, "title": None},
        yaxis={"showticklabels": False, "title": None},
        legend={"orientation": "h", "y": -0.05},
    )
    return fig
