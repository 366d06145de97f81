"""Numerical spread: the same cells, the same seed, another CPU kernel path or thread count.

Retrains stage 1 and stage 2 of each cell at the given seeds (`--seeds`, default 0) under each
setting, evaluates it, and prints the mAP beside the committed value (reports/ on this machine,
byte-identical when the setting is the default). Settings:

- `default`: nothing changed, the control (its delta must be 0);
- `avx2`: ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2 (this machine has AVX-512);
- `stage2_threads2`: stage 2 on 2 threads instead of 1;
- `stage1_threads2`: stage 1 on 2 threads instead of 1;
- `stage2_steps16`: not a kernel path but a recipe check: stage 2 at 16 steps an epoch (what
  validation preferred on the scaling study's smaller sides; keep its rows out of the table
  `snapshot --within-noise` reads).

Each setting runs in its own process (the variables must be set before torch loads), into
work/spread/<setting>/. Run from the repository root after `dvc repro`:

    python benchmarks/numerical_spread.py --datasets synth-stoat synth-tiger synth-seastar \
        --table reports/numerical_spread.csv

With every seed of the report retrained under one setting, `--verdicts SETTING` also re-makes
the significance table from that setting's per-query results and sets it beside the committed
one: which verdicts a re-run on another kernel path keeps. `--pooled SETTING ...` makes the
table once more over the committed runs and those settings' runs together, each run a seed;
`--pooled default` after `--settings default --seeds 3 4 …` adds plain extra seeds on this
kernel path. `--power-curve FILE.csv` lists each comparison over the first S pooled runs and
draws its detectable difference against S (FILE.png).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from indivaid_core.config import load as load_params
from indivaid_core.safe_io import atomic_write

SETTINGS = {
    "default": ({}, {}),  # the control: must reproduce the committed seed 0 exactly
    "avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, {}),
    "stage2_threads2": ({}, {"stage2.num_threads": 2}),
    "stage1_threads2": ({}, {"stage1.num_threads": 2}),
    "stage2_steps16": ({}, {"stage2.min_iters_per_epoch": 16}),
}
KERNEL_PATHS = ["avx2", "stage2_threads2", "stage1_threads2"]  # what --table measures
RECIPE_CHECKS = {"stage2_steps16"}  # never in the table `snapshot --within-noise` reads
TRAINED = ["image_only", "clipreid", "indivaid"]


def worker(
    setting: str, datasets: list[str], variants: list[str], seeds: list[int], out: Path
) -> None:

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
            "pipeline.seeds": seeds,
        },
    )
    for ds in datasets:
        prepare(cfg, ds)
        texts = sorted({cfg.variants[v].text for v in variants} - {"none"})
        run_text_runs(cfg, ds, texts)
        for v in variants:
            t0 = time.perf_counter()
            run_stage2(cfg, ds, v)
            per_seed = evaluate(cfg, ds, v).summary["per_seed"]
            seconds = round((time.perf_counter() - t0) / len(seeds), 1)
            for seed in seeds:
                row = {"setting": setting, "dataset": ds, "variant": v, "seed": seed}
                row |= {"mAP": 100 * per_seed[str(seed)]["mAP"], "seconds": seconds}
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(row, flush=True)


def rerun_verdicts(setting: str, datasets: list[str]) -> pd.DataFrame:
    """Each comparison made from the committed per-query rows beside the same comparison made
    from the re-run's (the same seeds; the scaling study's sides compare too)."""
    from indivaid_core.repro.significance import significance_table

    cfg = load_params("params.yaml")
    n, seed = cfg.eval.bootstrap, cfg.seed  # the report's own resampling
    rerun = Path("work/spread") / setting / "reports" / "per_query"
    for ds in datasets:  # the untrained cell is the same on every kernel path
        zero_shot = Path("reports/per_query") / ds / "zero_shot.csv"
        if zero_shot.exists():  # the scaling study's sides have none
            shutil.copy(zero_shot, rerun / ds)
    new = significance_table(rerun, datasets, n, seed).set_index(["dataset", "comparison"])
    old = significance_table("reports/per_query", datasets, n, seed)
    old = old.set_index(["dataset", "comparison"])
    cols = ["ΔmAP", "CI low", "CI high", "verdict", "per-seed ΔmAP"]
    both = old.loc[new.index, cols].join(new[cols], how="inner", suffixes=("", f" ({setting})"))
    return both.round(2).reset_index()


def pooled_per_query(settings: list[str], datasets: list[str], folder: Path) -> None:
    """Write into `folder` each cell's per-query rows over the committed runs and those of
    each re-run setting, each run a seed of its own (seed s of the k-th setting is 100 k + s).

    A kernel path or thread count sends training down another trajectory, as a seed does, so
    the runs are pooled as seeds. Same-seed runs share their start and sampling order; that
    correlation, if any, makes the pooled interval too narrow, not too wide. The `default`
    setting at seeds the report has not run adds plain extra seeds on this kernel path.
    """
    from indivaid_core.repro.tables import read_per_query

    arms = [Path("reports/per_query")]
    arms += [Path("work/spread") / s / "reports" / "per_query" for s in settings]
    for ds in datasets:
        (folder / ds).mkdir(parents=True, exist_ok=True)
        frames = {v: [] for v in TRAINED}
        committed = set(read_per_query(arms[0] / ds / f"{TRAINED[0]}.csv")["seed"])
        for k, arm in enumerate(arms):
            for v in TRAINED:
                frame = read_per_query(arm / ds / f"{v}.csv")
                if k and settings[k - 1] == "default":  # a committed seed again is a copy
                    frame = frame[~frame["seed"].isin(committed)]
                if (frame["seed"] >= 100).any():
                    raise ValueError(f"{arm / ds / v}: seeds of 100 or more clash with 100 k + s")
                frames[v].append(frame.assign(seed=100 * k + frame["seed"]))
        untrained = arms[0] / ds / "zero_shot.csv"  # the same on every path
        if untrained.exists():  # the scaling study's sides have none
            zero = read_per_query(untrained)
            zero = zero[zero["seed"] == zero["seed"].min()]
            runs = sorted(set(pd.concat(frames[TRAINED[0]])["seed"]))  # one copy per run
            frames["zero_shot"] = [zero.assign(seed=seed) for seed in runs]
        for v, parts in frames.items():
            pd.concat(parts).to_csv(folder / ds / f"{v}.csv", index=False)


def pooled_verdicts(pooled: Path, datasets: list[str]) -> pd.DataFrame:
    """The significance table over every run measured (`pooled_per_query`'s folder)."""
    from indivaid_core.repro.significance import significance_table

    return significance_table(pooled, datasets).round(2)


def power_curve(pooled: Path, datasets: list[str]) -> pd.DataFrame:
    """Each comparison of two trained variants over the first S pooled runs, S = 3 … all: its
    interval, verdict and detectable difference (from those S runs, and from all the runs'
    variance at S seeds), to see what more seeds buy as measured."""
    from indivaid_core.evaluate import statistics as stats
    from indivaid_core.repro.significance import COMPARISONS, read_pair

    rows = []
    z = stats._z_sum(0.05, 0.8)  # 95 %, 80 % power, the table's own formula
    for ds in datasets:
        for a, b in [c for c in COMPARISONS if "zero_shot" not in c]:
            pair = read_pair(pooled / ds / f"{a}.csv", pooled / ds / f"{b}.csv")
            # paired_matrix sorts the seeds: the committed ones (below 100) come first
            diff, seeds, _ = stats.paired_matrix(*pair)
            every = stats.detectable_difference(diff)  # the variance of all the runs
            for n in range(stats.MIN_SEEDS, len(seeds) + 1):
                se = math.sqrt(every["s2_seed"] / n + every["s2_query"] / diff.shape[1])
                r = stats.two_level_bootstrap(diff[:n])
                rows.append(
                    {
                        "dataset": ds,
                        "comparison": f"{a} − {b}",
                        "runs": n,
                        "ΔmAP": 100 * r["diff"],
                        "CI low": 100 * r["lo"],
                        "CI high": 100 * r["hi"],
                        "verdict": stats.verdict(r),
                        "detectable Δ": 100 * stats.detectable_difference(diff[:n])["mdd"],
                        "detectable Δ, all runs' variance": 100 * z * se,
                    }
                )
    return pd.DataFrame(rows).round(2)


def plot_power_curve(curve: pd.DataFrame, path: Path) -> None:
    """Detectable difference against runs, one line per comparison, with the 3-point aim:
    solid from the first S runs' own variance, dotted from the variance of all of them (its
    query term is the all-runs one, so its left end is a little optimistic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (ds, comp), g in curve.groupby(["dataset", "comparison"], sort=False):
        line = ax.plot(g["runs"], g["detectable Δ"], marker="o", label=f"{ds}: {comp}")[0]
        every = g["detectable Δ, all runs' variance"]
        ax.plot(g["runs"], every, linestyle=":", color=line.get_color())
    ax.axhline(3.0, color="grey", linestyle="--", linewidth=1, label="3 points (issue 30's aim)")
    ax.plot([], [], linestyle=":", color="black", label="dotted: with all the runs' variance")
    ax.set(xlabel="training runs (seeds) per cell", ylabel="detectable Δ mAP (95 %, 80 % power)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--settings",
        nargs="+",
        default=KERNEL_PATHS,
        choices=list(SETTINGS),
    )
    ap.add_argument("--datasets", nargs="+", default=["synth-stoat", "synth-tiger"])
    ap.add_argument("--variants", nargs="+", default=TRAINED)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--out", type=Path, default=Path("work/spread/spread.jsonl"))
    ap.add_argument(
        "--table",
        type=Path,
        help="write the per-cell table here (reports/numerical_spread.csv: the report's caveats "
        "and `indivaid snapshot --within-noise` read it)",
    )
    ap.add_argument(
        "--no-run", action="store_true", help="only build the table from the rows in --out"
    )
    ap.add_argument("--verdicts", choices=list(SETTINGS), help="compare verdicts (see above)")
    ap.add_argument("--verdicts-table", type=Path, help="write that comparison here")
    ap.add_argument(
        "--pooled",
        nargs="+",
        choices=list(SETTINGS),
        help="verdicts over the committed runs and "
        "these settings' runs together, each run a seed (all seeds of each must have run)",
    )
    ap.add_argument("--pooled-table", type=Path, help="write the pooled table here")
    ap.add_argument(
        "--power-curve",
        type=Path,
        help="write the comparisons over the first S pooled runs here (.csv, and a .png beside)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.datasets, args.variants, args.seeds, args.out)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for setting in [] if args.no_run else args.settings:
        env = {**os.environ, **SETTINGS[setting][0]}
        cmd = [sys.executable, __file__, "--worker", setting, "--out", str(args.out)]
        cmd += ["--datasets", *args.datasets, "--variants", *args.variants]
        cmd += ["--seeds", *map(str, args.seeds)]
        subprocess.run(cmd, env=env, check=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines()]
    kinds = {r["setting"] in RECIPE_CHECKS for r in rows}
    if len(kinds) > 1:
        sys.exit(f"{args.out}: recipe checks and kernel paths mixed; give each its own --out")
    profile = load_params("params.yaml").profile  # the report the deltas are against
    table = []
    for r in rows:  # the committed run's own seed: the same seed, the default kernel path
        r.setdefault("seed", 0)  # rows written before --seeds
        m = json.loads(Path(f"metrics/eval/{r['dataset']}/{r['variant']}.json").read_text())
        if str(r["seed"]) not in m["per_seed"]:  # an extra seed (`--pooled default`): no twin
            continue
        committed = 100 * m["per_seed"][str(r["seed"])]["mAP"]
        table.append(
            {
                **r,
                "profile": profile,
                "committed": round(committed, 2),
                "rerun": round(r["mAP"], 2),
                "delta": round(r["mAP"] - committed, 2),
            }
        )
    columns = ["profile", "setting", "dataset", "variant", "seed", "committed", "rerun", "delta"]
    frame = pd.DataFrame(table, columns=[*columns, "seconds"])
    if len(frame):
        deltas = frame["delta"].abs()
        show(frame, args.table)
        print(f"median |delta| {deltas.median():.1f}, max {deltas.max():.1f} (n={len(frame)})")
    if args.verdicts:
        show(rerun_verdicts(args.verdicts, args.datasets), args.verdicts_table)
    if args.pooled or args.power_curve:
        with tempfile.TemporaryDirectory() as tmp:  # the pooled per-query rows, made once
            pooled_per_query(args.pooled or [], args.datasets, Path(tmp))
            if args.pooled:
                show(pooled_verdicts(Path(tmp), args.datasets), args.pooled_table)
            if args.power_curve:
                curve = power_curve(Path(tmp), args.datasets)
                show(curve, args.power_curve)
                plot_power_curve(curve, args.power_curve.with_suffix(".png"))
    return 0


def show(frame: pd.DataFrame, path: Path | None) -> None:
    """Print a table, and write it whole to `path` when one is given."""
    print(frame.to_string(index=False))
    if path:
        with atomic_write(path) as f:
            frame.to_csv(f, index=False, lineterminator="\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
