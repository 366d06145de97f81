"""Numerical spread: the same cells, the same seed, another CPU kernel path or thread count.

Retrains stage 1 and stage 2 of each cell at seed 0 under each setting, evaluates it, and
prints the mAP beside the committed value (reports/ on this machine, byte-identical when the
setting is the default). Settings:

- `avx2`: ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2 (this machine has AVX-512);
- `threads1`: stage 2 on 1 thread instead of 2;
- `stage1_threads2`: stage 1 on 2 threads instead of 1.

Each setting runs in its own process (the variables must be set before torch loads), into
work/spread/<setting>/. Run from the repository root after `dvc repro`:

    python benchmarks/numerical_spread.py --datasets synth-stoat synth-tiger synth-seastar
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {
    "avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, {}),
    "threads1": ({"INDIVAID_STAGE2_THREADS": "1"}, {}),
    "stage1_threads2": ({}, {"stage1.num_threads": 2}),
}
TRAINED = ["image_only", "clipreid", "indivaid"]


def worker(setting: str, datasets: list[str], variants: list[str], out: Path) -> None:
    import torch

    from indivaid_core import config, pipeline

    env, overrides = SETTINGS[setting]
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
    if "INDIVAID_STAGE2_THREADS" in env:
        torch.set_num_threads(int(env["INDIVAID_STAGE2_THREADS"]))
    for ds in datasets:
        pipeline.prepare(cfg, ds)
        texts = sorted({cfg.variants[v].text for v in variants} - {"none"})
        pipeline.run_text_runs(cfg, ds, texts)
        for v in variants:
            t0 = time.perf_counter()
            pipeline.run_stage2(cfg, ds, v)
            m = pipeline.evaluate(cfg, ds, v)
            row = {"setting": setting, "dataset": ds, "variant": v, "mAP": 100 * m["mAP"]}
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
    committed = {
        (r["dataset"], r["variant"]): 100
        * json.loads(Path(f"metrics/eval/{r['dataset']}/{r['variant']}.json").read_text())["mAP"]
        for r in rows
    }
    print(
        f"{'setting':16} {'dataset':14} {'variant':11} {'committed':>9} {'rerun':>7} {'delta':>7}"
    )
    for r in rows:
        c = committed[r["dataset"], r["variant"]]
        d = r["mAP"] - c
        cell = f"{r['setting']:16} {r['dataset']:14} {r['variant']:11}"
        print(f"{cell} {c:9.1f} {r['mAP']:7.1f} {d:+7.1f}")
    deltas = sorted(abs(r["mAP"] - committed[r["dataset"], r["variant"]]) for r in rows)
    median = deltas[len(deltas) // 2]
    print(f"median |delta| {median:.1f} points, max {deltas[-1]:.1f} (n={len(deltas)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
