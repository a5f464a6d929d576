"""Pure logic of the Galleries page: per city × object, the test images where the object lies
inside the network's visual explanation, ranked by the mask's value over the object.

The idea is Doersch et al. 2012, *What makes Paris look like Paris?* (the visual elements that
tell a city apart), driven here by a trained network's Grad-CAM masks and the segmenter's labels
instead of mined patches. No Streamlit here.

Conventions as in :mod:`cityviz.stats`: a mask is ``mask_norm`` (float32 ``[H, W]`` in
[0, 1]); a label map is integer ``[H, W]`` of segmenter class indices; the explanation keeps the
pixels with ``mask >= threshold`` (compared in float32).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cityviz import stats
from cityviz.cam import overlay
from cityviz.ui.safe_text import md_escape

OUTLINE_COLOR = (255, 0, 255)
SCORE_CHUNK = 256
GALLERY_COLUMNS = ["image_id", "row", "score", "M", "N", "rate"]


def candidates(
    hist: pd.DataFrame,
    test: pd.DataFrame,
    class_id: int,
    threshold: float,
    city: str,
) -> pd.DataFrame:
    """The test images of ``city`` where object ``class_id`` lies inside the explanation:
    at least one of its pixels has ``mask >= threshold`` (``M > 0`` in the histograms).

    ``hist``: one model's ``hist/<model>.parquet``; ``test``: the cache's test images
    (``image_id, row, city``). Columns ``image_id, row, M, N, rate`` (``M`` explained and ``N``
    all pixels of the object in the image, int64; ``rate = M / N``), in row order.
    """
    counts = stats.hist_counts(hist)
    rows = pd.DataFrame(
        {
            "image_id": hist["image_id"].to_numpy(),
            "class_id": hist["class_id"].to_numpy(dtype=np.int64),
            "M": stats.explained_pixels(counts, threshold),
            "N": counts.sum(axis=1, dtype=np.int64),
        }
    )
    mine = test.loc[test["city"] == city, ["image_id", "row"]]
    out = rows[(rows["class_id"] == int(class_id)) & (rows["M"] > 0)].merge(mine, on="image_id")
    out["rate"] = out["M"] / out["N"]
    out = out.sort_values("row")
    return out[["image_id", "row", "M", "N", "rate"]].reset_index(drop=True)


def mask_in_object(masks: np.ndarray, labels: np.ndarray, class_id: int) -> np.ndarray:
    """Mean of each mask over the object's pixels: float64 ``[B]`` (NaN where the object has no
    pixel). ``masks`` float ``[B, H, W]`` (mask_norm), ``labels`` integer ``[B, H, W]``."""
    masks = np.asarray(masks, dtype=np.float64)
    labels = np.asarray(labels)
    if masks.shape != labels.shape:
        raise ValueError(f"masks {masks.shape} and labels {labels.shape} differ in shape")
    obj = labels == class_id
    n = obj.sum(axis=(1, 2))
    total = np.where(obj, masks, 0.0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def score(
    cands: pd.DataFrame,
    class_id: int,
    masks_of: Callable[[np.ndarray], np.ndarray],
    labels_of: Callable[[np.ndarray], np.ndarray],
    chunk: int = SCORE_CHUNK,
) -> pd.DataFrame:
    """``cands`` (from :func:`candidates`) with ``score``: :func:`mask_in_object` of each
    image, computed ``chunk`` test rows at a time (``masks_of(rows)`` / ``labels_of(rows)``
    give ``[len(rows), H, W]``), so memory stays bounded whatever the city's size."""
    rows = cands["row"].to_numpy(dtype=np.int64)
    scores = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        scores[start : start + chunk] = mask_in_object(masks_of(part), labels_of(part), class_id)
    out = cands.copy()
    out["score"] = scores
    return out


def rank(scored: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` images with the highest ``score`` (ties: more explained pixels ``M``, then
    image id). Columns :data:`GALLERY_COLUMNS`."""
    best = scored.sort_values(["score", "M", "image_id"], ascending=[False, False, True])
    return best[GALLERY_COLUMNS].head(n).reset_index(drop=True)


def outline(obj: np.ndarray) -> np.ndarray:
    """The boundary of a region: bool ``[H, W]``, the pixels of ``obj`` (bool ``[H, W]``) with a
    4-neighbour outside it (the image border counts as outside)."""
    obj = np.asarray(obj, dtype=bool)
    pad = np.pad(obj, 1, constant_values=False)
    interior = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return obj & ~interior


def tile(
    image: np.ndarray,
    mask: np.ndarray,
    labels: np.ndarray,
    class_id: int,
    alpha: float = 0.45,
    color: Sequence[int] = OUTLINE_COLOR,
) -> np.ndarray:
    """One gallery image: the Grad-CAM overlay (:func:`cityviz.cam.overlay`, heat map weight
    ``alpha``) with the object's outline drawn in ``color``. uint8 ``[H, W, 3]``; ``image``
    uint8 ``[H, W, 3]``, ``mask`` float ``[H, W]``, ``labels`` integer ``[H, W]``."""
    out = overlay(image, mask, alpha=alpha)
    out[outline(np.asarray(labels) == class_id)] = np.asarray(color, dtype=np.uint8)
    return out


def objects_by_city(rpc: pd.DataFrame, model_id: str) -> dict[str, list[str]]:
    """city -> the objects that pass the pixel filter for ``model_id`` in ``stats/rpc.parquet``
    (column ``kept``; all when absent), by R_p^c descending: the gallery's choices."""
    tab = rpc[rpc["model_id"] == model_id]
    if "kept" in tab:
        tab = tab[tab["kept"].astype(bool)]
    tab = tab.sort_values(["city", "rpc", "class_id"], ascending=[True, False, True])
    return {str(c): grp["object"].astype(str).tolist() for c, grp in tab.groupby("city", sort=True)}


def class_id_of(class_names: Sequence[str], obj: str) -> int | None:
    """Index of ``obj`` among the segmenter's class names, or None."""
    names = list(class_names)
    return names.index(obj) if obj in names else None


def from_query(
    params: Mapping[str, Any], cities: Sequence[str], objects_of: Mapping[str, Sequence[str]]
) -> tuple[str | None, str | None]:
    """``(city, object)`` from a link's query parameters ``?city=..&object=..``, each None when
    absent or not among the choices (a link from another cache, a hand-typed name)."""
    city = params.get("city")
    city = city if isinstance(city, str) and city in cities else None
    obj = params.get("object")
    ok = city is not None and isinstance(obj, str) and obj in objects_of.get(city, [])
    return city, obj if ok else None


GALLERY_PAGE = "pages/gallery.py"


def link_args(city: str, obj: str, model_id: str | None = None) -> dict[str, Any]:
    """Keyword arguments of ``st.page_link`` to the gallery of ``obj`` in ``city`` (the names
    Markdown-escaped in the label, raw in the query parameters that :func:`from_query` reads;
    ``model`` too when given)."""
    params = {"city": city, "object": obj}
    if model_id is not None:
        params["model"] = model_id
    return {
        "page": GALLERY_PAGE,
        "label": f"Gallery: {md_escape(obj)} in {md_escape(city)}",
        "icon": ":material/photo_library:",
        "query_params": params,
    }
