"""Overview (home): which cache is open, the headline findings, and how to read the dashboard."""

from __future__ import annotations

import contextlib

import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitAPIException

from cityviz import cam, stats
from cityviz.store import Cache
from cityviz.ui import gallery as ug
from cityviz.ui import overview as uo
from cityviz.ui import trust as ut
from cityviz.ui.compare import claim_sentence, fmt_num
from cityviz.ui.safe_text import md_escape
from pages.common import cache_mtime, current_cache, guard, json_object, model_labels, section

HOW_TO_READ = """
A neural network was trained to tell the cities apart from street photos alone. For every test
photo, **Grad-CAM** paints a *mask* over the pixels that pushed the network towards its answer;
the bright part of the mask (above the threshold) is the photo's **visual explanation**.

* **Explanation map** — each dot is one test photo, placed so that photos whose masks look alike
  sit together. Hover a dot to see the photo, its mask and its explanation; select a group to
  see what its explanations have in common. Clusters are labelled with the objects they focus on.
* **Objects** — a segmentation model names every pixel (road, sky, signboard…). **R_p^c** is the
  share of an object's pixels that fall inside the explanations of a city's photos: a high value
  means "when the network recognises this city, it looks at this object".
* **Compare models** — **AR** is the average difference between two models' masks of the same
  photo (0 = identical, 1 = opposite). The paper found that changing the architecture changes
  the masks more than retraining the same architecture from another random start.
* **Live Grad-CAM** — upload your own street photo and see what each model predicts and where
  it looks.

Explanations show *where* a model looks, not *why*; an object with a high R_p^c is typical of the
city in this data set, which may say as much about how the photos were taken as about the city.
"""


RPC_FILE = "stats/rpc.parquet"
VERDICT_FILE = "stats/arch_vs_seed.json"


@st.cache_data(show_spinner=False)
def _rpc(root: str, mtime: float) -> pd.DataFrame | None:
    """R_p^c of every model, or None before the stats stage; CacheError when damaged."""
    cache = Cache(root)
    if not (cache.root / RPC_FILE).exists():
        return None
    return cache.rpc()


def _open_cache(cache: Cache) -> None:
    m = cache.manifest
    st.caption(
        f"Cache {md_escape(cache.root)} · built {md_escape(m.get('created', '?'))} · "
        f"updated {md_escape(m.get('updated', '?'))}"
    )
    left, right = st.columns(2, gap="large")
    with left, section("The data set summary"):
        st.subheader("Data set")
        ds = m.get("dataset", {})
        cities = ", ".join(md_escape(c) for c in cache.cities)
        st.markdown(
            f"**{md_escape(ds.get('source', '?'))}** ({md_escape(ds.get('kind', '?'))}), "
            f"{int(ds.get('n_images', 0)):,} images of {len(cache.cities)} cities: {cities}."
        )
        st.dataframe(uo.split_table(ds), hide_index=True, key="overview_splits")
    with right, section("The model list"):
        st.subheader("Models")
        if not cache.models:
            st.info("No trained models yet: run `python -m precompute --cache DIR`.")
        else:
            st.dataframe(
                uo.models_table(cache.models),
                hide_index=True,
                key="overview_models",
                column_config={
                    "test accuracy": st.column_config.NumberColumn(format="percent"),
                    "val accuracy": st.column_config.NumberColumn(format="percent"),
                },
            )
        seg = m.get("segmenter")
        if seg and seg.get("spec", "none") != "none":
            st.markdown(
                f"Segmenter: **{md_escape(seg.get('name', seg.get('spec')))}** "
                f"({md_escape(seg.get('n_classes', '?'))} object classes)."
            )
        else:
            st.markdown("Segmenter: **none configured** — object statistics are not available.")
        config = m.get("config", {})
        method = config.get("cam_method", "gradcam")
        st.markdown(
            f"Masks: **{md_escape(cam.METHOD_NAMES.get(method, method))}** on each model's last "
            "convolutional block; explanation threshold "
            f"{float(config.get('threshold', cam.DEFAULT_THRESHOLD)):g}."
        )


@st.cache_data(show_spinner=False, max_entries=4)
def _trust_tables(root: str, mtime: float):
    """``(rpc_null, rpc_contrast, removal)``, each None before its stage wrote it; CacheError
    (naming the file) when one is damaged."""
    cache = Cache(root)
    files = (ut.NULL_FILE, ut.CONTRAST_FILE, "trust/removal.parquet")
    readers = (ut.read_rpc_null, ut.read_rpc_contrast,
               lambda c: ut.read_trust_table(c, "removal"))  # fmt: skip
    return tuple(r(cache) if (cache.root / f).exists() else None
                 for f, r in zip(files, readers, strict=True))  # fmt: skip


def _evidence_findings(cache: Cache, mtime: float) -> pd.DataFrame | None:
    """The headline findings ranked by evidence that an object distinguishes its city (R_p^c
    above its permutation null and above the other cities'), with the object-removal badge.

    Returns the badges per model, city and object (:func:`cityviz.ui.trust.badges`) at the
    cache's threshold, or None (nothing shown) when the cache has no permutation null or
    contrast yet."""
    null, contrast, removal = _trust_tables(str(cache.root), mtime)
    if null is None or contrast is None:
        return None
    config = cache.manifest.get("config", {})
    n_bins = int(config.get("n_bins", stats.N_BINS))
    threshold = stats.threshold_bin(float(config.get("threshold", 0.5)), n_bins) / n_bins
    head = uo.headline_findings(null, contrast, threshold)
    planted = cache.manifest.get("dataset", {}).get("discriminative")
    planted = planted if isinstance(planted, dict) else None
    display = model_labels(cache)
    cities = cache.cities
    for city, sentence in zip(cities, uo.evidence_findings(head, cities, planted, display),
                              strict=True):  # fmt: skip
        badge = f"{ut.ABOVE}{ut.DISTINGUISHES} " if (head["city"] == city).any() else ""
        st.markdown(f"- {badge}{sentence}")
    for sentence in ut.causal_notes(head, removal):
        st.markdown(f"- {sentence}")
    st.caption(
        f"{ut.ABOVE}{ut.DISTINGUISHES}: R_p^c above its permutation null (masks shuffled among "
        "the city's photos) and above the object's R_p^c in the other cities, both at p < 0.05 "
        "after correcting for the number of objects, at the explanation threshold "
        f"{threshold:g}. {ut.CAUSAL}: painting the object out drops the city's accuracy more "
        "than painting out a random region of the same area. An object every city's masks "
        "cover is where the networks look, not what tells the cities apart, and is left out. "
        "Details on the Objects and Trust pages."
    )
    return ut.badges(null, contrast, removal, threshold)


def _gallery_links(top: pd.DataFrame) -> None:
    """One click to the gallery of each city's most discriminative object (issue 13 §3)."""
    row = st.container(horizontal=True, key="overview-gallery-links")
    for r in top[top["rank"] == 1].itertuples():
        with contextlib.suppress(StreamlitAPIException):  # no navigation when run alone
            row.page_link(**ug.link_args(str(r.city), str(r.object)))


def _findings(cache: Cache, mtime: float) -> None:
    st.subheader("Headline findings")
    left, right = st.columns(2, gap="large")
    with left, section("The object statistics"):
        st.markdown("**What each city is recognised by**")
        marks = None
        with section("The permutation null and city contrast"):
            marks = _evidence_findings(cache, mtime)  # ranked by evidence, when checked
        shown = marks is not None
        rpc = _rpc(str(cache.root), mtime)
        if shown and rpc is not None and not rpc.empty:
            st.markdown("**Where the networks look most**")
            planted = cache.manifest.get("dataset", {}).get("discriminative")
            planted = planted if isinstance(planted, dict) else None
            top = uo.top_objects(rpc, n=3)
            for sentence in ut.badged_findings(top, ut.object_marks(marks), planted):
                st.markdown(f"- {sentence}")
            _gallery_links(top)
            st.caption(ut.BADGE_LEGEND + ".")
        elif not shown and (rpc is None or rpc.empty):
            st.info(
                "No object statistics in this cache (they need a segmenter and the `stats` "
                "stage of precompute)."
            )
        elif not shown:
            top = uo.top_objects(rpc, n=3)
            planted = cache.manifest.get("dataset", {}).get("discriminative")
            planted = planted if isinstance(planted, dict) else None
            for sentence in uo.findings(top, planted):
                st.markdown(f"- {sentence}")
            _gallery_links(top)
            if planted:
                ok = uo.planted_recovered(top, planted)
                found = sum(ok.values())
                st.caption(
                    f"Synthetic data: the objects planted in each city are known. The top "
                    f"objects are planted ones in {found} of {len(ok)} cities."
                )
            st.caption(
                "R_p^c averaged over all models; objects averaging under "
                f"{float(cache.manifest.get('config', {}).get('min_pixels', 100)):g} pixels per "
                "image are left out. Details on the Objects page. Not yet checked against "
                "chance: a high R_p^c may be where masks usually sit, not what tells the city "
                "apart; "
                + md_escape(f"python -m precompute --cache {cache.root} --stages stats,trust")
                + " adds the checks (the Trust page)."
            )
    with right, section("The model agreement summary"):
        st.markdown("**Architecture vs. initialisation**")
        result = json_object(cache, VERDICT_FILE, "stats")
        if result is None:
            st.info("No model agreement statistics yet (the `stats` stage of precompute).")
        else:
            a, b, c = st.columns(3)
            a.metric("Mean AR, other architecture", fmt_num(result.get("mean_arch")))
            b.metric("Mean AR, other seed", fmt_num(result.get("mean_seed")))
            c.metric("Difference", fmt_num(result.get("diff")))
            st.markdown(claim_sentence(result))


@st.fragment(run_every=5)
def _progress(root: str) -> None:
    """While a precompute writes this cache: its stage, units and ETA, refreshed every 5 s."""
    progress = Cache(root).running()
    if progress is None:
        return
    frac, sentence = uo.progress_summary(progress)
    st.progress(frac, text=sentence)


def _caveats(cache: Cache) -> None:
    warning = uo.unknown_spots_warning(cache.manifest.get("dataset", {}))
    if warning:
        st.warning(md_escape(warning), icon=":material/warning:")


def main() -> None:
    st.title("cityviz — what does a city-recognition network look at?")
    cache = current_cache()
    mtime = cache_mtime(cache)
    with section("The precompute progress"):
        _progress(str(cache.root))
    _caveats(cache)
    _open_cache(cache)
    _findings(cache, mtime)
    with st.expander("How to read this", expanded=True):
        st.markdown(HOW_TO_READ)
    settings = uo.settings_table(cache.manifest)
    if len(settings):
        with st.expander("Settings and where they came from"):
            st.dataframe(settings, hide_index=True, key="overview_settings")
    stages = cache.manifest.get("stages", {})
    if stages:
        with st.expander("Pipeline stages"), section("The pipeline stage list"):
            st.dataframe(
                pd.DataFrame(
                    [
                        {"stage": k, "status": v.get("status"), "seconds": v.get("seconds")}
                        for k, v in stages.items()
                    ]
                ),
                hide_index=True,
            )


guard(main)
