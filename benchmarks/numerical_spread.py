"""Numerical spread: the same cells, the same seed, another CPU kernel path or thread count.

Retrains stage 1 and stage 2 of each cell at seed 0 under each setting, evaluates it, and
prints the mAP beside the committed value (reports/ on this machine, byte-identical when the
setting is the default). Settings:

- `avx2`: ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2 (this machine has AVX-512);
- `stage2_threads2`: stage 2 on 2 threads instead of 1;
- `stage1_threads2`: stage 1 on 2 threads instead of 1.

Each setting runs in its own process (the variables must be set before torch loads), into
work/spread/<setting>/. Run from the repository root after `dvc repro`:

    python benchmarks/numerical_spread.py --datasets synth-stoat synth-tiger synth-seastar \
        --table reports/numerical_spread.csv
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from indivaid_core.config import load as load_params
from indivaid_core.safe_io import atomic_write

SETTINGS = {
    "avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, {}),
    "stage2_threads2": ({}, {"stage2.num_threads": 2}),
    "stage1_threads2": ({}, {"stage1.num_threads": 2}),
}
TRAINED = ["image_only", "clipreid", "indivaid"]


def worker(setting: str, datasets: list[str], variants: list[str], out: Path) -> None:

    from indivaid_core import config
    from indivaid_core.repro.evaluation import evaluate
    from indivaid_core.repro.prepare import prepare
    from indivaid_core.repro.training import run_stage2, run_text_runs

    _, overrides = SETTINGS[setting]  # the environment was set by the parent
    work = Path("work/spread") / setting
    cfg = config.load(
        "params.yaml",
        {
            **overrides,
            "data.work": str(work),
            "data.metrics": str(work / "metrics"),
            "data.reports": str(work / "reports"),
            "pipeline.seeds": [0],
        },
    )
    for ds in datasets:
        prepare(cfg, ds)
        texts = sorted({cfg.variants[v].text for v in variants} - {"none"})
        run_text_runs(cfg, ds, texts)
        for v in variants:
            t0 = time.perf_counter()
            run_stage2(cfg, ds, v)
            m = evaluate(cfg, ds, v)
            row = {"setting": setting, "dataset": ds, "variant": v, "mAP": 100 * m.summary["mAP"]}
            row["seconds"] = round(time.perf_counter() - t0, 1)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(row, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--datasets", nargs="+", default=["synth-stoat", "synth-tiger"])
    ap.add_argument("--variants", nargs="+", default=TRAINED)
    ap.add_argument("--out", type=Path, default=Path("work/spread/spread.jsonl"))
    ap.add_argument(
        "--table",
        type=Path,
        help="write the per-cell table here (reports/numerical_spread.csv: the report's caveats "
        "and `indivaid snapshot --within-noise` read it)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.datasets, args.variants, args.out)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for setting in args.settings:
        env = {**os.environ, **SETTINGS[setting][0]}
        cmd = [sys.executable, __file__, "--worker", setting, "--out", str(args.out)]
        cmd += ["--datasets", *args.datasets, "--variants", *args.variants]
        subprocess.run(cmd, env=env, check=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines()]
    profile = load_params("params.yaml").profile  # the report the deltas are against
    table = []
    for r in rows:  # the committed run's own seed 0: the same seed, the default kernel path
        m = json.loads(Path(f"metrics/eval/{r['dataset']}/{r['variant']}.json").read_text())
        committed = 100 * m["per_seed"]["0"]["mAP"]
        table.append(
            {
                **r,
                "profile": profile,
                "seed": 0,
                "committed": round(committed, 2),
                "rerun": round(r["mAP"], 2),
                "delta": round(r["mAP"] - committed, 2),
            }
        )
    frame = pd.DataFrame(table)[
        ["profile", "setting", "dataset", "variant", "seed", "committed", "rerun", "delta"]
        + ["seconds"]
    ]
    print(frame.to_string(index=False))
    deltas = frame["delta"].abs()
    print(f"median |delta| {deltas.median():.1f} points, max {deltas.max():.1f} (n={len(frame)})")
    if args.table:
        with atomic_write(args.table) as f:
            frame.to_csv(f, index=False, lineterminator="\n")
        print(f"wrote {args.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
