"""One rule for the photos of `train`, `index build/add` and `identify` (issue 32, "Weak"):
the same accepted types, hidden files and folders skipped, unreadable photos skipped, each kind
of skip one warning line with a count, duplicates and empty identity folders pointed out, and
identity names stripped and put in Unicode NFC. Real files and real CLI calls, no mocks."""

from __future__ import annotations

import shutil
import unicodedata
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import run_main

from indivaid_core import cli
from indivaid_core.data.images import IMAGE_EXTENSIONS
from indivaid_core.identify.demo import random_export
from indivaid_core.photos import SUFFIXES
from indivaid_core.safe_io import restore_formulas

NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")


def warning_line(err: str, *needles: str) -> str:
    """The one `warning:` line that holds every needle."""
    lines = [
        w for w in err.splitlines() if w.startswith("warning:") and all(n in w for n in needles)
    ]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_suite, smoke_cfg) -> Path:
    """A clumsy user's gallery: thumbnails, .gif and .mpo, a broken photo, a name with a
    leading space, é in NFC and NFD, an empty identity folder, one photo under two names."""
    root = tmp_path_factory.mktemp("weak")
    table, images = tiny_suite
    photos = [images / p for p in table["path"]]
    gal = root / "gal"
    for name in ("id00", " id01", "id01", NFC, NFD, "id02", "id03"):
        (gal / name).mkdir(parents=True)
    shutil.copy(photos[0], gal / "id00" / "a.jpg")
    shutil.copy(photos[1], gal / "id00" / "b.jpg")
    (gal / "id00" / ".thumbnails").mkdir()
    shutil.copy(photos[1], gal / "id00" / ".thumbnails" / "t.jpg")
    shutil.copy(photos[1], gal / "id00" / ".hidden.jpg")
    shutil.copy(photos[1], gal / "id00" / "x.gif")
    shutil.copy(photos[1], gal / "id00" / "y.mpo")
    (gal / "id00" / "broken.jpg").write_text("not a photo")
    shutil.copy(photos[2], gal / " id01" / "a.jpg")
    shutil.copy(photos[3], gal / "id01" / "b.jpg")
    shutil.copy(photos[4], gal / NFC / "a.jpg")
    shutil.copy(photos[5], gal / NFD / "b.jpg")
    shutil.copy(photos[0], gal / "id02" / "same-as-id00-a.jpg")
    shutil.copy(photos[6], gal / "id02" / "c.jpg")
    random_export(root / "model", smoke_cfg.model, ["id00", "id01", NFC, "id02"], seed=0)
    return root


def test_the_accepted_types_are_the_pipelines_and_the_help_says_the_rule(capsys):
    assert tuple(SUFFIXES) == tuple(IMAGE_EXTENSIONS)
    assert ".gif" not in SUFFIXES and ".mpo" not in SUFFIXES
    for command in (["train"], ["index", "build"], ["index", "add"], ["identify"]):
        with pytest.raises(SystemExit):
            cli.main([*command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert ".gif and .mpo included, are skipped" in text, command
        assert "hidden files and folders are skipped" in text, command
        assert "Unicode NFC" in text, command


def test_index_build_follows_the_rule_with_one_counted_line_each(world, tmp_path, capsys):
    out = tmp_path / "idx"
    rc, err = run_main(
        "index", "build", "--checkpoint", world / "model", "--images", world / "gal",
        "--out", out, "--threshold", "1.0", "--device", "cpu", capsys=capsys,
    )  # fmt: skip
    assert rc == 0, err
    assert "Traceback" not in err
    hidden = warning_line(err, "skipped hidden files or folders (2)")
    assert ".thumbnails" in hidden and ".hidden.jpg" in hidden
    warning_line(err, "skipped 2", "x.gif", "y.mpo")
    assert "broken.jpg" in err
    names = warning_line(err, "identity names normalised")
    assert "' id01' -> 'id01'" in names and repr(NFD) in names
    warning_line(err, "identity folders without usable photos", "(1)", "id03")
    twice = warning_line(err, "more than one identity", "(2)")
    assert "same-as-id00-a.jpg" in twice
    gallery = restore_formulas(pd.read_csv(out / "gallery.csv", dtype=str))
    assert set(gallery["identity"]) == {"id00", "id01", NFC, "id02"}
    assert (gallery["identity"] == "id01").sum() == 2 and (gallery["identity"] == NFC).sum() == 2
    paths = " ".join(gallery["path"])
    assert ".thumbnails" not in paths and ".gif" not in paths and ".mpo" not in paths


def test_duplicate_csv_rows_are_counted_and_indexed_once(world, tmp_path, capsys):
    csv = world / "gal" / "dups.csv"
    rows = ["id00/a.jpg", "id00/a.jpg", "id00/b.jpg", "id02/c.jpg", "id00/x.gif"]
    who = ["id00", "id00", "id00", "id02", "id00"]
    pd.DataFrame({"identity": who, "path": rows}).to_csv(csv, index=False)
    out = tmp_path / "idx"
    rc, err = run_main(
        "index", "build", "--checkpoint", world / "model", "--images", csv,
        "--out", out, "--threshold", "1.0", "--device", "cpu", capsys=capsys,
    )  # fmt: skip
    csv.unlink()
    assert rc == 0, err
    warning_line(err, "skipped duplicate rows", "(1)", "id00/a.jpg")
    warning_line(err, "unaccepted type (1)", "x.gif")
    assert len(pd.read_csv(out / "gallery.csv")) == 3


def test_a_header_only_csv_is_one_line_naming_it(world, tmp_path, capsys):
    csv = tmp_path / "empty.csv"
    csv.write_text("identity,path\n")
    out = tmp_path / "idx"
    rc, err = run_main(
        "index", "build", "--checkpoint", world / "model", "--images", csv,
        "--out", out, "--device", "cpu", capsys=capsys,
    )  # fmt: skip
    assert rc == 2 and not out.exists()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(csv) in lines[0] and "no images" in lines[0], err


def test_identify_follows_the_same_rule(world, tmp_path, capsys):
    rc, err = run_main(
        "index", "build", "--checkpoint", world / "model", "--images", world / "gal",
        "--out", tmp_path / "idx", "--threshold", "1.0", "--device", "cpu", capsys=capsys,
    )  # fmt: skip
    assert rc == 0, err
    q = tmp_path / "q"
    (q / ".thumbnails").mkdir(parents=True)
    shutil.copy(world / "gal" / "id00" / "a.jpg", q / "one.jpg")
    shutil.copy(world / "gal" / "id00" / "a.jpg", q / "copy.jpg")
    shutil.copy(world / "gal" / "id00" / "a.jpg", q / ".thumbnails" / "t.jpg")
    shutil.copy(world / "gal" / "id00" / "a.jpg", q / ".dot.jpg")
    shutil.copy(world / "gal" / "id00" / "x.gif", tmp_path / "named.gif")
    out = tmp_path / "results.csv"
    rc, err = run_main(
        "identify", "--index", tmp_path / "idx", q, q / "one.jpg", tmp_path / "named.gif",
        "--out", out, "--no-page", "--device", "cpu", capsys=capsys,
    )  # fmt: skip
    assert rc == 0, err
    warning_line(err, "skipped hidden files or folders (2)")
    warning_line(err, "given more than once (1)", "one.jpg")
    warning_line(err, "same content as another", "(2)", "copy.jpg")
    res = restore_formulas(pd.read_csv(out, dtype=str, keep_default_na=False))
    assert sorted(Path(p).name for p in res["query"]) == ["copy.jpg", "named.gif", "one.jpg"]
    assert (
        "not an accepted image type"
        in res.set_index("query").loc[str(tmp_path / "named.gif"), "error"]
    )


def test_train_lists_every_unreadable_photo_at_once_and_fails_when_too_few_are_left(
    world, tmp_path, capsys
):
    gal = tmp_path / "gal"
    for name in ("id00", "id01"):
        (gal / name).mkdir(parents=True)
    shutil.copy(world / "gal" / "id00" / "a.jpg", gal / "id00" / "a.jpg")
    for n in range(5):
        (gal / "id01" / f"bad{n}.jpg").write_text("not a photo")
    (gal / "id01" / ".thumbnails").mkdir()
    shutil.copy(world / "gal" / "id00" / "a.jpg", gal / "id01" / ".thumbnails" / "t.jpg")
    (gal / "empty").mkdir()
    rc, err = run_main(
        "train", "--images", gal, "--out", tmp_path / "run", "--set", "profile=smoke",
        capsys=capsys,
    )  # fmt: skip
    assert rc == 2, err
    assert "Traceback" not in err
    bad = warning_line(err, "skipped unreadable photos", "(5)")
    assert "bad0.jpg" in bad and "and 2 more" in bad
    warning_line(err, "skipped hidden files or folders (1)")
    warning_line(err, "identity folders without usable photos", "(2)", "empty", "id01")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "at least 2 individuals with usable photos" in errors[0]
    assert not (tmp_path / "run").exists()


def test_train_skips_unreadable_photos_and_trains_on_the_rest(world, tmp_path, capsys):
    gal = tmp_path / "gal"
    for name in ("id00", "id01"):
        (gal / name).mkdir(parents=True)
    for n, src in enumerate(("id00/a.jpg", "id00/b.jpg")):
        shutil.copy(world / "gal" / src, gal / "id00" / f"{n}.jpg")
    for n, src in enumerate(("id01/b.jpg", "id02/c.jpg")):
        shutil.copy(world / "gal" / src, gal / "id01" / f"{n}.jpg")
    (gal / "id01" / "bad.jpg").write_text("not a photo")
    rc = cli.main(
        [str(a) for a in ("train", "--images", gal, "--out", tmp_path / "run")]
        + ["--set", "profile=smoke", "--stage", "stage1", "--set", "device=cpu"]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    warning_line(err, "skipped unreadable photos", "(1)", "bad.jpg")
    assert '"images": 4' in out and '"individuals": 2' in out
