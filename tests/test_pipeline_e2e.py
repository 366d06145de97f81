"""End to end: `dvc repro` on a temporary copy of the repo with the smoke profile."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from indivaid_core import config
from indivaid_core.repro.worktree import copy_worktree

REPO = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]


def _run(cmd: list[str], cwd: Path, timeout: int = 1200) -> str:
    # dvc stages call `python -m indivaid_core.repro.run_notebook`: this interpreter first on PATH
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


def _copy_repo(dst: Path) -> None:
    """The working tree as git sees it, plus data/."""
    copy_worktree(REPO, dst)
    spread = "reports/numerical_spread.csv"  # a committed input of the report stage
    (dst / spread).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / spread, dst / spread)
    if (REPO / "data").is_dir():
        shutil.copytree(REPO / "data", dst / "data")


@pytest.mark.slow
def test_dvc_repro_smoke_profile(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_repo(repo)
    if not (repo / "data").is_dir():
        _run([*DVC, "pull", "-q", "data.dvc"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["pipeline"]["datasets"] = ["synth-stoat"]
    params["pipeline"]["text_runs"] = {
        k: v for k, v in params["pipeline"]["text_runs"].items() if k in ("none", "meta-ctx4")
    }
    params["variants"] = {
        k: v
        for k, v in params["variants"].items()
        if v.get("text", "none") in params["pipeline"]["text_runs"]
    }
    params["pipeline"]["robustness_variants"] = ["zero_shot", "indivaid"]
    params["pipeline"].update(
        variants=["zero_shot", "indivaid"],
        ablation_datasets=[],
        ablations=[],
        robustness_datasets=["synth-stoat"],
        attention_datasets=["synth-stoat"],
    )
    params["pipeline"]["scaling"]["dataset"] = "synth-stoat"  # smoke: n4, indivaid
    params["pipeline"]["scaling"]["overrides"] = {"synth-stoat-n4": {}}  # each side run needs one
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    config.write_cells(repo / "params.yaml")  # what `indivaid profile smoke` does

    _run([*DVC, "repro", "-q"], repo)
    for variant in ("zero_shot", "indivaid"):
        m = json.loads((repo / f"metrics/eval/synth-stoat/{variant}.json").read_text())
        assert 0.0 < m["mAP"] <= 1.0 and 0.0 <= m["R1"] <= 1.0
        assert m["n_valid_queries"] > 0 and m["protocol"] == "leave_one_out"
        assert 0.0 < m["val_mAP"] <= 1.0  # the validation individuals, scored beside the test
        assert not {"timestamp", "date", "time"} & set(m)  # diff-stable: no clock readings
    assert m["n_seeds"] == 2 and set(m["per_seed"]) == {"0", "1"}  # smoke: seeds 0 and 1
    main = pd.read_csv(repo / "reports/tables/main.csv", header=[0, 1], index_col=0)
    assert list(main.index) == ["zero_shot", "indivaid"] and "ATRW" not in main.columns.levels[0]
    assert "±" in main.loc["indivaid", ("synth-stoat", "mAP")]  # mean ± sd over the 2 seeds
    sig = pd.read_csv(repo / "reports/tables/significance.csv")
    assert list(sig["comparison"]) == ["indivaid − zero_shot"]  # the one pair run here
    assert sig["verdict"].str.startswith("not decidable").all()  # 2 seeds
    sweep = pd.read_csv(repo / "reports/robustness/synth-stoat.csv")
    assert set(sweep["variant"]) == {"zero_shot", "indivaid"} and sweep["mAP"].between(0, 1).all()
    spread = pd.read_csv(repo / "reports/tables/spread.csv")
    assert list(spread["dataset"]) == ["synth-stoat", "synth-stoat-n4"]  # main, scaling cell
    assert list(spread["variant"]) == ["indivaid"] * 2 and (spread["seeds"] == 2).all()
    scaling = pd.read_csv(repo / "reports/tables/scaling.csv")  # n = 4 and the main cells
    trained = scaling[scaling["variant"] == "indivaid"]
    assert list(trained["train_individuals"]) == [4, 10] and (trained["seeds"] == 2).all()
    assert (trained["CI low"] <= trained["mAP"]).all() and (
        trained["mAP"] <= trained["CI high"]
    ).all()
    assert (repo / "reports/figures/report/scaling.png").exists()
    assert (repo / "reports/notebooks/04_evaluate/synth-stoat.ipynb").exists()

    # 08_identify's real-model path: the trained export of seed 0 identifies held-out photos
    nb = [sys.executable, "-m", "indivaid_core.repro.run_notebook", "-k", "python3"]
    out = repo / "work/identify_e2e.ipynb"
    args = ["-p", "tiny", "False", "-p", "dataset", "synth-stoat", "-p", "variant", "indivaid"]
    _run([*nb, "notebooks/08_identify.ipynb", str(out), *args], repo)
    found = pd.read_csv(repo / "work/identify/synth-stoat/indivaid/results.csv")
    assert len(found) > 0 and found["error"].isna().all()
    table = pd.read_csv(repo / "work/tables/synth-stoat.csv", dtype={"identity": str})
    test_ids = set(table.loc[table["split"].isin(["test", "query", "gallery"]), "identity"])
    assert set(found["top1_identity"].dropna().astype(str)) <= test_ids

    # an unchanged pipeline is skipped, and so is an edit to a profile that is not selected
    params["profiles"]["paper"]["seed"] += 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "up to date" in _run([*DVC, "status"], repo).lower()

    # the report and its inputs are kept as reports/<profile>/ and a rerun is checked against it
    snap = [sys.executable, "-m", "indivaid_core.repro.snapshot"]
    _run([*snap, "--wall-s", "60"], repo)
    kept = repo / "reports/smoke"
    assert "profile `smoke`" in (kept / "PROVENANCE.md").read_text()
    assert (kept / "per_query/synth-stoat/indivaid.csv").exists()
    assert (kept / "metrics/eval/synth-stoat/indivaid.json").exists()
    assert "reports/smoke: 0" in _run([*snap, "--check", "reports/smoke"], repo)
    cost = pd.read_csv(kept / "tables/cost.csv")
    cost["stage-2 wall (s)"] += 5.0  # a timing column: the machine, not the method
    cost.to_csv(kept / "tables/cost.csv", index=False)
    main = (kept / "tables/main.csv").read_text()
    rows = main.splitlines()  # two header rows, then one row per variant
    rows[2] = re.sub(r",\d+\.\d", ",12.3", rows[2], count=1)  # a method number: must be caught
    assert "\n".join(rows) != main.rstrip("\n")
    (kept / "tables/main.csv").write_text("\n".join(rows) + "\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    check = subprocess.run(
        [*snap, "--check", "reports/smoke"], cwd=repo, capture_output=True, text=True, env=env
    )
    assert check.returncode == 1
    assert "main.csv" in check.stdout and "reports/smoke: 1" in check.stdout
    assert "cost.csv" not in check.stdout

    # a stage-2 param re-runs stage 2 onward but not stage 1 (a `model` key would: stage 1
    # saves the whole model section with its checkpoint)
    params["stage2"]["margin"] = 0.25
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = _run([*DVC, "status"], repo)
    assert "stage2@synth-stoat-indivaid" in status
    assert "stage1@" not in status and "prepare" not in status
    refused = subprocess.run(snap, cwd=repo, capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "stage2@synth-stoat-indivaid" in refused.stderr

    # an edit to the selected profile's block does reach the stages it touches
    params["profiles"]["smoke"]["stage1"]["epochs"] += 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "stage1@synth-stoat" in _run([*DVC, "status"], repo)
