"""rank_metrics vs torchreid's evaluate_rank (Python and Cython paths) and a per-query loop.

Prints medians of repeats measured side by side in one run, the speed-up ratios, the largest
differences of mAP / CMC / mINP, and the peak memory of a 20,000 x 100,000 evaluation
(run in a child process so that its peak RSS is its own). torchreid is optional: its
``rank.py`` (and a built ``rank_cy`` extension next to it, if any) is loaded by path because
the package's ``__init__`` imports the whole training library.

    .venv/bin/python benchmarks/bench_metrics.py [--skip-big] [--py-repeats 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import psutil
import torch

from indivaid_core.evaluate import rank_metrics, rank_metrics_from_features


def load_torchreid() -> tuple[object | None, object | None]:
    """(rank module, rank_cy module) of an installed torchreid, or None where unavailable."""
    spec = importlib.util.find_spec("torchreid")
    if spec is None or not spec.submodule_search_locations:
        return None, None
    base = Path(spec.submodule_search_locations[0])
    rank_py = next(
        (p for p in (base / "reid/metrics/rank.py", base / "metrics/rank.py") if p.is_file()), None
    )
    if rank_py is None:
        return None, None
    mod_spec = importlib.util.spec_from_file_location("torchreid_rank", rank_py)
    rank = importlib.util.module_from_spec(mod_spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod_spec.loader.exec_module(rank)
    cy = None
    for so in sorted((rank_py.parent / "rank_cylib").glob("rank_cy*.so")):
        cy_spec = importlib.util.spec_from_file_location("rank_cy", so)
        cy = importlib.util.module_from_spec(cy_spec)
        cy_spec.loader.exec_module(cy)
    return rank, cy


def loop_reference(dist: np.ndarray, qids: np.ndarray, gids: np.ndarray, max_rank: int) -> dict:
    """Straightforward per-query loop (stable argsort) that also gives mINP."""
    aps, inps, cmcs = [], [], []
    for i in range(dist.shape[0]):
        hits = gids[np.argsort(dist[i], kind="stable")] == qids[i]
        if not hits.any():
            continue
        pos = np.flatnonzero(hits)
        cmcs.append(np.arange(1, max_rank + 1) >= pos[0] + 1)
        aps.append(np.mean(np.arange(1, len(pos) + 1) / (pos + 1)))
        inps.append(len(pos) / (pos[-1] + 1))
    return {"mAP": float(np.mean(aps)), "cmc": np.mean(cmcs, 0), "mINP": float(np.mean(inps))}


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


def interleaved(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Median seconds and last result of each callable, run in turns."""
    times: dict = {name: [] for name in fns}
    results: dict = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {n: float(np.median(t)) for n, t in times.items()}, results


def _tr(evaluate, dist, qids, gids, qcams, gcams, max_rank) -> dict:
    cmc, mAP = evaluate(dist, qids, gids, qcams, gcams, max_rank, False)
    return {"mAP": float(mAP), "cmc": np.asarray(cmc)}


def big_case(n_query: int, n_gallery: int, n_ids: int, dim: int) -> None:
    """Child process: peak RSS growth of a chunked from-features evaluation."""
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(n_ids, dim, generator=g), dim=1)
    qid = torch.randint(0, n_ids, (n_query,), generator=g)
    gid = torch.randint(0, n_ids, (n_gallery,), generator=g)
    qf = centres[qid] + 0.1 * torch.randn(n_query, dim, generator=g)
    gf = centres[gid] + 0.1 * torch.randn(n_gallery, dim, generator=g)
    rss_before = psutil.Process().memory_info().rss  # current, not the import-time peak
    start = time.perf_counter()
    m = rank_metrics_from_features(qf, gf, qid.numpy(), gid.numpy(), progress=False)
    seconds = time.perf_counter() - start
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    full_gb = n_query * n_gallery * 4 / 1e9
    print(f"big case {n_query} x {n_gallery} (dim {dim}, {n_ids} ids), distances chunked:")
    print(f"  time {seconds:.1f} s, mAP {m['mAP']:.4f}, R1 {m['cmc'][0]:.4f}")
    print(
        f"  peak RSS above the pre-call RSS: {(peak_after - rss_before) / 2**20:.0f} MiB "
        f"(the full float32 distance matrix alone would be {full_gb:.1f} GB)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--gallery", type=int, default=20000)
    ap.add_argument("--ids", type=int, default=500)
    ap.add_argument("--max-rank", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--py-repeats", type=int, default=1, help="torchreid Python path is slow")
    ap.add_argument(
        "--big",
        type=int,
        nargs=4,
        default=[20000, 100000, 5000, 128],
        metavar=("Q", "G", "IDS", "DIM"),
    )
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--big-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.big_only:
        big_case(*args.big)
        return

    rng = np.random.default_rng(0)
    dist = rng.random((args.queries, args.gallery), dtype=np.float32)  # tie-free
    qids = rng.integers(0, args.ids, args.queries)
    gids = rng.integers(0, args.ids, args.gallery)
    # Different cameras on each side switch torchreid's same-camera filter off (our default).
    qcams, gcams = np.zeros(args.queries, dtype=np.int64), np.ones(args.gallery, dtype=np.int64)
    k = args.max_rank
    print(
        f"{args.queries} x {args.gallery} float32 distances, {args.ids} identities, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    rank, cy = load_torchreid()
    fast = {"ours": lambda: rank_metrics(dist, qids, gids, max_rank=k)}
    if cy is not None:
        fast["cy"] = lambda: _tr(cy.evaluate_cy, dist, qids, gids, qcams, gcams, k)
    elif rank is not None:
        print("torchreid Cython extension not built: Cython path skipped")
    # Round-robin repeats, so that both fast methods see the same machine load.
    times, results = interleaved(fast, args.repeats)
    ours = results["ours"]
    rows = [("this project (rank_metrics, CPU)", times["ours"], None)]
    t_loop, loop = median_time(lambda: loop_reference(dist, qids, gids, k), 1)
    rows.append(("per-query numpy loop (reference)", t_loop, loop))
    if rank is None:
        print("torchreid not installed: only the loop reference is compared")
    else:
        t_py, py = median_time(
            lambda: _tr(rank.evaluate_py, dist, qids, gids, qcams, gcams, k), args.py_repeats
        )
        rows.append(("torchreid evaluate_rank, Python path", t_py, py))
    if "cy" in results:
        rows.append(("torchreid evaluate_rank, Cython path", times["cy"], results["cy"]))
    t_ours = times["ours"]

    print(
        f"\n{'method':40s} {'median s':>9s} {'ours x faster':>13s} "
        f"{'|dmAP|':>9s} {'max|dCMC|':>9s} {'|dmINP|':>9s}"
    )
    for name, t, res in rows:
        if res is None:
            diffs = ("", "", "")
        else:
            d_minp = f"{abs(res['mINP'] - ours['mINP']):9.2e}" if "mINP" in res else "      n/a"
            diffs = (
                f"{abs(res['mAP'] - ours['mAP']):9.2e}",
                f"{np.abs(np.asarray(res['cmc']) - ours['cmc']).max():9.2e}",
                d_minp,
            )
        print(
            f"{name:40s} {t:9.3f} {t / t_ours:13.1f} {diffs[0]:>9s} {diffs[1]:>9s} {diffs[2]:>9s}"
        )
    print(f"mAP {ours['mAP']:.6f}, R1 {ours['cmc'][0]:.6f}, mINP {ours['mINP']:.6f}")

    if not args.skip_big:
        print()
        cmd = [sys.executable, __file__, "--big-only", "--big", *map(str, args.big)]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
