"""Objects: R_p^c per object and city for every model (the paper's Figure 5), at any threshold."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from streamlit.errors import StreamlitAPIException

from cityviz import stats
from cityviz.segment import NO_SEGMENTER_MESSAGE
from cityviz.store import Cache
from cityviz.ui import compare as uc
from cityviz.ui import figures
from cityviz.ui import gallery as ug
from cityviz.ui import objects as uo
from cityviz.ui import trust as ut
from cityviz.ui.safe_text import md_escape
from pages.common import current_cache, guard, model_labels, section

TILES = 12
DRILL_OPEN = "objects_drill_open"
TILE_WIDTH = 170
MASK_LRU = 256  # masks kept between reruns (256 x 224² float32 = 51 MB at most)
CHARTS = 128  # charts kept (one per models / threshold / filter setting; ~50 kB each)


def _mtime(cache: Cache) -> float:
    return (cache.root / "manifest.json").stat().st_mtime


@st.cache_data(show_spinner=False)
def _test_images(root: str, mtime: float):
    return Cache(root).test_images()


@st.cache_resource(show_spinner="Summing the object histograms of every model (once per cache)…")
def _cubes(root: str, mtime: float, n_boot: int) -> dict[str, uo.RpcCube]:
    """One RpcCube per model, shared by every session (read-only after construction)."""
    cache = Cache(root)
    test = cache.test_images()
    city_of = test.set_index("image_id")["city"]
    n_images_of = test["city"].value_counts()
    names = cache.class_names() or []
    shared: dict = {}
    return {
        m: uo.RpcCube.build(
            cache.hist(m), city_of, names, n_images_of, n_boot=n_boot, weights_cache=shared
        )
        for m in cache.model_ids
        if (cache.root / f"hist/{m}.parquet").exists()
    }


@dataclass(frozen=True)
class Chart:
    """What one setting of the controls shows: the long table (every object), the charted and
    the drill-down objects per city, and the figure. Shared by sessions: read only."""

    table: pd.DataFrame
    objects_of: dict[str, list[str]]
    drill_objects: dict[str, list[str]]
    figure: go.Figure
    marks: pd.DataFrame | None = None


@st.cache_data(show_spinner=False, max_entries=4)
def _trust_tables(root: str, mtime: float):
    """``(rpc_null, rpc_contrast, removal)`` for the badges, each None when its stage has not
    written it; CacheError (naming the file) when one is damaged."""
    cache = Cache(root)
    files = (ut.NULL_FILE, ut.CONTRAST_FILE, "trust/removal.parquet")
    readers = (ut.read_rpc_null, ut.read_rpc_contrast,
               lambda c: ut.read_trust_table(c, "removal"))  # fmt: skip
    return tuple(r(cache) if (cache.root / f).exists() else None
                 for f, r in zip(files, readers, strict=True))  # fmt: skip


@st.cache_resource(show_spinner=False, max_entries=CHARTS)
def _chart(
    root: str,
    mtime: float,
    n_boot: int,
    chosen: tuple[str, ...],
    threshold: float,
    min_pixels: float,
    top: int,
    lift: bool,
    display: tuple[tuple[str, str], ...],
    trusted: bool = False,
) -> Chart:
    """The chart for one setting, built once: moving the slider back to a threshold already
    shown (or another session showing it) reuses it instead of rebuilding table and figure."""
    cubes = _cubes(root, mtime, n_boot)
    table = uo.rpc_long_table({m: cubes[m] for m in chosen}, threshold, min_pixels)
    valued = uo.with_value(table, "lift" if lift else "rpc")
    objects_of = uo.chart_objects(valued, top)
    fig = figures.rpc_bars(
        valued, objects_of, list(chosen), dict(display), "lift over average" if lift else "R_p^c"
    )
    marks = None
    if trusted:  # badges: above the permutation null, distinguishes the city, causal
        marks = ut.badges(*_trust_tables(root, mtime), threshold)
        table = ut.badge_table(table, marks)
        fig = ut.mark_bars(fig, marks)
    return Chart(table, objects_of, uo.chart_objects(valued), fig, marks)


@st.cache_resource(show_spinner="Indexing this model's images…", max_entries=4)
def _object_index(root: str, mtime: float, model_id: str) -> uo.ObjectIndex:
    cache = Cache(root)
    city_of = cache.test_images().set_index("image_id")["city"]
    return uo.ObjectIndex.build(cache.hist(model_id), city_of)


@st.cache_data(show_spinner=False, max_entries=512)
def _crop(path: str, size: int):
    return uc.load_crop(path, size)


@st.cache_resource(show_spinner=False)
def _mask_store(root: str, mtime: float) -> OrderedDict:
    """Recently shown masks, shared by sessions: a threshold change re-thresholds them only."""
    return OrderedDict()


def _masks(cache: Cache, model_id: str, rows: list[int], size: int) -> list:
    """mask_norm of test rows through a small LRU, so reruns do not recompute them."""
    store = _mask_store(str(cache.root), _mtime(cache))
    keys = [(model_id, int(r), size) for r in rows]
    missing = [k for k in keys if k not in store]
    if missing:
        fresh = cache.masks(model_id, [k[1] for k in missing], size)
        for k, m in zip(missing, fresh, strict=True):
            store[k] = m
    out = []
    for k in keys:
        store.move_to_end(k, last=True)
        out.append(store[k])
    while len(store) > MASK_LRU:
        store.popitem(last=False)
    return out


def _has_segmenter(cache: Cache) -> bool:
    seg = cache.manifest.get("segmenter")
    spec = (seg or {}).get("spec", "none")
    return bool(seg) and spec != "none" and cache.class_names() is not None


def _drill_state(event, cities: list[str], objects_of: dict[str, list[str]], models: list[str]):
    """Apply a clicked bar to the drill-down pickers (once per new click)."""
    clicked = uo.selected_bar(event)
    if clicked and clicked != st.session_state.get("_objects_clicked"):
        st.session_state["_objects_clicked"] = clicked
        city, obj, model = clicked
        if city in cities and obj in objects_of.get(city, []) and model in models:
            st.session_state[DRILL_OPEN] = True
            st.session_state["drill_city"] = city
            st.session_state["drill_object"] = obj
            st.session_state["drill_model"] = model
    if st.session_state.get("drill_city") not in cities:
        st.session_state["drill_city"] = cities[0]
    options = objects_of.get(st.session_state["drill_city"], [])
    if options and st.session_state.get("drill_object") not in options:
        st.session_state["drill_object"] = options[0]
    if st.session_state.get("drill_model") not in models:
        st.session_state["drill_model"] = models[0]


def _drill_down(cache: Cache, table, threshold: float, cities, objects_of, display) -> None:
    st.caption(
        "Pick an object (or click one of its bars above): the test images of that city where the "
        "object takes the largest share of the visual explanation, shown as explanations at the "
        "current threshold (pixels below it are black)."
    )
    models = list(display)
    c1, c2, c3 = st.columns(3)
    city = c1.selectbox("City", cities, key="drill_city")
    options = objects_of.get(city, [])
    if not options:
        st.info(f"No object passes the pixel filter in {md_escape(city)}.")
        return
    obj = c2.selectbox("Object", options, key="drill_object")
    model_id = c3.selectbox("Model", models, format_func=display.get, key="drill_model")
    with contextlib.suppress(StreamlitAPIException):  # no navigation when the page runs alone
        st.page_link(**ug.link_args(city, obj, model_id))
    row = table[(table["city"] == city) & (table["object"] == obj)]
    class_id = int(row["class_id"].iloc[0])
    test = _test_images(str(cache.root), _mtime(cache))
    index = _object_index(str(cache.root), _mtime(cache), model_id)
    top = index.top_images(class_id, threshold, city=city, n=TILES)
    if top.empty:
        st.info(
            f"No test image of {md_escape(city)} has {md_escape(obj)} inside "
            f"{md_escape(display[model_id])}'s explanation."
        )
        return
    top = top.merge(test[["image_id", "row", "path"]], on="image_id", how="left")
    size = cache.image_size
    masks = _masks(cache, model_id, top["row"].tolist(), size)
    tiles = []
    for i, (path, r) in enumerate(zip(top["path"], top["row"], strict=True)):
        crop = _crop(str(path), size)
        if crop is None:
            tiles.append(uc.thumb_tile(cache, f"{model_id}/expl", int(r)))
        else:
            tiles.append(uc.explanation_tile(crop, masks[i], threshold))
    shown = [(t, s, q, r) for t, s, q, r in zip(tiles, top["share"], top["rate"], top["row"],
                                                 strict=True) if t is not None]  # fmt: skip
    if not shown:
        st.info("Neither the photos nor their thumbnails are readable on this machine.")
        return
    # One image-list element (not a grid of columns): cheaper to re-render on every threshold.
    st.image(
        [t for t, *_ in shown],
        caption=[
            f"row {r} · {s:.0%} of the explanation · {q:.0%} of the {md_escape(obj)} explained"
            for _, s, q, r in shown
        ],
        width=TILE_WIDTH,
        output_format="JPEG",
    )


def main() -> None:
    cache = current_cache()
    st.title("Objects")
    st.caption(
        "R_p^c (the paper's eq. 1): of all pixels of object p in the test photos of city c, the "
        "fraction inside the network's visual explanation (Grad-CAM mask ≥ threshold). High "
        "values mean the network looks at that object to recognise the city. Bars: one per "
        "model; whiskers: 95 % bootstrap intervals over images."
    )
    with section("The object statistics"):
        _statistics(cache)


def _statistics(cache: Cache) -> None:
    if not _has_segmenter(cache):
        st.info(NO_SEGMENTER_MESSAGE)
        return
    config = cache.manifest.get("config", {})
    n_boot = int(config.get("bootstrap", 200))
    cubes = _cubes(str(cache.root), _mtime(cache), n_boot)
    if not cubes:
        st.info(
            md_escape(
                "No object histograms in this cache yet (hist/<model>.parquet). Build them with "
                f"python -m precompute --cache {cache.root} --stages segment,stats."
            )
        )
        return
    n_bins = next(iter(cubes.values())).n_bins
    labels = model_labels(cache)
    display = {m: labels.get(m, m) for m in cubes}

    c1, c2, c3, c4 = st.columns([3, 2, 2, 2], vertical_alignment="bottom")
    default_t = float(config.get("threshold", 0.5))
    default_t = min(max(round(default_t * n_bins), 1), n_bins - 1) / n_bins
    threshold = c1.slider(
        "Explanation threshold",
        min_value=1 / n_bins,
        max_value=(n_bins - 1) / n_bins,
        value=default_t,
        step=1 / n_bins,
        format="%.2f",
        help="A pixel belongs to the visual explanation when its normalised Grad-CAM value is at "
        "least this. Recomputed from the stored histograms, so any grid value is exact.",
    )
    threshold = stats.threshold_bin(threshold, n_bins) / n_bins
    min_pixels = c2.number_input(
        "Min. average pixels per image",
        min_value=0.0,
        value=float(config.get("min_pixels", 100.0)),
        step=10.0,
        help="Objects smaller than this on average (over all test photos of the city) are "
        "hidden, as in the paper (100).",
    )
    top = c3.number_input("Objects per city", min_value=1, max_value=60, value=12, step=1)
    lift = c4.toggle(
        "Show lift",
        help="Show R_p^c divided by the city's average rate over all labelled pixels: above 1 "
        "means the object is explained more often than an average pixel.",
    )
    chosen = st.multiselect("Models", list(cubes), default=list(cubes), format_func=display.get)
    if not chosen:
        st.info("Pick at least one model.")
        return

    trust_tables, trusted = None, False
    with section("The trust badges"):
        trust_tables = _trust_tables(str(cache.root), _mtime(cache))
        trusted = any(t is not None for t in trust_tables)
    chart = _chart(
        str(cache.root), _mtime(cache), n_boot, tuple(chosen), threshold, float(min_pixels),
        int(top), bool(lift), tuple(display.items()), trusted,
    )  # fmt: skip
    table = chart.table
    if not any(chart.objects_of.values()):
        st.info("No object passes the pixel filter: lower “Min. average pixels per image”.")
        return
    event = st.plotly_chart(
        chart.figure, key="rpc_chart", on_select="rerun", selection_mode="points", width="stretch"
    )
    if trusted:
        st.caption(
            ut.BADGE_LEGEND + ". Faded, hatched bars lie within their null; hover a bar for its "
            "badges, or open the table. The Trust page has the details."
        )
        note = ut.threshold_note(trust_tables[0], threshold)
        if note:
            st.caption(note)

    table_box = st.expander(
        "Table and CSV download", key="objects_table_open", on_change="rerun"
    )
    with table_box:
        if table_box.open:  # built only when shown: keeps threshold changes fast
            _table(table, threshold, display)

    drill_objects = chart.drill_objects
    cities = [c for c, objs in drill_objects.items() if objs]
    chosen_display = {m: display[m] for m in chosen}
    _drill_state(event, cities, drill_objects, chosen)
    drill = st.expander(
        "Where is an object most discriminative? Click one of its bars, or open this.",
        key=DRILL_OPEN,
        on_change="rerun",
    )
    with drill, section("The drill-down"):
        if drill.open:  # built only when shown: keeps threshold changes fast
            _drill_down(cache, table, threshold, cities, drill_objects, chosen_display)


def _table(table, threshold: float, display: dict[str, str]) -> None:
    with section("The table"):
        st.download_button(
            "Download CSV (all objects, all chosen models)",
            uo.csv_bytes(table, threshold),
            file_name=f"rpc_threshold_{threshold:.2f}.csv",
            mime="text/csv",
            on_click="ignore",
        )
        st.dataframe(
            uo.display_table(table, display),
            hide_index=True,
            column_config={
                c: st.column_config.NumberColumn(format="%.3f")
                for c in ("R_p^c", "CI low", "CI high", "lift", "share of explanation")
            },
        )


guard(main)
