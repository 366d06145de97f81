"""`indivaid index set-threshold` (issue 31): a threshold chosen with `identify --threshold`
kept in the index for every later run, without rebuilding it.

Real files and real processes: a gallery of four tiny synthetic tigers indexed by a random
export, photos of a fifth as never-seen animals. Nothing of the code under test is mocked.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import one_line, run_main, run_main_out, user_folder

from indivaid_core.safe_io import LOCK_NAME, TMP_SUFFIX

REPO = Path(__file__).resolve().parents[1]
UNTOUCHED = ("vectors.safetensors", "gallery.csv")
HOLDER = """
import sys
from indivaid_core.identify.index import index_lock
with index_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture(scope="module")
def user(tmp_path_factory, tiny_suite, smoke_cfg) -> Path:
    """`gal/` (4 individuals x 3 photos), `new/` (all 15 photos: the 3 of the fifth
    individual are never-seen animals), a random export `model`, and `built.index`, its
    threshold calibrated (each test changes a copy of it: :func:`fresh`)."""
    table, images = tiny_suite
    root = user_folder(tmp_path_factory.mktemp("set_threshold"), table, images, smoke_cfg)
    shutil.rmtree(root / "gal" / sorted(table["identity"].unique())[-1])
    (root / "new").mkdir()
    for rel in table["path"]:
        shutil.copy(images / rel, root / "new" / Path(rel).name)
    args = ["index", "build", "--checkpoint", "model", "--images", "gal", "--out", "built.index"]
    done = indivaid(*args, "--device", "cpu", cwd=root)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["calibration"]["method"] == "leave_identities_out"
    return root


def indivaid(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """The `indivaid` console script's entry point, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "indivaid_core.launch", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def fresh(user: Path, name: str) -> Path:
    """A copy of the calibrated index, for one test to change."""
    if not (user / name).exists():
        shutil.copytree(user / "built.index", user / name)
    return user / name


def identify(index: Path, out: str, *extra: str) -> tuple[str, pd.DataFrame]:
    """`indivaid identify --index INDEX new/ --out OUT`: the stdout, and the CSV as read."""
    done = indivaid(
        "identify", "--index", index.name, "new", "--out", out, "--no-page", "--device", "cpu",
        *extra, cwd=index.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout, pd.read_csv(index.parent / out)


def index_json(index: Path) -> dict:
    return json.loads((index / "index.json").read_text())


def test_a_threshold_tried_at_identify_is_kept_by_set_threshold(user, tiny_suite):
    table, _ = tiny_suite
    index = fresh(user, "mine.index")
    unseen = set(table.loc[table["identity"] == table["identity"].max(), "path"].map(_name))
    _, wide = identify(index, "wide.csv", "--threshold", "2.5")
    is_unseen = wide["query"].map(_name).isin(unseen)
    # Between the farthest known photo (a copy of a gallery photo) and the nearest never-seen
    # animal: every never-seen one is flagged, no known one.
    known, new = wide.loc[~is_unseen, "distance"].max(), wide.loc[is_unseen, "distance"].min()
    chosen = round(float(known + new) / 2, 3)
    assert is_unseen.sum() == 3 and known < chosen < new

    said, tried = identify(index, "tried.csv", "--threshold", str(chosen))
    assert f"to keep it: indivaid index set-threshold mine.index {chosen}" in said
    before = index_json(index)
    files = {name: (index / name).read_bytes() for name in UNTOUCHED}

    kept = indivaid("index", "set-threshold", "mine.index", str(chosen), cwd=user)
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout) == {
        "index": "mine.index",
        "threshold": chosen,
        "previous_threshold": before["threshold"],
        "previous_method": "leave_identities_out",
    }
    after = index_json(index)
    assert after["threshold"] == chosen and after["calibration"]["method"] == "manual"
    assert after["calibration"]["confidence"] == before["calibration"]["confidence"]
    rest = [k for k in before if k not in ("threshold", "calibration")]
    assert list(after) == list(before) and all(after[k] == before[k] for k in rest)
    assert files == {name: (index / name).read_bytes() for name in UNTOUCHED}
    left = [p.name for p in [*user.iterdir(), *index.iterdir()]]
    assert not [n for n in left if n.endswith(TMP_SUFFIX) or n.endswith(LOCK_NAME)], left

    # Every later identify uses it: the same answers as the run that tried it.
    said, saved = identify(index, "saved.csv")
    assert "for this run only" not in said
    pd.testing.assert_frame_equal(tried, saved)
    assert (saved["threshold"] == chosen).all()
    assert saved["new_individual"].tolist() == is_unseen.tolist()
    assert (saved.loc[is_unseen, "predicted_identity"] == "new").all()


def test_a_saved_threshold_is_hand_set_so_recalibrate_keeps_it(user, capsys):
    index = fresh(user, "hand.index")
    assert run_main("index", "set-threshold", index, "0.25", capsys=capsys)[0] == 0
    rc, err = run_main(
        "index", "add", index, "--images", user / "gal", "--recalibrate", "--device", "cpu",
        capsys=capsys,
    )  # fmt: skip
    assert rc == 2
    one_line(err, str(index), "0.25 was set by hand", "index set-threshold")
    assert index_json(index)["threshold"] == 0.25


@pytest.mark.parametrize("value", ["abc", "-0.5", "nan", "inf", "", "0.3x"])
def test_a_bad_threshold_is_one_line_and_changes_nothing(user, capsys, value):
    index = fresh(user, "bad.index")
    before = (index / "index.json").read_bytes()
    rc, err = run_main("index", "set-threshold", index, value, capsys=capsys)
    assert rc == 2
    one_line(err, "THRESHOLD", repr(value), str(index), "0 or more")
    assert (index / "index.json").read_bytes() == before


def test_not_an_index_is_one_line(tmp_path, capsys):
    typo = tmp_path / "no" / "such" / "mine.index"
    rc, err = run_main("index", "set-threshold", typo, "0.5", capsys=capsys)
    assert rc == 2
    one_line(err, str(typo), "not a gallery index")
    assert list(tmp_path.iterdir()) == []  # no folder, no lock file made for it
    rc, err = run_main("index", "add", typo, "--images", tmp_path, capsys=capsys)
    assert rc == 2  # nor by `index add`, which takes the same lock
    one_line(err, str(typo), "not a gallery index")
    assert list(tmp_path.iterdir()) == []
    foreign = {"format_version": 1, "backend": "exact"}
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "index.json").write_text(json.dumps(foreign))
    rc, err = run_main("index", "set-threshold", tmp_path / "foreign", "0.5", capsys=capsys)
    assert rc == 2
    one_line(err, str(tmp_path / "foreign" / "index.json"), "threshold")
    assert json.loads((tmp_path / "foreign" / "index.json").read_text()) == foreign


def test_an_index_another_process_is_writing_is_refused(user, capsys):
    index = fresh(user, "busy.index")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(index)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (index / "index.json").read_bytes()
        rc, err = run_main("index", "set-threshold", index, "0.4", capsys=capsys)
        assert rc == 2
        one_line(err, str(index), "in use by", f"process {holder.pid}")
        assert (index / "index.json").read_bytes() == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=120)
    # The writer is gone: the next one gets the lock.
    rc, out, err = run_main_out("index", "set-threshold", index, "0.4", capsys=capsys)
    assert rc == 0, err
    assert json.loads(out)["threshold"] == 0.4 == index_json(index)["threshold"]


def test_set_threshold_loads_no_model(user):
    """Only index.json is read and written: no open_clip, timm or torchvision is imported."""
    index = fresh(user, "light.index")
    code = (
        "import json, sys\nfrom indivaid_core import cli\n"
        f"assert cli.main(['index', 'set-threshold', {str(index)!r}, '0.5']) == 0\n"
        "stack = ('open_clip', 'timm', 'torchvision', 'matplotlib', 'sklearn', 'faiss')\n"
        "print(json.dumps([m for m in stack if m in sys.modules]))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []
    assert index_json(index)["threshold"] == 0.5


def _name(path: str) -> str:
    return Path(path).name
