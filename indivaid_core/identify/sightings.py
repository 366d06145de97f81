"""Sightings: who was seen, where the photo is, when and by which camera.

One row per identified photo, the capture history that population estimates (capture-recapture)
are built from. The date is the photo's EXIF DateTimeOriginal when it has a usable one, else the
file's modification time (``date_source`` says which: a copied file's time may be the copy's);
the camera is EXIF Make and Model, empty without them. Dates are the camera's local time, as
EXIF stores them, written ``YYYY-MM-DDTHH:MM:SS``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
from PIL import ExifTags

from indivaid_core.data.images import named_warnings, opened

COLUMNS = ("identity", "photo", "date", "date_source", "camera")
EXIF_DATE = "%Y:%m:%d %H:%M:%S"
DATE_ORIGINAL, MAKE, MODEL = 36867, 271, 272


def _text(value: object) -> str:
    """An EXIF text value without the NULs and padding some cameras leave in it."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value or "").replace("\x00", "").strip()


def _exif(path: Path) -> tuple[str, str]:
    """(DateTimeOriginal, "Make Model") as written in the photo; empty where absent. Read
    as identify reads the photo: a 105 MP JPEG opens, and Pillow's warnings name it."""
    try:
        with named_warnings(path), opened(path, reduce_large=True) as im:
            exif = im.getexif()
            date = exif.get_ifd(ExifTags.IFD.Exif).get(DATE_ORIGINAL) or exif.get(DATE_ORIGINAL)
            make, model = _text(exif.get(MAKE)), _text(exif.get(MODEL))
    except (OSError, ValueError, SyntaxError):  # unreadable metadata: use the file's
        return "", ""
    camera = model if model.lower().startswith(make.lower()) else f"{make} {model}".strip()
    return _text(date), camera


def _iso(exif_date: str) -> str:
    """EXIF's ``2023:07:14 05:12:09`` as ISO 8601, or "" for blanks like ``0000:00:00``."""
    try:
        return datetime.strptime(exif_date, EXIF_DATE).isoformat()
    except ValueError:
        return ""


def photo_sighting(path: str | Path) -> dict[str, str]:
    """When and by which camera one photo was taken, from EXIF, else from the file."""
    exif_date, camera = _exif(Path(path))
    date = _iso(exif_date)
    if date:
        return {"date": date, "date_source": "exif", "camera": camera}
    mtime = datetime.fromtimestamp(Path(path).stat().st_mtime).replace(microsecond=0)
    return {"date": mtime.isoformat(), "date_source": "file", "camera": camera}


def sightings_frame(results: pd.DataFrame) -> pd.DataFrame:
    """One sighting per identified photo of `api.identify`'s results (photos with an error are
    left out: nothing was identified). ``identity`` is ``predicted_identity``: a name, or
    ``new`` for a photo of an individual not in the gallery."""
    ok = results[results["error"].fillna("").astype(str) == ""]
    rows = [
        {
            "identity": r["predicted_identity"],
            "photo": str(r["query"]),
            **photo_sighting(r["query"]),
        }
        for _, r in ok.iterrows()
    ]
    return pd.DataFrame(rows, columns=list(COLUMNS))
