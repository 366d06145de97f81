"""The `indivaid` command at its door, third pass (issue 32): `--recalibrate` on a hand-set
threshold, Pillow's warnings naming their file, 105-megapixel phone photos, a train that hits a
file-size limit while writing its decoded images, and one line for every unreadable photo.

Real files and real processes throughout; nothing of the code under test is mocked.
"""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_helpers import one_line, run_main, run_main_out, user_folder
from PIL import Image, ImageDraw

from indivaid_core.safe_io import LOCK_NAME, TMP_SUFFIX, restore_formulas

REPO = Path(__file__).resolve().parents[1]

# An EXIF block whose first directory entry is cut short: Pillow warns "Corrupt EXIF data."
# when it reads the orientation, and names no file.
CORRUPT_EXIF = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x12\x01\x03\x00"


@pytest.fixture(scope="module")
def user(tmp_path_factory, tiny_suite, smoke_cfg) -> Path:
    """A user's folder: `gal/<identity>/*.jpg` (5 individuals x 3 photos), a random export."""
    return user_folder(tmp_path_factory.mktemp("door3"), *tiny_suite, smoke_cfg)


def build(user: Path, images: Path, out: Path, *extra: str | Path, capsys) -> tuple[int, str]:
    """`index build` on the user's model: (exit status, stderr)."""
    return build_out(user, images, out, *extra, capsys=capsys)[::2]


def build_out(user: Path, images: Path, out: Path, *extra: str | Path, capsys):
    """`index build` on the user's model: (exit status, stdout, stderr)."""
    args = ["index", "build", "--checkpoint", user / "model", "--images", images, "--out", out]
    return run_main_out(*args, "--device", "cpu", *extra, capsys=capsys)


def warning_lines(err: str, *needles: str) -> list[str]:
    return [
        w for w in err.splitlines() if w.startswith("warning:") and all(n in w for n in needles)
    ]


def newcomer(user: Path, folder: Path, name: str = "newcomer") -> Path:
    """A labelled folder with one new individual: two photos of the gallery, mirrored."""
    photos = sorted((user / "gal").glob("*/*.jpg"))[:2]
    (folder / name).mkdir(parents=True)
    for n, photo in enumerate(photos):
        mirrored = Image.open(photo).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        mirrored.save(folder / name / f"{n}.jpg")
    return folder


# --- index add --recalibrate -----------------------------------------------------------------


def test_recalibrate_on_a_hand_set_threshold_is_one_line_before_any_work(user, tmp_path, capsys):
    idx = tmp_path / "idx"
    assert build(user, user / "gal", idx, "--threshold", "1.0", capsys=capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in idx.iterdir()}
    more = newcomer(user, tmp_path / "more")
    args = ["index", "add", idx, "--images", more, "--recalibrate", "--device", "cpu"]
    rc, err = run_main(*args, capsys=capsys)
    assert rc == 2
    one_line(err, str(idx), "threshold 1.0 was set by hand", "drop --recalibrate")
    assert {p.name: p.read_bytes() for p in idx.iterdir()} == before
    rc, err = run_main(*args[:-3], "--device", "cpu", capsys=capsys)  # without: it grows
    assert rc == 0, err
    assert json.loads((idx / "index.json").read_text())["threshold"] == 1.0


def test_recalibrate_calibrates_a_gallery_that_was_too_small_at_build(user, tmp_path, capsys):
    """One individual cannot calibrate: the build says so and keeps its settings, and the
    grown gallery is calibrated with them."""
    gal = tmp_path / "gal"
    first = sorted(p for p in (user / "gal").iterdir())[0]
    shutil.copytree(first, gal / first.name)
    idx = tmp_path / "idx"
    rc, err = build(user, gal, idx, "--calibrate-split", "0.5", "--seed", "3", capsys=capsys)
    assert rc == 0, err
    assert warning_lines(err, str(gal), "needs >= 2 identities")
    meta = json.loads((idx / "index.json").read_text())
    assert meta["threshold"] is None and meta["calibration"]["method"] == "none"
    more = newcomer(user, tmp_path / "more")
    args = ["index", "add", idx, "--images", more, "--recalibrate", "--device", "cpu"]
    rc, err = run_main(*args, capsys=capsys)
    assert rc == 0, err
    meta = json.loads((idx / "index.json").read_text())
    cal = meta["calibration"]
    assert cal["method"] == "leave_identities_out" and meta["threshold"] is not None
    assert cal["heldout_fraction"] == 0.5 and cal["seed"] == 3


def test_recalibrate_with_edited_calibration_settings_is_one_line(user, tmp_path, capsys):
    idx = tmp_path / "idx"
    assert build(user, user / "gal", idx, capsys=capsys)[0] == 0
    meta = json.loads((idx / "index.json").read_text())
    meta["calibration"]["heldout_fraction"] = "abc"
    (idx / "index.json").write_text(json.dumps(meta))
    more = newcomer(user, tmp_path / "more")
    rc, err = run_main(
        "index", "add", idx, "--images", more, "--recalibrate", "--device", "cpu", capsys=capsys
    )
    assert rc == 2
    one_line(err, str(idx), "no usable settings", "rebuild")


# --- Pillow's warnings name their file -------------------------------------------------------


def test_a_corrupt_exif_warning_names_its_photo_once_in_every_command(user, tmp_path, capsys):
    gal = tmp_path / "gal"
    shutil.copytree(user / "gal", gal)
    bad = next(gal.glob("*/*.jpg"))
    Image.open(bad).save(bad, exif=CORRUPT_EXIF)
    idx = tmp_path / "idx"
    rc, err = build(user, gal, idx, "--threshold", "1", capsys=capsys)
    assert rc == 0, err
    assert len(warning_lines(err, "Corrupt EXIF data")) == 1, err
    assert warning_lines(err, str(bad), "Corrupt EXIF data")
    out = tmp_path / "r.csv"  # the photo is read three times: embedded, its EXIF, thumbnail
    rc, err = run_main(
        "identify", "--index", idx, bad, "--out", out, "--sightings", "--device", "cpu",
        capsys=capsys,
    )  # fmt: skip
    assert rc == 0, err
    assert len(warning_lines(err, str(bad), "Corrupt EXIF data")) == 1, err
    assert len(warning_lines(err, "Corrupt EXIF data")) == 1, err
    # train reads the photo twice (checked, then decoded): still one warning
    rc, err = run_main(
        "train", "--images", gal, "--out", tmp_path / "run", "--set", "profile=smoke",
        "--variant", "image_only", "--set", "device=cpu", capsys=capsys,
    )  # fmt: skip
    assert rc == 0, err
    assert len(warning_lines(err, "Corrupt EXIF data")) == 1, err
    assert warning_lines(err, str(bad), "Corrupt EXIF data")


# --- a 105-megapixel phone photo -------------------------------------------------------------


def phone_photo(path: Path) -> Path:
    """A 12000 x 8800 (105.6 MP) JPEG, mostly flat so that it writes in well under a second."""
    img = Image.new("RGB", (12000, 8800), (90, 120, 60))
    ImageDraw.Draw(img).ellipse((3000, 2000, 9000, 7000), fill=(200, 150, 40))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=70)
    return path


def test_a_105_megapixel_jpeg_is_decoded_reduced_by_index_and_identify(user, tmp_path, capsys):
    gal = tmp_path / "gal"
    shutil.copytree(user / "gal", gal)
    big = phone_photo(gal / sorted(p.name for p in gal.iterdir())[0] / "phone.jpg")
    idx = tmp_path / "idx"
    rc, out, err = build_out(user, gal, idx, "--threshold", "1", capsys=capsys)
    assert rc == 0, err
    assert not warning_lines(err) and json.loads(out)["n_errors"] == 0
    gallery = restore_formulas(pd.read_csv(idx / "gallery.csv", dtype=str))
    assert str(big) in set(gallery["path"])
    out = tmp_path / "r.csv"  # its review-page thumbnail and its sightings row read it too
    rc, err = run_main(
        "identify", "--index", idx, big, "--out", out, "--sightings", "--device", "cpu",
        capsys=capsys,
    )  # fmt: skip
    assert rc == 0, err
    assert not warning_lines(err)
    res = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert res["error"].tolist() == [""] and float(res["distance"][0]) < 1e-3
    assert out.with_suffix(".html").read_text().count("data:image/jpeg;base64,") >= 2


def test_a_non_jpeg_over_the_limit_is_one_line_naming_it_and_the_option(user, tmp_path, capsys):
    png = tmp_path / "q" / "scan.png"
    png.parent.mkdir()
    Image.new("RGB", (60, 50), (1, 2, 3)).save(png)
    ok = next((user / "gal").glob("*/*.jpg"))
    idx = tmp_path / "idx"
    assert build(user, user / "gal", idx, "--threshold", "1", capsys=capsys)[0] == 0
    out = tmp_path / "r.csv"
    # the 48 x 48 JPEG fits in 2,500 pixels; the 60 x 50 PNG does not
    rc, err = run_main(
        "identify", "--index", idx, png, ok, "--out", out, "--no-page", "--device", "cpu",
        "--max-pixels", "2500", capsys=capsys,
    )  # fmt: skip
    assert rc == 0, err
    (line,) = warning_lines(err, "skipped unreadable photos (1)", str(png), "--max-pixels")
    assert "save it as JPEG" in line
    res = pd.read_csv(out, dtype=str, keep_default_na=False).set_index("query")
    assert "--max-pixels" in res.loc[str(png), "error"] and res.loc[str(ok), "error"] == ""
    gal = tmp_path / "gal"
    (gal / "a").mkdir(parents=True)
    shutil.copy(png, gal / "a" / "scan.png")
    rc, err = build(user, gal, tmp_path / "idx2", "--max-pixels", "2500", capsys=capsys)
    assert rc == 2 and not (tmp_path / "idx2").exists()
    one_line(err, "scan.png", "--max-pixels")
    rc, err = build(user, gal, tmp_path / "idx2", "--max-pixels", "0", capsys=capsys)
    assert rc == 2
    one_line(err, "--max-pixels 0")


# --- bug 7: the decoded-image file on a full disk --------------------------------------------


def file_size_limit(limit: int):
    """preexec_fn: files over `limit` bytes fail with EFBIG (SIGXFSZ ignored), as a full disk
    fails with ENOSPC: the space of the decoded-image memmap is reserved, and refused."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_train_that_cannot_write_its_decoded_images_is_one_line_and_leaves_nothing(user, tmp_path):
    gal = tmp_path / "gal"
    rng = np.random.default_rng(0)
    for i in range(4):  # 40 photos at 32 x 32: a 123 kB memmap, the run's first large file
        (gal / f"id{i}").mkdir(parents=True)
        for j in range(10):
            photo = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(photo).save(gal / f"id{i}" / f"{j}.jpg")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "indivaid_core.cli", "train", "--images", str(gal)]
    cmd += ["--out", str(out), "--set", "profile=smoke", "--variant", "image_only"]
    cmd += ["--set", "device=cpu"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, preexec_fn=file_size_limit(64 * 1024)
    )
    assert done.returncode == 2, done.stderr
    one_line(done.stderr, str(out / "cache" / "decoded"), "File too large", "reserving")
    left = [p for p in out.rglob("*") if p.name.endswith((TMP_SUFFIX, LOCK_NAME))]
    assert not left and not list(out.rglob("*.npy"))
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / "model" / "model.json").is_file()


# --- one line for every unreadable photo -----------------------------------------------------


def test_unreadable_photos_are_one_line_and_the_output_lists_them_all(user, tmp_path, capsys):
    gal = tmp_path / "gal"
    shutil.copytree(user / "gal", gal)
    broken = [gal / "id_broken" / f"bad{n}.jpg" for n in range(5)]
    broken[0].parent.mkdir()
    for n, path in enumerate(broken):
        path.write_text(f"not a photo ({n})")
    rc, out, err = build_out(user, gal, tmp_path / "idx", "--threshold", "1", capsys=capsys)
    assert rc == 0, err
    (line,) = warning_lines(err, "skipped unreadable photos")
    assert f"{gal}: skipped unreadable photos (5)" in line and "and 2 more" in line
    assert "first error" in line and '"errors"' in line
    assert sorted(json.loads(out)["errors"]) == sorted(map(str, broken))
    q = tmp_path / "q"
    shutil.copytree(broken[0].parent, q)
    out = tmp_path / "r.csv"
    rc, err = run_main(
        "identify", "--index", tmp_path / "idx", q, next((user / "gal").glob("*/*.jpg")),
        "--out", out, "--no-page", "--device", "cpu", capsys=capsys,
    )  # fmt: skip
    assert rc == 0, err
    (line,) = warning_lines(err, "skipped unreadable photos")
    assert "identify: skipped unreadable photos (5)" in line and "error column" in line
    res = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert sorted(Path(p).name for p in res.loc[res["error"] != "", "query"]) == [
        f"bad{n}.jpg" for n in range(5)
    ]


def test_a_ctrl_c_while_the_command_line_loads_is_one_line_and_130():
    """The console script's entry (`indivaid_core.launch:main`) imports the command line inside
    the contract. A real process whose import of indivaid_core.cli is interrupted (a Ctrl-C
    raised at that import, as the signal handler would) exits 130 with one line."""
    script = textwrap.dedent(
        """
        import sys
        class Interrupt:
            def find_spec(self, name, path=None, target=None):
                if name == "indivaid_core.cli":
                    raise KeyboardInterrupt
        sys.meta_path.insert(0, Interrupt())
        from indivaid_core.launch import main
        sys.exit(main())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    expected = "error: interrupted (Ctrl-C); nothing was half-written, rerun to start again"
    assert done.stderr.strip().splitlines() == [expected]
    entry = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry["indivaid"] == "indivaid_core.launch:main"
