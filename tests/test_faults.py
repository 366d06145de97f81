"""Fault injection (issue 18): files that would run code, corrupt and foreign files, a rerun with
other settings, a failure in the middle of a save, and a second writer.

Every file the project reads is planted with a pickle whose ``__reduce__`` would create a marker
folder: the marker must never appear, and the error must name the file. The real loaders, CLI
and training loop are run; only the failure itself (a writer that raises) is injected.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import toy_repo
from safetensors.torch import load_file

from indivaid_core import cli, safe_io
from indivaid_core.evaluate.features import load_features, save_features
from indivaid_core.identify import api
from indivaid_core.identify import index as index_mod
from indivaid_core.identify.demo import random_export
from indivaid_core.identify.index import GalleryIndex
from indivaid_core.repro.figures.attention import attention_ranking
from indivaid_core.repro.paths import Paths
from indivaid_core.repro.train_cli import main as train_main
from indivaid_core.repro.training import run_stage1, run_stage2
from indivaid_core.safe_io import LockedError, UnreadableFileError, exclusive
from indivaid_core.train import stage1 as stage1_mod
from indivaid_core.train.engine import load_checkpoint
from indivaid_core.train.loop import StaleCheckpointWarning
from indivaid_core.train.stage2 import load_descriptions

REPO = Path(__file__).resolve().parents[1]
# the toy training repository (tests/toy_repo.py; conftest builds it once per module)
_cfg = toy_repo.toy_cfg


class Payload:
    """What an attacker plants: unpickling it calls os.makedirs(marker)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def plant(path: Path, marker: Path, kind: str = "pickle") -> None:
    """Replace `path` by a payload: a raw pickle, or the same object saved by torch.save."""
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"modules": Payload(marker)}))
    else:
        torch.save({"modules": Payload(marker), "epoch": 1}, path)


def corrupt(path: Path, how: str, marker: Path) -> None:
    if how in ("pickle", "torch.save"):
        plant(path, marker, how)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"\x00not an index\xff" * 32)
    elif how.startswith("no "):  # a JSON object that lacks a key
        data = safe_io.read_json(path, "")
        del data[how.removeprefix("no ")]
        safe_io.write_json(path, data)
    else:
        raise ValueError(how)


def one_line_error(err: str, path: Path, only: bool = True) -> str:
    """stderr ends in one `error:` line naming the file, and holds no traceback; with `only`,
    that line is all of it (training also prints progress bars and data warnings)."""
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and (len(lines) == 1 or not only), err
    assert "Traceback" not in err and str(path) in lines[-1], err
    return lines[-1]


def test_the_payload_is_live(tmp_path):
    """The planted file really runs code when unpickled: the other tests are meaningful."""
    marker = tmp_path / "pwned"
    call, args = Payload(marker).__reduce__()  # what an unpickler calls: torch.load's old
    call(*args)  # weights_only=False did exactly this; run here by hand, never unpickled
    assert marker.is_dir()


# --- an index and an export, as a user has them -----------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_suite, smoke_cfg):
    """A random export and an HNSW gallery index built from the tiny suite with the real API."""
    _, images = tiny_suite
    root = tmp_path_factory.mktemp("faults")
    cfg = smoke_cfg
    table = pd.read_csv(images / "metadata.csv", dtype={"identity": str})
    random_export(root / "model", cfg.model, sorted(table["identity"].unique()), seed=0)
    model = api.load_model(root / "model", "cpu")
    index, _ = api.build_index(model, images / "metadata.csv", backend="faiss-hnsw", threshold=1.0)
    api.save_index(index, root / "idx", model)
    return {"root": root, "photo": images / table["path"].iloc[0], "csv": images / "metadata.csv"}


@pytest.fixture
def user(world, tmp_path):
    """A private copy of the world, free to damage."""
    shutil.copytree(world["root"] / "model", tmp_path / "model")
    shutil.copytree(world["root"] / "idx", tmp_path / "idx")
    return tmp_path


CORRUPTIONS = [
    ("idx/vectors.safetensors", "truncated"),
    ("idx/vectors.safetensors", "pickle"),
    ("idx/index.json", "truncated"),
    ("idx/index.json", "no model"),
    ("idx/index.json", "pickle"),
    ("idx/gallery.csv", "empty"),
    ("idx/gallery.csv", "pickle"),
    ("idx/faiss.index", "garbage"),
    ("idx/faiss.index", "pickle"),
    ("model/model.safetensors", "truncated"),
    ("model/model.safetensors", "pickle"),
    ("model/model.json", "truncated"),
    ("model/model.json", "no backbone"),
    ("model/model.json", "pickle"),
]


@pytest.mark.parametrize(("name", "how"), CORRUPTIONS, ids=[f"{n}-{h}" for n, h in CORRUPTIONS])
def test_corrupt_index_and_model_files_give_one_line_and_exit_2(user, world, capsys, name, how):
    marker = user / "pwned"
    target = user / name
    corrupt(target, how, marker)
    args = ["identify", "--index", user / "idx", "--checkpoint", user / "model", world["photo"]]
    rc = cli.main([*map(str, args), "--out", str(user / "r.csv"), "--device", "cpu"])
    line = one_line_error(capsys.readouterr().err, target)
    assert rc == 2 and not marker.exists() and not (user / "r.csv").exists()
    assert "rebuild the index" in line or "re-export the model" in line


def test_index_add_and_build_refuse_a_corrupt_model_without_touching_the_index(user, world, capsys):
    before = load_file(str(user / "idx" / "vectors.safetensors"))["vectors"]
    plant(user / "model" / "model.safetensors", user / "pwned")
    rc = cli.main(
        ["index", "add", str(user / "idx"), "--images", str(world["csv"])]
        + ["--checkpoint", str(user / "model"), "--device", "cpu"]
    )
    one_line_error(capsys.readouterr().err, user / "model" / "model.safetensors")
    assert rc == 2 and not (user / "pwned").exists()
    assert torch.equal(before, GalleryIndex.load(user / "idx").vectors)


def test_checkpoints_are_read_without_running_code(tmp_path):
    for kind in ("pickle", "torch.save"):
        marker, path = tmp_path / f"pwned-{kind}", tmp_path / f"{kind}.pt"
        plant(path, marker, kind)
        with pytest.raises(UnreadableFileError, match="nothing in it was run") as err:
            load_checkpoint(path)
        assert str(path) in str(err.value) and "--no-resume" in str(err.value)
        assert "\n" not in str(err.value) and not marker.exists()
    safe_io.save_torch({"epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(UnreadableFileError, match="lacks"):  # plain data, but not a checkpoint
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(TypeError, match="tensors and plain data"):  # refused when written
        safe_io.save_torch({"rng": np.zeros(3)}, tmp_path / "np.pt")


def test_evaluation_features_attention_and_stage1_outputs_are_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    table = pd.DataFrame({"image_id": ["a", "b"], "identity": ["x", "y"]})
    save_features(tmp_path / "f.npz", torch.rand(2, 4), table)
    assert load_features(tmp_path / "f.npz", table)[0].shape == (2, 4)
    for name, load in [
        ("f.npz", lambda p: load_features(p)),
        (
            "attention.pt",
            lambda p: attention_ranking(p, tmp_path / "labels.json", table),
        ),
    ]:
        plant(tmp_path / name, marker)
        with pytest.raises(UnreadableFileError, match=re.escape(str(tmp_path / name))):
            load(tmp_path / name)
    s1 = tmp_path / "stage1"
    s1.mkdir()
    labels = {"x": 0, "y": 1}
    safe_io.write_json(s1 / "labels.json", {"labels": labels, "image_ids": ["a", "b"]})
    plant(s1 / "descriptions.safetensors", marker)
    with pytest.raises(UnreadableFileError, match="descriptions.safetensors.*rerun stage 1"):
        load_descriptions(s1, labels)
    plant(s1 / "labels.json", marker)
    with pytest.raises(UnreadableFileError, match="labels.json"):
        load_descriptions(s1, labels)
    assert not marker.exists()


# --- training: a planted or damaged checkpoint, a cache, a rerun with other settings ----------


def test_planted_and_truncated_checkpoints_stop_the_run_with_the_way_out(in_repo, capsys):
    cfg = _cfg()
    run_stage1(cfg, "toy", "meta-ctx4")
    out = Paths(cfg, "toy").stage1("meta-ctx4", 0)
    ckpt, marker = out / "checkpoint.pt", in_repo / "pwned"
    good = ckpt.read_bytes()
    for how in ("pickle", "torch.save", "truncated"):
        ckpt.write_bytes(good)
        corrupt(ckpt, how, marker)
        with pytest.raises(UnreadableFileError, match="delete it to train afresh"):
            run_stage1(cfg, "toy", "meta-ctx4")
        with pytest.raises(SystemExit) as stop:  # the training CLI: one line, exit status 2
            train_main(["stage1", "--dataset", "toy", "--text", "meta-ctx4"])
        line = one_line_error(capsys.readouterr().err, ckpt, only=False)
        assert stop.value.code == 2 and "--no-resume" in line and not marker.exists()
    run_stage1(cfg, "toy", "meta-ctx4", resume=False)  # the way out works
    assert load_checkpoint(ckpt)["epoch"] == cfg.stage1.epochs


def test_a_planted_feature_cache_is_recomputed_not_loaded(in_repo):
    cfg = _cfg()
    run_stage1(cfg, "toy", "meta-ctx4", resume=False)
    caches = list((Path(cfg.data.work) / "cache").glob("*.npy"))
    assert len(caches) == 1
    good = np.load(caches[0], allow_pickle=False).copy()
    marker = in_repo / "pwned"
    plant(caches[0], marker)
    with pytest.warns(UserWarning, match=rf"{caches[0].stem}\.npy: feature cache unreadable"):
        run_stage1(cfg, "toy", "meta-ctx4", resume=False)
    assert not marker.exists()
    np.testing.assert_array_equal(good, np.load(caches[0], allow_pickle=False))
    assert stage1_mod._read_cache(caches[0], len(good) + 1) is None  # another table: not used


def _history(out: Path) -> pd.DataFrame:
    return pd.read_json(out / "plots" / "history.json")


def test_a_rerun_with_other_settings_trains_afresh_and_says_why(in_repo):
    """Issue 18 case 2: after a finished stage 2, a rerun with epochs and lr changed exited 0
    with the old model, byte for byte (the finished checkpoint was 'resumed': no epoch left)."""
    cfg = _cfg()
    run_stage1(cfg, "toy", "meta-ctx4")
    run_stage2(cfg, "toy", "indivaid", resume=False)
    out = Paths(cfg, "toy").stage2("indivaid", 0)
    old_model = (out / "model.safetensors").read_bytes()
    assert len(_history(out)) == cfg.stage2.epochs == 3

    other = _cfg(**{"stage2.epochs": 2, "stage2.lr": 0.1})
    with pytest.warns(StaleCheckpointWarning) as caught:
        result = run_stage2(other, "toy", "indivaid")  # resume=True, the default
    msg = str(caught[0].message)
    assert "stage2.epochs: 3 -> 2" in msg and f"stage2.lr: {cfg.stage2.lr!r} -> 0.1" in msg
    assert "training afresh" in msg and str(out / "checkpoint.pt") in msg
    assert (out / "model.safetensors").read_bytes() != old_model
    assert result["epochs"] == 2 and len(_history(out)) == 2
    assert load_checkpoint(out / "checkpoint.pt")["run"]["settings"]["stage2"]["epochs"] == 2

    new_model = (out / "model.safetensors").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleCheckpointWarning)  # the same run: resumed, no warning
        run_stage2(other, "toy", "indivaid")
    assert (out / "model.safetensors").read_bytes() == new_model

    # what stage 2 learned from counts too: a rerun of stage 1 with other settings
    s1 = _cfg(**{"stage1.lr": 1e-3})
    with pytest.warns(StaleCheckpointWarning, match="stage1.lr"):
        run_stage1(s1, "toy", "meta-ctx4")
    with pytest.warns(StaleCheckpointWarning, match="stage1_descriptions"):
        run_stage2(_cfg(**{"stage2.epochs": 2, "stage2.lr": 0.1}), "toy", "indivaid")


# --- atomic writes ------------------------------------------------------------------------------


def _index_of(n: int, seed: int) -> GalleryIndex:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, 8)).astype(np.float32)
    gallery = pd.DataFrame({"identity": [f"id{i % 3}" for i in range(n)], "path": ["x.jpg"] * n})
    model = {"weights_sha256": "a" * 64, "backbone": "b", "dim": 8}
    return GalleryIndex(
        torch.from_numpy(v / np.linalg.norm(v, axis=1, keepdims=True)), gallery, model
    )


WRITERS = ["save_safetensors", "write_csv", "write_json"]


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_a_failure_mid_save_leaves_the_old_index_loadable(tmp_path, monkeypatch, writer, swap):
    if swap == "two renames":
        monkeypatch.setattr(safe_io, "_exchange", lambda a, b: False)
    old = _index_of(12, seed=0)
    old.save(tmp_path / "idx")
    real = getattr(index_mod, writer)

    def disk_full(*args, **kwargs):
        real(*args, **kwargs)  # part of the file may be written; then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(index_mod, writer, disk_full)
    with pytest.raises(OSError, match="No space left"):
        _index_of(24, seed=1).save(tmp_path / "idx")
    kept = GalleryIndex.load(tmp_path / "idx")
    assert torch.equal(kept.vectors, old.vectors) and len(kept.gallery) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporaries, no lock
    monkeypatch.setattr(index_mod, writer, real)
    _index_of(24, seed=1).save(tmp_path / "idx")  # a save that succeeds replaces it whole
    assert len(GalleryIndex.load(tmp_path / "idx").gallery) == 24
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    assert oct((tmp_path / "idx").stat().st_mode & 0o777) == oct(0o777 & ~safe_io._UMASK)


def test_saving_through_a_symlink_replaces_the_folder_it_points_to(tmp_path):
    _index_of(6, seed=0).save(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    _index_of(9, seed=1).save(tmp_path / "link")
    assert (tmp_path / "link").is_symlink()
    assert len(GalleryIndex.load(tmp_path / "real").gallery) == 9


def test_a_folder_that_is_not_an_index_is_not_replaced(tmp_path, world, capsys):
    notes = tmp_path / "out" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        _index_of(6, seed=0).save(notes.parent)
    rc = cli.main(
        ["index", "build", "--checkpoint", str(world["root"] / "model"), "--images"]
        + [str(world["csv"]), "--out", str(notes.parent), "--device", "cpu"]
    )
    one_line_error(capsys.readouterr().err, notes.parent)
    assert rc == 2 and notes.read_text() == "mine"


def test_atomic_files_use_unique_temporaries_and_keep_the_old_file_on_error(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_text("old")
    with safe_io.atomic_path(target) as a, safe_io.atomic_path(target) as b:
        assert a != b and a.parent == b.parent == tmp_path  # two writers never share one
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a"  # the writer that finished last wins, whole
    with pytest.raises(RuntimeError, match="killed"), safe_io.atomic_write(target) as f:
        f.write("half of a new")
        raise RuntimeError("killed")
    assert target.read_text() == "a" and sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt"
    ]
    assert target.stat().st_mode & 0o777 == 0o666 & ~safe_io._UMASK  # not mkstemp's 0600


# --- one writer at a time -------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys
    from indivaid_core.safe_io import exclusive
    with exclusive(sys.argv[1], "test"):
        print("held", flush=True)
        sys.stdin.read()
    """
)


@pytest.fixture
def holder():
    """Start a process that holds a lock until its stdin closes (or it is killed)."""
    procs = []

    def start(lock: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(lock)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:  # let it release its lock (a kill would leave the lock file behind)
        if proc.poll() is None:
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_second_index_writer_is_refused_naming_the_holder(tmp_path, world, holder, capsys):
    out = tmp_path / "idx"
    proc = holder(out.with_name(f".idx{safe_io.LOCK_NAME}"))
    rc = cli.main(
        ["index", "build", "--checkpoint", str(world["root"] / "model"), "--images"]
        + [str(world["csv"]), "--out", str(out), "--device", "cpu"]
    )
    line = one_line_error(capsys.readouterr().err, out)
    assert rc == 2 and f"process {proc.pid}" in line and not out.exists()
    with pytest.raises(LockedError, match=f"process {proc.pid}"):
        _index_of(6, seed=0).save(out)
    proc.stdin.close()  # the holder finishes: the next writer gets the lock
    proc.wait()
    _index_of(6, seed=0).save(out)
    assert len(GalleryIndex.load(out).gallery) == 6


def test_a_second_training_run_in_one_folder_is_refused(in_repo, holder):
    cfg = _cfg()
    out = Paths(cfg, "toy").stage2("image_only", 0)
    proc = holder(out.resolve() / safe_io.LOCK_NAME)
    with pytest.raises(LockedError, match=f"training run folder .*process {proc.pid}"):
        run_stage2(cfg, "toy", "image_only", resume=False)
    assert not (out / "checkpoint.pt").exists()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, holder):
    lock = tmp_path / safe_io.LOCK_NAME
    proc = holder(lock)
    with pytest.raises(LockedError, match=str(proc.pid)):
        with exclusive(lock, "the folder"):
            pass
    proc.kill()  # kill -9: its lock file stays behind, but the kernel freed the lock
    proc.wait()
    assert str(proc.pid) in lock.read_text()
    with exclusive(lock, "the folder"):
        assert f'"pid": {os.getpid()}' in lock.read_text()
        with exclusive(lock, "the folder"):  # re-entrant within one process
            pass
    assert not lock.exists()


# --- images and tables (issue 18, item 7) -----------------------------------------------------


def test_an_image_over_the_pixel_limit_names_the_file(tmp_path):
    from PIL import Image

    from indivaid_core.data import images

    path = tmp_path / "huge.png"
    Image.new("L", (200, 100)).save(path)
    old = images.MAX_PIXELS
    try:
        images.set_pixel_limit(10_000)  # 20,000 pixels > 10,000: as a 196 MP photo is > 100 MP
        with pytest.raises(images.DataError, match=r"huge\.png: 200x100 = 0\.02 MP.*max_pixels"):
            images.load_rgb(path)
    finally:
        images.set_pixel_limit(old)


def test_large_jpegs_are_decoded_at_a_reduced_scale(tmp_path):
    from PIL import Image

    from indivaid_core.data.images import draft_for, load_rgb

    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (90, 120, 60)).save(path, quality=80)
    full = load_rgb(path)
    small = load_rgb(path, draft_for((256, 128)))  # model input 256x128 -> at least 256x512
    assert full.size == (4000, 3000)
    assert small.size == (1000, 750) and small.size[0] >= 256 and small.size[1] >= 512 / 2


def test_broken_links_are_reported_not_dropped(tmp_path):
    from PIL import Image

    from indivaid_core.data.adapters import from_identity_folders
    from indivaid_core.identify.inputs import collect_files

    for who in ("a", "b"):
        (tmp_path / who).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / who / "1.jpg")
    (tmp_path / "a" / "2.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.warns(UserWarning, match=r"broken link.*a/2\.jpg"):
        df, _ = from_identity_folders(tmp_path)
    assert len(df) == 2
    _, errors = collect_files([tmp_path])
    assert any("broken link" in msg and path.endswith("2.jpg") for path, msg in errors)


def test_paths_outside_the_data_root_are_refused_unless_allowed(tmp_path):
    from PIL import Image

    from indivaid_core.data.images import DataError
    from indivaid_core.data.splits import prepare_table

    (tmp_path / "ds").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.jpg")
    rows = [("a", "../outside.jpg"), ("a", "../outside.jpg"), ("b", "../outside.jpg")]
    rows += [("b", "../outside.jpg")]
    df = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(4)],
            "identity": [r[0] for r in rows],
            "path": [r[1] for r in rows],
        }
    )
    with pytest.raises(DataError, match=r"outside the data root.*allow_outside_root"):
        prepare_table(df, "leave_one_out", root=tmp_path / "ds", check_images=False)
    out = prepare_table(
        df, "leave_one_out", root=tmp_path / "ds", check_images=False, allow_outside_root=True
    )
    assert len(out) == 4


def test_identities_named_na_or_none_are_kept(tmp_path):
    from indivaid_core.data.adapters import read_metadata_csv

    path = tmp_path / "meta.csv"
    path.write_text("image_id,identity,path,bbox\n1,NA,a.jpg,\n2,None,b.jpg,\n3,null,c.jpg,\n")
    df = read_metadata_csv(path)
    assert df["identity"].tolist() == ["NA", "None", "null"]
    assert df["bbox"].isna().all()  # other columns keep pandas' missing values


def test_all_single_image_identities_say_why_the_query_is_empty(tmp_path):
    from indivaid_core.data.images import DataError
    from indivaid_core.data.table import check_splits

    df = pd.DataFrame(
        {
            "image_id": ["1", "2", "3"],
            "identity": ["a", "b", "c"],
            "path": ["x", "y", "z"],
            "split": ["train", "gallery", "gallery"],
        }
    )
    with pytest.raises(DataError, match="every identity has a single image"):
        check_splits(df, "tiny")


def test_torch_files_are_byte_identical_across_writes(tmp_path):
    """torch.save names its archive after the file; written through a unique temp name, the
    bytes (and so every DVC hash downstream) changed on every run."""
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 3}
    safe_io.save_torch(state, tmp_path / "a.pt")
    safe_io.save_torch(state, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
