"""Stage-1 peak memory (RSS) on the default-size suite against an 8x larger one.

Each run is `repro.training.run_stage1` in a fresh child process, which reports its own
`ru_maxrss` (before training, i.e. after imports, and at the end) and the feature-cache size.
The claim under test: peak memory does not grow with the dataset beyond the cache itself
(the cache is a memmap, so the pages it touches count in RSS).
Usage: python benchmarks/bench_stage1_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATASET = "synth-stoat"
TEXT_RUN = "meta-ctx4"


def load_avg() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


def maxrss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def child(data_root: str, work: str, epochs: int) -> None:
    """Runs in the subprocess: prepare + stage 1, then print one JSON line."""
    from indivaid_core import config as config_mod
    from indivaid_core.repro.prepare import prepare
    from indivaid_core.repro.training import run_stage1

    overrides = {
        "data.root": data_root,
        "data.work": work,
        "data.reports": str(Path(work) / "reports"),  # run_stage1 publishes curves there
        "data.metrics": str(Path(work) / "metrics"),
        "stage1.epochs": epochs,
    }
    cfg = config_mod.load("params.yaml", overrides)
    prepare(cfg, DATASET)
    before = maxrss_mb()
    result = run_stage1(cfg, DATASET, TEXT_RUN)
    caches = list((Path(work) / "cache").glob("*.npy"))
    out = {
        "rss_before_mb": before,
        "rss_peak_mb": maxrss_mb(),
        "cache_mb": sum(p.stat().st_size for p in caches) / 2**20,
        "n_images": result["n_images"],
        "n_identities": result["n_identities"],
        "wall_time_s": result["wall_time_s"],
    }
    print("RESULT " + json.dumps(out))


def run_child(data_root: Path, work: Path, epochs: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(data_root), str(work), str(epochs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"stage-1 child failed on {data_root}:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=3, metavar=("DATA_ROOT", "WORK", "EPOCHS"), help="internal")
    ap.add_argument("--quick", action="store_true", help="scale 4 instead of 8 (~1 min)")
    ap.add_argument("--scale", type=float, default=None, help="size of the large suite (8)")
    ap.add_argument("--image-size", type=int, default=64, help="generated image side, px")
    ap.add_argument("--epochs", type=int, default=1, help="stage-1 epochs per run")
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    from indivaid_core.repro.synthetic import generate_suite

    scale = args.scale or (4.0 if args.quick else 8.0)
    print(f"load average before: {load_avg()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in (1.0, scale):
            data = Path(tmp) / f"data-x{s:g}"
            t0 = time.perf_counter()
            generate_suite(data, [DATASET], scale=s, image_size=args.image_size)
            gen_s = time.perf_counter() - t0
            r = run_child(data, Path(tmp) / f"work-x{s:g}", args.epochs)
            rows.append({"scale": s, "gen_s": gen_s, **r})
    print(f"load average after: {load_avg()}\n")
    print(
        f"{DATASET}, images generated at {args.image_size}px, model at params' image_size, "
        f"{args.epochs} stage-1 epoch(s), text run {TEXT_RUN}"
    )
    head = f"{'scale':>5s} {'images':>6s} {'ids':>4s} {'cache MB':>9s} {'RSS before':>10s}"
    print(head + f" {'RSS peak MB':>11s} {'peak-before':>11s} {'train s':>7s}")
    for r in rows:
        print(
            f"{r['scale']:5g} {r['n_images']:6d} {r['n_identities']:4d} {r['cache_mb']:9.2f} "
            f"{r['rss_before_mb']:10.1f} {r['rss_peak_mb']:11.1f} "
            f"{r['rss_peak_mb'] - r['rss_before_mb']:11.1f} {r['wall_time_s']:7.1f}"
        )
    small, large = rows
    growth = large["rss_peak_mb"] - small["rss_peak_mb"]
    cache_growth = large["cache_mb"] - small["cache_mb"]
    print(
        f"\nimages ratio {large['n_images'] / small['n_images']:.1f}x; "
        f"peak RSS ratio {large['rss_peak_mb'] / small['rss_peak_mb']:.3f}x; "
        f"peak growth {growth:.1f} MB vs cache growth {cache_growth:.2f} MB"
    )


if __name__ == "__main__":
    main()
