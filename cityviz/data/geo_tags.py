"""Photo coordinates: validating latitude/longitude text and reading EXIF GPS tags.

Coordinates are WGS84 degrees, latitude in [-90, 90] (north positive) and longitude in
[-180, 180] (east positive), as in EXIF 2.3's GPS IFD and in the VPR/Tokyo 24/7 file names.
:func:`read_exif_latlon` reads only a file's header through Pillow's EXIF API
(``Image.getexif().get_ifd(ExifTags.IFD.GPSInfo)``): no pixel is decoded.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import ExifTags, Image

log = logging.getLogger(__name__)

EXIF_SUFFIXES = frozenset({".jpg", ".jpeg", ".webp"})
"""File types whose EXIF GPS tags are read (PNG's ``eXIf`` chunk may follow the pixel data,
so reading it would cost a pass over the file)."""


def parse_latlon(lat: object, lon: object) -> tuple[float, float]:
    """``(lat, lon)`` as floats from text or numbers, checked.

    Raises ValueError with a short reason for text that is not a number, a non-finite value,
    a latitude outside [-90, 90] or a longitude outside [-180, 180].
    """
    try:
        la, lo = float(str(lat).strip()), float(str(lon).strip())
    except ValueError:
        shown = f"{str(lat)[:40]!r}, {str(lon)[:40]!r}"
        raise ValueError(f"coordinates {shown} are not numbers") from None
    if not (math.isfinite(la) and math.isfinite(lo)):
        raise ValueError("coordinates must be finite numbers")
    if not -90.0 <= la <= 90.0:
        raise ValueError(f"latitude {la:g} is outside [-90, 90]")
    if not -180.0 <= lo <= 180.0:
        raise ValueError(f"longitude {lo:g} is outside [-180, 180]")
    return la, lo


def dms_to_degrees(dms: Sequence[object], ref: object) -> float:
    """Degrees from EXIF's ``(degrees, minutes, seconds)`` rationals and a hemisphere reference.

    ``ref`` is ``"N"``/``"S"`` for a latitude, ``"E"``/``"W"`` for a longitude (``bytes`` or
    ``str``; S and W give negative degrees). EXIF 2.3, GPSLatitude/GPSLongitude: a value may
    carry fewer than three parts (degrees and decimal minutes). Raises ValueError for a missing
    or unknown reference, an empty or non-finite value (a zero denominator), or negative parts.
    """
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    ref = str(ref).strip("\x00 ").upper()
    if ref not in ("N", "S", "E", "W"):
        raise ValueError(f"GPS reference {ref[:8]!r} is not N, S, E or W")
    parts = [float(p) for p in dms]  # IFDRational, Fraction, int or float
    if not 1 <= len(parts) <= 3 or not all(math.isfinite(p) and p >= 0 for p in parts):
        raise ValueError("GPS value is not 1-3 finite non-negative numbers")
    value = sum(p / 60.0**i for i, p in enumerate(parts))
    return -value if ref in ("S", "W") else value


def exif_latlon(exif: Image.Exif) -> tuple[float, float] | None:
    """``(lat, lon)`` from an image's EXIF GPS IFD, or None when absent or invalid.

    ``(0, 0)`` counts as absent: cameras without a fix write zeros. Invalid tags are logged at
    debug level, never raised.
    """
    try:
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    except Exception as err:  # Pillow raises several types for broken IFDs
        log.debug("unreadable GPS IFD: %s", err)
        return None
    tag = ExifTags.GPS
    keys = (tag.GPSLatitude, tag.GPSLatitudeRef, tag.GPSLongitude, tag.GPSLongitudeRef)
    if not gps or not all(k in gps for k in keys):
        return None
    try:
        lat = dms_to_degrees(gps[tag.GPSLatitude], gps[tag.GPSLatitudeRef])
        lon = dms_to_degrees(gps[tag.GPSLongitude], gps[tag.GPSLongitudeRef])
        lat, lon = parse_latlon(lat, lon)
    except (TypeError, ValueError, ZeroDivisionError) as err:
        log.debug("invalid GPS tags: %s", err)
        return None
    if lat == 0.0 and lon == 0.0:
        return None
    return lat, lon


def read_exif_latlon(path: str | Path) -> tuple[float, float] | None:
    """``(lat, lon)`` from the EXIF GPS tags of a JPEG or WebP file, or None (no tags, another
    file type, an unreadable file). Opens the header only; never raises for a bad file."""
    if Path(path).suffix.lower() not in EXIF_SUFFIXES:
        return None
    try:
        with Image.open(path) as im:
            return exif_latlon(im.getexif())
    except Exception as err:  # PIL signals bad files with many exception types
        log.debug("no EXIF from %s: %s", path, err)
        return None
