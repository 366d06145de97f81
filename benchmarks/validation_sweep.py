"""Choose settings on the validation individuals, never on test: train a cell under each
candidate setting and score it on the dataset's `val_*` rows.

    python benchmarks/validation_sweep.py --dataset synth-tiger --variant indivaid \\
        --try "" --try "stage2.epochs=6 stage2.milestones=[5]" --out work/sweep

Each `--try` is a set of `key=value` overrides (YAML values) on params.yaml. The prepared
table is written to the scratch folder as its validation view (training rows as they are, the
validation individuals as query and gallery), so training and evaluation run the pipeline's
own code and no test row is read. Prints one row per candidate: validation mAP and R1 (mean
over `pipeline.seeds`), and the wall time of training plus evaluation.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import yaml

from indivaid_core.config import load
from indivaid_core.data.splits import validation_view
from indivaid_core.repro.evaluation import evaluate
from indivaid_core.repro.paths import Paths
from indivaid_core.repro.prepare import prepare
from indivaid_core.repro.training import run_stage2, run_text_runs
from indivaid_core.safe_io import write_csv


def overrides(text: str, out: Path) -> dict[str, object]:
    """`a.b=1 c=[2]` as dotted overrides, with the scratch folders added."""
    pairs = dict(item.split("=", 1) for item in text.split())
    values = {k: yaml.safe_load(v) for k, v in pairs.items()}
    roots = {k: str(out / k.split(".")[1]) for k in ("data.work", "data.metrics", "data.reports")}
    return {**values, **roots}


def run_candidate(params: str, dataset: str, variant: str, text: str, out: Path) -> dict:
    """Train and score one candidate in its own scratch folder."""
    shutil.rmtree(out, ignore_errors=True)
    cfg = load(params, overrides(text, out))
    table = prepare(cfg, dataset)
    write_csv(validation_view(table), Paths(cfg, dataset).table, index=False)
    start = time.perf_counter()
    run_text_runs(cfg, dataset, [cfg.variants[variant].text])
    run_stage2(cfg, dataset, variant)
    summary = evaluate(cfg, dataset, variant).summary
    wall = time.perf_counter() - start
    return {
        "try": text or "(params.yaml)",
        "val mAP": summary["mAP"],
        "val R1": summary["R1"],
        "val mAP per seed": [round(r["mAP"], 4) for r in summary["per_seed"].values()],
        "seconds": round(wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--try", dest="tries", action="append", default=[])
    ap.add_argument("--out", type=Path, default=Path("work/sweep"))
    args = ap.parse_args()
    for i, text in enumerate(args.tries or [""]):
        row = run_candidate(args.params, args.dataset, args.variant, text, args.out / str(i))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
