"""Sightings export (issue 31, item 6): identity, photo, date and camera per identified photo,
from EXIF written by Pillow, else the file's time; through `indivaid identify --sightings`."""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from PIL import ExifTags, Image

from indivaid_core import cli
from indivaid_core.identify.demo import random_export
from indivaid_core.identify.sightings import photo_sighting, sightings_frame
from indivaid_core.safe_io import write_csv

WHEN = datetime(2021, 3, 4, 5, 6, 7)


def jpeg(path: Path, date: str | None = None, make: str = "", model: str = "") -> Path:
    """A small JPEG with the given EXIF fields (none when all are empty), dated WHEN on disk."""
    exif = Image.Exif()
    if make:
        exif[ExifTags.Base.Make] = make
    if model:
        exif[ExifTags.Base.Model] = model
    if date:
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = date
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (120, 80, 40)).save(path, exif=exif.tobytes())
    os.utime(path, (WHEN.timestamp(), WHEN.timestamp()))
    return path


def test_date_and_camera_from_exif(tmp_path):
    photo = jpeg(tmp_path / "a.jpg", "2023:07:14 05:12:09", "RECONYX", "HC600 HYPERFIRE")
    assert photo_sighting(photo) == {
        "date": "2023-07-14T05:12:09",
        "date_source": "exif",
        "camera": "RECONYX HC600 HYPERFIRE",
    }
    same = jpeg(tmp_path / "b.jpg", "2023:07:14 05:12:09", "Canon", "Canon EOS R5")
    assert photo_sighting(same)["camera"] == "Canon EOS R5"  # the make is not repeated


def test_file_time_without_a_usable_exif_date(tmp_path):
    bare = photo_sighting(jpeg(tmp_path / "bare.jpg"))
    assert bare == {"date": WHEN.isoformat(), "date_source": "file", "camera": ""}
    blank = jpeg(tmp_path / "blank.jpg", "0000:00:00 00:00:00", model="Trailcam")
    assert photo_sighting(blank) == {
        "date": WHEN.isoformat(),
        "date_source": "file",
        "camera": "Trailcam",
    }


def test_one_row_per_identified_photo_and_no_live_formulas(tmp_path):
    a, b = jpeg(tmp_path / "a.jpg", "2022:01:02 03:04:05"), jpeg(tmp_path / "b.jpg")
    results = pd.DataFrame(
        {
            "query": [str(a), str(b), str(tmp_path / "broken.jpg")],
            "predicted_identity": ["=HYPERLINK(1)", "new", None],
            "error": ["", "", "cannot read"],
        }
    )
    frame = sightings_frame(results)
    assert frame["identity"].tolist() == ["=HYPERLINK(1)", "new"]  # the broken photo is left out
    write_csv(frame, tmp_path / "sightings.csv", index=False)
    back = pd.read_csv(tmp_path / "sightings.csv", keep_default_na=False)
    assert back.columns.tolist() == ["identity", "photo", "date", "date_source", "camera"]
    assert back["identity"].tolist() == ["'=HYPERLINK(1)", "new"]
    assert back["date_source"].tolist() == ["exif", "file"]


@pytest.fixture(scope="module")
def field(tmp_path_factory, tiny_suite, smoke_cfg) -> Path:
    """A gallery of the tiny suite, a random model, an index, and two new photos: one straight
    from a camera (EXIF) and one without metadata."""
    root = tmp_path_factory.mktemp("sightings")
    table, images = tiny_suite
    for _, row in table.iterrows():
        dest = root / "gallery" / row["identity"]
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(images / row["path"], dest / f"{row['image_id']}.jpg")
    first = Image.open(images / table["path"][0])
    exif = Image.Exif()
    exif[ExifTags.Base.Make], exif[ExifTags.Base.Model] = "Browning", "BTC-8E"
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2024:05:01 21:30:00"
    (root / "new").mkdir()
    first.save(root / "new" / "camera.jpg", exif=exif.tobytes())
    jpeg(root / "new" / "plain.jpg")
    random_export(root / "model", smoke_cfg.model, sorted(table["identity"].unique()), seed=0)
    build = ["index", "build", "--checkpoint", "model", "--images", "gallery", "--out", "idx"]
    assert identify_in(root, *build, "--threshold", "1.0") == 0
    return root


def identify_in(cwd: Path, *args: str) -> int:
    """`indivaid ARGS --device cpu`, run from `cwd` as a user's shell would."""
    before = Path.cwd()
    os.chdir(cwd)
    try:
        return cli.main([*args, "--device", "cpu"])
    finally:
        os.chdir(before)


def test_identify_writes_sightings_beside_the_results(field, capsys):
    args = ["identify", "--index", "idx", "new", "--no-page", "--sightings"]
    assert identify_in(field, *args, "--out", "out/results.csv") == 0
    assert "sightings out/sightings.csv" in capsys.readouterr().out
    results = pd.read_csv(field / "out/results.csv", keep_default_na=False)
    seen = pd.read_csv(field / "out/sightings.csv", keep_default_na=False).set_index("photo")
    assert len(seen) == len(results) == 2
    assert seen.loc[results["query"], "identity"].tolist() == results["predicted_identity"].tolist()
    camera = seen.loc[[p for p in seen.index if p.endswith("camera.jpg")][0]]
    assert (camera["date"], camera["date_source"]) == ("2024-05-01T21:30:00", "exif")
    assert camera["camera"] == "Browning BTC-8E"
    plain = seen.loc[[p for p in seen.index if p.endswith("plain.jpg")][0]]
    assert (plain["date"], plain["date_source"], plain["camera"]) == (WHEN.isoformat(), "file", "")

    before = (field / "out/sightings.csv").read_bytes()
    assert identify_in(field, *args, "--out", "out/other.csv") == 2
    assert "sightings.csv: already exists" in capsys.readouterr().err
    assert (field / "out/sightings.csv").read_bytes() == before
    assert not (field / "out/other.csv").exists()  # refused before any work
