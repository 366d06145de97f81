"""The `indivaid` command at its door: hostile and clumsy input on real files and processes.

Each refusal is one line that names the option, file, key or row, exit status 2, and comes
before any work (no model loaded, no photo embedded, nothing written). A bug is the opposite:
its traceback and a line saying where to report it, exit 1. Ctrl-C and SIGTERM end in one line
with nothing half-written. Every CSV the command writes is safe to open in a spreadsheet.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from cli_helpers import one_line, run_main

from indivaid_core import cli, door
from indivaid_core.identify.demo import random_export
from indivaid_core.identify.index import GalleryIndex
from indivaid_core.safe_io import TMP_SUFFIX, write_csv

REPO = Path(__file__).resolve().parents[1]
FORMULA_START = re.compile(r"[=+\-@\t\r]")
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
# Identity folders a spreadsheet would run as formulas, and plain ones.
IDENTITIES = ["=1+2", "@SUM(A1)", "-2+3", "+tiger", "tiger_plain"]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_suite, smoke_cfg) -> Path:
    """A user's folder: a gallery under `=gal` (formula-named folders and photos), one unseen
    photo per individual, a random export, and an exact index built by the command itself."""
    root = tmp_path_factory.mktemp("door")
    table, images = tiny_suite
    (root / "unseen").mkdir()
    for n, (_, rows) in enumerate(table.groupby("identity", sort=True)):
        folder = root / "=gal" / IDENTITIES[n]
        folder.mkdir(parents=True)
        first, second, third = (images / rel for rel in rows["path"])
        shutil.copy(first, folder / "photo.jpg")
        shutil.copy(second, folder / f"=HYPERLINK({n}).jpg")
        shutil.copy(third, root / "unseen" / (f"={n}+{n}.jpg" if n % 2 else f"q{n}.jpg"))
    random_export(root / "model", smoke_cfg.model, IDENTITIES, seed=0)
    rc = cli.main(
        ["index", "build", "--checkpoint", str(root / "model"), "--images", str(root / "=gal")]
        + ["--out", str(root / "idx"), "--threshold", "1.0", "--device", "cpu"]
    )
    assert rc == 0
    return root


# --- errors: the user's, or a bug --------------------------------------------------------------


def test_user_errors_are_the_projects_own_and_a_bug_shows_its_traceback(
    monkeypatch, capsys, tmp_path
):
    assert ValueError not in cli.USER_ERRORS and KeyError not in cli.USER_ERRORS
    out = tmp_path / "r.csv"
    rc, err = run_main("identify", "--index", "no-such-index", "x.jpg", "--out", out, capsys=capsys)
    assert rc == 2
    one_line(err, "no-such-index")

    def buggy(args):
        return {"half": 1 / 0}

    monkeypatch.setattr(cli, "run", buggy)  # a fault planted in the work, not in the door
    rc, err = run_main("identify", "--index", "idx", "x.jpg", capsys=capsys)
    assert rc == 1
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert "bug in indivaid" in err.splitlines()[-1] and "report" in err.splitlines()[-1]

    def plain_value_error(args):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(cli, "run", plain_value_error)
    rc, err = run_main("identify", "--index", "idx", "x.jpg", capsys=capsys)
    assert rc == 1 and "Traceback" in err and "bug in indivaid" in err


# --- arguments ---------------------------------------------------------------------------------

IDENTIFY_ARGS = [
    (["--top-k", "0"], "--top-k 0"),
    (["--top-k", "-1"], "--top-k -1"),
    (["--threshold", "nan"], "--threshold nan"),
    (["--threshold", "-1"], "--threshold -1"),
    (["--threshold", "inf"], "--threshold inf"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--device", "gpu"], "--device gpu (command line)"),
]
BUILD_ARGS = [
    (["--calibrate-split", "0"], "--calibrate-split 0"),
    (["--calibrate-split", "1.5"], "--calibrate-split 1.5"),
    (["--calibration-repeats", "0"], "--calibration-repeats 0"),
    (["--backend", "faiss-ivf", "--nlist", "0"], "--nlist 0"),
    (["--backend", "faiss-ivf", "--nprobe", "0"], "--nprobe 0"),
    (["--backend", "faiss-hnsw", "--hnsw-m", "0"], "--hnsw-m 0"),
    (["--backend", "faiss-hnsw", "--ef-search", "-5"], "--ef-search -5"),
]


@pytest.mark.parametrize(("extra", "named"), IDENTIFY_ARGS, ids=[n for _, n in IDENTIFY_ARGS])
def test_identify_options_out_of_range_are_refused_by_name(world, tmp_path, capsys, extra, named):
    out = tmp_path / "r.csv"
    args = ["identify", "--index", world / "idx", world / "unseen", "--out", out, *extra]
    rc, err = run_main(*args, capsys=capsys)
    assert rc == 2 and not out.exists()
    one_line(err, named)


@pytest.mark.parametrize(("extra", "named"), BUILD_ARGS, ids=[n for _, n in BUILD_ARGS])
def test_build_options_are_checked_before_the_model_is_even_read(tmp_path, capsys, extra, named):
    """The checkpoint does not exist: a refusal naming the option proves it came first."""
    out = tmp_path / "idx"
    args = ["index", "build", "--checkpoint", tmp_path / "no-model", "--images", tmp_path]
    rc, err = run_main(*args, "--out", out, *extra, capsys=capsys)
    assert rc == 2 and not out.exists()
    one_line(err, named)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_names_where_it_was_asked_for(world, tmp_path, capsys):
    rc, err = run_main(
        "identify", "--index", world / "idx", "x.jpg", "--device", "cuda", capsys=capsys
    )
    assert rc == 2
    one_line(err, "--device cuda (command line)", "no CUDA device")
    rc, err = run_main(*train_args(world, tmp_path, "--set", "device=cuda"), capsys=capsys)
    assert rc == 2
    one_line(err, "--set device=cuda (command line)", "no CUDA device")


def test_top_k_beyond_the_known_individuals_is_clipped_with_a_note(world, tmp_path, capsys):
    out = tmp_path / "r.csv"
    args = ["identify", "--index", world / "idx", world / "unseen", "--out", out]
    rc, err = run_main(*args, "--top-k", "1000", "--device", "cpu", capsys=capsys)
    assert rc == 0, err
    assert "--top-k 1000" in err and "5 individuals" in err
    columns = pd.read_csv(out, nrows=0).columns
    assert "top5_identity" in columns and "top6_identity" not in columns


def test_identify_out_that_is_a_folder_is_refused_before_any_work(world, tmp_path, capsys):
    rc, err = run_main(
        "identify", "--index", world / "idx", "x.jpg", "--out", tmp_path, capsys=capsys
    )
    assert rc == 2
    one_line(err, f"--out {tmp_path}", "is a folder")


# --- settings ----------------------------------------------------------------------------------


def train_args(world: Path, tmp_path: Path, *extra: str | Path) -> list[str | Path]:
    out = tmp_path / "run"
    return ["train", "--images", world / "=gal", "--out", out, "--set", "profile=smoke", *extra]


PARAMS_FILES = [
    ("object-tag", "seed: !!python/object/apply:os.mkdir ['{marker}']\n", "not valid settings"),
    ("bad-yaml", "stage1: {epochs: [1\n", "not valid settings"),
    ("list", "- seed\n- 1\n", "holds a YAML list"),
    ("string", "just words\n", "holds a YAML str"),
    ("empty", "", "is empty"),
    ("duplicate-key", "seed: 1\nseed: 2\n", "duplicate key 'seed'"),
]


@pytest.mark.parametrize(
    ("text", "says"), [p[1:] for p in PARAMS_FILES], ids=[p[0] for p in PARAMS_FILES]
)
def test_a_bad_params_file_is_one_line_naming_it_and_runs_nothing(
    world, tmp_path, capsys, text, says
):
    params = tmp_path / "my params.yaml"
    marker = tmp_path / "pwned"
    params.write_text(text.replace("{marker}", str(marker)))
    rc, err = run_main(*train_args(world, tmp_path, "--params", params), capsys=capsys)
    assert rc == 2 and not marker.exists() and not (tmp_path / "run").exists()
    one_line(err, str(params), says)


def test_a_binary_file_or_a_folder_as_params_is_one_line(world, tmp_path, capsys):
    binary = tmp_path / "params.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    for params, says in ((binary, "not a text file"), (tmp_path, "is a folder")):
        rc, err = run_main(*train_args(world, tmp_path, "--params", params), capsys=capsys)
        assert rc == 2
        one_line(err, str(params), says)


SETTINGS = [
    ("stage1.epochs.x=5", "stage1.epochs"),
    ("stage1.epochs=[1", "--set 'stage1.epochs=[1'"),
    ("stage2.augment.pad=-8", "stage2.augment.pad"),
    ("stage2.augment.random_erasing=5", "stage2.augment.random_erasing"),
    ("stage2.augment.color_jitter=-1", "stage2.augment.color_jitter"),
    ("stage2.loss_weights.id=-1", "stage2.loss_weights.id"),
    ("stage1.lr=.inf", "stage1.lr"),
    ("stage1.lr=nan", "stage1.lr"),
    ("stage1.lr=1e30", "stage1.lr"),
    ("stage2.lr=0", "stage2.lr"),
    ("stage2.p=1000", "stage2.p"),
    ("device=gpu", "--set device=gpu (command line)"),
]


@pytest.mark.parametrize(("setting", "named"), SETTINGS, ids=[s for s, _ in SETTINGS])
def test_settings_out_of_range_are_refused_before_training(world, tmp_path, capsys, setting, named):
    args = train_args(world, tmp_path, "--params", REPO / "params.yaml", "--set", setting)
    rc, err = run_main(*args, capsys=capsys)
    assert rc == 2 and not (tmp_path / "run").exists()
    one_line(err, named)


# --- paths outside the image root (S1) ---------------------------------------------------------


@pytest.fixture
def outside_csv(world, tmp_path) -> Path:
    """A metadata CSV whose rows leave its folder: `../x.jpg` and an absolute path."""
    photo = next((world / "=gal" / "tiger_plain").glob("*.jpg"))
    csv_dir = tmp_path / "sent" / "by" / "someone"
    csv_dir.mkdir(parents=True)
    shutil.copy(photo, csv_dir / "inside.jpg")
    shutil.copy(photo, tmp_path / "sent" / "secret.jpg")
    rows = [("a", "inside.jpg"), ("b", "../../secret.jpg"), ("c", str(photo.resolve()))]
    pd.DataFrame(rows, columns=["identity", "path"]).to_csv(csv_dir / "meta.csv", index=False)
    return csv_dir / "meta.csv"


def test_rows_outside_the_root_are_refused_by_every_command(world, tmp_path, capsys, outside_csv):
    idx = tmp_path / "idx"
    shutil.copytree(world / "idx", idx)
    before = (idx / "gallery.csv").read_bytes()
    build = ["index", "build", "--checkpoint", world / "model", "--out", tmp_path / "new"]
    train = ["train", "--out", tmp_path / "run", "--params", REPO / "params.yaml"]
    commands = {
        "build": [*build, "--images", outside_csv, "--device", "cpu"],
        "add": ["index", "add", idx, "--images", outside_csv, "--device", "cpu"],
        "train": [*train, "--images", outside_csv, "--set", "profile=smoke"],
    }
    for name, args in commands.items():
        rc, err = run_main(*args, capsys=capsys)
        assert rc == 2, name
        line = one_line(err, str(outside_csv), "outside the data root", "../../secret.jpg")
        assert "row 1" in line and "row 2" in line and "row 0" not in line
        assert (
            "--set data.allow_outside_root=true" if name == "train" else "--allow-outside-root"
        ) in line
    assert not (tmp_path / "new").exists() and not (tmp_path / "run").exists()
    assert (idx / "gallery.csv").read_bytes() == before


def test_allow_outside_root_lets_the_rows_in(world, tmp_path, capsys, outside_csv):
    args = ["index", "build", "--checkpoint", world / "model", "--images", outside_csv]
    rc, err = run_main(
        *args,
        "--out",
        tmp_path / "idx",
        "--threshold",
        "1",
        "--allow-outside-root",
        "--device",
        "cpu",
        capsys=capsys,
    )
    assert rc == 0, err
    assert len(GalleryIndex.load(tmp_path / "idx").gallery) == 3


def test_a_gallery_that_is_neither_folder_nor_csv_is_one_line(world, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("identity,path\n")
    args = ["index", "build", "--checkpoint", world / "model", "--images", notes]
    rc, err = run_main(
        *args, "--out", tmp_path / "idx", "--threshold", "1", "--device", "cpu", capsys=capsys
    )
    assert rc == 2
    one_line(err, str(notes), "folder of identity folders or a CSV")


# --- spreadsheet formulas (S2) -----------------------------------------------------------------


def cells(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [cell for row in csv.reader(f) for cell in row]


def assert_no_formula(path: Path) -> None:
    live = [c for c in cells(path) if FORMULA_START.match(c) and not NUMBER.fullmatch(c)]
    assert not live, f"{path}: cells a spreadsheet would run: {live[:5]}"


def test_csvs_the_command_writes_hold_no_live_formula_and_read_back_whole(
    world, tmp_path, capsys, monkeypatch
):
    idx = tmp_path / "idx"
    shutil.copytree(world / "idx", idx)
    assert_no_formula(idx / "gallery.csv")
    assert "'=1+2" in cells(idx / "gallery.csv")
    assert set(GalleryIndex.load(idx).gallery["identity"]) == set(IDENTITIES)

    mine = ["--checkpoint", world / "model", "--device", "cpu"]  # the copy moved away from it
    monkeypatch.chdir(world / "unseen")  # queries named as typed: `=1+1.jpg`
    queries = sorted(p.name for p in Path(".").glob("*.jpg"))
    assert any(q.startswith("=") for q in queries)
    out = tmp_path / "results.csv"
    rc, err = run_main("identify", "--index", idx, *queries, "--out", out, *mine, capsys=capsys)
    assert rc == 0, err
    assert_no_formula(out)
    res = pd.read_csv(out)
    assert pd.api.types.is_float_dtype(res["distance"]) and pd.api.types.is_float_dtype(
        res["score"]
    )
    assert set(res["query"]) == {"'" + q if q.startswith("=") else q for q in queries}

    newcomer = tmp_path / "more" / "=1+2"  # the same formula-named individual, a new photo
    newcomer.mkdir(parents=True)
    shutil.copy(world / "unseen" / queries[0], newcomer / "@new.jpg")
    rc, err = run_main("index", "add", idx, "--images", tmp_path / "more", *mine, capsys=capsys)
    assert rc == 0, err
    assert_no_formula(idx / "gallery.csv")
    assert not any(c.startswith("''") for c in cells(idx / "gallery.csv"))  # quoted once
    gallery = GalleryIndex.load(idx).gallery
    assert set(gallery["identity"]) == set(IDENTITIES) and len(gallery) == 11


def test_write_csv_keeps_numbers_numbers_and_reads_back_exactly(tmp_path):
    frame = pd.DataFrame(
        {
            "name": ["=cmd|' /C calc'!A0", "-2+3", "@x", "\tx", "'=y", "ok", "-7"],
            "d": [-1.5, 0, 1, 2, 3, 4, -5],
        }
    )
    write_csv(frame, tmp_path / "t.csv", index=False)
    assert_no_formula(tmp_path / "t.csv")
    assert "-1.5" in cells(tmp_path / "t.csv") and "-7" in cells(tmp_path / "t.csv")
    from indivaid_core.safe_io import restore_formulas

    back = restore_formulas(
        pd.read_csv(tmp_path / "t.csv", dtype={"name": str}, keep_default_na=False)
    )
    assert back["name"].tolist() == frame["name"].tolist()
    assert back["d"].tolist() == frame["d"].tolist()


# --- signals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_build_is_one_line_and_leaves_nothing_behind(world, tmp_path, sig, status):
    big = tmp_path / "big"  # enough photos that the build embeds for many seconds (a loaded
    for ident in IDENTITIES:  # machine wakes this test late); the signal cuts it short anyway
        (big / ident).mkdir(parents=True)
        photos = sorted((world / "=gal" / ident).glob("*.jpg"))
        for i in range(300):
            os.link(photos[i % len(photos)], big / ident / f"{i}.jpg")
    out = tmp_path / "idx"
    lock = tmp_path / ".idx.indivaid.lock"
    args = [
        "index",
        "build",
        "--checkpoint",
        world / "model",
        "--images",
        big,
        "--out",
        out,
        "--device",
        "cpu",
    ]
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "indivaid_core.cli", *map(str, args)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            # a shell's background job (`pytest &`, nohup) ignores SIGINT, and the child would
            # inherit that; a terminal's Ctrl-C reaches a process that has the default action
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    deadline = time.monotonic() + 120
    while "features" not in log.read_text() and proc.poll() is None:  # embedding, locked
        assert time.monotonic() < deadline, "the build never started embedding"
        time.sleep(0.01)
    assert proc.poll() is None and lock.exists(), "the build ended before it could be signalled"
    proc.send_signal(sig)
    proc.wait(timeout=120)
    err = log.read_text()
    assert proc.returncode == status, err
    one_line(err, "nothing was half-written")
    assert not out.exists() and not lock.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(TMP_SUFFIX)]


# --- a crafted index.json ----------------------------------------------------------------------

CRAFTED = [
    ("threshold", "abc"),
    ("threshold", -1),
    ("model_dir", 123),
    ("model", None),
    ("calibration", None),
    ("backend_params", [1]),
]


@pytest.mark.parametrize(("key", "value"), CRAFTED, ids=[f"{k}={v!r}" for k, v in CRAFTED])
def test_a_crafted_index_json_is_one_line_naming_it(world, tmp_path, capsys, key, value):
    idx = tmp_path / "idx"
    shutil.copytree(world / "idx", idx)
    meta = json.loads((idx / "index.json").read_text())
    meta[key] = value
    (idx / "index.json").write_text(json.dumps(meta))
    photo = next((world / "unseen").glob("*.jpg"))
    args = ["--checkpoint", world / "model", "--device", "cpu"]
    rc, err = run_main(
        "identify", "--index", idx, photo, "--out", tmp_path / "r.csv", *args, capsys=capsys
    )
    assert rc == 2 and not (tmp_path / "r.csv").exists()
    one_line(err, str(idx / "index.json"), key)
    rc, err = run_main(
        "index", "add", idx, "--images", world / "=gal", "--recalibrate", *args, capsys=capsys
    )
    assert rc == 2
    one_line(err, str(idx / "index.json"), key)


@pytest.mark.parametrize(
    ("interrupt", "status"), [(KeyboardInterrupt, 130), (door.Terminated, 143)]
)
def test_a_signal_during_an_import_still_ends_as_the_signal(interrupt, status, capsys):
    """A signal that lands while a C extension initialises surfaces as an ImportError caused by
    it (seen once in CI-like runs: scipy's HiGHS under SIGTERM); it still ends as the signal."""
    try:
        try:
            raise interrupt
        except KeyboardInterrupt as cause:
            raise ImportError("initialization failed") from cause
    except ImportError as err:
        assert door.exit_status(err, ()) == status
    one_line(capsys.readouterr().err, "interrupted" if status == 130 else "terminated")
