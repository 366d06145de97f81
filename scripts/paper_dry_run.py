"""Dry run of `profile: paper` on the CPU: the real pipeline, fake weights and fake data.

Builds a random-weight OpenAI ViT-B-16 checkpoint (TorchScript, as OpenAI ships it) and fake
trees of the nine released datasets in their released layouts, in a temporary copy of this
repository. Then it selects the paper profile with `indivaid profile paper` and runs
`dvc repro` with a dry-run override (one epoch, CPU), and checks that the report has a row for
every dataset. What it proves: the paper path runs end to end. The numbers mean nothing.

    python scripts/paper_dry_run.py            # every cell (9 datasets x 4 variants + ablations)
    python scripts/paper_dry_run.py --quick    # zero_shot and indivaid only, no ablations
    python scripts/paper_dry_run.py --keep DIR # keep the copy in DIR to browse its report
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]


def dry_run_params(path: Path, quick: bool) -> None:
    """The paper profile, cut to one epoch on the CPU; everything else as in params.yaml."""
    raw = yaml.safe_load(path.read_text())
    paper = raw["profiles"]["paper"]
    paper["device"] = "cpu"
    paper.setdefault("eval", {}).update(bootstrap=100, corruption_levels=[0.0, 1.0])
    for name in paper["pipeline"]["datasets"]:
        ds = raw["data"]["datasets"][name]
        ds["overrides"].setdefault("stage1", {})["epochs"] = 1
        ds["overrides"].setdefault("stage2", {})["epochs"] = 1
    if quick:
        paper["pipeline"].update(ablation_datasets=[])
        paper["pipeline"]["variants"] = ["zero_shot", "indivaid"]
        paper["pipeline"]["robustness_variants"] = ["zero_shot", "indivaid"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 variants a dataset, no ablations")
    ap.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    args = ap.parse_args(argv)

    from indivaid_core.repro.fake_release import (
        write_fake_openai_vit_b16,
        write_fake_release_trees,
    )
    from indivaid_core.repro.worktree import copy_worktree

    t0 = time.perf_counter()
    work = args.keep or Path(tempfile.mkdtemp(prefix="indivaid-paper-dry-"))
    if args.keep:
        work.mkdir(parents=True, exist_ok=False)
    repo = work / "repo"
    repo.mkdir()
    skip = ("reports/", "metrics/", "data.dvc", "dvc-remote/", "tests/golden/")
    copy_worktree(REPO, repo, skip)  # without data/: the fake trees go there
    weights = work / "weights"
    write_fake_openai_vit_b16(weights / "ViT-B-16.pt")
    write_fake_release_trees(repo / "data")
    dry_run_params(repo / "params.yaml", args.quick)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "INDIVAID_WEIGHTS_DIR": str(weights),  # how `pretrained: openai` finds the file
    }
    run([sys.executable, "-m", "indivaid_core.cli", "profile", "paper"], repo, env)
    run([sys.executable, "-m", "dvc", "repro"], repo, env)

    cfg = yaml.safe_load((repo / "cells.yaml").read_text())["cells"]
    main_table = pd.read_csv(repo / "reports/tables/main.csv", header=[0, 1], index_col=0)
    ran = {d for d in cfg["datasets"] if main_table.loc["indivaid", (d, "mAP")] != "not run"}
    missing = [d for d in cfg["datasets"] if d not in ran]
    wall = time.perf_counter() - t0
    print(f"paper dry run: {len(ran)} datasets in the report, {wall / 60:.1f} min in all")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if missing:
        print(f"missing from reports/tables/main.csv: {missing}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
