"""Live Grad-CAM: upload a street photo (or pick a test image) and see what every model looks at.

Every cache part this page reads is read inside its own :func:`pages.common.section` (or per
model), so a damaged part disables only what depends on it, with one sentence naming the file
and the command that rebuilds it. Every string from data (city, class and model names, file
names) is shown through :func:`cityviz.ui.safe_text.md_escape`.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import streamlit as st

from cityviz import cam, ood, segment
from cityviz.data.images import ImageDecodeError, decode_image, resize_center_crop
from cityviz.models.checkpoint import load_checkpoint
from cityviz.store import (
    THUMB_SIZE,
    THUMBS_PER_ROW,
    Cache,
    CacheError,
    damaged,
    inputs_rel,
    read_array,
    read_arrays,
    thumb_location,
)
from cityviz.thumbs import crop_tiles
from cityviz.ui import compare as uc
from cityviz.ui import figures
from cityviz.ui import live as ul
from cityviz.ui import trust as ut
from cityviz.ui.safe_text import md_escape
from pages.common import cache_mtime, current_cache, model_labels, section

log = logging.getLogger(__name__)

UPLOAD = "Upload a photo"
SAMPLE = "Sample from the test set"
NEIGHBOURS = 6


@st.cache_resource(show_spinner="Loading a model (once for all sessions)…", max_entries=32)
def _explainer(root: str, mtime: float, model_id: str) -> tuple[cam.Explainer, dict]:
    """The model in eval mode behind a stateless Explainer: safe to share between sessions.
    Raises :class:`~cityviz.models.checkpoint.CheckpointError` for a damaged checkpoint."""
    cache = Cache(root)
    entry = cache.model(model_id)
    model, meta = load_checkpoint(cache.root / str(entry.get("checkpoint", f"models/{model_id}")))
    return cam.Explainer(model, meta["arch"]), meta


@st.cache_resource(show_spinner="Loading the segmentation model (once for all sessions)…")
def _segmenter(spec: str):
    return segment.segmenter_from_spec(spec)


# Per-photo results: bounded, so a server that analyses photos all day keeps a fixed footprint
# (each entry is a few probabilities, one display-size mask and one feature vector).
@st.cache_data(show_spinner=False, max_entries=64, ttl=3600)
def _predict(
    root: str, mtime: float, model_id: str, method: str, digest: str, _image: np.ndarray
) -> ul.ModelResult:
    """One model's prediction, mask and features for a photo, cached by the photo's digest."""
    cache = Cache(root)
    explainer, meta = _explainer(root, mtime, model_id)
    size = int(meta["input_size"])
    cities = [str(c) for c in meta["classes"]]
    return ul.predict(explainer, _image, size, cache.image_size, cities, method, model_id)


@st.cache_resource(show_spinner="Measuring how far photos are from the test set (once)…",
                   max_entries=32)  # fmt: skip
def _ood_reference(root: str, mtime: float, model_id: str) -> dict[str, np.ndarray]:
    """The model's OOD reference: ``ood/<model_id>.npz`` when precompute wrote it, else fitted
    here on (at most :data:`ul.MAX_REFERENCE_IMAGES` of) the test images at the model's input
    size. Raises :class:`CacheError` naming the file when a part is damaged."""
    cache = Cache(root)
    rel = f"ood/{model_id}.npz"
    if (cache.root / rel).exists():
        reference = read_arrays(root, rel)
        try:
            ood.check_reference(reference)
        except ValueError as exc:
            raise damaged(root, rel, f"is not an OOD reference ({exc})") from exc
        return reference
    explainer, meta = _explainer(root, mtime, model_id)
    size = int(meta["input_size"])
    rel = inputs_rel("test", size, cache.image_size)
    if (cache.root / rel).exists():
        arr = read_array(root, rel, kinds="u", ndim=4)
        images = np.asarray(arr[ul.spread_rows(len(arr))])
    else:  # caches without decoded inputs: decode the test photos themselves
        test = cache.test_images()
        paths = test["path"].to_numpy()[ul.spread_rows(len(test))]
        decoded = []
        for path in paths:
            try:
                decoded.append(resize_center_crop(decode_image(str(path)), size))
            except ImageDecodeError:
                continue
        if not decoded:
            raise CacheError(f"No test photo listed in {root}/images.parquet is readable.")
        images = np.stack(decoded)
    try:
        return ood.reference_from_images(explainer, images)
    except ValueError as exc:
        raise CacheError(f"The test photos of {root} cannot serve as a reference ({exc}).") from exc


@st.cache_data(show_spinner=False, max_entries=4)
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


@st.cache_resource(show_spinner=False, max_entries=16)
def _map_canvas(root: str, mtime: float, model_id: str, method: str) -> ul.MapCanvas:
    """The model's map drawn once for all sessions (read-only: each upload draws on a copy)."""
    points = _embedding(root, mtime, model_id)
    city = points["city"].fillna("?").astype(str)
    xy = points[[f"{method}_x", f"{method}_y"]].to_numpy()
    return ul.MapCanvas.draw(xy, city.tolist(), figures.city_colors(sorted(set(city))))


def _weights_file(entry: dict) -> str:
    return f"{entry.get('checkpoint', 'models/' + str(entry['model_id']))}.safetensors"


def _usable_models(cache: Cache) -> list[str]:
    return [m["model_id"] for m in cache.models if (cache.root / _weights_file(m)).exists()]


def _tile(cache: Cache, kind: str, row: int) -> np.ndarray | None:
    """A sprite-sheet tile, None when the cache has no such sheet; CacheError when damaged."""
    tile = uc.thumb_tile(cache, kind, row)
    if tile is None:
        per_row = int((cache.thumbs or {}).get("per_row", 16))
        sheet = cache.thumb_sheet(kind, thumb_location(row, per_row)[0])
        if sheet.exists():
            rel = str(sheet.relative_to(cache.root))
            raise damaged(cache.root, rel, "cannot be read as a JPEG sprite sheet")
    return tile


def _tiles(cache: Cache, kind: str, rows: list[int]) -> list[np.ndarray | None]:
    """Sprite-sheet tiles of ``rows``, decoding each sheet once (not once per tile); when a
    sheet is missing or damaged, tile by tile, so :func:`_tile` names the file."""
    layout = cache.thumbs or {}
    if kind in layout.get("kinds", []):
        size = int(layout.get("size", THUMB_SIZE))
        per_row = int(layout.get("per_row", THUMBS_PER_ROW))
        try:
            return list(crop_tiles(lambda sheet: cache.thumb_sheet(kind, sheet), rows, size,
                                   per_row))  # fmt: skip
        except (OSError, ValueError):
            log.info("sprite sheets of %s: reading tile by tile", kind, exc_info=True)
    return [_tile(cache, kind, row) for row in rows]


def _pick_photo(cache: Cache) -> tuple[ul.Upload | None, int | None]:
    """The photo to analyse (or None), and its test row when it is a sample."""
    source = st.radio("Photo", [UPLOAD, SAMPLE], horizontal=True, key="live_source")
    if source == UPLOAD:
        limit = ul.upload_limit_mb(st.get_option("server.maxUploadSize"))
        file = st.file_uploader(
            "Upload a street photo",
            type=None,
            key="live_upload",
            max_upload_size=limit,
            help=ul.upload_help(limit),
        )
        if file is None:
            return None, None
        return ul.read_upload(file.getvalue(), file.name, max_bytes=limit * 2**20), None
    samples = ul.sample_rows(_test_images(str(cache.root), cache_mtime(cache)))
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
        tile = _tile(cache, "orig", row)
        if tile is None:
            return ul.Upload(error="The sample photo cannot be read on this machine."), row
        note = "The source photo is not on this machine; its 96 px thumbnail is used instead."
        return ul.Upload(image=tile, digest=f"thumb{row}", notes=[note]), row


def _segmentation(cache: Cache, crop: np.ndarray, row: int | None):
    """``(labels [S,S], class_names)`` for the photo, or None after saying why not."""
    seg = cache.manifest.get("segmenter") or {}
    spec = str(seg.get("spec", "none")) if isinstance(seg, dict) else "none"
    if spec.lower() == "none" or not seg:
        st.info(segment.NO_SEGMENTER_MESSAGE)
        return None
    if spec.lower() == "annotations":
        if row is None:
            st.info(ul.ANNOTATIONS_MESSAGE)
            return None
        names = cache.class_names()
        if cache.has_labels and names:
            labels = np.asarray(cache.labels()[row])
            if labels.shape != crop.shape[:2]:
                labels = resize_center_crop(labels, crop.shape[0], nearest=True)
            return labels, names
        st.info(ul.ANNOTATIONS_MESSAGE)
        return None
    try:
        segmenter = _segmenter(spec)
    except (segment.SegmenterUnavailable, ValueError, OSError) as exc:
        st.warning(md_escape(exc))
        return None
    if segmenter is None:
        st.info(segment.NO_SEGMENTER_MESSAGE)
        return None
    return segmenter.segment(crop[None])[0], list(segmenter.class_names)


def _ood_caveat(cache: Cache, result: ul.ModelResult) -> None:
    """The out-of-distribution caveat under a prediction (or why it cannot be checked)."""
    try:
        reference = _ood_reference(str(cache.root), cache_mtime(cache), result.model_id)
        check = ul.ood_check(reference, result)
    except (CacheError, ValueError) as exc:
        st.caption(md_escape(f"Cannot check whether the photo is like the test photos: {exc}"))
        return
    if check is not None and check[2]:
        st.warning(ul.OOD_MESSAGE, icon="⚠️")


def _model_card(cache, result: ul.ModelResult, crop, threshold, display, seg) -> None:
    with st.container(border=True):
        name = display.get(result.model_id, result.model_id)
        st.markdown(
            f"**{md_escape(name)}** predicts **{md_escape(result.city)}** "
            f"({result.confidence:.1%})"
        )
        _ood_caveat(cache, result)
        c1, c2, c3 = st.columns([5, 3, 3])
        classes = [str(c) for c in _explainer(str(cache.root), cache_mtime(cache),
                                              result.model_id)[1]["classes"]]  # fmt: skip
        for value, label in ul.probability_rows(result.probs, classes):
            c1.progress(value, text=label)
        over, expl = ul.views(crop, result.mask, threshold)
        c2.image(over, caption="Grad-CAM overlay", width="stretch")
        c3.image(expl, caption=f"Visual explanation (mask ≥ {threshold:.2f})", width="stretch")
        if seg is not None:
            labels, names = seg
            parts = ul.object_breakdown(result.mask, labels, threshold, names).head(6)
            parts = parts[parts["explained"] > 0]
            if len(parts):
                pairs = zip(parts["object"], parts["share"], strict=True)
                text = ", ".join(f"{md_escape(o)} {s:.0%}" for o, s in pairs)
                st.caption(f"The explanation is made of: {text}")


@st.cache_data(show_spinner=False, max_entries=64, ttl=3600)
def _deletion(
    root: str, mtime: float, model_id: str, method: str, digest: str, _image, _result
) -> tuple[np.ndarray, np.ndarray, float]:
    """One model's deletion curve for a photo (cached by the photo's digest and the method)."""
    explainer, meta = _explainer(root, mtime, model_id)
    return ul.deletion(explainer, _image, int(meta["input_size"]), _result.mask, _result.pred)


def _deletion_section(cache: Cache, photo: ul.Upload, results, method: str, display) -> None:
    """Each model's deletion curve for the photo, in an expander computed only when open."""
    box = st.expander(
        "Deletion curves: does each explanation point at the pixels the model needs?",
        key="live_deletion_open",
        on_change="rerun",
    )
    with box, section("The deletion curves"):
        if not box.open:  # about 21 forward passes per model: only when asked for
            return
        root, mtime = str(cache.root), cache_mtime(cache)
        curves = []
        with st.spinner("Removing pixels in the order of each explanation…"):
            for r in results:
                x, y, area = _deletion(root, mtime, r.model_id, method, photo.digest,
                                       photo.image, r)  # fmt: skip
                curves.append((r.model_id, x, y, area))
        st.plotly_chart(ut.live_deletion_figure(curves, display), width="stretch")
        st.caption(ut.LIVE_DELETION_GUIDE)


def _map_section(cache: Cache, results: list[ul.ModelResult], display: dict[str, str]) -> None:
    st.subheader("Where would this photo land on the explanation map?")
    root, mtime = str(cache.root), cache_mtime(cache)
    methods = list(cache.manifest.get("config", {}).get("embed_methods") or ["tsne", "umap"])
    with_map = [
        r for r in results
        if any((cache.root / f"embed/{r.model_id}_{m}.npz").exists() for m in methods)
    ]  # fmt: skip
    if not with_map:
        st.info(
            "This cache has no fitted explanation maps yet (embed/<model>_<method>.npz); the "
            f"embed stage of `python -m precompute --cache {md_escape(cache.root)}` builds them."
        )
        return
    c1, c2 = st.columns(2)
    ids = [r.model_id for r in with_map]
    model_id = c1.selectbox("Map of model", ids, format_func=display.get, key="live_map_model")
    avail = [m for m in methods if (cache.root / f"embed/{model_id}_{m}.npz").exists()]
    names = {"tsne": "t-SNE", "umap": "UMAP", "pca": "PCA"}
    method = c2.radio(
        "Map", avail, horizontal=True, key="live_map_method",
        format_func=lambda m: md_escape(names.get(m, m)),
    )  # fmt: skip
    result = next(r for r in with_map if r.model_id == model_id)
    with section("The map"):
        embedder = _embedder(root, mtime, model_id, method)
        points = _embedding(root, mtime, model_id)
        xy, near = ul.place_on_map(embedder, result.mask, NEIGHBOURS)
        canvas = _map_canvas(root, mtime, model_id, method)
        near_xy = points.loc[points["row"].isin(near.tolist()), [f"{method}_x", f"{method}_y"]]
        st.image(
            canvas.place(xy, near_xy.to_numpy()),
            caption=f"★ your photo on the {names.get(method, method)} map; ○ its {len(near)} "
            "nearest test images; dots: the test images, coloured by city (legend below the map)",
        )
        with section("The nearest test images"):
            _neighbours(cache, model_id, near)


def _neighbours(cache: Cache, model_id: str, near: np.ndarray) -> None:
    st.caption("Nearest test images (most similar Grad-CAM masks), with their explanations:")
    test = _test_images(str(cache.root), cache_mtime(cache)).set_index("row")
    tiles = _tiles(cache, f"{model_id}/overlay", [int(row) for row in near.tolist()])
    cols = st.columns(len(near))
    for col, row, tile in zip(cols, near.tolist(), tiles, strict=True):
        with col:
            if tile is not None:
                st.image(tile, width="stretch")
            city = test["city"].get(int(row), "?")
            st.caption(f"test image {row} · {md_escape(city)}")


def _analyse(cache: Cache, photo: ul.Upload, row: int | None, models, method, threshold,
             times: ul.RunTimes):  # fmt: skip
    root, mtime = str(cache.root), cache_mtime(cache)
    display = model_labels(cache)
    crop = resize_center_crop(photo.image, cache.image_size)
    results: list[ul.ModelResult] = []
    with times.step("models"), st.spinner("Running the models…"):
        for model_id in models:
            try:
                results.append(_predict(root, mtime, model_id, method, photo.digest, photo.image))
            except CacheError as exc:  # this model's checkpoint: the other models still run
                log.info("cannot run model %s: %s", model_id, exc)
                name = display.get(model_id, model_id)
                st.warning(md_escape(f"{name} could not be run: {exc}"))
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
    seg = None
    with right, section("The segmentation"), times.step("segmentation"):
        seg = _segmentation(cache, crop, row)
        if seg is not None:
            labels, names = seg
            st.image(ul.colorize_labels(labels, len(names)), caption="Segmentation", width=220)
    for result in results:
        with section(f"Model {display.get(result.model_id, result.model_id)}"), times.step("cards"):
            _model_card(cache, result, crop, threshold, display, seg)
    with times.step("deletion"):
        _deletion_section(cache, photo, results, method, display)
    with times.step("map"):
        _map_section(cache, results, display)


def main() -> None:
    times = ul.RunTimes()
    cache = current_cache()
    st.title("Live Grad-CAM")
    st.caption(
        "Give the networks a street photo of your own: each model says which city it thinks the "
        "photo shows, and Grad-CAM shows where it looked. The visual explanation keeps only the "
        "pixels whose Grad-CAM value is at least the threshold."
    )
    models = _usable_models(cache)
    display = model_labels(cache)
    for entry in cache.models:
        if entry["model_id"] not in models:
            st.warning(md_escape(
                f"{display.get(entry['model_id'])} is not available: its weights "
                f"{_weights_file(entry)} are missing; rebuild them with `python -m precompute "
                f"--cache {cache.root} --force --stages train`."
            ))  # fmt: skip
    if not models:
        st.info(
            "This cache has no model checkpoints (models/<model>.safetensors), so nothing can be "
            f"run live; `python -m precompute --cache {md_escape(cache.root)}` trains them."
        )
        return
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
    photo, row = None, None
    with section("The photo picker"):
        photo, row = _pick_photo(cache)
    if photo is None:
        st.info("Upload a street photo (JPEG, PNG or WebP) or pick a sample to start.")
        return
    if not photo.ok:  # read_upload's own sentences: no text from the file or its name
        st.error(photo.error or "The file could not be read.")
        return
    for note in photo.notes:
        st.info(note)
    if not chosen:
        st.info("Pick at least one model.")
        return
    try:
        _analyse(cache, photo, row, chosen, method, threshold, times)
    except Exception:
        log.exception("live Grad-CAM failed")
        st.error(ul.UNEXPECTED_MESSAGE)
    times.write(photo.digest)


main()
