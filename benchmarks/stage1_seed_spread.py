"""How much does the stage-1 seed alone move a cell, with stage 2 held at seed 0?

The pipeline's `pipeline.seeds` reseed both stages together (seed s trains stage 1 and stage 2
at s); this separates stage 1's share. For each stage-1 seed, it trains stage 1, moves that run
to where stage-2 seed 0 reads it, trains stage 2 (seed 0) and evaluates, for the given variants
on one dataset, in its own scratch folder under --out (never the pipeline's work/, metrics/ or
reports/). The split is the committed one: the prepared table is copied, not re-split. Each row
is appended to <out>/stage1_seed_spread.jsonl as soon as it is measured.
Usage: python benchmarks/stage1_seed_spread.py --out work/s1_spread --dataset synth-tiger
       --variants clipreid indivaid --stage1-seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pandas as pd

from indivaid_core import config as config_mod
from indivaid_core.repro.evaluation import evaluate
from indivaid_core.repro.paths import Paths
from indivaid_core.repro.training import run_stage1, run_stage2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="scratch folder")
    ap.add_argument("--dataset", default="synth-tiger")
    ap.add_argument("--variants", nargs="+", default=["clipreid", "indivaid"])
    ap.add_argument("--stage1-seeds", nargs="+", type=int, default=[0, 1, 2])
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "stage1_seed_spread.jsonl"
    committed = config_mod.load("params.yaml")
    table = Paths(committed, args.dataset).table
    rows = []
    for s in args.stage1_seeds:
        run = out / f"stage1_seed{s}"
        shutil.copytree(table.parent, run / "work" / table.parent.name, dirs_exist_ok=True)
        where = {
            "data.work": str(run / "work"),
            "data.metrics": str(run / "metrics"),
            "data.reports": str(run / "reports"),
        }
        s1_cfg = config_mod.load("params.yaml", {**where, "pipeline.seeds": [s]})
        cfg = config_mod.load("params.yaml", {**where, "pipeline.seeds": [0]})
        paths = Paths(cfg, args.dataset)
        for text in sorted({cfg.variants[v].text for v in args.variants} - {"none"}):
            run_stage1(s1_cfg, args.dataset, text, resume=False)
            if s != 0:  # stage-2 seed 0 reads stage-1 seed 0's folder
                shutil.rmtree(paths.stage1(text, 0), ignore_errors=True)
                paths.stage1(text, s).rename(paths.stage1(text, 0))
        for variant in args.variants:
            run_stage2(cfg, args.dataset, variant, resume=False)
            ev = evaluate(cfg, args.dataset, variant)
            row = {
                "stage1_seed": s,
                "variant": variant,
                "mAP": ev.summary["mAP"],
                "R1": ev.summary["R1"],
            }
            rows.append(row)
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(row, flush=True)
    df = pd.DataFrame(rows).pivot(index="stage1_seed", columns="variant", values="mAP") * 100
    if {"indivaid", "clipreid"} <= set(df.columns):
        df["indivaid - clipreid"] = df["indivaid"] - df["clipreid"]
    print(f"\n{args.dataset}, stage-2 seed 0, mAP % by stage-1 seed:")
    print(df.round(1).to_string())
    print("\nmean ± sample std over stage-1 seeds:")
    print(df.agg(["mean", "std"]).round(1).to_string())


if __name__ == "__main__":
    main()
