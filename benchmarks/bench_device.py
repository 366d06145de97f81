"""The default pipeline's train and evaluation path on a GPU, side by side with the committed CPU
metrics: stage 1, stage 2 (bf16 AMP as params.yaml sets it, and once with AMP off) and
evaluation, per dataset and variant, through the same `indivaid_core.repro` stage calls the
notebooks make.

It writes under --out only (never the pipeline's work/, metrics/ or reports/), prints one row per
(dataset, variant) and appends each row to <out>/device_runs.jsonl as soon as it is measured,
so a run cut short keeps what it finished. The CPU columns come from metrics/ (the committed
`dvc repro` outputs); a GPU run is not bit-identical to the CPU one (other kernels, bf16), so
expect mAP to differ by run-to-run noise, not to match.
Usage: python benchmarks/bench_device.py --device cuda --out work/device [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
import yaml

from indivaid_core import config as config_mod
from indivaid_core.device import resolve_device
from indivaid_core.repro.evaluation import evaluate
from indivaid_core.repro.prepare import prepare
from indivaid_core.repro.training import run_stage1, run_stage2

MAIN_VARIANTS = ("zero_shot", "image_only", "clipreid", "indivaid")


def cpu_metrics(dataset: str, variant: str) -> dict:
    """The committed CPU run's eval and train JSONs (empty where absent)."""
    out = {}
    for kind in ("eval", "train"):
        path = Path("metrics") / kind / dataset / f"{variant}.json"
        out[kind] = json.loads(path.read_text()) if path.exists() else {}
    return out


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True, help="scratch folder for work/metrics/reports")
    ap.add_argument("--datasets", nargs="+", default=None, help="default: pipeline.datasets")
    ap.add_argument("--variants", nargs="+", default=list(MAIN_VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--workers", type=int, default=4, help="data.num_workers")
    ap.add_argument("--log", default=None, help="JSON-lines file (default <out>/device_runs.jsonl)")
    ap.add_argument("--profile", default=None, help="params profile (smoke: a quick check)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="params override (YAML)"
    )
    ap.add_argument("--no-amp-variant", default="indivaid", help="also run this with amp off")
    args = ap.parse_args()
    device = resolve_device(args.device)
    out = Path(args.out)
    base = {
        "device": str(device),
        "data.num_workers": args.workers,
        "pipeline.seeds": args.seeds,
        **({"profile": args.profile} if args.profile else {}),
        **{k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.set)},
        "data.metrics": str(out / "metrics"),
        "data.reports": str(out / "reports"),
    }
    cfg = config_mod.load("params.yaml", {**base, "data.work": str(out / "work")})
    if device.type == "cuda":
        print(f"torch {torch.__version__} on {torch.cuda.get_device_name(device)}")
    log = Path(args.log) if args.log else out / "device_runs.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"{'dataset':14s} {'variant':16s} {'amp':>4s} {'mAP dev':>8s} {'mAP cpu':>8s} "
        f"{'train mAP dev':>13s} {'s1 s':>6s} {'s2 s':>6s} {'s2 cpu s':>8s} "
        f"{'train img/s':>11s} {'cpu img/s':>9s} {'eval img/s':>10s} {'peak MB':>8s}"
    )
    print(header)
    for dataset in args.datasets or cfg.pipeline.datasets:
        prepare(cfg, dataset)
        texts = {cfg.variants[v].text for v in args.variants}
        s1_time = {}
        for text in sorted(texts):
            t0 = time.perf_counter()
            run_stage1(cfg, dataset, text, resume=False)
            s1_time[text] = (time.perf_counter() - t0) / len(args.seeds)  # per seed, as stage2_s
        jobs = [(v, True) for v in args.variants]
        if args.no_amp_variant in args.variants:
            jobs.append((args.no_amp_variant, False))
        for variant, amp in jobs:
            run_cfg = cfg
            if not amp:  # its own work dir, sharing the stage-1 outputs and table
                fp32 = out / "work_fp32"
                for sub in ("tables", f"stage1/{dataset}"):
                    shutil.copytree(out / "work" / sub, fp32 / sub, dirs_exist_ok=True)
                overrides = {**base, "data.work": str(fp32), "stage2.amp": False}
                overrides["data.metrics"] = str(out / "metrics_fp32")
                overrides["data.reports"] = str(out / "reports_fp32")
                run_cfg = config_mod.load("params.yaml", overrides)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            train = run_stage2(run_cfg, dataset, variant, resume=False)
            ev = evaluate(run_cfg, dataset, variant)
            cpu = cpu_metrics(dataset, variant)
            row = {
                "dataset": dataset,
                "variant": variant,
                "amp": amp,
                "seeds": args.seeds,
                "mAP": ev.summary["mAP"],
                "mAP_std": ev.summary["std"]["mAP"],
                "R1": ev.summary["R1"],
                "train_mAP": ev.summary["train_mAP"],
                "cpu_mAP": cpu["eval"].get("mAP"),
                "cpu_train_mAP": cpu["eval"].get("train_mAP"),
                "stage1_s": s1_time[cfg.variants[variant].text],
                "stage2_s": train.get("wall_time_s", 0.0),
                "cpu_stage2_s": cpu["train"].get("wall_time_s"),
                "train_images_per_s": train.get("images_per_s"),
                "cpu_train_images_per_s": cpu["train"].get("images_per_s"),
                "eval_images_per_s": ev.summary["inference_images_per_s"],
                "peak_memory_mb": train.get("peak_memory_mb"),
                "device": ev.summary["device"],
            }
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")

            print(
                f"{dataset:14s} {variant:16s} {'on' if amp else 'off':>4s} "
                f"{pct(row['mAP']):>8s} {pct(row['cpu_mAP']):>8s} {pct(row['train_mAP']):>13s} "
                f"{row['stage1_s']:6.1f} {row['stage2_s']:6.1f} {num(row['cpu_stage2_s']):>8s} "
                f"{num(row['train_images_per_s']):>11s} "
                f"{num(row['cpu_train_images_per_s']):>9s} "
                f"{row['eval_images_per_s']:10.1f} {num(row['peak_memory_mb']):>8s}",
                flush=True,
            )


if __name__ == "__main__":
    main()
