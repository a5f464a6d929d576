"""Pure logic of the Geography page: test images at their coordinates, H3 cells, exports.

No Streamlit here. The page draws two kinds of map from what these functions build:

* **Tile-free points** (the default): the explanation map's own component
  (:mod:`cityviz.ui.scatter`, plotly.js ``scattergl`` in WebGL) with longitude and latitude as x
  and y (:func:`component_frame`), so hovering a point shows its thumbnails from the cache's
  sprite sheets and box / lasso selections come back as test rows, exactly as on the explanation
  map. It needs nothing from the internet.
* **Street map** (a toggle, for a browser that is online): Plotly ``scatter_map`` (MapLibre GL,
  Plotly >= 6) with OpenStreetMap tiles, or MapLibre's tile-free ``white-bg`` style, for the
  points (:func:`points_figure`) and for the H3 hexagons (:func:`cells_figure`).

Why Plotly ``scatter_map`` rather than pydeck for the street map, and the component for the
points. Measured with ``bench/dashboard.py --only geo,geolibs`` (Chromium, headless, software
WebGL) at 30 000 points on a 2-core machine at load 34-36, so only the comparison means
anything: ``scatter_map`` (tile-free style) was interactive after 67 s with hover round trips of
346 ms median; pydeck's ``ScatterplotLayer`` in ``st.pydeck_chart`` was not interactive within
120 s (the renderer stopped answering; at 3 000 points too), so pydeck is out for software
WebGL. Neither can show a photo on hover (Plotly's hover label is text, a pydeck tooltip an HTML
template per point without the sprite sheets), so the default view is the explanation map's own
component, already built to show thumbnails at 30 000 points; the street map gives up hover
thumbnails for the tiles.

Formulas: a cell's object profile is R_p^c (paper eq. 1) of the cell's test images against
R_p^c of all test images of the same city (:func:`cityviz.geo.cell_profiles`); an image's
*explained share* of an object is ``M_p,i / sum_q M_q,i``, the fraction of the image's explained
pixels (mask >= threshold) that the segmenter labels as object ``p`` (the per-image form of
``share`` in :func:`cityviz.stats.rpc_table`).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from cityviz import stats
from cityviz.ui import map as um
from cityviz.ui.safe_text import csv_safe, html_escape

COLOR_BY = ("Predicted city", "Confidence", "Correct / wrong", "Explained share of an object")
OBJECT_SHARE = COLOR_BY[3]
# What a cell's colour shows for each point colouring (cells_table columns).
CELL_VALUE = {
    "Predicted city": ("n_images", "test images"),
    "Confidence": ("confidence", "mean confidence"),
    "Correct / wrong": ("accuracy", "accuracy"),
    OBJECT_SHARE: ("share", "mean explained share"),
}
ALL_AREAS = "All cities"
RESOLUTIONS = tuple(range(4, 12))  # H3 resolutions offered (edge ~22 km .. ~25 m)
SHARE_PREFIX = "share "
OSM_STYLE = "open-street-map"
BLANK_STYLE = "white-bg"
OSM_ATTRIBUTION = "Map tiles © OpenStreetMap contributors"

NO_COORDINATES_MESSAGE = (
    "This cache has no image coordinates, so there is nothing to put on a map: give the photos "
    "coordinates in one of three ways (VPR / Tokyo 24/7-style file names "
    "`@utm_e@utm_n@zone@letter@lat@lon@...`, `lat` and `lon` columns in a CSV manifest, or EXIF "
    "GPS tags in JPEGs) and rebuild with `python -m precompute --data DATA --cache DIR --force "
    "--stages data` (and the stages after it)."
)
OFFLINE_NOTE = (
    "Tile-free view: no street-map background, because map tiles come from the OpenStreetMap "
    "servers and need an internet connection in your browser. Switch on *Street map* when you "
    "are online."
)
ONLINE_NOTE = (
    "Street map: tiles from OpenStreetMap (needs an internet connection in your browser; a blank "
    "background means it has none: switch *Street map* off). Hover shows text here; the "
    "tile-free view shows each photo's thumbnails on hover."
)


# --------------------------------------------------------------------------- the table


def geo_frame(test: pd.DataFrame, predictions: pd.DataFrame, cities: Sequence[str]) -> pd.DataFrame:
    """One row per test image (ordered by test row) with its coordinates and one model's result.

    ``test``: the cache's test images (``row, image_id, path, city`` and, when the data set has
    them, float64 ``lat, lon`` in degrees, NaN where unknown); ``predictions``: that model's rows
    of ``predictions.parquet``. Columns: ``row, image_id, path, city, pred_city, correct,
    confidence, lat, lon`` (lat/lon float64, all NaN for a cache without coordinates).
    """
    frame = test[["row", "image_id", "path", "city"]].copy()
    pred = predictions.set_index("row")
    names = np.asarray(list(cities), dtype=object)
    frame["pred_city"] = names[pred.loc[frame["row"], "pred"].to_numpy()]
    frame["correct"] = pred.loc[frame["row"], "correct"].to_numpy(dtype=bool)
    frame["confidence"] = pred.loc[frame["row"], "confidence"].to_numpy(dtype=np.float32)
    for col in ("lat", "lon"):
        vals = test.get(col, np.nan)
        frame[col] = np.asarray(vals, dtype=np.float64)
    bad = ~frame["lat"].between(-90, 90) | ~frame["lon"].between(-180, 180)
    frame.loc[bad, ["lat", "lon"]] = np.nan  # out of range reads as unknown
    return frame.reset_index(drop=True)


def located(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`geo_frame` that have both coordinates."""
    return frame[frame["lat"].notna() & frame["lon"].notna()].reset_index(drop=True)


def area_options(frame: pd.DataFrame) -> list[str]:
    """:data:`ALL_AREAS` and then every true city with located images, most located first."""
    counts = located(frame)["city"].value_counts()
    return [ALL_AREAS, *sorted(counts.index, key=lambda c: (-counts[c], str(c)))]


def default_area(frame: pd.DataFrame, max_span_deg: float = 2.0) -> str:
    """:data:`ALL_AREAS` when the located images fit in ``max_span_deg`` degrees of latitude
    and longitude (one metropolitan area), else the city with the most located images (cities
    on different continents would be specks at the ends of a world-wide map)."""
    pts = located(frame)
    if pts.empty:
        return ALL_AREAS
    span = max(float(np.ptp(pts["lat"])), float(np.ptp(pts["lon"])))
    return ALL_AREAS if span <= max_span_deg else area_options(frame)[1]


def in_area(frame: pd.DataFrame, area: str) -> pd.DataFrame:
    """The located rows of ``frame`` in ``area`` (a true city, or :data:`ALL_AREAS`)."""
    pts = located(frame)
    return pts if area == ALL_AREAS else pts[pts["city"] == area].reset_index(drop=True)


def missing_note(n_total: int, n_located: int) -> str | None:
    """The sentence about test images left off the map, or None when every image is on it."""
    missing = n_total - n_located
    if missing <= 0:
        return None
    return (
        f"{missing:,} of {n_total:,} test images have no coordinates and are not on the map "
        "(they count everywhere else in the dashboard)."
    )


# --------------------------------------------------------------------------- explained shares


def explained_shares(
    hist: pd.DataFrame,
    image_ids: Sequence[str],
    threshold: float,
    class_names: Sequence[str],
) -> pd.DataFrame:
    """Per image and object, the object's share of the image's explanation.

    ``share[i, p] = M_p,i / sum_q M_q,i`` with ``M_p,i`` the pixels of object ``p`` in image
    ``i`` whose mask value is ``>= threshold`` (from the histogram table ``hist``:
    ``image_id, class_id, n_pixels, h00..``; see :func:`cityviz.stats.explained_pixels`).
    Returns a float64 frame indexed by ``image_ids`` (in that order), one column per object
    named by ``class_names`` that is explained in at least one of these images; 0 where the
    object is absent or the image has no explained pixel. Raises ValueError on a ``class_id``
    with no name or a threshold off the histogram's bin grid.
    """
    ids = pd.Index(list(image_ids), name="image_id")
    rows = hist[hist["image_id"].isin(ids)]
    if rows.empty:
        return pd.DataFrame(index=ids, dtype=np.float64)
    m = stats.explained_pixels(stats.hist_counts(rows), threshold)
    table = pd.DataFrame(
        {"image_id": rows["image_id"].to_numpy(), "class_id": rows["class_id"].to_numpy(), "M": m}
    )
    table = table[table["M"] > 0]
    names = list(class_names)
    bad = table.loc[(table["class_id"] < 0) | (table["class_id"] >= len(names)), "class_id"]
    if len(bad):
        raise ValueError(f"class_id {int(bad.iloc[0])} has no name ({len(names)} class names)")
    wide = table.pivot_table(index="image_id", columns="class_id", values="M", aggfunc="sum")
    wide = wide.reindex(ids).fillna(0.0).astype(np.float64)
    total = wide.sum(axis=1)
    shares = wide.div(total.where(total > 0), axis=0).fillna(0.0)
    shares = shares[sorted(shares.columns)]
    shares.columns = [names[int(c)] for c in shares.columns]
    return shares


# --------------------------------------------------------------------------- colourings


def color_spec(
    frame: pd.DataFrame,
    color_by: str,
    cities: Sequence[str],
    share: pd.Series | None = None,
    object_name: str | None = None,
) -> dict[str, Any]:
    """How to colour the points (the explanation map's format, :func:`cityviz.ui.map.color_spec`).

    ``color_by`` is one of :data:`COLOR_BY`; for :data:`OBJECT_SHARE`, ``share`` holds each
    row's explained share of ``object_name`` (float, aligned with ``frame``), shown on a 0..max
    continuous scale. Raises ValueError for an unknown colouring or a missing ``share``.
    """
    if color_by != OBJECT_SHARE:
        if color_by not in COLOR_BY:
            raise ValueError(f"unknown colouring {color_by!r}; known: {', '.join(COLOR_BY)}")
        return um.color_spec(frame, color_by, cities)
    if share is None:
        raise ValueError("colouring by an object's explained share needs the shares")
    values = np.asarray(share, dtype=np.float32)
    top = float(np.nanmax(values)) if len(values) else 0.0
    return {
        "mode": "continuous",
        "values": values,
        "title": f"share of {object_name or 'the object'}",
        "colorscale": "Viridis",
        "cmin": 0.0,
        "cmax": max(top, 1e-6),
    }


# --------------------------------------------------------------------------- tile-free points


def component_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The located rows as the explanation-map component's table, with ``geo_x, geo_y``.

    ``geo_x = lon * cos(lat0)`` and ``geo_y = lat`` (degrees; ``lat0`` the median latitude): an
    equirectangular projection about the data's centre, so east-west distances are not
    stretched by ``1 / cos(lat)`` against north-south ones (≈ 1.2 at Tokyo's latitude). The
    component has no cluster information here: ``cluster`` is -1 (unclustered).
    """
    out = located(frame)
    lat0 = float(out["lat"].median()) if len(out) else 0.0
    out["geo_x"] = (out["lon"] * math.cos(math.radians(lat0))).astype(np.float32)
    out["geo_y"] = out["lat"].astype(np.float32)
    out["cluster"] = -1
    out["cluster_label"] = None
    return out


def component_args(
    frame: pd.DataFrame,
    color: Mapping[str, Any],
    cities: Sequence[str],
    *,
    view_key: str,
    thumbs: Mapping[str, Any] | None,
    height: int,
    dragmode: str,
    selected: Sequence[int] = (),
) -> dict[str, Any]:
    """The scatter component's arguments for ``frame`` (from :func:`component_frame`): the
    explanation map's :func:`~cityviz.ui.map.payload` with the ``geo`` coordinates, drawn at
    equal scale on both axes (``equal_aspect``) so that a metre east spans as many pixels as a
    metre north, whatever the frame's shape."""
    return um.payload(
        frame,
        "geo",
        color,
        cities,
        view_key=view_key,
        thumbs=thumbs,
        labels=[],
        atlas=None,
        height=height,
        dragmode=dragmode,
        selected=selected,
        equal_aspect=True,
    )


# --------------------------------------------------------------------------- street map


def _center_zoom(
    lat: np.ndarray, lon: np.ndarray, width: int = 850, height: int = 600
) -> tuple[dict[str, float], float]:
    """Map centre and the Web-Mercator zoom (512 px tiles, as MapLibre) that shows every point
    in a ``width`` × ``height`` px map, with a small margin."""
    if len(lat) == 0:
        return {"lat": 0.0, "lon": 0.0}, 1.0
    center = {
        "lat": float((np.max(lat) + np.min(lat)) / 2),
        "lon": float((np.max(lon) + np.min(lon)) / 2),
    }
    span_lon = max(float(np.ptp(lon)), 1e-4)
    span_lat = max(float(np.ptp(lat)) / max(math.cos(math.radians(center["lat"])), 0.1), 1e-4)
    zoom = min(
        math.log2(360.0 * width / 512 / span_lon), math.log2(360.0 * height / 512 / span_lat)
    )
    return center, float(min(max(zoom - 0.4, 0.0), 18.0))


def _map_layout(fig: go.Figure, lat, lon, tiles: bool, height: int, uirevision: str) -> None:
    center, zoom = _center_zoom(np.asarray(lat, float), np.asarray(lon, float), height=height)
    fig.update_layout(
        map={"style": OSM_STYLE if tiles else BLANK_STYLE, "center": center, "zoom": zoom},
        height=height,
        margin={"l": 0, "r": 0, "t": 30, "b": 0},
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 0},
        uirevision=uirevision,
        dragmode="lasso",
    )


def points_figure(
    frame: pd.DataFrame,
    color: Mapping[str, Any],
    *,
    tiles: bool,
    height: int = 640,
    uirevision: str = "geo",
) -> go.Figure:
    """Plotly ``scatter_map`` of the located rows of ``frame`` (lon/lat in degrees), coloured by
    ``color`` (:func:`color_spec`); every point's ``customdata`` is its test row, so a selection
    event names rows. ``tiles``: OpenStreetMap raster tiles, else MapLibre's tile-free
    ``white-bg`` style. Data strings (city names) are HTML-escaped: Plotly renders tags."""
    pts = located(frame)
    fig = go.Figure()
    city = pts["city"].map(html_escape).to_numpy(dtype=object)
    pred = pts["pred_city"].map(html_escape).to_numpy(dtype=object)
    conf = pts["confidence"].to_numpy(dtype=np.float64)
    text = [f"{c} → {p} ({v:.0%})" for c, p, v in zip(city, pred, conf, strict=True)]
    base = {"mode": "markers", "hovertemplate": "%{text}<extra></extra>"}
    size = 5 if len(pts) > 5000 else 8
    if color["mode"] == "continuous":
        values = np.asarray(color["values"], dtype=np.float64)
        fig.add_trace(
            go.Scattermap(
                lat=pts["lat"], lon=pts["lon"], customdata=pts["row"], text=text,
                name=html_escape(color["title"]),
                marker={"size": size, "color": values, "colorscale": color["colorscale"],
                        "cmin": color["cmin"], "cmax": color["cmax"], "showscale": True,
                        "colorbar": {"title": {"text": html_escape(color["title"])}}},
                **base,
            )
        )  # fmt: skip
    else:
        codes = np.asarray(color["codes"])
        for k, group in enumerate(color["groups"]):
            idx = np.flatnonzero(codes == k)
            fig.add_trace(
                go.Scattermap(
                    lat=pts["lat"].to_numpy()[idx], lon=pts["lon"].to_numpy()[idx],
                    customdata=pts["row"].to_numpy()[idx], text=[text[i] for i in idx],
                    name=f"{html_escape(group['name'])} ({len(idx)})",
                    marker={"size": size, "color": group["color"]},
                    **base,
                )
            )  # fmt: skip
    _map_layout(fig, pts["lat"], pts["lon"], tiles, height, uirevision)
    return fig


def event_rows(event: Any, valid_rows: np.ndarray) -> np.ndarray:
    """Test rows of a ``st.plotly_chart`` selection event on :func:`points_figure` (each
    point's ``customdata``), validated like :func:`cityviz.ui.map.selected_rows`; sorted."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return np.empty(0, dtype=np.int64)
    rows = []
    for p in points if isinstance(points, list) else []:
        value = p.get("customdata") if isinstance(p, Mapping) else None
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, int | float | np.integer | np.floating) and not isinstance(
            value, bool
        ):
            rows.append(int(value))
    return um.selected_rows({"rows": rows}, valid_rows)


def event_cell(event: Any, cells: Sequence[str]) -> str | None:
    """The H3 cell clicked in a ``st.plotly_chart`` selection event on :func:`cells_figure`
    (its ``location``), or None when none of ``cells`` was clicked."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    known = set(cells)
    for p in points if isinstance(points, list) else []:
        loc = p.get("location") if isinstance(p, Mapping) else None
        if isinstance(loc, str) and loc in known:
            return loc
    return None


# --------------------------------------------------------------------------- H3 cells


def default_resolution(lat: np.ndarray, lon: np.ndarray, min_per_cell: float = 8.0) -> int:
    """The finest H3 resolution (of :data:`RESOLUTIONS`) whose occupied cells hold at least
    ``min_per_cell`` located images on average, or the coarsest one."""
    from cityviz import geo

    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    if len(lat) == 0:
        return RESOLUTIONS[0]
    for res in sorted(RESOLUTIONS, reverse=True):
        n_cells = len(pd.unique(np.asarray(geo.cells(lat, lon, res), dtype=object)))
        if len(lat) / n_cells >= min_per_cell:
            return res
    return RESOLUTIONS[0]


def cells_table(
    frame: pd.DataFrame, resolution: int, share: pd.Series | None = None
) -> pd.DataFrame:
    """Per H3 cell of the located rows: ``cell, n_images, accuracy, confidence, share,
    top_city, top_city_n, lat, lon`` (the cell centre in degrees), sorted by
    ``n_images`` descending then cell. ``share`` (aligned with ``frame``) gives the mean
    explained share of an object per cell (NaN without it). ``top_city``: the most frequent
    true city of the cell's images."""
    from cityviz import geo

    pts = located(frame)
    cols = ["cell", "n_images", "accuracy", "confidence", "share", "top_city", "top_city_n",
            "lat", "lon"]  # fmt: skip
    if pts.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    work = pd.DataFrame(
        {
            "cell": np.asarray(geo.cells(pts["lat"], pts["lon"], resolution), dtype=object),
            "correct": pts["correct"].astype(float),
            "confidence": pts["confidence"].astype(float),
            "city": pts["city"],
            "share": (
                np.asarray(share, dtype=np.float64)[
                    (frame["lat"].notna() & frame["lon"].notna()).to_numpy()
                ]
                if share is not None
                else np.nan
            ),
        }
    )
    out = work.groupby("cell", sort=True).agg(
        n_images=("correct", "size"),
        accuracy=("correct", "mean"),
        confidence=("confidence", "mean"),
        share=("share", "mean"),
    )
    top = work.groupby(["cell", "city"]).size().rename("n").reset_index()
    top = top.sort_values(["cell", "n", "city"], ascending=[True, False, True])
    top = top.drop_duplicates("cell").set_index("cell")
    out["top_city"] = top["n"].index.map(top["city"])
    out["top_city_n"] = top["n"].reindex(out.index).to_numpy()
    centres = [geo.cell_centre(c) for c in out.index]
    out["lat"] = [c[0] for c in centres]
    out["lon"] = [c[1] for c in centres]
    out = out.reset_index().sort_values(["n_images", "cell"], ascending=[False, True])
    return out[cols].reset_index(drop=True)


def cells_figure(
    cells: pd.DataFrame,
    value: str,
    title: str,
    *,
    tiles: bool,
    height: int = 640,
    uirevision: str = "geo-cells",
) -> go.Figure:
    """Plotly ``choropleth_map`` of :func:`cells_table`'s hexagons coloured by its column
    ``value``; hover gives the cell's image count, its top city and the value. Clicking a cell
    selects it (its ``location`` in the selection event, see :func:`event_cell`)."""
    from cityviz import geo

    fig = go.Figure()
    z = cells[value].astype(float).to_numpy()
    text = [
        f"{int(n)} images · {html_escape(c)} {int(k)}"
        for n, c, k in zip(cells["n_images"], cells["top_city"], cells["top_city_n"], strict=True)
    ]
    fig.add_trace(
        go.Choroplethmap(
            geojson=geo.cell_boundary_geojson(cells["cell"].tolist()),
            locations=cells["cell"],
            z=z,
            text=text,
            colorscale="Viridis",
            marker={"opacity": 0.6, "line": {"width": 1, "color": "#333333"}},
            colorbar={"title": {"text": html_escape(title)}},
            hovertemplate="%{location}<br>%{text}<br>" + html_escape(title) + " %{z:.3g}"
            "<extra></extra>",
        )
    )
    corners = np.asarray(
        [v for f in fig.data[0].geojson["features"] for v in f["geometry"]["coordinates"][0]]
    ).reshape(-1, 2)
    _map_layout(fig, corners[:, 1], corners[:, 0], tiles, height, uirevision)
    fig.update_layout(dragmode="pan")
    return fig


def cell_rows(frame: pd.DataFrame, resolution: int, cell: str) -> np.ndarray:
    """The test rows of the located images that fall in H3 ``cell`` at ``resolution``; sorted."""
    from cityviz import geo

    pts = located(frame)
    if pts.empty:
        return np.empty(0, dtype=np.int64)
    ids = np.asarray(geo.cells(pts["lat"], pts["lon"], resolution), dtype=object)
    return np.sort(pts.loc[ids == cell, "row"].to_numpy(dtype=np.int64))


def cell_profile(
    profiles: pd.DataFrame, cell: str, min_mean_pixels: float = 100.0, top: int = 10
) -> pd.DataFrame:
    """The rows of :func:`cityviz.geo.cell_profiles` for ``cell``: per city, its ``top``
    objects by the cell's R_p^c (``rpc_cell``, eq. 1) next to the city's (``rpc_city``),
    keeping objects whose mean pixel count over the cell's images of that city exceeds
    ``min_mean_pixels`` (the paper's filter, as in :func:`cityviz.stats.rpc_table`)."""
    rows = profiles[(profiles["cell"] == cell) & (profiles["mean_pixels"] > min_mean_pixels)]
    if rows.empty:
        return rows.reset_index(drop=True)
    rows = rows.sort_values(["city", "rpc_cell", "class_id"], ascending=[True, False, True])
    return rows.groupby("city", sort=False).head(top).reset_index(drop=True)


def selection_summary(frame: pd.DataFrame, rows: np.ndarray) -> dict[str, Any]:
    """Size, accuracy (NaN when empty) and image count per true city of the selected rows."""
    sel = frame[frame["row"].isin(np.asarray(rows))]
    return {
        "n": len(sel),
        "accuracy": float(sel["correct"].mean()) if len(sel) else float("nan"),
        "cities": sel["city"].value_counts().to_dict(),
    }


# --------------------------------------------------------------------------- exports


def export_table(frame: pd.DataFrame, shares: pd.DataFrame | None) -> pd.DataFrame:
    """The located rows with one column per object's explained share (``share <object>``):
    ``image_id, path, city, predicted_city, confidence, correct, lat, lon, share …``."""
    pts = located(frame)
    out = pd.DataFrame(
        {
            "image_id": pts["image_id"].astype(str),
            "path": pts["path"].astype(str),
            "city": pts["city"].astype(str),
            "predicted_city": pts["pred_city"].astype(str),
            "confidence": pts["confidence"].astype(np.float64).round(6),
            "correct": pts["correct"].astype(bool),
            "lat": pts["lat"],
            "lon": pts["lon"],
        }
    )
    if shares is not None and shares.shape[1]:
        block = shares.reindex(pts["image_id"]).fillna(0.0).round(6)
        block.columns = [f"{SHARE_PREFIX}{c}" for c in block.columns]
        out = pd.concat([out, block.reset_index(drop=True)], axis=1)
    return out


def to_csv(frame: pd.DataFrame, shares: pd.DataFrame | None) -> bytes:
    """:func:`export_table` as UTF-8 CSV; every text cell through
    :func:`~cityviz.ui.safe_text.csv_safe` (no spreadsheet formulas from data)."""
    return csv_safe(export_table(frame, shares)).to_csv(index=False).encode("utf-8")


def to_geojson(frame: pd.DataFrame, shares: pd.DataFrame | None) -> bytes:
    """:func:`export_table` as a GeoJSON FeatureCollection (RFC 7946): one ``Point`` feature per
    located image, coordinates ``[lon, lat]`` in WGS84 degrees, the other columns as properties
    (the per-object explained shares as ``"share <object>"``). UTF-8 bytes; finite numbers only."""
    table = export_table(frame, shares)
    props = [c for c in table.columns if c not in ("lat", "lon")]
    features = []
    for rec, lat, lon in zip(
        table[props].to_dict("records"), table["lat"], table["lon"], strict=True
    ):
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [float(lon), float(lat)]},
                "properties": {k: _plain(v) for k, v in rec.items()},
            }
        )
    doc = {"type": "FeatureCollection", "features": features}
    buf = io.StringIO()
    json.dump(doc, buf, ensure_ascii=False, allow_nan=False)
    return buf.getvalue().encode("utf-8")


def _plain(value: Any) -> Any:
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        return float(value) if math.isfinite(value) else None
    return value
