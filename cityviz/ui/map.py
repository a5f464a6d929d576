"""Pure logic of the explanation-map page: the per-point table, colourings, cluster labels,
atlas placement, selections and their object profile. No Streamlit here."""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from plotly.colors import qualitative

from cityviz import stats
from cityviz import thumbs as thumb_lib
from cityviz.store import damaged, thumb_sheet_rel
from cityviz.ui.figures import city_colors
from cityviz.ui.safe_text import csv_safe, md_escape

METHOD_LABELS = {"tsne": "t-SNE", "umap": "UMAP"}
COLOR_BY = (
    "True city",
    "Predicted city",
    "Correct / wrong",
    "Confidence",
    "Dominant object",
    "Cluster",
)
CATEGORY_COLORS = qualitative.D3 + qualitative.Set3 + qualitative.Pastel1
OTHER_COLOR = "#b5b5b5"
CORRECT_COLORS = {"correct": "#2ca02c", "wrong": "#d62728"}
MAX_GROUPS = 12
GALLERY_SIZE = 24


# --------------------------------------------------------------------------- the table


def map_frame(
    test: pd.DataFrame, predictions: pd.DataFrame, embedding: pd.DataFrame, cities: Sequence[str]
) -> pd.DataFrame:
    """One row per test image (ordered by test row) with everything the map shows.

    ``test``: the cache's test images (``image_id, city, row``…); ``predictions``: one model's
    predictions; ``embedding``: that model's ``embed/<model>.parquet``. Columns: ``row,
    image_id, city, pred_city, correct, confidence, dominant, cluster, cluster_label`` and the
    coordinates ``tsne_x, tsne_y, umap_x, umap_y`` (NaN where a method was not run).
    """
    frame = test[["row", "image_id", "city"]].copy()
    pred = predictions.set_index("row")
    names = np.asarray(list(cities), dtype=object)
    frame["pred_city"] = names[pred.loc[frame["row"], "pred"].to_numpy()]
    frame["correct"] = pred.loc[frame["row"], "correct"].to_numpy(dtype=bool)
    frame["confidence"] = pred.loc[frame["row"], "confidence"].to_numpy(dtype=np.float32)
    emb = embedding.set_index("row")
    for col in ("tsne_x", "tsne_y", "umap_x", "umap_y"):
        vals = emb[col].reindex(frame["row"]) if col in emb else np.nan
        frame[col] = np.asarray(vals, dtype=np.float32)
    frame["cluster"] = emb["cluster"].reindex(frame["row"]).fillna(-1).to_numpy(dtype=np.int64)
    label = emb["cluster_label"] if "cluster_label" in emb else pd.Series(dtype=object)
    frame["cluster_label"] = label.reindex(frame["row"]).to_numpy(dtype=object)
    dom = emb["dominant"] if "dominant" in emb else pd.Series(dtype=object)
    frame["dominant"] = dom.reindex(frame["row"]).to_numpy(dtype=object)
    return frame.reset_index(drop=True)


def available_methods(frame: pd.DataFrame) -> list[str]:
    """Embedding methods with coordinates for every point."""
    return [m for m in METHOD_LABELS if frame[[f"{m}_x", f"{m}_y"]].notna().all().all()]


def cluster_names(frame: pd.DataFrame) -> dict[int, str]:
    """cluster id -> "k · label" (noise, -1, is "unclustered")."""
    out: dict[int, str] = {}
    for k, label in frame.groupby("cluster")["cluster_label"].first().items():
        k = int(k)
        out[k] = "unclustered" if k < 0 else f"{k} · {label}" if label else f"cluster {k}"
    return out


# --------------------------------------------------------------------------- colourings


def _groups(
    values: pd.Series,
    order: Sequence[str] | None,
    colors: Mapping[str, str] | None,
    max_groups: int,
) -> dict[str, Any]:
    """Categorical colouring: the ``max_groups - 1`` largest categories keep their own colour
    (or all of them when they fit), the rest become "other"."""
    vals = values.astype(object).where(values.notna(), "none").astype(str)
    counts = vals.value_counts()
    names = [c for c in order if c in counts.index] if order is not None else list(counts.index)
    if len(names) > max_groups:
        keep = list(counts.index[: max_groups - 1])
        names = [n for n in names if n in keep] + ["other"]
        vals = vals.where(vals.isin(keep), "other")
    code_of = {n: i for i, n in enumerate(names)}
    codes = vals.map(code_of).to_numpy(dtype=np.int32)
    groups = []
    for i, n in enumerate(names):
        color = OTHER_COLOR if n in ("other", "none") else None
        if color is None:
            color = (colors or {}).get(n, CATEGORY_COLORS[i % len(CATEGORY_COLORS)])
        groups.append({"name": n, "color": color})
    return {"mode": "categorical", "groups": groups, "codes": codes}


def color_spec(
    frame: pd.DataFrame, color_by: str, cities: Sequence[str], max_groups: int = MAX_GROUPS
) -> dict[str, Any]:
    """How to colour the points: ``{"mode": "categorical", "groups": [{name, color}], "codes":
    int32 [N]}`` (index into groups) or ``{"mode": "continuous", "values": float32 [N],
    "title", "colorscale", "cmin", "cmax"}``."""
    if color_by == "True city":
        return _groups(frame["city"], list(cities), city_colors(cities), max_groups)
    if color_by == "Predicted city":
        return _groups(frame["pred_city"], list(cities), city_colors(cities), max_groups)
    if color_by == "Correct / wrong":
        labels = pd.Series(np.where(frame["correct"], "correct", "wrong"))
        return _groups(labels, ["correct", "wrong"], CORRECT_COLORS, max_groups)
    if color_by == "Confidence":
        return {
            "mode": "continuous",
            "values": frame["confidence"].to_numpy(dtype=np.float32),
            "title": "confidence",
            "colorscale": "Viridis",
            "cmin": float(1.0 / max(1, len(cities))),
            "cmax": 1.0,
        }
    if color_by == "Dominant object":
        return _groups(frame["dominant"], None, None, max_groups)
    if color_by == "Cluster":
        names = cluster_names(frame)
        labels = frame["cluster"].map(names)
        order = [names[k] for k in sorted(names, key=lambda k: (k < 0, k))]
        return _groups(labels, order, None, max_groups)
    raise ValueError(f"unknown colouring {color_by!r}; known: {', '.join(COLOR_BY)}")


# --------------------------------------------------------------------------- annotations


def cluster_annotations(
    frame: pd.DataFrame, method: str, hover: Mapping[int, Sequence[str]] | None = None
) -> list[dict[str, Any]]:
    """A label per cluster at its centroid (median position): ``[{x, y, text}]``, noise left out.

    With ``hover`` (cluster -> lines, e.g. from :func:`lift_hover`) a label also carries
    ``"hover"``: the lines shown when the pointer rests on it."""
    x, y = f"{method}_x", f"{method}_y"
    clustered = frame[frame["cluster"] >= 0]
    out = []
    for k, grp in clustered.groupby("cluster", sort=True):
        label = grp["cluster_label"].iloc[0]
        item = {
            "x": float(grp[x].median()),
            "y": float(grp[y].median()),
            "text": str(label) if isinstance(label, str) and label else f"cluster {k}",
        }
        if hover is not None and int(k) in hover:
            item["hover"] = [str(line) for line in hover[int(k)]]
        out.append(item)
    return out


def with_cluster_labels(frame: pd.DataFrame, labels: Mapping[int, str]) -> pd.DataFrame:
    """A copy of ``frame`` whose ``cluster_label`` is ``labels[cluster]`` where given (e.g. the
    lift names of :func:`cityviz.stats.lift_labels`); other clusters keep theirs."""
    out = frame.copy()
    new = out["cluster"].map(lambda k: labels.get(int(k)))
    out["cluster_label"] = new.where(new.notna(), out["cluster_label"]).to_numpy(dtype=object)
    return out


def lift_hover(lift: pd.DataFrame, top: int = 4) -> dict[int, list[str]]:
    """cluster -> hover lines from :func:`cityviz.stats.cluster_lift`'s table: a heading, then
    its ``top`` supported objects with lift > 1, by lift, e.g. ``"signboard: 31% of the
    cluster's explanation vs 8% of all (lift 3.9×)"``. Object names are raw (the browser
    escapes them)."""
    out: dict[int, list[str]] = {}
    for k, grp in lift.groupby("cluster", sort=True):
        lines = ["Objects over-represented in this cluster's explanations:"]
        best = grp[grp["supported"].astype(bool) & (grp["lift"] > 1)].head(top)
        for r in best.itertuples():
            lines.append(
                f"{r.object}: {r.share_cluster:.0%} of the cluster's explanation vs "
                f"{r.share_all:.0%} of all (lift {r.lift:.1f}×)"
            )
        if len(best) == 0:
            lines.append("none: no object with the minimum support has a lift above 1")
        out[int(k)] = lines
    return out


def atlas_rows(x: np.ndarray, y: np.ndarray, rows: np.ndarray, n: int = 500) -> np.ndarray:
    """About ``n`` test rows spread over the map, for the atlas of thumbnails (paper Fig. 4).

    The map's bounding box is cut into a ``g × g`` grid with ``g² ≈ 1.3 n`` (many cells are
    empty); each occupied cell contributes the point nearest its centre, so thumbnails drawn at
    those points overlap little and dense and sparse regions are both shown. When more than
    ``n`` cells are occupied, the cells holding the most points win. Returned in row order.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    rows = np.asarray(rows)
    if len(rows) == 0 or n <= 0:
        return np.empty(0, dtype=rows.dtype if len(rows) else np.int64)
    g = max(1, int(np.ceil(np.sqrt(1.3 * n))))
    span_x = max(x.max() - x.min(), 1e-12)
    span_y = max(y.max() - y.min(), 1e-12)
    fx = (x - x.min()) / span_x * g
    fy = (y - y.min()) / span_y * g
    cx = np.minimum(fx.astype(np.int64), g - 1)
    cy = np.minimum(fy.astype(np.int64), g - 1)
    cell = cy * g + cx
    dist = (fx - cx - 0.5) ** 2 + (fy - cy - 0.5) ** 2
    order = np.lexsort((rows, dist, cell))
    first = np.ones(len(order), dtype=bool)
    first[1:] = cell[order][1:] != cell[order][:-1]
    best = order[first]
    if len(best) > n:
        size = np.bincount(cell, minlength=g * g)[cell[best]]
        best = best[np.lexsort((rows[best], -size))[:n]]
    return np.sort(rows[best])


# --------------------------------------------------------------------------- selection


def selected_rows(value: Any, valid_rows: np.ndarray, view_key: str | None = None) -> np.ndarray:
    """The test rows of a component value ``{"rows": [...], "view": key}``, validated.

    Anything malformed, made on another view (model / method) or naming rows not on the map
    gives an empty selection rather than an error; duplicates are dropped; sorted.
    """
    if not isinstance(value, Mapping):
        return np.empty(0, dtype=np.int64)
    if view_key is not None and value.get("view") != view_key:
        return np.empty(0, dtype=np.int64)
    raw = value.get("rows")
    if not isinstance(raw, list | tuple):
        return np.empty(0, dtype=np.int64)
    ints = [int(r) for r in raw if isinstance(r, int | np.integer) and not isinstance(r, bool)]
    rows = np.unique(np.asarray(ints, dtype=np.int64))
    return rows[np.isin(rows, np.asarray(valid_rows))]


def gallery_rows(
    rows: np.ndarray, confidence: pd.Series | None = None, n: int = GALLERY_SIZE
) -> np.ndarray:
    """Up to ``n`` rows of a selection for its gallery: all when they fit, else ``n`` spread
    evenly over the selection sorted by decreasing confidence (so the gallery shows both sure
    and unsure predictions)."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) <= n:
        return rows
    if confidence is not None:
        conf = confidence.reindex(rows).to_numpy(dtype=np.float64)
        rows = rows[np.lexsort((rows, -np.nan_to_num(conf, nan=-1.0)))]
    pick = np.unique(np.linspace(0, len(rows) - 1, n).round().astype(np.int64))
    return rows[pick]


def selection_summary(frame: pd.DataFrame, rows: np.ndarray) -> dict[str, Any]:
    """Counts for the selection: size, accuracy, share per true city, top dominant objects."""
    sel = frame[frame["row"].isin(rows)]
    n = len(sel)
    return {
        "n": n,
        "accuracy": float(sel["correct"].mean()) if n else float("nan"),
        "cities": sel["city"].value_counts().to_dict(),
        "dominant": sel["dominant"].dropna().value_counts().head(5).to_dict(),
    }


def selection_profile(
    hist: pd.DataFrame,
    selected_ids: Sequence[str],
    all_ids: Sequence[str],
    threshold: float,
    class_names: Sequence[str],
    min_mean_pixels: float = 100.0,
    top: int = 10,
) -> pd.DataFrame:
    """R_p^c of the selection next to R_p^c of all test images, per object.

    Both come from :func:`cityviz.stats.rpc_table` on the histogram rows, with every image of
    the selection (resp. of the test set) counted as one "city". Objects are kept when their
    mean pixel count over the *selection* passes ``min_mean_pixels``; sorted by the
    selection's R_p^c; ``ratio = rpc_selection / rpc_all``. Columns: ``object, class_id,
    rpc_selection, rpc_all, ratio, share_selection, mean_pixels``.
    """
    cols = [
        "object",
        "class_id",
        "rpc_selection",
        "rpc_all",
        "ratio",
        "share_selection",
        "mean_pixels",
    ]
    selected_ids = list(selected_ids)
    if not selected_ids:
        return pd.DataFrame(columns=cols)
    sel_of = pd.Series("selection", index=pd.Index(selected_ids).unique())
    all_of = pd.Series("all", index=pd.Index(list(all_ids)).unique())
    n_sel = pd.Series({"selection": len(sel_of)})
    n_all = pd.Series({"all": len(all_of)})
    sel = stats.rpc_table(hist, sel_of, threshold, class_names, min_mean_pixels, n_sel)
    ref = stats.rpc_table(hist, all_of, threshold, class_names, min_mean_pixels, n_all)
    if sel.empty:
        return pd.DataFrame(columns=cols)
    out = sel[sel["kept"].astype(bool)].merge(
        ref[["class_id", "rpc"]].rename(columns={"rpc": "rpc_all"}), on="class_id", how="left"
    )
    out = out.rename(columns={"rpc": "rpc_selection", "share": "share_selection"})
    out["ratio"] = out["rpc_selection"] / out["rpc_all"]
    out = out.sort_values(["rpc_selection", "class_id"], ascending=[False, True]).head(top)
    return out[cols].reset_index(drop=True)


# --------------------------------------------------------------------------- exports

EXPORT_COLUMNS = [
    "image_id",
    "path",
    "city",
    "predicted_city",
    "correct",
    "confidence",
    "cluster",
    "test_row",
]
ZIP_MAX_IMAGES = 2000


def selection_table(frame: pd.DataFrame, rows: np.ndarray, test: pd.DataFrame) -> pd.DataFrame:
    """The selected images as a table for download: columns :data:`EXPORT_COLUMNS`, one row
    per selected test row, in row order (``confidence``: the model's probability of its
    prediction, float; ``cluster``: the cluster's name; ``path``: from the cache's
    ``images.parquet``)."""
    sel = frame[frame["row"].isin(np.asarray(rows))].sort_values("row")
    names = cluster_names(frame)
    path_of = test.set_index("row")["path"] if "path" in test else pd.Series(dtype=object)
    return pd.DataFrame(
        {
            "image_id": sel["image_id"].astype(str).to_numpy(),
            "path": path_of.reindex(sel["row"]).astype(object).to_numpy(),
            "city": sel["city"].astype(str).to_numpy(),
            "predicted_city": sel["pred_city"].astype(str).to_numpy(),
            "correct": sel["correct"].to_numpy(dtype=bool),
            "confidence": sel["confidence"].to_numpy(dtype=np.float64).round(4),
            "cluster": sel["cluster"].map(names).to_numpy(dtype=object),
            "test_row": sel["row"].to_numpy(dtype=np.int64),
        }
    )


def selection_csv(table: pd.DataFrame) -> bytes:
    """UTF-8 CSV of :func:`selection_table`, every text cell through ``csv_safe`` (no cell runs
    as a spreadsheet formula)."""
    return csv_safe(table).to_csv(index=False).encode("utf-8")


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def zip_member(row: int, image_id: str) -> str:
    """The ZIP member name of a thumbnail: ``"<row, 6 digits>_<image id>.png"``, the id
    reduced to ``[A-Za-z0-9._-]`` (at most 60 characters), so no name from data can climb out
    of the folder it is unpacked into or carry control characters."""
    slug = _UNSAFE_NAME.sub("_", str(image_id)).strip("._")[:60] or "image"
    return f"{int(row):06d}_{slug}.png"


def thumbs_zip(tiles: Sequence[np.ndarray], rows: Sequence[int], image_ids: Sequence[str]) -> bytes:
    """A ZIP (deflated) holding one PNG per tile (uint8 ``[H, W, 3]``), named by
    :func:`zip_member`. ValueError when the three sequences differ in length."""
    if not len(tiles) == len(rows) == len(image_ids):
        raise ValueError(f"{len(tiles)} tiles for {len(rows)} rows and {len(image_ids)} image ids")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for tile, row, image_id in zip(tiles, rows, image_ids, strict=True):
            png = io.BytesIO()
            Image.fromarray(np.asarray(tile, dtype=np.uint8)).save(png, format="PNG")
            zf.writestr(zip_member(row, image_id), png.getvalue())
    return buf.getvalue()


def read_tiles(
    root: str | Path, kind: str, rows: Sequence[int], *, size: int, per_row: int
) -> list[np.ndarray]:
    """Test ``rows``' thumbnails of ``kind`` (``"orig"``, ``"<model>/expl"``, …): uint8
    ``[size, size, 3]`` tiles cut from the sprite sheets of the cache at ``root``
    (``per_row`` tiles a row; :func:`cityviz.thumbs.crop_tiles`), in the order of ``rows``.

    Raises :class:`cityviz.store.CacheError`, one sentence naming the sheet and the
    ``python -m precompute … --force --stages thumbs`` command, when a sheet is missing or
    cannot be decoded (deleted, truncated, not a JPEG).
    """
    asked: list[int] = []

    def sheet_path(sheet: int) -> Path:
        asked.append(sheet)
        return Path(root) / thumb_sheet_rel(kind, sheet)

    try:
        return thumb_lib.crop_tiles(sheet_path, list(rows), size=size, per_row=per_row)
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow: OSError, UnidentifiedImageError
        if not asked:
            raise
        rel = thumb_sheet_rel(kind, asked[-1])
        problem = "is missing" if not (Path(root) / rel).exists() else "cannot be read"
        raise damaged(root, rel, f"{problem} ({type(exc).__name__})") from exc


def selection_zip(
    root: str | Path,
    kind: str,
    rows: Sequence[int],
    image_ids: Sequence[str],
    *,
    size: int,
    per_row: int,
) -> bytes:
    """:func:`thumbs_zip` of test ``rows``' thumbnails of ``kind`` (e.g. ``"<model>/expl"``);
    :class:`cityviz.store.CacheError` naming an unreadable sheet as :func:`read_tiles`,
    ValueError as :func:`thumbs_zip`."""
    tiles = read_tiles(root, kind, rows, size=size, per_row=per_row)
    return thumbs_zip(tiles, rows, image_ids)


def gallery_captions(frame: pd.DataFrame, rows: Sequence[int]) -> list[str]:
    """One caption per test row of ``rows`` (``frame``: ``row, city, pred_city, correct,
    confidence``): ``"city (93%)"``, or ``"city → predicted (61%)"`` when wrong; names are
    Markdown-escaped (``st.image`` renders captions as Markdown)."""
    info = frame.set_index("row").loc[list(rows)]
    return [
        md_escape(r.city)
        + ("" if r.correct else f" → {md_escape(r.pred_city)}")
        + f" ({r.confidence:.0%})"
        for r in info.itertuples()
    ]


# --------------------------------------------------------------------------- component payload


def payload(
    frame: pd.DataFrame,
    method: str,
    color: Mapping[str, Any],
    cities: Sequence[str],
    *,
    view_key: str,
    thumbs: Mapping[str, Any] | None = None,
    labels: Sequence[Mapping[str, Any]] = (),
    atlas: Mapping[str, Any] | None = None,
    height: int = 640,
    dragmode: str = "zoom",
    selected: Sequence[int] = (),
    equal_aspect: bool = False,
) -> dict[str, Any]:
    """The scatter component's arguments: per-point arrays as raw little-endian bytes (float32 /
    int32), everything else as JSON, and ``data_key``, a digest of all of it that lets the
    browser skip redrawing when a rerun sends the same map again.

    ``equal_aspect``: one unit of ``y`` spans as many pixels as one unit of ``x`` (plotly's
    ``scaleanchor``), for coordinates in a common unit such as a map projection's; otherwise
    each axis stretches to fill the frame.

    ``selected`` (test rows) is left out of the digest: the browser already shows a selection
    it made; the rows only matter when the map is redrawn (another colouring), to keep it."""
    city_code = {c: i for i, c in enumerate(cities)}
    names = cluster_names(frame)
    cluster_list = sorted(names)
    cluster_code = {k: i for i, k in enumerate(cluster_list)}
    args: dict[str, Any] = {
        "x": _f32(frame[f"{method}_x"]),
        "y": _f32(frame[f"{method}_y"]),
        "rows": _i32(frame["row"]),
        "city": _i32(frame["city"].map(city_code)),
        "pred": _i32(frame["pred_city"].map(city_code)),
        "conf": _f32(frame["confidence"]),
        "cluster": _i32(frame["cluster"].map(cluster_code)),
        "meta": {"cities": list(cities), "clusters": [names[k] for k in cluster_list]},
        "color": {k: v for k, v in color.items() if k not in ("codes", "values")},
        "thumbs": dict(thumbs) if thumbs else None,
        "labels": list(labels),
        "atlas": dict(atlas) if atlas else None,
        "height": int(height),
        "dragmode": dragmode,
        "view_key": view_key,
        "equal_aspect": bool(equal_aspect),
    }
    if color["mode"] == "continuous":
        args["values"] = _f32(color["values"])
    else:
        args["codes"] = _i32(color["codes"])
    args["data_key"] = _digest(args)
    args["selected"] = [int(r) for r in selected]
    return args


def _f32(values: Any) -> bytes:
    return np.ascontiguousarray(np.asarray(values, dtype="<f4")).tobytes()


def _i32(values: Any) -> bytes:
    return np.ascontiguousarray(np.asarray(values, dtype="<i4")).tobytes()


def _digest(args: Mapping[str, Any]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for key in sorted(args):
        value = args[key]
        h.update(key.encode())
        h.update(value if isinstance(value, bytes) else repr(value).encode())
    return h.hexdigest()


def decode_f32(data: bytes) -> np.ndarray:
    """Inverse of the payload's float32 encoding (for tests)."""
    return np.frombuffer(data, dtype="<f4")


def decode_i32(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i4")
