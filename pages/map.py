"""Explanation map: every test image's Grad-CAM mask on a t-SNE / UMAP map, per model.

Hovering a point shows its thumbnails in the browser (no rerun); a box / lasso / click selection
comes back here and shows that selection's explanations and object profile.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cityviz import stats
from cityviz.segment import NO_SEGMENTER_MESSAGE
from cityviz.store import Cache
from cityviz.ui import map as um
from cityviz.ui.safe_text import html_escape, md_escape
from cityviz.ui.scatter import scatter_map, thumb_args
from pages.common import cache_mtime, current_cache, guard, model_labels, section

MAP_HEIGHT = 640
MAP_KEY = "explanation_map"
DRAG_MODES = {"Zoom": "zoom", "Box select": "select", "Lasso": "lasso"}
TILE_KINDS = {"Explanation": "expl", "Mask overlay": "overlay", "Original": "orig"}


@st.cache_resource(show_spinner="Reading the map…", max_entries=8)
def _frame(root: str, mtime: float, model_id: str) -> pd.DataFrame:
    cache = Cache(root)
    return um.map_frame(
        cache.test_images(), cache.predictions(model_id), cache.embedding(model_id), cache.cities
    )


@st.cache_resource(show_spinner=False, max_entries=8)
def _hist(root: str, mtime: float, model_id: str) -> pd.DataFrame:
    return Cache(root).hist(model_id)


@st.cache_data(show_spinner=False, max_entries=8)
def _lift(root: str, mtime: float, model_id: str) -> pd.DataFrame | None:
    """The lift table of this model's clusters (:func:`cityviz.stats.cluster_lift`), or None
    when the cache has no object statistics."""
    cache = Cache(root)
    names = cache.class_names()
    if (
        not cache.has_labels
        or names is None
        or not (cache.root / f"hist/{model_id}.parquet").exists()
    ):
        return None
    emb = cache.embedding(model_id)
    cluster_of = pd.Series(emb["cluster"].to_numpy(), index=emb["image_id"].to_numpy())
    threshold = float(cache.manifest.get("config", {}).get("threshold", 0.5))
    return stats.cluster_lift(_hist(root, mtime, model_id), cluster_of, threshold, names)


def _named(cache: Cache, mtime: float, model_id: str, frame: pd.DataFrame):
    """The map's table with clusters named by lift, and the labels' hover lines (None when the
    cache has no object statistics: the names stored by the embed stage stay)."""
    lift = _lift(str(cache.root), mtime, model_id)
    if lift is None or lift.empty:
        return frame, None
    labels = stats.lift_labels(lift)
    return um.with_cluster_labels(frame, labels.to_dict()), um.lift_hover(lift)


@st.cache_data(show_spinner=False, max_entries=16)
def _atlas(root: str, mtime: float, model_id: str, method: str, n: int) -> list[int]:
    f = _frame(root, mtime, model_id)
    return um.atlas_rows(f[f"{method}_x"], f[f"{method}_y"], f["row"], n).tolist()


@st.cache_data(show_spinner=False, max_entries=64)
def _tiles(root: str, mtime: float, kind: str, rows: tuple[int, ...]) -> list[np.ndarray]:
    layout = Cache(root).thumbs
    return um.read_tiles(root, kind, rows, size=int(layout["size"]), per_row=int(layout["per_row"]))


def _profile_chart(profile: pd.DataFrame) -> go.Figure:
    """Bars of the selection's R_p^c against all images' (object names HTML-escaped: Plotly
    renders tags such as <a href> and <b> in tick labels)."""
    fig = go.Figure()
    names = [html_escape(o) for o in profile["object"]]
    fig.add_bar(
        y=names,
        x=profile["rpc_selection"],
        orientation="h",
        name="selection",
        marker_color="#1f77b4",
    )
    fig.add_bar(
        y=names,
        x=profile["rpc_all"],
        orientation="h",
        name="all test images",
        marker_color="#c7c7c7",
    )
    fig.update_layout(
        barmode="group",
        height=80 + 34 * len(profile),
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        yaxis={"autorange": "reversed"},
        xaxis={"title": "R_p^c"},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"},
    )
    return fig


def _selection(
    cache: Cache, mtime: float, model_id: str, frame: pd.DataFrame, rows: np.ndarray
) -> None:
    root = str(cache.root)
    summary = um.selection_summary(frame, rows)
    st.subheader(f"Selection: {summary['n']} images")
    cities = ", ".join(f"{md_escape(c)} {n}" for c, n in summary["cities"].items())
    st.caption(f"Accuracy {summary['accuracy']:.0%} · true cities: {cities}")
    with section("The exports of the selection"):
        _exports(cache, mtime, model_id, frame, rows)
    left, right = st.columns([3, 2], gap="large")
    with left, st.container(key="map-gallery"), section("The gallery of the selection"):
        label = st.segmented_control(
            "Show", list(TILE_KINDS), default="Explanation", required=True, key="map_gallery_kind"
        )
        suffix = TILE_KINDS[label]
        kind = suffix if suffix == "orig" else f"{model_id}/{suffix}"
        if not cache.thumbs or kind not in cache.thumbs.get("kinds", []):
            st.info("This cache has no thumbnails yet: run the `thumbs` stage of precompute.")
        else:
            show = um.gallery_rows(rows, frame.set_index("row")["confidence"])
            tiles = _tiles(root, mtime, kind, tuple(int(r) for r in show))
            st.image(tiles, caption=um.gallery_captions(frame, show), width=128)
            if len(show) < len(rows):
                st.caption(f"{len(show)} of {len(rows)} images, from most to least confident.")
    with right, section("The object profile of the selection"):
        st.markdown("**Object profile** — R_p^c of the selection vs. all test images")
        names = cache.class_names()
        if not cache.has_labels or names is None:
            st.info(NO_SEGMENTER_MESSAGE)
            return
        hist = _hist(root, mtime, model_id)
        config = cache.manifest.get("config", {})
        threshold = float(config.get("threshold", 0.5))
        profile = um.selection_profile(
            hist,
            frame.loc[frame["row"].isin(rows), "image_id"],
            frame["image_id"],
            threshold,
            names,
            float(config.get("min_pixels", 100.0)),
        )
        if profile.empty:
            st.info("No object in this selection passes the minimum pixel count.")
            return
        st.plotly_chart(_profile_chart(profile), width="stretch", key="map_profile")
        st.dataframe(
            profile.rename(
                columns={
                    "rpc_selection": "R_p^c selection",
                    "rpc_all": "R_p^c all",
                    "share_selection": "share of explanation",
                }
            ),
            hide_index=True,
            column_config={"class_id": None},
        )


@st.cache_data(show_spinner=False, max_entries=4)
def _test_paths(root: str, mtime: float) -> pd.DataFrame:
    return Cache(root).test_images()[["row", "path"]]


def _exports(
    cache: Cache, mtime: float, model_id: str, frame: pd.DataFrame, rows: np.ndarray
) -> None:
    """The selection as CSV and its explanation thumbnails as a ZIP of PNGs (built on click)."""
    root = str(cache.root)
    table = um.selection_table(frame, rows, _test_paths(root, mtime))
    bar = st.container(horizontal=True, key="map-exports")
    bar.download_button(
        "Selection as CSV",
        lambda: um.selection_csv(table),
        file_name=f"selection-{model_id}.csv",
        mime="text/csv",
        icon=":material/download:",
        on_click="ignore",
        key="map_export_csv",
    )
    kind = f"{model_id}/expl"
    if not cache.thumbs or kind not in cache.thumbs.get("kinds", []):
        bar.caption("No explanation thumbnails in this cache (the `thumbs` stage) to export.")
        return
    ids = table["image_id"].tolist()[: um.ZIP_MAX_IMAGES]
    picked = [int(r) for r in table["test_row"].tolist()[: um.ZIP_MAX_IMAGES]]
    # built in the script run, not as a deferred download: a sheet that cannot be read then
    # gives its one-sentence message here instead of a download that silently fails
    if bar.button("Explanations as ZIP", icon=":material/folder_zip:", key="map_export_zip"):
        with section("The ZIP of the explanations"):
            data = um.selection_zip(
                cache.root, kind, picked, ids,
                size=int(cache.thumbs["size"]), per_row=int(cache.thumbs["per_row"]),
            )  # fmt: skip
            bar.download_button(
                f"Download the ZIP ({len(picked):,} PNGs)",
                data,
                file_name=f"explanations-{model_id}.zip",
                mime="application/zip",
                icon=":material/download:",
                on_click="ignore",
                key="map_export_zip_file",
            )
    if len(table) > um.ZIP_MAX_IMAGES:
        bar.caption(f"The ZIP holds the first {um.ZIP_MAX_IMAGES:,} images of the selection.")


def main() -> None:
    st.title("Explanation map")
    cache = current_cache()
    mtime = cache_mtime(cache)
    labels = model_labels(cache)
    if not labels:
        st.info("This cache has no trained models yet: run `python -m precompute --cache DIR`.")
        return

    bar = st.container(horizontal=True, vertical_alignment="bottom", gap="medium",
                       key="map-controls")  # fmt: skip
    model_id = bar.selectbox(
        "Model", list(labels), format_func=labels.get, key="map_model", width=230
    )
    with section("The explanation map"):
        _map(cache, mtime, labels, bar, model_id)


def _map(cache: Cache, mtime: float, labels: dict[str, str], bar, model_id: str) -> None:
    frame = _frame(str(cache.root), mtime, model_id)
    hover = None
    with section("The cluster names"):
        frame, hover = _named(cache, mtime, model_id, frame)
    methods = um.available_methods(frame)
    if not methods:
        st.info("No map for this model yet: run the `embed` stage of precompute.")
        return
    method = bar.segmented_control(
        "Map", methods, format_func=um.METHOD_LABELS.get, default=methods[0], required=True,
        key="map_method",
    )  # fmt: skip
    color_by = bar.selectbox("Colour by", um.COLOR_BY, key="map_color", width=190)
    view = bar.segmented_control(
        "View", ["Points", "Atlas"], default="Points", required=True, key="map_view"
    )
    drag = bar.segmented_control(
        "Mouse drag", list(DRAG_MODES), default="Zoom", required=True, key="map_drag"
    )
    show_labels = bar.toggle("Cluster labels", value=True, key="map_cluster_labels")

    thumbs = thumb_args(cache, model_id)
    atlas = None
    if view == "Atlas":
        if thumbs is None:
            st.info("The atlas needs thumbnails: run the `thumbs` stage of precompute.")
        else:
            size = bar.slider(
                "Thumbnail size (px)", 24, 96, 44, step=4, key="map_atlas_size", width=200
            )
            rows = _atlas(str(cache.root), mtime, model_id, method, 500)
            atlas = {"rows": rows, "kind": f"{model_id}/expl", "size": size}
    elif thumbs is None:
        st.info("No thumbnails in this cache (run the `thumbs` stage): hovering shows text only.")

    view_key = f"{model_id}|{method}"
    valid = frame["row"].to_numpy()
    before = um.selected_rows(st.session_state.get(MAP_KEY), valid, view_key)
    args = um.payload(
        frame,
        method,
        um.color_spec(frame, color_by, cache.cities),
        cache.cities,
        view_key=view_key,
        thumbs=thumbs,
        labels=um.cluster_annotations(frame, method, hover) if show_labels else [],
        atlas=atlas,
        height=MAP_HEIGHT,
        dragmode=DRAG_MODES[drag],
        selected=before.tolist(),
    )
    value = scatter_map(args, key=MAP_KEY)
    st.caption(
        f"{len(frame):,} test images of {md_escape(labels[model_id])}. Each point is one image, "
        "placed by how similar its Grad-CAM mask is to the others'. Hover a point to see the "
        "photo, its mask and its visual explanation; pick *Box select* or *Lasso* (or click a "
        "point) to select images and see them below; double-click the map to clear the selection."
    )
    rows = um.selected_rows(value, valid, view_key)
    if len(rows) == 0:
        st.caption("Nothing selected yet.")
        return
    _selection(cache, mtime, model_id, frame, rows)


guard(main)
