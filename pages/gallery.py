"""Galleries: per city and object, the test images where the object lies inside the network's
visual explanation, ranked by the mask's mean value over the object (issue 13 §3).

Opened from the Objects page and the Overview's headline findings with ``?city=..&object=..``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from cityviz.data.images import resize_center_crop
from cityviz.segment import NO_SEGMENTER_MESSAGE
from cityviz.store import Cache, CacheError, read_array
from cityviz.ui import compare as uc
from cityviz.ui import gallery as ug
from cityviz.ui.safe_text import md_escape
from pages.common import cache_mtime, current_cache, guard, model_labels, section

SIZES = (12, 24, 48)
TILE_WIDTH = 180


@st.cache_data(show_spinner=False, max_entries=4)
def _test(root: str, mtime: float) -> pd.DataFrame:
    return Cache(root).test_images()[["image_id", "row", "city"]]


@st.cache_data(show_spinner=False, max_entries=4)
def _rpc(root: str, mtime: float) -> pd.DataFrame:
    return Cache(root).rpc()


@st.cache_resource(show_spinner=False, max_entries=4)
def _hist(root: str, mtime: float, model_id: str) -> pd.DataFrame:
    return Cache(root).hist(model_id)


@st.cache_data(show_spinner="Ranking the images by the mask inside the object…", max_entries=64)
def _ranked(
    root: str, mtime: float, model_id: str, city: str, class_id: int, threshold: float, n: int
) -> pd.DataFrame:
    cache = Cache(root)
    cands = ug.candidates(
        _hist(root, mtime, model_id), _test(root, mtime), class_id, threshold, city
    )
    labels = cache.labels()
    scored = ug.score(
        cands,
        class_id,
        lambda rows: cache.masks(model_id, rows),
        lambda rows: np.asarray(labels[rows]),
    )
    return ug.rank(scored, n)


@st.cache_data(show_spinner=False, max_entries=4)
def _paths(root: str, mtime: float) -> pd.Series:
    return Cache(root).test_images().set_index("row")["path"]


def _images(cache: Cache, mtime: float, rows: np.ndarray) -> list[np.ndarray]:
    """The test images at the cache's size: from ``inputs/test.npy`` (the pixels the labels
    and masks were made on), else decoded again from the photos; unreadable photos give the
    cache's original thumbnail resized."""
    size = cache.image_size
    if (cache.root / "inputs/test.npy").exists():
        arr = read_array(cache.root, "inputs/test.npy", kinds="u", ndim=4, length=cache.n_test)
        return [np.asarray(arr[r]) for r in rows]
    paths = _paths(str(cache.root), mtime)
    out = []
    for r in rows:
        crop = uc.load_crop(str(paths.loc[r]), size)
        if crop is None:
            thumb = uc.thumb_tile(cache, "orig", int(r))
            if thumb is None:
                raise CacheError(
                    f"Neither test photo {paths.loc[r]} nor its thumbnail can be read; rebuild "
                    f"them with `python -m precompute --cache {cache.root} --force --stages "
                    "data,thumbs`."
                )
            crop = resize_center_crop(thumb, size)
        out.append(crop)
    return out


def _tiles(cache: Cache, mtime: float, model_id: str, ranked: pd.DataFrame, class_id: int):
    rows = ranked["row"].to_numpy(dtype=np.int64)
    masks = cache.masks(model_id, rows)
    labels = cache.labels()
    images = _images(cache, mtime, rows)
    return [
        ug.tile(images[i], masks[i], np.asarray(labels[r]), class_id) for i, r in enumerate(rows)
    ]


def _apply_link(cities: list[str], objects_of: dict[str, list[str]]) -> None:
    """Apply a link's ``?city=..&object=..`` to the pickers, once per new link."""
    link = (st.query_params.get("city"), st.query_params.get("object"))
    if link == st.session_state.get("_gallery_link"):
        return
    st.session_state["_gallery_link"] = link
    city, obj = ug.from_query(st.query_params, cities, objects_of)
    if city is not None:
        st.session_state["gallery_city"] = city
    if obj is not None:
        st.session_state["gallery_object"] = obj


def _gallery(cache: Cache, mtime: float, labels: dict[str, str]) -> None:
    names = cache.class_names()
    if not cache.has_labels or names is None:
        st.info(NO_SEGMENTER_MESSAGE)
        return
    root = str(cache.root)
    bar = st.container(horizontal=True, vertical_alignment="bottom", key="gallery-controls")
    linked = st.query_params.get("model")
    if linked in labels and linked != st.session_state.get("_gallery_model_link"):
        st.session_state["_gallery_model_link"] = linked
        st.session_state["gallery_model"] = linked
    if st.session_state.get("gallery_model") not in labels:
        st.session_state["gallery_model"] = next(iter(labels))
    model_id = bar.selectbox(
        "Model", list(labels), format_func=labels.get, key="gallery_model", width=230
    )
    objects_of = ug.objects_by_city(_rpc(root, mtime), model_id)
    cities = [c for c in cache.cities if objects_of.get(c)]
    if not cities:
        st.info(
            f"No object passes the pixel filter for {md_escape(labels[model_id])}: no gallery "
            "to show."
        )
        return
    _apply_link(cities, objects_of)
    if st.session_state.get("gallery_city") not in cities:
        st.session_state["gallery_city"] = cities[0]
    city = bar.selectbox("City", cities, key="gallery_city", width=220)
    options = objects_of[city]
    if st.session_state.get("gallery_object") not in options:
        st.session_state["gallery_object"] = options[0]
    obj = bar.selectbox("Object", options, key="gallery_object", width=220)
    n = bar.segmented_control("Images", SIZES, default=SIZES[1], required=True, key="gallery_n")
    st.query_params.update({"city": city, "object": obj, "model": model_id})
    st.session_state["_gallery_link"] = (city, obj)
    st.session_state["_gallery_model_link"] = model_id

    class_id = ug.class_id_of(names, obj)
    if class_id is None:
        st.info(f"The segmenter has no class named {md_escape(obj)}.")
        return
    threshold = float(cache.manifest.get("config", {}).get("threshold", 0.5))
    ranked = _ranked(root, mtime, model_id, city, class_id, threshold, int(n))
    st.markdown(
        f"**{md_escape(obj)} in {md_escape(city)}**, as {md_escape(labels[model_id])} sees it: "
        f"the test images of {md_escape(city)} where {md_escape(obj)} lies inside the visual "
        f"explanation (mask ≥ {threshold:g}), ranked by the mean of the normalised Grad-CAM "
        f"mask over the {md_escape(obj)}'s pixels. Outline: the {md_escape(obj)}; colours: the "
        "mask (red high, blue low)."
    )
    if ranked.empty:
        st.info(
            f"No test image of {md_escape(city)} has {md_escape(obj)} inside "
            f"{md_escape(labels[model_id])}'s explanation."
        )
        return
    tiles = _tiles(cache, mtime, model_id, ranked, class_id)
    st.image(
        tiles,
        caption=[
            f"row {r.row} · mask {r.score:.2f} inside · {r.rate:.0%} of it explained"
            for r in ranked.itertuples()
        ],
        width=TILE_WIDTH,
        output_format="PNG",
    )
    st.caption(f"{len(ranked)} images, highest mask value inside the object first.")


def main() -> None:
    st.title("Galleries")
    st.caption(
        "What makes each city look like itself, as the network sees it: for a city and an "
        "object, the photos where that object lies inside the network's visual explanation, "
        "the strongest first (after Doersch et al. 2012, *What makes Paris look like Paris?*)."
    )
    cache = current_cache()
    mtime = cache_mtime(cache)
    labels = model_labels(cache)
    if not labels:
        st.info("This cache has no trained models yet: run `python -m precompute --cache DIR`.")
        return
    with section("The gallery"):
        _gallery(cache, mtime, labels)


guard(main)
