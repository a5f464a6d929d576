"""Where explanations fall on the map: H3 cells and per-cell object profiles.

Photos with coordinates (``images.parquet``'s ``lat``/``lon``, WGS84 degrees, NaN unknown) are
binned into the hexagonal cells of Uber's H3 grid (Brodsky 2018, https://h3geo.org; the ``h3``
package): at resolution 7 a cell's edge is about 1.4 km (5.2 km² per cell), at 8 about 530 m
(0.74 km²), at 9 about 200 m (0.11 km²). Per cell, :func:`cell_profiles` says which objects the
cell's explanations cover, as R_p^c (eq. 1 of *Deep Visual City Recognition Visualization*)
over the cell's images next to the city's own R_p^c. Pure functions: no Streamlit, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import h3
import numpy as np
import pandas as pd

from cityviz import stats

DEFAULT_RESOLUTION = 8
"""H3 resolution of a neighbourhood-sized cell (edge about 530 m)."""
PROFILE_COLUMNS = [
    "cell", "city", "object", "class_id", "n_images", "M", "N", "mean_pixels", "share",
    "rpc_cell", "rpc_city", "lift", "lat", "lon", "boundary",
]  # fmt: skip


def _resolution(resolution: int) -> int:
    if (
        isinstance(resolution, bool)
        or not isinstance(resolution, int | np.integer)
        or not 0 <= int(resolution) <= 15
    ):
        raise ValueError(f"H3 resolution must be an integer from 0 to 15, got {resolution!r}")
    return int(resolution)


def cells(
    lat: Sequence[float] | np.ndarray,
    lon: Sequence[float] | np.ndarray,
    resolution: int = DEFAULT_RESOLUTION,
) -> np.ndarray:
    """The H3 cell (hexadecimal id, ``str``) of each point, ``None`` where it has none.

    ``lat``/``lon``: ``[N]`` degrees (WGS84). A point gets no cell when either coordinate is
    NaN, infinite, or out of range (latitude beyond ±90, longitude beyond ±180). Returns an
    object array ``[N]``. Raises ValueError for arrays of different lengths or a resolution
    outside 0..15. Uses ``h3.latlng_to_cell``.
    """
    res = _resolution(resolution)
    la = np.asarray(lat, dtype=np.float64).reshape(-1)
    lo = np.asarray(lon, dtype=np.float64).reshape(-1)
    if len(la) != len(lo):
        raise ValueError(f"lat has {len(la)} values but lon has {len(lo)}")
    ok = np.isfinite(la) & np.isfinite(lo) & (np.abs(la) <= 90) & (np.abs(lo) <= 180)
    out = np.full(len(la), None, dtype=object)
    for i in np.flatnonzero(ok):
        out[i] = h3.latlng_to_cell(float(la[i]), float(lo[i]), res)
    return out


def cell_centre(cell: str) -> tuple[float, float]:
    """``(lat, lon)`` in degrees of an H3 cell's centre (``h3.cell_to_latlng``)."""
    return h3.cell_to_latlng(cell)


def cell_boundary(cell: str) -> list[list[float]]:
    """The cell's outline as a closed GeoJSON ring: ``[[lon, lat], ...]`` with the first vertex
    repeated last (6 or 7 vertices before closing; ``h3.cell_to_boundary``). Cells crossing the
    antimeridian are not split."""
    ring = [[lng, lat] for lat, lng in h3.cell_to_boundary(cell)]
    return [*ring, ring[0]]


def cell_boundary_geojson(
    cell_ids: Iterable[str | None], properties: dict[str, dict] | None = None
) -> dict:
    """A GeoJSON ``FeatureCollection`` (RFC 7946) of the distinct cells' hexagons.

    One ``Polygon`` feature per distinct non-empty cell id, in first-seen order, with ``id`` and
    ``properties["cell"]`` the cell id, plus ``properties[cell]`` merged in when given (plain
    JSON values). Coordinates are ``[lon, lat]`` degrees (:func:`cell_boundary`).
    """
    features, seen = [], set()
    for cell in cell_ids:
        if not cell or cell in seen:
            continue
        seen.add(cell)
        props = {"cell": cell, **((properties or {}).get(cell) or {})}
        features.append(
            {
                "type": "Feature",
                "id": cell,
                "properties": props,
                "geometry": {"type": "Polygon", "coordinates": [cell_boundary(cell)]},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in PROFILE_COLUMNS})


def cell_profiles(
    images: pd.DataFrame,
    hist: pd.DataFrame,
    threshold: float,
    class_names: Sequence[str],
    resolution: int = DEFAULT_RESOLUTION,
) -> pd.DataFrame:
    """Per H3 cell and city, the objects the cell's explanations cover, against the city's.

    ``images``: one row per image with ``image_id``, ``city``, ``lat``, ``lon`` (NaN unknown);
    typically one model's test images. ``hist``: that model's histogram table (``image_id,
    class_id, n_pixels, h00..``, :func:`cityviz.stats.hist_frame`); ``threshold`` on its bin
    grid (ValueError otherwise, :func:`cityviz.stats.threshold_bin`). With ``M`` the explained
    pixels (mask >= threshold, :func:`cityviz.stats.explained_pixels`) and ``N`` all pixels of an
    object over a set of images, one row per (cell, city, object) present in the cell's images:

    * ``n_images``: the city's images in the cell (with or without labelled pixels);
    * ``M``, ``N`` (int64) over those images; ``mean_pixels = N / n_images``;
    * ``share = M / sum(M over the cell's objects of that city)``: the object's share of the
      cell's explained pixels (NaN when the cell's explanations cover no labelled pixel);
    * ``rpc_cell = M / N``: R_p^c (eq. 1) over the cell's images of the city;
    * ``rpc_city``: R_p^c of the object over *all* the city's images in ``images`` (those
      without coordinates included), from :func:`cityviz.stats.rpc_table`;
    * ``lift = rpc_cell / rpc_city`` (NaN where ``rpc_city`` is 0);
    * ``lat``, ``lon``: the cell's centre (degrees); ``boundary``: its closed ``[[lon, lat],
      ...]`` ring (:func:`cell_boundary`).

    Images without coordinates get no cell and no rows; an image listed in ``images`` but
    absent from ``hist`` (no labelled pixel) counts in ``n_images`` only. Sorted by cell, city,
    then ``M`` descending and class_id. Columns :data:`PROFILE_COLUMNS`. ValueError for a
    class_id without a name or a resolution outside 0..15.
    """
    missing = {"image_id", "city", "lat", "lon"} - set(images.columns)
    if missing:
        raise ValueError(f"images lacks the column(s) {', '.join(sorted(missing))}")
    res = _resolution(resolution)
    city_of = images.set_index("image_id")["city"]
    cell_of = pd.Series(cells(images["lat"], images["lon"], res), index=images["image_id"])
    cell_of = cell_of[cell_of.notna()]
    if cell_of.empty or hist.empty:
        return _empty()
    counts = stats.hist_counts(hist)
    rows = pd.DataFrame(
        {
            "image_id": hist["image_id"].to_numpy(),
            "class_id": hist["class_id"].to_numpy(dtype=np.int64),
            "M": stats.explained_pixels(counts, threshold),
            "N": counts.sum(axis=1, dtype=np.int64),
        }
    )
    rows["cell"] = rows["image_id"].map(cell_of)
    rows["city"] = rows["image_id"].map(city_of)
    rows = rows[rows["cell"].notna() & rows["city"].notna()]
    if rows.empty:
        return _empty()
    per = rows.groupby(["cell", "city", "class_id"], as_index=False, sort=True)[["M", "N"]].sum()
    located = pd.DataFrame({"cell": cell_of.to_numpy(), "city": cell_of.index.map(city_of)})
    n_img = located.groupby(["cell", "city"]).size()
    per["n_images"] = [int(n_img[(c, k)]) for c, k in zip(per["cell"], per["city"], strict=True)]
    per["object"] = [class_names[c] if 0 <= c < len(class_names) else None for c in per["class_id"]]
    if per["object"].isna().any():
        bad = int(per.loc[per["object"].isna(), "class_id"].iloc[0])
        raise ValueError(f"class_id {bad} has no name ({len(class_names)} class names)")
    per["M"] = per["M"].astype(np.int64)
    per["N"] = per["N"].astype(np.int64)
    per["mean_pixels"] = per["N"] / per["n_images"]
    cell_m = per.groupby(["cell", "city"])["M"].transform("sum").astype(np.float64)
    per["share"] = (per["M"] / cell_m).where(cell_m > 0)
    per["rpc_cell"] = per["M"] / per["N"]
    city_rpc = stats.rpc_table(hist, city_of, threshold, class_names)
    rpc_city = city_rpc.set_index(["city", "class_id"])["rpc"]
    per["rpc_city"] = [
        float(rpc_city.get((k, c), math.nan))
        for k, c in zip(per["city"], per["class_id"], strict=True)
    ]
    per["lift"] = (per["rpc_cell"] / per["rpc_city"]).where(per["rpc_city"] > 0)
    centres = {c: cell_centre(c) for c in per["cell"].unique()}
    per["lat"] = [centres[c][0] for c in per["cell"]]
    per["lon"] = [centres[c][1] for c in per["cell"]]
    rings = {c: cell_boundary(c) for c in centres}
    per["boundary"] = [rings[c] for c in per["cell"]]
    per = per.sort_values(["cell", "city", "M", "class_id"], ascending=[True, True, False, True])
    return per[PROFILE_COLUMNS].reset_index(drop=True)
