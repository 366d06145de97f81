"""The `indivaid` command at its door, second pass (issue 32): diverged runs, crafted exports,
the delegated commands, settings that a variant's text run would override, caches keyed on
content, readers during an index save, and the input rules every command shares.

Real files and real processes throughout; nothing of the code under test is mocked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line, run_main, user_folder
from safetensors.torch import load_file, save_file

from indivaid_core import cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def user(tmp_path_factory, tiny_suite, smoke_cfg) -> Path:
    """A user's folder: `gal/<identity>/*.jpg` (3 photos each) and a random export `model`."""
    return user_folder(tmp_path_factory.mktemp("door2"), *tiny_suite, smoke_cfg)


def train(user: Path, out: Path, *extra: str | Path) -> list[str | Path]:
    return ["train", "--images", user / "gal", "--out", out, "--set", "profile=smoke", *extra]


# --- bug 14: a diverged stage 1 is named as such -------------------------------------------------


@pytest.fixture(scope="module")
def stage1_run(user, tmp_path_factory) -> Path:
    """A finished stage-1 run of the user's folder (a few seconds on the smoke profile)."""
    out = tmp_path_factory.mktemp("s1") / "run"
    assert cli.main([str(a) for a in train(user, out, "--stage", "stage1")]) == 0
    return out


def test_stage1_refuses_to_write_non_finite_descriptions(user, stage1_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(stage1_run, out)
    (out / "stage1" / "descriptions.safetensors").unlink()
    ckpt_path = out / "stage1" / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    for value in ckpt["modules"]["generator"].values():  # the weights of a diverged update
        if value.is_floating_point():
            value.fill_(float("nan"))
    torch.save(ckpt, ckpt_path)  # same settings: the rerun resumes the finished run
    rc, err = run_main(*train(user, out, "--stage", "stage1"), capsys=capsys)
    assert rc == 2
    one_line(err, "stage 1", "stage1.lr=", "NaN")
    assert not (out / "stage1" / "descriptions.safetensors").exists()


def test_stage2_names_the_stage1_folder_for_nan_descriptions(user, stage1_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(stage1_run, out)
    path = out / "stage1" / "descriptions.safetensors"
    desc = load_file(path)
    desc["h"][0, 0] = float("nan")
    save_file(desc, path)
    rc, err = run_main(*train(user, out, "--stage", "stage2"), capsys=capsys)
    assert rc == 2
    one_line(err, str(out / "stage1"), "NaN", "stage1.lr")
    assert not (out / "model" / "model.json").exists()


# --- bug 16: a crafted model.json ----------------------------------------------------------------

CRAFTED_SPEC = [
    ("image_size", [32]),
    ("image_size", [20000, 20000]),
    ("image_size", ["a", "b"]),
    ("image_size", [64, 64]),  # in range, but not the size the weights were made for
    ("num_classes", 1e13),
    ("num_classes", 10**13),
    ("num_classes", "5"),
    ("num_classes", True),
    ("backbone", 123),
    ("backbone", "no-such-net"),
    ("stride", "x"),
    ("sie_coef", -1),
    ("camera_map", [1]),
    ("mean", [0.5, 0.5]),
    ("std", [0, 0, 0]),
    ("eval_feature", "everything"),
]


@pytest.mark.parametrize(
    ("key", "value"), CRAFTED_SPEC, ids=[f"{k}={v!r}" for k, v in CRAFTED_SPEC]
)
def test_a_crafted_model_json_is_one_line_naming_it(user, tmp_path, capsys, key, value):
    model = tmp_path / "model"
    shutil.copytree(user / "model", model)
    spec = json.loads((model / "model.json").read_text())
    spec[key] = value
    (model / "model.json").write_text(json.dumps(spec))
    out = tmp_path / "idx"
    rc, err = run_main(
        *("index", "build", "--checkpoint", model, "--images", user / "gal", "--out", out),
        *("--threshold", "1", "--device", "cpu"),
        capsys=capsys,
    )
    assert rc == 2 and not out.exists()
    one_line(err, "model.json", *([key] if key != "image_size" or value != [64, 64] else []))


# --- bug 17: the delegated commands keep the contract -------------------------------------------

DELEGATED_BAD = [
    (["synth", "--image-size", "0"], "--image-size 0"),
    (["synth", "--image-size", "-5"], "--image-size -5"),
    (["synth", "--scale", "-1"], "--scale -1"),
    (["synth", "--scale", "nan"], "--scale nan"),
    (["synth", "--jpeg-quality", "0"], "--jpeg-quality 0"),
    (["synth", "--jpeg-quality", "96"], "--jpeg-quality 96"),
    (["synth", "--seed", "-1"], "--seed -1"),
    (["snapshot", "--check", "reports"], "params.yaml"),  # run where there is no params.yaml
    (["snapshot", "--check", "no-such-snapshot"], "--check no-such-snapshot"),
    (["snapshot", "--check", "reports", "--tol", "nan"], "--tol nan"),
]


@pytest.mark.parametrize(
    ("argv", "named"), DELEGATED_BAD, ids=[" ".join(a) for a, _ in DELEGATED_BAD]
)
def test_delegated_commands_refuse_bad_input_in_one_line(tmp_path, argv, named):
    (tmp_path / "reports").mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "indivaid_core.cli",
            *argv,
            *(["--out", "s"] if argv[0] == "synth" else []),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    one_line(done.stderr, named)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]  # nothing generated


# --- bug 2: --set wins over the variant's text run ----------------------------------------------


def test_explicit_set_values_win_over_the_variants_text_run(user, tmp_path, capsys):
    out = tmp_path / "run"
    args = ("--stage", "stage1", "--set", "model.n_ctx=3", "--set", "model.meta_net=false")
    rc, err = run_main(*train(user, out, *args), capsys=capsys)
    assert rc == 0, err
    learned = load_file(out / "stage1" / "text_learner.safetensors")
    assert learned["prompt_learner.ctx"].shape[1] == 3
    assert not [k for k in learned if "meta" in k]


def test_a_prompt_longer_than_the_text_context_is_one_line(user, tmp_path, capsys):
    out = tmp_path / "run"
    rc, err = run_main(*train(user, out, "--set", "model.n_ctx=100"), capsys=capsys)
    assert rc == 2 and not (out / "stage1").exists()
    one_line(err, "model.n_ctx: 100", "--species")


# --- bugs 1 and 3: runs keyed on content; one run per folder ------------------------------------


def swap_photo_contents(gal: Path) -> None:
    """Replace every photo by another individual's, keeping every file name."""
    photos = sorted(gal.glob("*/*.jpg"))
    data = [p.read_bytes() for p in photos]
    for photo, other in zip(photos, data[3:] + data[:3], strict=True):
        photo.write_bytes(other)


def test_replaced_photos_under_the_same_names_retrain(user, tmp_path, capsys):
    gal, out = tmp_path / "gal", tmp_path / "run"
    shutil.copytree(user / "gal", gal)
    args = ["train", "--images", gal, "--out", out, "--set", "profile=smoke", "--stage", "stage1"]
    assert run_main(*args, capsys=capsys)[0] == 0
    before = load_file(out / "stage1" / "descriptions.safetensors")
    swap_photo_contents(gal)
    rc, err = run_main(*args, capsys=capsys)
    assert rc == 0 and "not resuming" in err and "files" in err, err
    after = load_file(out / "stage1" / "descriptions.safetensors")
    assert not torch.equal(before["g"], after["g"])
    assert len(list((out / "cache").glob("*.npy"))) == 2  # the features were computed again
    rc, err = run_main(*args, "--no-resume", capsys=capsys)
    assert rc == 0 and torch.equal(
        after["g"], load_file(out / "stage1" / "descriptions.safetensors")["g"]
    )


def test_a_second_train_to_a_running_folder_is_refused(user, tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "indivaid_core.cli", *map(str, train(user, out))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = out / ".indivaid.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.poll() is None, "the first run ended before the second could start"
    rc, err = run_main(*train(user, out, "--set", "stage1.epochs=3"), capsys=capsys)
    _, first_err = first.communicate(timeout=300)
    assert rc == 2
    one_line(err, str(out))
    assert first.returncode == 0, first_err
    metrics = json.loads((out / "stage1" / "metrics.json").read_text())
    assert metrics["epochs"] == 2  # the first run's stage 1 (smoke: 2 epochs), not the second's


# --- bug 4: a reader never sees a half-swapped index --------------------------------------------

WRITER = """
import sys, time
from indivaid_core.identify.index import GalleryIndex
a, b = GalleryIndex.load(sys.argv[1]), GalleryIndex.load(sys.argv[2])
end = time.monotonic() + float(sys.argv[4])
while time.monotonic() < end:
    for index in (a, b):
        index.save(sys.argv[3])
"""
READER = """
import sys, time
from indivaid_core.identify.index import GalleryIndex
end, loads, bad = time.monotonic() + float(sys.argv[3]), 0, []
while time.monotonic() < end:
    try:
        index = GalleryIndex.load(sys.argv[1])
        sizes = f"{len(index.gallery)},{len(index.vectors)},{index.gallery.identity.nunique()}"
        if sizes not in sys.argv[2].split("|"):
            bad.append(f"mixed: {sizes}")
    except Exception as err:
        bad.append(f"{type(err).__name__}: {err}")
    loads += 1
print(loads, len(bad), *bad[:3], sep="\\n")
"""


def build_index(user: Path, gal: Path, out: Path) -> None:
    args = ["index", "build", "--checkpoint", user / "model", "--images", gal, "--out", out]
    assert cli.main([str(a) for a in [*args, "--threshold", "1", "--device", "cpu"]]) == 0


def test_readers_during_repeated_saves_get_the_old_index_or_the_new(user, tmp_path):
    small = tmp_path / "small"
    for ident in sorted(p.name for p in (user / "gal").iterdir())[:2]:
        shutil.copytree(user / "gal" / ident, small / ident)
    build_index(user, user / "gal", tmp_path / "a")  # 5 individuals x 3 photos
    build_index(user, small, tmp_path / "b")  # 2 x 3
    target = tmp_path / "idx"
    shutil.copytree(tmp_path / "a", target)
    seconds = "6"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, tmp_path / "a", tmp_path / "b", target, seconds]
    )
    reader = subprocess.run(
        [sys.executable, "-c", READER, target, "15,15,5|6,6,2", seconds],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert writer.wait(timeout=120) == 0
    loads, n_bad, *examples = reader.stdout.split("\n")
    assert int(loads) > 20, reader.stdout + reader.stderr
    assert int(n_bad) == 0, examples
