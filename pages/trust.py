"""Trust: can the explanations and the object statistics be believed? (issue 11)

Per model and CAM method: a plain-language verdict with the rule behind it, the
model-parameter randomisation curves, the deletion and insertion curves with their AUCs, the
other-city test, and the object-removal table. Every part runs in its own
:func:`pages.common.section`, so a damaged table disables only its part; a cache without the
``trust`` stage says how to build it. The tables' meaning is in :mod:`cityviz.ui.trust`.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from cityviz.store import Cache, CacheError
from cityviz.ui import trust as ut
from cityviz.ui.safe_text import md_escape
from pages.common import cache_mtime, current_cache, guard, model_labels, section

INTRO = (
    "An explanation can look convincing and still say nothing about the model. These checks, "
    "computed by `python -m precompute` on the test photos, tell whether each model's masks "
    "depend on its weights (randomisation test), on the city they explain (other-city test) "
    "and on the pixels that change its prediction (deletion and insertion curves), and whether "
    "painting an object out changes the prediction (object removal). The Objects page and the "
    "Overview mark which R_p^c values are above chance with the same checks."
)
MPRT_GUIDE = (
    "How to read it: the model's layers are re-initialised one after the other from the "
    "logits down (Adebayo et al. 2018, *Sanity checks for saliency maps*), and each randomised "
    "model's masks are compared with the original ones. Curves that fall to about zero once "
    "the head is random mean the explanation depends on what the model learnt; curves that "
    "stay high mean the method shows the image's edges whatever the weights. Lines: the "
    "median over images; bands: from the first to the third quartile."
)
CURVES_GUIDE = (
    "How to read it (Petsiuk et al. 2018, *RISE*): pixels are removed (left) or revealed "
    "(right) in the order of the mask, most important first, and the predicted city's "
    "probability is recorded; the dashed curve does the same in a random order. A faithful mask "
    "makes the solid deletion curve fall faster (smaller area under the curve, AUC) and the "
    "solid insertion curve rise faster (larger AUC) than the random one."
)
OTHER_GUIDE = (
    "How to read it (Sixt et al. 2020, *When explanations lie*): the mask for the predicted "
    "city against the mask the same method draws for another city, compared by AR (the "
    "paper's eq. 2: 0 = identical masks). An AR near zero (Spearman near 1) means the "
    "explanation does not depend on which city it explains: it shows where the network looks "
    "in general, not why it chose this city."
)
REMOVAL_GUIDE = (
    "How to read it: in each city's test photos one object's segmented pixels are painted out "
    "and the photos re-predicted; the same is done with a random region of equal area. An "
    "object is marked when removing it drops the city's accuracy more than the random region "
    "does, with the 95 % bootstrap interval (over images) of the difference above zero. "
    "Painting out uses OpenCV's inpainting, which continues the surrounding street into the "
    "hole. Click a column header to sort."
)

PERCENT = ("accuracy", "accuracy without it", "accuracy, random region removed", "accuracy drop",
           "drop, random region", "drop − random drop, CI low", "drop − random drop, CI high",
           "probability", "probability without it", "area share")  # fmt: skip


@st.cache_data(show_spinner=False, max_entries=32)
def _table(root: str, mtime: float, name: str) -> pd.DataFrame:
    return ut.read_trust_table(Cache(root), name)


@st.cache_data(show_spinner=False, max_entries=8)
def _verdicts(root: str, mtime: float) -> dict:
    return ut.read_verdicts(Cache(root))


def _optional_table(cache: Cache, name: str) -> pd.DataFrame | None:
    """A trust table, or None when its file is absent (the other parts still show)."""
    if not (cache.root / f"trust/{name}.parquet").exists():
        return None
    return _table(str(cache.root), cache_mtime(cache), name)


def _verdict_part(cache: Cache, display: dict[str, str]) -> None:
    st.subheader("Verdict per model")
    if not (cache.root / ut.VERDICT_FILE).exists():
        st.info(ut.not_built_message(cache.root))
        return
    verdicts = _verdicts(str(cache.root), cache_mtime(cache))
    cards = ut.verdict_cards(verdicts, display)
    if not cards:
        st.info("The verdict file holds no model.")
        return
    for card in cards:
        with st.container(border=True):
            st.markdown(card["title"])
            if card["sentence"]:
                st.markdown(card["sentence"])
            if len(card["checks"]):
                st.dataframe(card["checks"], hide_index=True, width="stretch")
    st.caption(
        "A model passes when all three checks pass; it fails when the randomisation or the "
        "deletion test fails (its masks do not reflect the model, or do not point at what the "
        "model uses), and gets a warning when only the other-city test fails (faithful masks "
        "that hardly differ between cities). Each check's rule is in its row."
    )


def _pick(cache: Cache, display: dict[str, str]) -> tuple[str, str] | None:
    """The model and method to show the curves of (from the tables that exist)."""
    tables = []
    for name in ("mprt", "curves"):
        try:
            table = _optional_table(cache, name)
        except CacheError:  # shown by the part that draws it
            continue
        if table is not None:
            tables.append(table)
    found = ut.pairs(*tables)
    if not found:
        return None
    models = list(dict.fromkeys(m for m, _ in found))
    order = {m: i for i, m in enumerate(cache.model_ids)}
    models.sort(key=lambda m: (order.get(m, len(order)), m))
    c1, c2 = st.columns(2)
    model_id = c1.selectbox(
        "Model", models, format_func=lambda m: display.get(m, m), key="trust_model"
    )
    methods = [k for m, k in found if m == model_id]
    method = c2.radio(
        "CAM method",
        methods,
        horizontal=True,
        format_func=lambda m: md_escape(ut.method_name(m)),  # radio labels are Markdown
        key="trust_method",
    )
    return model_id, method


def _built(cache: Cache, name: str) -> pd.DataFrame | None:
    """Trust table ``name``, or None with the "not built yet" note when its file is absent."""
    table = _optional_table(cache, name)
    if table is None:
        st.info(ut.not_built_message(cache.root))
    return table


def _of_model(
    cache: Cache, name: str, model_id: str, method: str, what: str
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Trust table ``name`` and its rows for ``model_id`` and ``method``; None, with a note
    saying so, when the table is not built or has no such rows (``what`` names the check)."""
    table = _built(cache, name)
    if table is None:
        return None
    rows = table[(table["model_id"] == model_id) & (table["method"] == method)]
    if rows.empty:
        st.info(f"No {what} for this model and method.")
        return None
    return table, rows


def _mprt_part(cache: Cache, model_id: str, method: str) -> None:
    st.subheader("Randomisation test")
    found = _of_model(cache, "mprt", model_id, method, "randomisation test")
    if found is None:
        return
    mprt, rows = found
    st.plotly_chart(ut.mprt_figure(mprt, model_id, method), width="stretch")
    n = int(rows["n_images"].max())
    st.caption(f"{MPRT_GUIDE} {n} test images.")


def _curves_part(cache: Cache, model_id: str, method: str) -> None:
    st.subheader("Deletion and insertion curves")
    found = _of_model(cache, "curves", model_id, method, "deletion or insertion curves")
    if found is None:
        return
    curves = found[0]
    auc = None
    with section("The AUC table"):
        auc = _optional_table(cache, "auc")
    st.plotly_chart(ut.curves_figure(curves, auc, model_id, method), width="stretch")
    st.caption(CURVES_GUIDE)
    if auc is not None:
        table = ut.auc_table(auc, model_id, method)
        if len(table):
            st.dataframe(
                table,
                hide_index=True,
                column_config={
                    c: st.column_config.NumberColumn(format="%.3f")
                    for c in (
                        "AUC, mask order",
                        "CI low",
                        "CI high",
                        "AUC, random order",
                        "mask − random",
                    )
                },
            )


def _other_city_part(cache: Cache, display: dict[str, str]) -> None:
    st.subheader("Other-city test")
    other = _built(cache, "other_city")
    if other is None:
        return
    st.dataframe(
        ut.other_city_table(other, display),
        hide_index=True,
        column_config={
            c: st.column_config.NumberColumn(format="%.3f")
            for c in ("AR (predicted vs other city)", "CI low", "CI high", "Spearman")
        },
    )
    st.caption(OTHER_GUIDE)


def _removal_part(cache: Cache, display: dict[str, str]) -> None:
    st.subheader("Object removal: does painting an object out change the prediction?")
    removal = _built(cache, "removal")
    if removal is None:
        return
    if removal.empty:
        st.info("The object-removal test found no object to remove (no segmentation?).")
        return
    sentences = ut.removal_sentences(removal, display)
    if sentences:
        st.markdown("\n".join(f"- {s}" for s in sentences))
    else:
        st.markdown("No object's removal drops accuracy more than removing a random region.")
    st.dataframe(
        ut.removal_table(removal, display),
        hide_index=True,
        key="trust_removal",
        column_config={c: st.column_config.NumberColumn(format="percent") for c in PERCENT},
    )
    st.download_button(
        "Download CSV (object removal, all models)",
        ut.removal_csv(removal),
        file_name="object_removal.csv",
        mime="text/csv",
        on_click="ignore",
    )
    st.caption(REMOVAL_GUIDE)


def main() -> None:
    cache = current_cache()
    st.title("Can I trust these explanations?")
    st.caption(INTRO)
    if not ut.has_trust(cache):
        st.info(ut.not_built_message(cache.root))
        return
    display = model_labels(cache)
    with section("The verdicts"):
        _verdict_part(cache, display)
    picked = None
    with section("The model picker"):
        picked = _pick(cache, display)
    if picked is not None:
        model_id, method = picked
        with section("The randomisation test"):
            _mprt_part(cache, model_id, method)
        with section("The deletion and insertion curves"):
            _curves_part(cache, model_id, method)
    with section("The other-city test"):
        _other_city_part(cache, display)
    with section("The object-removal test"):
        _removal_part(cache, display)


guard(main)
