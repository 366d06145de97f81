"""rank_metrics (counting path) vs its previous sort path, torchreid's evaluate_rank and a loop.

Part 1, 2,000 x 20,000 uniform random float32 distances (tie-free; every true match lies deep
in the ranking, the counting path's hardest case): medians of repeats measured side by side,
speed-up ratios and the largest differences of mAP / CMC / mINP. torchreid is optional: its
``rank.py`` (and a built ``rank_cy`` extension next to it, if any) is loaded by path because
the package's ``__init__`` imports the whole training library.

Part 2, 20,000 x 100,000 from features (dim 64, 20,000 identities: ~5 gallery images each):
the counting path and the previous sort path (``pairwise_distance`` per chunk, full sort),
each measurement in its own fresh process, run alternately. Time: wall seconds of the call.
Peak memory: the process's VmHWM after the call, reset through ``/proc/self/clear_refs``
just before it (after imports and data generation), minus VmRSS just before it; that is
resident memory, so torch's allocations count (tracemalloc would miss them). Every output
of every run (per-query arrays included) is compared exactly with the first counting run.

    .venv/bin/python benchmarks/bench_metrics.py [--skip-big] [--repeats 3] [--old-repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
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


def _status_kib(key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)[1])


def big_case(n_query: int, n_gallery: int, n_ids: int, dim: int, method: str, out: str) -> None:
    """Child process: one from-features evaluation; seconds, peak RSS growth and outputs."""
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(n_ids, dim, generator=g), dim=1)
    qid = torch.randint(0, n_ids, (n_query,), generator=g)
    gid = torch.randint(0, n_ids, (n_gallery,), generator=g)
    qf = centres[qid] + 0.1 * torch.randn(n_query, dim, generator=g)
    gf = centres[gid] + 0.1 * torch.randn(n_gallery, dim, generator=g)
    qid, gid = qid.numpy(), gid.numpy()
    rss_before = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        peak_how = "VmHWM (reset) - VmRSS"
    except OSError:
        peak_how = "ru_maxrss - VmRSS (peak not reset: may include data generation)"
    start = time.perf_counter()
    m = rank_metrics_from_features(qf, gf, qid, gid, progress=False, ranking=method)
    seconds = time.perf_counter() - start
    if peak_how.startswith("VmHWM"):
        peak = _status_kib("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    np.savez(out, **{k: np.asarray(v) for k, v in m.items()})
    info = {"seconds": seconds, "peak_mib": (peak - rss_before) / 1024, "peak_how": peak_how}
    Path(out).with_suffix(".json").write_text(json.dumps(info))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f") for k in a
    )


def big_comparison(args: argparse.Namespace) -> None:
    q, g, ids, dim = args.big
    print(
        f"{q} x {g} from features (dim {dim}, {ids} identities, ~{g / ids:.0f} gallery "
        f"images each), Euclidean, no camera filter; each run a fresh process, run alternately"
    )
    names = {"count": "counting path (new)", "sort": "sort path (previous)"}
    runs: dict = {"count": [], "sort": []}
    order = ["count", "sort"] * max(args.repeats, args.old_repeats)
    budget = {"count": args.repeats, "sort": args.old_repeats}
    with tempfile.TemporaryDirectory() as tmp:
        for i, method in enumerate(order):
            if len(runs[method]) >= budget[method]:
                continue
            out = f"{tmp}/{i}_{method}.npz"
            cmd = [sys.executable, __file__, "--big-only", method, out]
            subprocess.run([*cmd, "--big", *map(str, args.big)], check=True)
            info = json.loads(Path(out).with_suffix(".json").read_text())
            with np.load(out) as z:
                info["result"] = {k: z[k] for k in z.files}
            runs[method].append(info)
            print(
                f"  run {i + 1}: {names[method]:22s} {info['seconds']:7.2f} s "
                f"{info['peak_mib']:7.0f} MiB"
            )
    ref = runs["count"][0]["result"]
    print(f"\n{'path':22s} {'runs':>4s} {'median s':>9s} {'median peak MiB':>16s}  outputs")
    for method, rs in runs.items():
        same = all(_same(r["result"], ref) for r in rs)
        print(
            f"{names[method]:22s} {len(rs):4d} {np.median([r['seconds'] for r in rs]):9.2f} "
            f"{np.median([r['peak_mib'] for r in rs]):16.0f}  "
            f"{'identical to counting run 1' if same else 'DIFFERENT'}"
        )
    t_new = np.median([r["seconds"] for r in runs["count"]])
    t_old = np.median([r["seconds"] for r in runs["sort"]])
    print(f"speed-up {t_old / t_new:.1f}x; peak memory: {runs['count'][0]['peak_how']}")
    print(
        f"mAP {float(ref['mAP']):.6f}, R1 {ref['cmc'][0]:.6f}, mINP {float(ref['mINP']):.6f}, "
        f"valid queries {int(ref['n_valid_queries'])}, skipped {int(ref['n_skipped_queries'])}"
    )
    print(f"full float32 distance matrix (never built): {q * g * 4 / 2**30:.1f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--gallery", type=int, default=20000)
    ap.add_argument("--ids", type=int, default=500)
    ap.add_argument("--max-rank", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5, help="part 1; part 2: counting path")
    ap.add_argument("--old-repeats", type=int, default=3, help="part 2: sort path runs")
    ap.add_argument("--py-repeats", type=int, default=1, help="torchreid Python path is slow")
    ap.add_argument(
        "--big",
        type=int,
        nargs=4,
        default=[20000, 100000, 20000, 64],
        metavar=("Q", "G", "IDS", "DIM"),
    )
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--big-only", nargs=2, metavar=("METHOD", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.big_only:
        big_case(*args.big, *args.big_only)
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
    fast = {
        "ours": lambda: rank_metrics(dist, qids, gids, max_rank=k),
        "sorted": lambda: rank_metrics(dist, qids, gids, max_rank=k, ranking="sort"),
    }
    if cy is not None:
        fast["cy"] = lambda: _tr(cy.evaluate_cy, dist, qids, gids, qcams, gcams, k)
    elif rank is not None:
        print("torchreid Cython extension not built: Cython path skipped")
    # Round-robin repeats, so that the fast methods see the same machine load.
    times, results = interleaved(fast, args.repeats)
    ours = results["ours"]
    rows = [("this project (rank_metrics, CPU)", times["ours"], None)]
    rows.append(("this project, previous sort path", times["sorted"], results["sorted"]))
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
        big_comparison(args)


if __name__ == "__main__":
    main()
