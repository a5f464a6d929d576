"""Compare-models page logic: the AR matrix (Table 2), the claim sentence, per-image browsing."""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cityviz import stats
from cityviz.cam import TURBO_LUT, explanation, overlay
from cityviz.data.images import ImageDecodeError, decode_image, resize_center_crop
from cityviz.store import THUMB_SIZE, THUMBS_PER_ROW, Cache, thumb_location
from cityviz.thumbs import crop_tile

log = logging.getLogger(__name__)

SORTS = ("most disagreement", "least disagreement", "test order")


def ar_matrix(summary: pd.DataFrame, model_ids: Sequence[str]) -> pd.DataFrame:
    """Square, symmetric matrix of mean AR (``ar_summary``'s ``mean_ar``), 0 on the diagonal.

    A pair stored as (a, b) fills both (a, b) and (b, a); pairs missing from ``summary`` are NaN.
    """
    ids = list(model_ids)
    pos = {m: i for i, m in enumerate(ids)}
    z = np.full((len(ids), len(ids)), np.nan)
    np.fill_diagonal(z, 0.0)
    for a, b, v in zip(summary["model_a"], summary["model_b"], summary["mean_ar"], strict=True):
        if a in pos and b in pos:
            z[pos[a], pos[b]] = z[pos[b], pos[a]] = float(v)
    return pd.DataFrame(z, index=ids, columns=ids)


def pairs_table(summary: pd.DataFrame, display: Mapping[str, str]) -> pd.DataFrame:
    """Table 2 for people: one row per pair, architecture pairs first, with the CI."""
    out = pd.DataFrame(
        {
            "model A": summary["model_a"].map(display).fillna(summary["model_a"]),
            "model B": summary["model_b"].map(display).fillna(summary["model_b"]),
            "differ in": np.where(
                summary["kind"] == "architecture", "architecture", "initialisation (seed)"
            ),
            "mean AR": summary["mean_ar"],
            "CI low": summary["ci_lo"],
            "CI high": summary["ci_hi"],
            "images": summary["n_images"],
        }
    )
    return out.reset_index(drop=True)


def fmt_num(x: object) -> str:
    """``x`` with four decimals; "n/a" for None, NaN and anything that is not a real number
    (a value read from a damaged JSON file may be a string or a list)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or math.isnan(float(x)):
        return "n/a"
    return f"{float(x):.4f}"


def claim_sentence(result: Mapping) -> str:
    """One plain sentence: does "architecture changes masks more than the seed" hold here?"""
    holds = result.get("claim_holds")
    ci = result.get("ci")
    ci = float(ci) if isinstance(ci, numbers.Real) and 0 < ci < 1 else 0.95
    arch, seed = result.get("mean_arch"), result.get("mean_seed")
    diff, lo, hi = result.get("diff"), result.get("ci_lo"), result.get("ci_hi")
    if holds is None:
        missing = "same-architecture (other seed)" if not result.get("n_seed_pairs") else (
            "different-architecture"
        )
        return (
            f"The paper's claim cannot be tested on this cache: it has no {missing} model pairs. "
            "Train at least two architectures, one of them with two seeds."
        )
    rng = f"{ci:.0%} CI {fmt_num(lo)} to {fmt_num(hi)}"
    if holds:
        return (
            f"The paper's claim holds on this data: masks of different architectures differ more "
            f"(mean AR {fmt_num(arch)}) than masks of the same architecture trained from another "
            f"seed ({fmt_num(seed)}); the difference {fmt_num(diff)} ({rng}) is above zero."
        )
    return (
        f"The paper's claim is not confirmed on this data: different architectures give mean AR "
        f"{fmt_num(arch)} against {fmt_num(seed)} for another seed; the difference "
        f"{fmt_num(diff)} ({rng}) is not clearly above zero."
    )


def pair_ar(ar: pd.DataFrame, model_a: str, model_b: str) -> pd.DataFrame:
    """Per-image AR of one pair, whichever order the cache stored it in: ``image_id, ar``."""
    fwd = ar[(ar["model_a"] == model_a) & (ar["model_b"] == model_b)]
    if fwd.empty:
        fwd = ar[(ar["model_a"] == model_b) & (ar["model_b"] == model_a)]
    return fwd[["image_id", "ar"]].reset_index(drop=True)


def browse_order(pair: pd.DataFrame, test_images: pd.DataFrame, sort: str) -> pd.DataFrame:
    """The test images of a pair in browsing order: ``row, image_id, city, ar``.

    ``sort``: one of :data:`SORTS`; ties keep test order.
    """
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {SORTS}, got {sort!r}")
    df = test_images[["row", "image_id", "city"]].merge(pair, on="image_id", how="inner")
    df = df.sort_values("row", kind="stable")
    if sort == "most disagreement":
        df = df.sort_values("ar", ascending=False, kind="stable")
    elif sort == "least disagreement":
        df = df.sort_values("ar", ascending=True, kind="stable")
    return df.reset_index(drop=True)


def mask_difference(mask_a: np.ndarray, mask_b: np.ndarray) -> tuple[np.ndarray, float]:
    """``(|a - b| per pixel, AR)``: eq. 2 for one image (the mean of the difference map)."""
    a = np.asarray(mask_a, dtype=np.float64)
    b = np.asarray(mask_b, dtype=np.float64)
    diff = np.abs(a - b)
    return diff.astype(np.float32), float(stats.average_residual(a, b))


def heat_image(values: np.ndarray) -> np.ndarray:
    """A [0, 1] map as an RGB heat image (Turbo), for the difference map."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0, 1)
    return TURBO_LUT[np.round(v * 255).astype(np.intp)]


# --------------------------------------------------------------------------- images


def load_crop(path: str | Path, size: int) -> np.ndarray | None:
    """A test photo as the model saw it (resized, centre-cropped), or None when unreadable."""
    try:
        return resize_center_crop(decode_image(path), size)
    except (ImageDecodeError, OSError, ValueError):
        log.info("cannot read test image %s", path, exc_info=True)
        return None


def thumb_tile(cache: Cache, kind: str, row: int) -> np.ndarray | None:
    """A test row's sprite-sheet tile of ``kind`` (``orig``, ``<model>/overlay|expl``) or None."""
    layout = cache.thumbs
    if not layout or kind not in layout.get("kinds", []):
        return None
    size = int(layout.get("size", THUMB_SIZE))
    per_row = int(layout.get("per_row", THUMBS_PER_ROW))
    sheet = thumb_location(row, per_row)[0]
    path = cache.thumb_sheet(kind, sheet)
    if not path.exists():
        return None
    try:
        return crop_tile(path, row, size, per_row)
    except OSError:
        log.info("cannot read sprite sheet %s", path, exc_info=True)
        return None


def explanation_tile(crop: np.ndarray, mask: np.ndarray, threshold: float) -> np.ndarray:
    """The paper's visual explanation of a crop (pixels with mask < threshold black)."""
    return explanation(crop, mask, threshold)


def overlay_tile(crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The Grad-CAM heat map over a crop."""
    return overlay(crop, mask)
