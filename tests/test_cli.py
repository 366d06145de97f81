"""The `indivaid` command as a new user runs it: build an index from an export and a labelled
folder, identify a folder of photos (bad files included), grow the index, and be refused when
the model or the gallery is wrong."""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from indivaid_core import cli
from indivaid_core.identify.demo import random_export

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "indivaid_core.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def index_build(
    images: str | Path, out: str | Path, *extra: str | Path, checkpoint: str | Path
) -> tuple[str | Path, ...]:
    """`indivaid index build` arguments, spelled once for the builds the tests vary."""
    return ("index", "build", "--checkpoint", checkpoint, "--images", images, "--out", out, *extra)


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_suite, smoke_cfg):
    """A user's folder: identity folders of tiger photos, a folder of new photos, two models."""
    root = tmp_path_factory.mktemp("cli")
    table, images = tiny_suite
    gallery = root / "gallery"
    photos = root / "new_photos"
    photos.mkdir()
    for i, row in table.iterrows():
        src = images / row["path"]
        if i % 3 == 0:  # one photo per individual is "new", the rest is the labelled gallery
            shutil.copy(src, photos / f"{row['image_id']}.jpg")
        else:
            (gallery / row["identity"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, gallery / row["identity"] / src.name)
    (photos / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (photos / "notes.txt").write_text("field notes")
    labels = sorted(table["identity"].unique())
    random_export(root / "model_a", smoke_cfg.model, labels, seed=0)
    random_export(root / "model_b", smoke_cfg.model, labels, seed=1)
    return root


def test_build_then_identify_a_folder(work):
    built = run_cli(
        *index_build("gallery", "idx", "--device", "cpu", checkpoint="model_a"), cwd=work
    )
    assert built.returncode == 0, built.stderr
    report = json.loads(built.stdout)
    assert report["n_images"] == 10 and report["n_identities"] == 5
    assert report["calibration"]["method"] == "leave_identities_out"

    out = run_cli(
        "identify",
        "--index",
        "idx",
        "new_photos",
        "--top-k",
        "3",
        "--out",
        "results.csv",
        "--device",
        "cpu",
        "--json",
        cwd=work,
    )
    assert out.returncode == 0, out.stderr
    res = pd.read_csv(work / "results.csv", keep_default_na=False)
    for col in (
        "query",
        "predicted_identity",
        "score",
        "distance",
        "new_individual",
        "top3_identity",
        "top3_distance",
        "error",
    ):
        assert col in res.columns
    bad = res[res["error"] != ""]
    assert sorted(Path(q).name for q in bad["query"]) == ["corrupt.jpg", "notes.txt"]
    assert "corrupt.jpg" in out.stderr and "notes.txt" in out.stderr
    good = res[res["error"] == ""]
    assert len(good) == 5
    assert set(good["top1_identity"]) <= {p.name for p in (work / "gallery").iterdir()}
    flagged = good["new_individual"].astype(str) == "True"
    assert (good["predicted_identity"] == good["top1_identity"].where(~flagged, "new")).all()
    assert json.loads(out.stdout)["n_errors"] == 2


def test_other_checkpoint_is_refused(work):
    if not (work / "idx").exists():
        pytest.skip("needs the index built by test_build_then_identify_a_folder")
    out = run_cli(
        "identify",
        "--index",
        "idx",
        "--checkpoint",
        "model_b",
        "new_photos",
        "--out",
        "r.csv",
        "--device",
        "cpu",
        cwd=work,
    )
    assert out.returncode == 2
    assert "built with another model" in out.stderr and "weights_sha256" in out.stderr
    assert "Traceback" not in out.stderr and not (work / "r.csv").exists()


def test_add_threshold_backend_and_bad_galleries(work, capsys, tmp_path):
    def main(*args) -> tuple[int, str, str]:
        rc = cli.main([*map(str, args), "--device", "cpu"])
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    def build(images: Path, out: Path, *extra: str) -> tuple[int, str, str]:
        return main(*index_build(images, out, *extra, checkpoint=work / "model_a"))

    rc, out, err = build(
        work / "gallery", tmp_path / "hnsw", "--backend", "faiss-hnsw", "--threshold", "5"
    )
    assert rc == 0, err
    assert json.loads(out)["threshold"] == 5.0 and 0 <= json.loads(out)["recall_at_1"] <= 1

    newcomer = tmp_path / "more" / "tiger_new"
    newcomer.mkdir(parents=True)
    shutil.copy(next((work / "new_photos").glob("tiger_*.jpg")), newcomer / "a.jpg")
    rc, out, err = main("index", "add", tmp_path / "hnsw", "--images", tmp_path / "more")
    assert rc == 0, err
    assert json.loads(out)["n_vectors"] == 11

    rc, out, err = main(
        "identify",
        "--index",
        tmp_path / "hnsw",
        newcomer / "a.jpg",
        "--out",
        tmp_path / "r.csv",
        "--json",
    )
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["n_new_individual"] == 0 and summary["recall_queries"] == 1  # threshold 5 > 2
    # cli._loading paused the collector and froze the start-up; called in process, cli.main
    # leaves the caller's collector as it found it
    assert gc.isenabled() and gc.get_freeze_count() == 0
    res = pd.read_csv(tmp_path / "r.csv")
    assert res.loc[0, "predicted_identity"] == "tiger_new" and res.loc[0, "distance"] < 1e-3

    (tmp_path / "empty").mkdir()
    rc, _, err = build(tmp_path / "empty", tmp_path / "e")
    assert rc == 2 and "error:" in err and str(tmp_path / "empty") in err

    junk = tmp_path / "junk" / "someone"
    junk.mkdir(parents=True)
    (junk / "x.jpg").write_text("no")
    rc, _, err = build(tmp_path / "junk", tmp_path / "j")
    assert rc == 2 and "none of the 1 gallery images" in err and "x.jpg" in err

    rc, _, err = main("identify", "--index", tmp_path / "nope", "x.jpg")
    assert rc == 2 and "not a gallery index" in err
    assert gc.isenabled() and gc.get_freeze_count() == 0  # a refusal too


def test_train_on_own_folder_then_index_and_identify(work, tmp_path):
    """The README's "your own animals" path: folder -> indivaid train -> index -> identify."""
    run = tmp_path / "run"
    settings = ["--set", "profile=smoke", "--set", "stage2.epochs=1", "--species", "tiger"]
    done = run_cli(
        "train",
        "--images",
        work / "gallery",
        "--out",
        run,
        *settings,
        "--params",
        REPO / "params.yaml",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["individuals"] == 5 and result["stage2"]["epochs"] == 1
    assert (run / "model" / "model.json").exists()
    assert (run / "stage1" / "descriptions.safetensors").exists()
    built = run_cli(
        *index_build(work / "gallery", tmp_path / "idx", checkpoint=run / "model"), cwd=tmp_path
    )
    assert built.returncode == 0, built.stderr[-2000:]
    found = run_cli(
        "identify",
        "--index",
        tmp_path / "idx",
        work / "new_photos",
        "--out",
        tmp_path / "r.csv",
        cwd=tmp_path,
    )
    assert found.returncode == 0, found.stderr[-2000:]
    assert len(pd.read_csv(tmp_path / "r.csv")) >= 5


def test_train_refuses_bad_settings_and_folders_in_one_line(work, tmp_path, capsys):
    code = cli.main(
        [
            "train",
            "--images",
            str(work / "gallery"),
            "--out",
            str(tmp_path / "r"),
            "--params",
            str(REPO / "params.yaml"),
            "--set",
            "stage2.epochs=0",
        ]
    )
    assert code == 2 and "stage2.epochs: expected 1 or more" in capsys.readouterr().err
    code = cli.main(
        [
            "train",
            "--images",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "r"),
            "--params",
            str(REPO / "params.yaml"),
        ]
    )
    assert code == 2 and "nope" in capsys.readouterr().err
