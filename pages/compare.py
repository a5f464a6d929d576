"""Compare models: how much do two networks' Grad-CAM masks differ (the paper's AR, Table 2)?"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from cityviz.store import Cache, CacheError, CacheMissing
from cityviz.ui import compare as uc
from cityviz.ui import figures
from cityviz.ui.safe_text import md_escape
from pages.common import current_cache, guard, json_object, model_labels, section

SUMMARY_FILE = "stats/ar_summary.parquet"
VERDICT_FILE = "stats/arch_vs_seed.json"


def _mtime(cache: Cache) -> float:
    return (cache.root / "manifest.json").stat().st_mtime


@st.cache_data(show_spinner=False)
def _summary(root: str, mtime: float) -> pd.DataFrame:
    return Cache(root).ar_summary()


@st.cache_data(show_spinner=False, max_entries=16)
def _pair(root: str, mtime: float, model_a: str, model_b: str) -> pd.DataFrame:
    """One pair's per-image AR, read from the parquet file with a filter (not the whole table)."""
    path = Cache(root).root / "stats/ar.parquet"
    redo = f"rebuild it with `python -m precompute --cache {root} --force --stages stats`"
    if not path.exists():
        raise CacheMissing(
            f"The cache at {root} has no stats/ar.parquet yet; build it with `python -m "
            f"precompute --cache {root} --stages stats`."
        )
    both = [
        [("model_a", "==", model_a), ("model_b", "==", model_b)],
        [("model_a", "==", model_b), ("model_b", "==", model_a)],
    ]
    try:
        table = pd.read_parquet(path, filters=both)
        return uc.pair_ar(table, model_a, model_b)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"{path} cannot be read ({exc}); {redo}.") from exc


@st.cache_data(show_spinner=False)
def _test_images(root: str, mtime: float) -> pd.DataFrame:
    return Cache(root).test_images()


@st.cache_data(show_spinner=False)
def _predictions(root: str, mtime: float, model_id: str) -> pd.DataFrame:
    return Cache(root).predictions(model_id).set_index("row")


@st.cache_data(show_spinner=False, max_entries=256)
def _crop(path: str, size: int):
    return uc.load_crop(path, size)


def _matrix_section(cache: Cache, summary: pd.DataFrame, display: dict[str, str]) -> None:
    st.subheader("Average residual of every model pair")
    st.caption(
        "AR (eq. 2) is the mean absolute difference between two models' normalised Grad-CAM "
        "masks, averaged over the pixels of a test image and then over all test images: 0 means "
        "identical masks, 1 completely different ones."
    )
    ids = cache.model_ids
    matrix = uc.ar_matrix(summary, ids)
    labels = [display.get(m, m) for m in ids]
    tab_map, tab_table = st.tabs(["Heat map", "Table"])
    with tab_map:
        st.plotly_chart(figures.ar_heatmap(matrix, labels), width="stretch")
    with tab_table:
        st.dataframe(
            uc.pairs_table(summary, display),
            hide_index=True,
            column_config={
                c: st.column_config.NumberColumn(format="%.4f")
                for c in ("mean AR", "CI low", "CI high")
            },
        )


def _verdict_section(verdict: dict | None) -> None:
    st.subheader("Architecture or initialisation?")
    if verdict is None:
        st.info(
            "The architecture-versus-seed summary (stats/arch_vs_seed.json) is not in this "
            "cache; the stats stage of `python -m precompute` writes it."
        )
        return
    c1, c2, c3 = st.columns(3)
    fmt = uc.fmt_num
    c1.metric("Across architectures (mean AR)", fmt(verdict.get("mean_arch")))
    c2.metric("Across seeds (mean AR)", fmt(verdict.get("mean_seed")))
    ci = float(verdict.get("ci", 0.95) or 0.95)
    c3.metric(
        "Difference",
        fmt(verdict.get("diff")),
        help=f"{ci:.0%} bootstrap CI over test images: "
        f"{fmt(verdict.get('ci_lo'))} to {fmt(verdict.get('ci_hi'))}",
    )
    sentence = uc.claim_sentence(verdict)
    if verdict.get("claim_holds"):
        st.success(sentence)
    elif verdict.get("claim_holds") is None:
        st.info(sentence)
    else:
        st.warning(sentence)


def _browse_section(cache: Cache, display: dict[str, str]) -> None:
    st.subheader("Browse two models side by side")
    ids = list(display)
    c1, c2, c3 = st.columns([2, 2, 3])
    model_a = c1.selectbox("Model A", ids, index=0, format_func=display.get, key="cmp_a")
    rest = [m for m in ids if m != model_a]
    model_b = c2.selectbox("Model B", rest, index=0, format_func=display.get, key="cmp_b")
    sort = c3.radio("Order", uc.SORTS, horizontal=True, key="cmp_sort")
    root, mtime = str(cache.root), _mtime(cache)
    pair = _pair(root, mtime, model_a, model_b)
    if pair.empty:
        st.info(
            f"The cache has no per-image AR for {md_escape(display[model_a])} and "
            f"{md_escape(display[model_b])}."
        )
        return
    order = uc.browse_order(pair, _test_images(root, mtime), sort)
    pos = st.number_input(
        f"Image (1 to {len(order)} in this order)",
        min_value=1,
        max_value=len(order),
        value=1,
        step=1,
        key="cmp_pos",
    )
    item = order.iloc[int(pos) - 1]
    row = int(item["row"])
    size = cache.image_size
    mask_a = cache.masks(model_a, [row], size)[0]
    mask_b = cache.masks(model_b, [row], size)[0]
    diff, ar_now = uc.mask_difference(mask_a, mask_b)
    path = _test_images(root, mtime).set_index("row").loc[row, "path"]
    crop = _crop(str(path), size)
    if crop is None:
        st.caption("The source photo is not readable here; showing the stored thumbnails.")
        tiles = [
            uc.thumb_tile(cache, "orig", row),
            uc.thumb_tile(cache, f"{model_a}/overlay", row),
            uc.thumb_tile(cache, f"{model_b}/overlay", row),
        ]
    else:
        tiles = [crop, uc.overlay_tile(crop, mask_a), uc.overlay_tile(crop, mask_b)]
    tiles.append(uc.heat_image(diff))
    captions = [
        f"test image {row} · {md_escape(item['city'])}",
        f"A: {md_escape(display[model_a])} · "
        f"{md_escape(_prediction(root, mtime, model_a, row, cache.cities))}",
        f"B: {md_escape(display[model_b])} · "
        f"{md_escape(_prediction(root, mtime, model_b, row, cache.cities))}",
        f"|A − B| · AR = {ar_now:.4f}",
    ]
    for col, tile, cap in zip(st.columns(4), tiles, captions, strict=True):
        with col:
            if tile is None:
                st.caption("(no image)")
            else:
                st.image(tile, width="stretch")
            st.caption(cap)
    st.plotly_chart(
        figures.ar_histogram(
            pair["ar"].to_numpy(),
            f"Per-image AR, {display[model_a]} vs {display[model_b]} "
            f"({len(pair)} images, mean {pair['ar'].mean():.4f})",
            marker=float(item["ar"]),
        ),
        width="stretch",
    )


def _prediction(root: str, mtime: float, model_id: str, row: int, cities: list[str]) -> str:
    try:
        pred = _predictions(root, mtime, model_id)
        p = pred.loc[row]
    except (CacheError, KeyError):
        return "no prediction stored"
    city = cities[int(p["pred"])] if 0 <= int(p["pred"]) < len(cities) else str(p["pred"])
    mark = "✓" if bool(p["correct"]) else "✗"
    return f"predicts {city} ({float(p['confidence']):.0%}) {mark}"


def main() -> None:
    cache = current_cache()
    st.title("Compare models")
    display = model_labels(cache)
    if len(display) < 2:
        st.info("This cache has fewer than two models, so there is nothing to compare.")
        return
    with section("The model-pair matrix"):
        if not (cache.root / SUMMARY_FILE).exists():
            st.info(
                f"The model-agreement statistics ({SUMMARY_FILE}) are not in this cache yet; "
                f"build them with `python -m precompute --cache {md_escape(cache.root)}` "
                "(stats stage)."
            )
        else:
            _matrix_section(cache, _summary(str(cache.root), _mtime(cache)), display)
    with section("The architecture-versus-seed summary"):
        _verdict_section(json_object(cache, VERDICT_FILE, "stats"))
    with section("The side-by-side browser"):
        _browse_section(cache, display)


guard(main)
