"""Live Grad-CAM: upload a street photo (or pick a test image) and see what every model looks at."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import streamlit as st

from cityviz import cam, segment
from cityviz.data.images import ImageDecodeError, decode_image, resize_center_crop
from cityviz.models.checkpoint import load_checkpoint
from cityviz.store import Cache, CacheError
from cityviz.ui import compare as uc
from cityviz.ui import figures
from cityviz.ui import live as ul
from pages.common import current_cache

log = logging.getLogger(__name__)

UPLOAD = "Upload a photo"
SAMPLE = "Sample from the test set"
NEIGHBOURS = 6


def _mtime(cache: Cache) -> float:
    return (cache.root / "manifest.json").stat().st_mtime


@st.cache_resource(show_spinner="Loading a model (once for all sessions)…")
def _explainer(root: str, mtime: float, model_id: str) -> tuple[cam.Explainer, dict]:
    """The model in eval mode behind a stateless Explainer: safe to share between sessions."""
    cache = Cache(root)
    entry = cache.model(model_id)
    model, meta = load_checkpoint(cache.root / entry.get("checkpoint", f"models/{model_id}"))
    return cam.Explainer(model, meta["arch"]), meta


@st.cache_resource(show_spinner="Loading the segmentation model (once for all sessions)…")
def _segmenter(spec: str):
    return segment.segmenter_from_spec(spec)


@st.cache_data(show_spinner=False, max_entries=256)
def _predict(
    root: str, mtime: float, model_id: str, method: str, digest: str, _image: np.ndarray
) -> ul.ModelResult:
    """One model's prediction and mask for a photo, cached by the photo's digest."""
    cache = Cache(root)
    explainer, meta = _explainer(root, mtime, model_id)
    size = int(meta.get("input_size") or cache.model(model_id).get("input_size") or 224)
    cities = list(meta.get("classes") or cache.cities)
    return ul.predict(explainer, _image, size, cache.image_size, cities, method, model_id)


@st.cache_data(show_spinner=False)
def _test_images(root: str, mtime: float) -> pd.DataFrame:
    return Cache(root).test_images()


@st.cache_data(show_spinner=False, max_entries=16)
def _embedding(root: str, mtime: float, model_id: str) -> pd.DataFrame:
    cache = Cache(root)
    emb = cache.embedding(model_id)
    return emb.merge(cache.test_images()[["image_id", "city"]], on="image_id", how="left")


@st.cache_resource(show_spinner=False, max_entries=16)
def _embedder(root: str, mtime: float, model_id: str, method: str):
    return Cache(root).embedder(model_id, method)


def _usable_models(cache: Cache) -> list[str]:
    return [
        m["model_id"]
        for m in cache.models
        if (cache.root / f"{m.get('checkpoint', 'models/' + m['model_id'])}.safetensors").exists()
    ]


def _pick_photo(cache: Cache) -> tuple[ul.Upload | None, int | None]:
    """The photo to analyse (or None), and its test row when it is a sample."""
    source = st.radio("Photo", [UPLOAD, SAMPLE], horizontal=True, key="live_source")
    if source == UPLOAD:
        file = st.file_uploader(
            "Upload a street photo",
            type=None,
            key="live_upload",
            max_upload_size=50,
            help="JPEG, PNG or WebP, up to 20 MB and 25 megapixels.",
        )
        if file is None:
            return None, None
        return ul.read_upload(file.getvalue(), file.name), None
    samples = ul.sample_rows(_test_images(str(cache.root), _mtime(cache)))
    if samples.empty:
        st.info("This cache has no test images to pick from.")
        return None, None
    label = st.selectbox("Sample", samples["label"].tolist(), key="live_sample")
    pick = samples[samples["label"] == label].iloc[0]
    row = int(pick["row"])
    try:
        image = decode_image(str(pick["path"]))
        return ul.Upload(image=image, digest=f"row{row}:{pick['image_id']}"), row
    except ImageDecodeError:
        tile = uc.thumb_tile(cache, "orig", row)
        if tile is None:
            return ul.Upload(error="The sample photo cannot be read on this machine."), row
        note = "The source photo is not on this machine; its 96 px thumbnail is used instead."
        return ul.Upload(image=tile, digest=f"thumb{row}", notes=[note]), row


def _segmentation(cache: Cache, crop: np.ndarray, row: int | None):
    """``(labels [S,S], class_names)`` for the photo, or None after saying why not."""
    seg = cache.manifest.get("segmenter") or {}
    spec = str(seg.get("spec", "none"))
    if spec.lower() == "none" or not seg:
        st.info(segment.NO_SEGMENTER_MESSAGE)
        return None
    if spec.lower() == "annotations":
        names = cache.class_names()
        if row is not None and cache.has_labels and names:
            labels = np.asarray(cache.labels()[row])
            if labels.shape != crop.shape[:2]:
                labels = resize_center_crop(labels, crop.shape[0], nearest=True)
            return labels, names
        st.info(ul.ANNOTATIONS_MESSAGE)
        return None
    try:
        segmenter = _segmenter(spec)
    except (segment.SegmenterUnavailable, ValueError, OSError) as exc:
        st.warning(str(exc))
        return None
    if segmenter is None:
        st.info(segment.NO_SEGMENTER_MESSAGE)
        return None
    return segmenter.segment(crop[None])[0], list(segmenter.class_names)


def _model_card(result: ul.ModelResult, crop, threshold, display, cities, seg) -> None:
    with st.container(border=True):
        st.markdown(
            f"**{display.get(result.model_id, result.model_id)}** predicts "
            f"**{result.city}** ({result.confidence:.1%})"
        )
        c1, c2, c3 = st.columns([5, 3, 3])
        c1.plotly_chart(figures.prob_bars(result.probs, cities), width="stretch")
        over, expl = ul.views(crop, result.mask, threshold)
        c2.image(over, caption="Grad-CAM overlay", width="stretch")
        c3.image(expl, caption=f"Visual explanation (mask ≥ {threshold:.2f})", width="stretch")
        if seg is not None:
            labels, names = seg
            parts = ul.object_breakdown(result.mask, labels, threshold, names).head(6)
            parts = parts[parts["explained"] > 0]
            if len(parts):
                text = ", ".join(f"{o} {s:.0%}" for o, s in zip(parts["object"], parts["share"],
                                                                 strict=True))  # fmt: skip
                st.caption(f"The explanation is made of: {text}")


def _map_section(cache: Cache, results: list[ul.ModelResult], display: dict[str, str]) -> None:
    st.subheader("Where would this photo land on the explanation map?")
    root, mtime = str(cache.root), _mtime(cache)
    methods = list(cache.manifest.get("config", {}).get("embed_methods") or ["tsne", "umap"])
    with_map = [
        r for r in results
        if any((cache.root / f"embed/{r.model_id}_{m}.npz").exists() for m in methods)
    ]  # fmt: skip
    if not with_map:
        st.info(
            "This cache has no fitted explanation maps yet (embed/<model>_<method>.npz); the "
            f"embed stage of `python -m precompute --cache {cache.root}` builds them."
        )
        return
    c1, c2 = st.columns(2)
    ids = [r.model_id for r in with_map]
    model_id = c1.selectbox("Map of model", ids, format_func=display.get, key="live_map_model")
    avail = [m for m in methods if (cache.root / f"embed/{model_id}_{m}.npz").exists()]
    names = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}
    method = c2.radio(
        "Map", avail, horizontal=True, key="live_map_method", format_func=lambda m: names.get(m, m)
    )
    result = next(r for r in with_map if r.model_id == model_id)
    try:
        embedder = _embedder(root, mtime, model_id, method)
        points = _embedding(root, mtime, model_id)
    except CacheError as exc:
        st.info(str(exc))
        return
    xy, near = ul.place_on_map(embedder, result.mask, NEIGHBOURS)
    fig = figures.placement_map(points, f"{method}_x", f"{method}_y", tuple(xy), near.tolist())
    st.plotly_chart(fig, width="stretch")
    st.caption("Nearest test images (most similar Grad-CAM masks), with their explanations:")
    test = _test_images(root, mtime).set_index("row")
    cols = st.columns(len(near))
    for col, row in zip(cols, near.tolist(), strict=True):
        tile = uc.thumb_tile(cache, f"{model_id}/overlay", int(row))
        with col:
            if tile is not None:
                st.image(tile, width="stretch")
            city = test["city"].get(int(row), "?")
            st.caption(f"test image {row} · {city}")


def _analyse(cache: Cache, photo: ul.Upload, row: int | None, models, method, threshold):
    root, mtime = str(cache.root), _mtime(cache)
    display = {m["model_id"]: m.get("display", m["model_id"]) for m in cache.models}
    crop = resize_center_crop(photo.image, cache.image_size)
    results: list[ul.ModelResult] = []
    with st.spinner("Running the models…"):
        for model_id in models:
            try:
                results.append(_predict(root, mtime, model_id, method, photo.digest, photo.image))
            except (OSError, CacheError, KeyError, ValueError) as exc:
                log.warning("cannot run model %s", model_id, exc_info=True)
                st.warning(f"{display.get(model_id, model_id)} could not be run: {exc}")
    if not results:
        return
    st.dataframe(
        ul.summary_table(results, display),
        hide_index=True,
        column_config={"confidence": st.column_config.ProgressColumn(
            format="percent", min_value=0.0, max_value=1.0)},
    )  # fmt: skip
    left, right = st.columns([1, 3])
    left.image(crop, caption="What the models see (resized, centre-cropped)", width="stretch")
    with right:
        seg = _segmentation(cache, crop, row)
        if seg is not None:
            labels, names = seg
            st.image(ul.colorize_labels(labels, len(names)), caption="Segmentation", width=220)
    cities = cache.cities
    for result in results:
        _model_card(result, crop, threshold, display, cities, seg)
    _map_section(cache, results, display)


def main() -> None:
    cache = current_cache()
    st.title("Live Grad-CAM")
    st.caption(
        "Give the networks a street photo of your own: each model says which city it thinks the "
        "photo shows, and Grad-CAM shows where it looked. The visual explanation keeps only the "
        "pixels whose Grad-CAM value is at least the threshold."
    )
    models = _usable_models(cache)
    if not models:
        st.info(
            "This cache has no model checkpoints (models/<model>.safetensors), so nothing can be "
            f"run live; `python -m precompute --cache {cache.root}` trains them."
        )
        return
    display = {m["model_id"]: m.get("display", m["model_id"]) for m in cache.models}
    config = cache.manifest.get("config", {})
    c1, c2, c3 = st.columns([2, 2, 3])
    default_method = config.get("cam_method", "gradcam")
    method = c1.selectbox(
        "CAM method",
        cam.METHODS,
        index=cam.METHODS.index(default_method) if default_method in cam.METHODS else 0,
        key="live_method",
    )
    threshold = c2.slider(
        "Explanation threshold",
        min_value=0.05,
        max_value=0.95,
        value=float(config.get("threshold", cam.DEFAULT_THRESHOLD)),
        step=0.05,
        format="%.2f",
        key="live_threshold",
    )
    chosen = c3.multiselect(
        "Models", models, default=models, format_func=display.get, key="live_models"
    )
    photo, row = _pick_photo(cache)
    if photo is None:
        st.info("Upload a street photo (JPEG, PNG or WebP) or pick a sample to start.")
        return
    if not photo.ok:
        st.error(photo.error or "The file could not be read.")
        return
    for note in photo.notes:
        st.info(note)
    if not chosen:
        st.info("Pick at least one model.")
        return
    try:
        _analyse(cache, photo, row, chosen, method, threshold)
    except Exception:
        log.exception("live Grad-CAM failed")
        st.error(ul.UNEXPECTED_MESSAGE)


main()
