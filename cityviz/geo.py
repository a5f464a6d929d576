"""Where explanations fall on the map: H3 cells and per-cell object profiles.

Photos with coordinates (``images.parquet``'s ``lat``/``lon``, WGS84 degrees, NaN unknown) are
binned into the hexagonal cells of Uber's H3 grid (Brodsky 2018, https://h3geo.org; the ``h3``
package): at resolution 7 a cell's edge is about 1.4 km (5.2 km² per cell), at 8 about 530 m
(0.74 km²), at 9 about 200 m (0.11 km²). Per cell, :func:`cell_profiles` says which objects the
cell's explanations cover, as R_p^c (eq. 1 of *Deep Visual City Recognition Visualization*)
over the cell's images next to the city's own R_p^c. Pure functions: no Streamlit, no I/O.
"""

from __future__ import annotations

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
    to_cell = h3.latlng_to_cell
    out[ok] = [to_cell(a, b, res) for a, b in zip(la[ok].tolist(), lo[ok].tolist(), strict=True)]
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
    img_cell = cells(images["lat"], images["lon"], res)
    if hist.empty or not pd.notna(img_cell).any():
        return _empty()
    # integer codes: cells and cities sorted by name, so code order is the output's sort order
    cell_code, cell_ids = pd.factorize(img_cell, sort=True)  # -1: no cell
    city_code, city_names = pd.factorize(images["city"], sort=True)  # -1: no city
    n_cells, n_cities, n_classes = len(cell_ids), len(city_names), len(class_names)
    hist_ids, hist_img = pd.factorize(hist["image_id"])  # few distinct ids: match those only
    pos = pd.Index(images["image_id"]).get_indexer(hist_img)[hist_ids]  # -1: not in images
    counts = stats.hist_counts(hist)
    m_all = stats.explained_pixels(counts, threshold)
    n_all = counts.sum(axis=1, dtype=np.int64)
    cls_all = hist["class_id"].to_numpy(dtype=np.int64)
    has_city = pos >= 0
    has_city[has_city] = city_code[pos[has_city]] >= 0
    img = pos[has_city]
    cls, m, n = cls_all[has_city], m_all[has_city], n_all[has_city]
    bad = (cls < 0) | (cls >= n_classes)
    if bad.any():
        raise ValueError(f"class_id {int(cls[bad][0])} has no name ({n_classes} class names)")
    city = city_code[img]
    # R_p^c of each (city, object) over all the city's images, located or not (eq. 1)
    city_key = city * n_classes + cls
    size = n_cities * n_classes
    m_city = np.bincount(city_key, weights=m, minlength=size)
    n_city = np.bincount(city_key, weights=n, minlength=size)
    cell = cell_code[img]
    here = cell >= 0
    if not here.any():
        return _empty()
    # one group per (cell, city, object) present: np.unique sorts by cell, city, then class_id
    keys, group = np.unique(
        (cell[here] * n_cities + city[here]) * n_classes + cls[here], return_inverse=True
    )
    g_m = np.rint(np.bincount(group, weights=m[here], minlength=len(keys))).astype(np.int64)
    g_n = np.rint(np.bincount(group, weights=n[here], minlength=len(keys))).astype(np.int64)
    g_cls, cell_city = keys % n_classes, keys // n_classes
    g_city, g_cell = cell_city % n_cities, cell_city // n_cities
    loc_img = (cell_code >= 0) & (city_code >= 0)
    n_img = np.bincount(
        cell_code[loc_img] * n_cities + city_code[loc_img], minlength=n_cells * n_cities
    )[cell_city]
    cc_first = np.r_[True, cell_city[1:] != cell_city[:-1]]
    cc_m = np.add.reduceat(g_m, np.flatnonzero(cc_first))[np.cumsum(cc_first) - 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(cc_m > 0, g_m / cc_m, np.nan)
        rpc_cell = g_m / g_n
        city_idx = g_city * n_classes + g_cls
        rpc_city = m_city[city_idx] / n_city[city_idx]
        lift = np.where(rpc_city > 0, rpc_cell / rpc_city, np.nan)
    order = np.lexsort((g_cls, -g_m, g_city, g_cell))
    centres = [cell_centre(c) for c in cell_ids]
    rings = [cell_boundary(c) for c in cell_ids]
    names = np.asarray(list(class_names), dtype=object)
    g_cell, g_city, g_cls = g_cell[order], g_city[order], g_cls[order]
    per = pd.DataFrame(
        {
            "cell": np.asarray(cell_ids, dtype=object)[g_cell],
            "city": np.asarray(city_names, dtype=object)[g_city],
            "object": names[g_cls],
            "class_id": g_cls,
            "n_images": n_img[order].astype(np.int64),
            "M": g_m[order],
            "N": g_n[order],
            "mean_pixels": g_n[order] / n_img[order],
            "share": share[order],
            "rpc_cell": rpc_cell[order],
            "rpc_city": rpc_city[order],
            "lift": lift[order],
            "lat": np.array([centres[c][0] for c in g_cell], dtype=np.float64),
            "lon": np.array([centres[c][1] for c in g_cell], dtype=np.float64),
            "boundary": [rings[c] for c in g_cell],
        }
    )
    return per[PROFILE_COLUMNS]
