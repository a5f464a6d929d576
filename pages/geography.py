"""Geography: every located test image at its coordinates, per model; H3 cells; exports.

The default view is tile-free (our machines and many planners' laptops in the field have no
internet): the explanation map's component with longitude / latitude as x / y, which shows a
point's thumbnails on hover and sends box / lasso selections back. *Street map* swaps in Plotly's
MapLibre map with OpenStreetMap tiles. *H3 cells* aggregates the images to hexagons; a clicked
(or picked) cell shows its images and its object profile against its city's. See
:mod:`cityviz.ui.geography` for the choice of map libraries.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cityviz.segment import NO_SEGMENTER_MESSAGE
from cityviz.store import Cache
from cityviz.ui import geography as ug
from cityviz.ui import map as um
from cityviz.ui.safe_text import html_escape, md_escape
from cityviz.ui.scatter import scatter_map, thumb_args
from pages.common import cache_mtime, current_cache, guard, model_labels, section

MAP_HEIGHT = 600
POINTS_KEY = "geo_points"
DRAG_MODES = {"Zoom": "zoom", "Box select": "select", "Lasso": "lasso"}
VIEWS = ("Points", "H3 cells")
EXPORTS = (("GeoJSON", "geojson", "application/geo+json"), ("CSV with lat/lon", "csv", "text/csv"))
"""The downloads: button label, format (file ending, :func:`_export`'s ``fmt``), MIME type."""


@st.cache_resource(show_spinner="Reading the coordinates…", max_entries=8)
def _frame(root: str, mtime: float, model_id: str) -> pd.DataFrame:
    cache = Cache(root)
    return ug.geo_frame(cache.test_images(), cache.predictions(model_id), cache.cities)


@st.cache_resource(show_spinner=False, max_entries=8)
def _hist(root: str, mtime: float, model_id: str) -> pd.DataFrame:
    return Cache(root).hist(model_id)


@st.cache_resource(show_spinner="Measuring each image's explained objects…", max_entries=8)
def _shares(root: str, mtime: float, model_id: str, threshold: float) -> pd.DataFrame:
    frame = _frame(root, mtime, model_id)
    names = Cache(root).class_names() or []
    return ug.explained_shares(_hist(root, mtime, model_id), frame["image_id"], threshold, names)


@st.cache_data(show_spinner=False, max_entries=8)
def _default_resolution(root: str, mtime: float, model_id: str) -> int:
    pts = ug.located(_frame(root, mtime, model_id))
    return ug.default_resolution(pts["lat"].to_numpy(), pts["lon"].to_numpy())


@st.cache_resource(show_spinner="Profiling the cells…", max_entries=16)
def _profiles(
    root: str, mtime: float, model_id: str, resolution: int, threshold: float
) -> pd.DataFrame:
    from cityviz import geo

    frame = _frame(root, mtime, model_id)  # all test images: rpc_city counts unlocated ones too
    names = Cache(root).class_names() or []
    return geo.cell_profiles(frame, _hist(root, mtime, model_id), threshold, names, resolution)


@st.cache_data(show_spinner=False, max_entries=64)
def _tiles(root: str, mtime: float, kind: str, rows: tuple[int, ...]) -> list[np.ndarray]:
    layout = Cache(root).thumbs
    return um.read_tiles(root, kind, rows, size=int(layout["size"]), per_row=int(layout["per_row"]))


@st.cache_data(show_spinner=False, max_entries=4)
def _export(root: str, mtime: float, model_id: str, threshold: float, fmt: str) -> bytes:
    frame = _frame(root, mtime, model_id)
    cache = Cache(root)
    shares = None
    if cache.has_labels and cache.class_names() is not None:
        shares = _shares(root, mtime, model_id, threshold)
    return ug.to_geojson(frame, shares) if fmt == "geojson" else ug.to_csv(frame, shares)


def _threshold(cache: Cache) -> float:
    return float(cache.manifest.get("config", {}).get("threshold", 0.5))


def main() -> None:
    st.title("Geography")
    cache = current_cache()
    mtime = cache_mtime(cache)
    labels = model_labels(cache)
    if not labels:
        st.info("This cache has no trained models yet: run `python -m precompute --cache DIR`.")
        return
    bar = st.container(horizontal=True, vertical_alignment="bottom", gap="medium",
                       key="geo-controls")  # fmt: skip
    model_id = bar.selectbox(
        "Model", list(labels), format_func=labels.get, key="geo_model", width=230
    )
    n_located = 0
    with section("The geographic map"):
        frame = _frame(str(cache.root), mtime, model_id)
        pts = ug.located(frame)
        n_located = len(pts)
        if pts.empty:
            st.info(ug.NO_COORDINATES_MESSAGE)
            return
        _geography(cache, mtime, labels, bar, model_id, frame, pts)
    if n_located:  # nothing to export without coordinates (or without the images table)
        with section("The exports"):
            _exports(cache, mtime, model_id, n_located)


def _geography(cache, mtime, labels, bar, model_id, frame, pts) -> None:
    color_by = bar.selectbox("Colour by", ug.COLOR_BY, key="geo_color", width=230)
    share, obj = None, None
    if color_by == ug.OBJECT_SHARE:
        with section("Colouring by an object's explained share"):
            share, obj = _object_share(cache, mtime, model_id, bar, pts)
        if share is None:
            color_by = ug.COLOR_BY[0]
    options = ug.area_options(frame)
    area = bar.selectbox(
        "Area", options, index=options.index(ug.default_area(frame)), key="geo_area", width=200,
        help="The images of one city (by true city), or of all cities on one map.",
    )  # fmt: skip
    view = bar.segmented_control("View", VIEWS, default=VIEWS[0], required=True, key="geo_view")
    tiles = bar.toggle(
        "Street map", value=False, key="geo_tiles",
        help="OpenStreetMap tiles behind the map; needs an internet connection in the browser.",
    )  # fmt: skip
    st.caption(ug.ONLINE_NOTE if tiles else ug.OFFLINE_NOTE)
    note = ug.missing_note(len(frame), len(pts))
    if note:
        st.caption(note)

    if share is not None:
        share = pd.Series(share, index=pts["image_id"])
    pts = ug.in_area(pts, area)
    if share is not None:
        share = share.reindex(pts["image_id"]).to_numpy()
    color = ug.color_spec(pts, color_by, cache.cities, share, obj)
    valid = pts["row"].to_numpy()
    if view == VIEWS[0]:
        rows = _points(cache, model_id, labels, bar, pts, color, tiles, valid, area)
        if len(rows) == 0:
            how = "the box or lasso tool above the map" if tiles else "*Box select* or *Lasso*"
            st.caption(f"Nothing selected yet: pick {how} and draw around an area.")
            return
        _selection(cache, mtime, model_id, frame, rows)
    else:
        _cells(cache, mtime, model_id, bar, pts, color_by, share, obj, tiles, area)


def _object_share(cache, mtime, model_id, bar, pts) -> tuple[np.ndarray | None, str | None]:
    """The chosen object's explained share per located image (aligned with ``pts``), or
    ``(None, None)`` with a note when the cache cannot tell."""
    names = cache.class_names()
    if not cache.has_labels or names is None:
        st.info(NO_SEGMENTER_MESSAGE)
        return None, None
    shares = _shares(str(cache.root), mtime, model_id, _threshold(cache))
    objects = list(shares.mean().sort_values(ascending=False).index)
    if not objects:
        st.info("No object lies inside any explanation at this threshold.")
        return None, None
    obj = bar.selectbox("Object", objects, key="geo_object", width=200)
    return shares[obj].reindex(pts["image_id"]).fillna(0.0).to_numpy(), obj


def _points(cache, model_id, labels, bar, pts, color, tiles, valid, area) -> np.ndarray:
    if tiles:
        fig = ug.points_figure(pts, color, tiles=True, height=MAP_HEIGHT,
                               uirevision=f"geo|{model_id}|{area}")  # fmt: skip
        event = st.plotly_chart(
            fig, on_select="rerun", selection_mode=("box", "lasso", "points"),
            key=f"geo_points_map_{model_id}", config={"scrollZoom": True},
        )  # fmt: skip
        st.caption(ug.OSM_ATTRIBUTION)
        return ug.event_rows(event, valid)
    drag = bar.segmented_control(
        "Mouse drag", list(DRAG_MODES), default="Zoom", required=True, key="geo_drag"
    )
    thumbs = thumb_args(cache, model_id)
    if thumbs is None:
        st.info("No thumbnails in this cache (run the `thumbs` stage): hovering shows text only.")
    view_key = f"geo|{model_id}|{area}"
    cf = ug.component_frame(pts)
    before = um.selected_rows(st.session_state.get(POINTS_KEY), valid, view_key)
    args = ug.component_args(
        cf, color, cache.cities, view_key=view_key, thumbs=thumbs, height=MAP_HEIGHT,
        dragmode=DRAG_MODES[drag], selected=before.tolist(),
    )  # fmt: skip
    value = scatter_map(args, key=POINTS_KEY)
    st.caption(
        f"{len(pts):,} located test images of {md_escape(labels[model_id])}, at their longitude "
        "(across) and latitude (up). Hover a point to see the photo, its mask and its visual "
        "explanation; pick *Box select* or *Lasso* to select an area; double-click to clear."
    )
    return um.selected_rows(value, valid, view_key)


def _cells(cache, mtime, model_id, bar, pts, color_by, share, obj, tiles, area) -> None:
    root = str(cache.root)
    default = _default_resolution(root, mtime, model_id)
    res = bar.select_slider(
        "H3 resolution", list(ug.RESOLUTIONS), value=default, key="geo_resolution", width=200,
        help="Uber's H3 hexagons: resolution 7 cells are ~1.2 km across the edge, 8 ~460 m, "
        "9 ~170 m, 10 ~65 m.",
    )  # fmt: skip
    cells = ug.cells_table(pts, res, share)
    value, title = ug.CELL_VALUE[color_by]
    if obj is not None:
        title = f"{title} of {obj}"
    fig = ug.cells_figure(cells, value, title, tiles=tiles, height=MAP_HEIGHT,
                          uirevision=f"geo-cells|{model_id}|{area}|{res}")  # fmt: skip
    cell_key = f"geo_cell_{res}"
    chart_key = f"geo_cells_chart_{res}"
    ids = cells["cell"].tolist()

    def clicked() -> None:
        cell = ug.event_cell(st.session_state.get(chart_key), ids)
        if cell is not None:
            st.session_state[cell_key] = cell

    st.plotly_chart(fig, on_select=clicked, selection_mode="points", key=chart_key,
                    config={"scrollZoom": True})  # fmt: skip
    if tiles:
        st.caption(ug.OSM_ATTRIBUTION)
    st.caption(
        f"{len(cells):,} H3 cells at resolution {res}, coloured by {md_escape(title)}. Click a "
        "cell (or pick it below) to see its images and its object profile."
    )
    counts = dict(zip(cells["cell"], cells["n_images"], strict=True))
    cell = st.selectbox(
        "Cell", ids, key=cell_key, format_func=lambda c: f"{c} · {counts[c]} images", width=320
    )
    if cell is None:
        return
    rows = ug.cell_rows(pts, res, cell)
    st.subheader(f"Cell {cell}: {len(rows)} images")
    left, right = st.columns([3, 2], gap="large")
    with left, st.container(key="geo-gallery"), section("The gallery of the cell"):
        _gallery(cache, mtime, model_id, pts, rows)
    with right, section("The object profile of the cell"):
        names = cache.class_names()
        if not cache.has_labels or names is None:
            st.info(NO_SEGMENTER_MESSAGE)
            return
        min_pixels = float(cache.manifest.get("config", {}).get("min_pixels", 100.0))
        profiles = _profiles(root, mtime, model_id, res, _threshold(cache))
        profile = ug.cell_profile(profiles, cell, min_pixels)
        st.markdown("**Object profile** — R_p^c of the cell's images vs. all images of the city")
        if profile.empty:
            st.info("No object in this cell passes the minimum pixel count.")
            return
        st.plotly_chart(_cell_chart(profile), key="geo_cell_profile")
        shown = [c for c in ("city", "object", "n_images", "rpc_cell", "rpc_city", "lift",
                             "share") if c in profile]  # fmt: skip
        st.dataframe(
            profile[shown].rename(columns={"rpc_cell": "R_p^c cell", "rpc_city": "R_p^c city",
                                           "share": "share of explanation"}),
            hide_index=True,
        )  # fmt: skip


def _cell_chart(profile: pd.DataFrame) -> go.Figure:
    """Bars of the cell's R_p^c against its city's, per city and object (names HTML-escaped)."""
    fig = go.Figure()
    names = [f"{html_escape(o)} · {html_escape(c)}" for o, c in
             zip(profile["object"], profile["city"], strict=True)]  # fmt: skip
    fig.add_bar(y=names, x=profile["rpc_cell"], orientation="h", name="cell",
                marker_color="#1f77b4")  # fmt: skip
    fig.add_bar(y=names, x=profile["rpc_city"], orientation="h", name="whole city",
                marker_color="#c7c7c7")  # fmt: skip
    fig.update_layout(
        barmode="group",
        height=80 + 34 * len(profile),
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        yaxis={"autorange": "reversed"},
        xaxis={"title": "R_p^c"},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"},
    )
    return fig


def _gallery(cache: Cache, mtime: float, model_id: str, frame: pd.DataFrame, rows) -> None:
    root = str(cache.root)
    kind = f"{model_id}/expl"
    if not cache.thumbs or kind not in cache.thumbs.get("kinds", []):
        st.info("This cache has no thumbnails yet: run the `thumbs` stage of precompute.")
        return
    show = um.gallery_rows(rows, frame.set_index("row")["confidence"])
    tiles = _tiles(root, mtime, kind, tuple(int(r) for r in show))
    st.image(tiles, caption=um.gallery_captions(frame, show), width=128)
    if len(show) < len(rows):
        st.caption(f"{len(show)} of {len(rows)} images, from most to least confident.")


def _selection(cache: Cache, mtime: float, model_id: str, frame: pd.DataFrame, rows) -> None:
    root = str(cache.root)
    summary = ug.selection_summary(frame, rows)
    st.subheader(f"Selection: {summary['n']} images")
    cities = ", ".join(f"{md_escape(c)} {n}" for c, n in summary["cities"].items())
    st.caption(f"Accuracy {summary['accuracy']:.0%} · true cities: {cities}")
    left, right = st.columns([3, 2], gap="large")
    with left, st.container(key="geo-gallery"), section("The gallery of the selection"):
        _gallery(cache, mtime, model_id, frame, rows)
    with right, section("The object profile of the selection"):
        st.markdown("**Object profile** — R_p^c of the selection vs. all test images")
        names = cache.class_names()
        if not cache.has_labels or names is None:
            st.info(NO_SEGMENTER_MESSAGE)
            return
        config = cache.manifest.get("config", {})
        profile = um.selection_profile(
            _hist(root, mtime, model_id),
            frame.loc[frame["row"].isin(rows), "image_id"],
            frame["image_id"],
            _threshold(cache),
            names,
            float(config.get("min_pixels", 100.0)),
        )
        if profile.empty:
            st.info("No object in this selection passes the minimum pixel count.")
            return
        st.dataframe(
            profile.rename(columns={"rpc_selection": "R_p^c selection", "rpc_all": "R_p^c all",
                                    "share_selection": "share of explanation"}),
            hide_index=True, column_config={"class_id": None},
        )  # fmt: skip


def _exports(cache: Cache, mtime: float, model_id: str, n_located: int) -> None:
    root = str(cache.root)
    threshold = _threshold(cache)
    st.markdown(
        f"**Exports** — the {n_located:,} located test images with this model's predicted city, "
        "confidence and each object's share of the explanation (threshold "
        f"{threshold:g}), for QGIS, ArcGIS or a spreadsheet."
    )
    for col, (label, fmt, mime) in zip(st.columns(2, width=520), EXPORTS, strict=True):
        col.download_button(
            label,
            functools.partial(_export, root, mtime, model_id, threshold, fmt),
            file_name=f"cityviz-{model_id}.{fmt}",
            mime=mime,
            icon=":material/download:",
            key=f"geo_export_{fmt}",
            on_click="ignore",
        )


guard(main)
