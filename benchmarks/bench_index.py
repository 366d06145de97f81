"""Gallery-search scale benchmark: exact torch vs FAISS flat / IVF / HNSW at 10^5 and 10^6.

Synthetic unit vectors at the model's evaluation dimension (lite0 `concat` = 1280 global +
256 projected = 1536, read from the model itself unless --dim is given), clustered like re-ID
features: `--per-identity` images around each identity's centre, with noise `--spread`
(uniform random vectors would be a worst case no real gallery looks like). Queries are fresh
draws around known centres. The gallery is generated as float16 (half the memory; every
backend gets the same fp16-rounded values as float32), and the exact torch backend stores fp16
as well when float32 would exceed --fp32-limit-gb.

Per backend and size: build time (one build), queries/s (median of --repeats batched
searches), memory (resident-set growth while building, Linux /proc), recall@1 against exact
search. A timing pass that takes over 10 s is not repeated. HNSW is skipped above
--hnsw-max-size: on a 2-core machine its build is minutes already at 10^5.
Run: python benchmarks/bench_index.py [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import time

import numpy as np
import pandas as pd
import torch

from indivaid_core.identify.index import ExactSearcher, make_searcher, recall_at_1


def rss_mb() -> float:
    """Current resident set size (Linux); NaN elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def model_dim(backbone: str, feature: str) -> int:
    """Evaluation-feature width of a (randomly initialised) backbone, as identify computes it."""
    from indivaid_core.evaluate.features import FEATURE_KEYS
    from indivaid_core.model import ReIDEncoder, build_clip

    enc = ReIDEncoder(build_clip(backbone, None, (96, 96)), 1)
    return sum(enc.feature_dims[k.removesuffix("_bn")] for k in FEATURE_KEYS[feature])


def clustered(
    n: int, centres: torch.Tensor, spread: float, gen: torch.Generator, chunk: int = 100_000
) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors (float16) around random centres, and their identity labels."""
    ids = torch.randint(len(centres), (n,), generator=gen)
    out = np.empty((n, centres.shape[1]), dtype=np.float16)
    scale = spread / math.sqrt(centres.shape[1])
    for s in range(0, n, chunk):
        c = centres[ids[s : s + chunk]]
        v = c + scale * torch.randn(c.shape, generator=gen)
        out[s : s + chunk] = torch.nn.functional.normalize(v, dim=1).half().numpy()
    return out, ids.numpy()


def bench(
    backend: str,
    params: dict,
    gallery: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray | None,
    repeats: int,
    long_pass_s: float = 10.0,
    add_chunk: int = 100_000,
) -> tuple[dict, np.ndarray]:
    """Build once, then time batched 1-NN searches: the median of `repeats` passes, fewer
    when the passes so far already took `long_pass_s` (one long pass is a stable timing)."""
    gc.collect()
    before = rss_mb()
    t0 = time.perf_counter()
    s = make_searcher(backend, gallery.shape[1], params)
    for i in range(0, len(gallery), add_chunk):  # chunked: never a full float32 copy at once
        s.add(gallery[i : i + add_chunk].astype(np.float32))
    build = time.perf_counter() - t0
    mem = rss_mb() - before
    times, idx = [], None
    while len(times) < repeats and sum(times) < long_pass_s:
        t0 = time.perf_counter()
        _, idx = s.search(queries, 1)
        times.append(time.perf_counter() - t0)
    row = {
        "build_s": round(build, 2),
        "queries_per_s": round(len(queries) / statistics.median(times), 1),
        "memory_mb": round(mem),
        "search_passes": len(times),
        "recall_at_1": recall_at_1(idx, truth) if truth is not None else 1.0,
    }
    del s
    gc.collect()
    return row, idx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, help="vector width (default: the backbone's)")
    ap.add_argument("--backbone", default="lite0")
    ap.add_argument("--feature", default="concat")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--per-identity", type=int, default=10)
    ap.add_argument("--spread", type=float, default=0.8)
    ap.add_argument(
        "--nlist-per-sqrt",
        type=float,
        default=0.5,
        help="IVF cells = this x sqrt(N) (assignment cost grows with nlist)",
    )
    ap.add_argument("--nprobe", type=int, default=8)
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=40)
    ap.add_argument("--ef-search", type=int, default=64)
    ap.add_argument("--ivf-train-size", type=int, default=50_000)
    ap.add_argument(
        "--hnsw-max-size",
        type=int,
        default=100_000,
        help="skip HNSW above this size (its build is the slowest by far)",
    )
    ap.add_argument(
        "--fp32-limit-gb",
        type=float,
        default=2.0,
        help="exact torch stores float16 when float32 storage would exceed this",
    )
    ap.add_argument(
        "--backends", nargs="+", default=["exact", "faiss-flat", "faiss-ivf", "faiss-hnsw"]
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    dim = args.dim or model_dim(args.backbone, args.feature)
    print(
        f"dim={dim} ({'given' if args.dim else f'{args.backbone} {args.feature}'}), "
        f"torch threads={torch.get_num_threads()}, cpus={os.cpu_count()}, "
        f"{platform.processor() or platform.machine()}"
    )
    rows = []
    for n in args.sizes:
        gen = torch.Generator().manual_seed(args.seed)
        centres = torch.nn.functional.normalize(
            torch.randn(max(1, n // args.per_identity), dim, generator=gen), dim=1
        )
        gallery, _ = clustered(n, centres, args.spread, gen)
        queries = clustered(args.queries, centres, args.spread, gen)[0].astype(np.float32)
        del centres
        fp16 = n * dim * 4 / 2**30 > args.fp32_limit_gb
        configs = {
            "exact": {"dtype": "float16" if fp16 else "float32"},
            "faiss-flat": {},
            "faiss-ivf": {
                "nlist": max(1, round(args.nlist_per_sqrt * math.sqrt(n))),
                "nprobe": args.nprobe,
                "train_size": args.ivf_train_size,
            },
            "faiss-hnsw": {
                "m": args.hnsw_m,
                "ef_construction": args.ef_construction,
                "ef_search": args.ef_search,
            },
        }
        truth = None
        print(
            f"N={n:,}: gallery {gallery.nbytes / 2**30:.2f} GiB fp16, {args.queries} queries",
            flush=True,
        )
        # Ground truth first: exact torch (exact on these fp16-valued vectors).
        for backend in sorted(args.backends, key=lambda b: b != "exact"):
            if backend == "faiss-hnsw" and n > args.hnsw_max_size:
                rows.append(
                    {
                        "N": n,
                        "backend": backend,
                        "note": f"skipped: N > --hnsw-max-size "
                        f"{args.hnsw_max_size} (build too slow for a 5-minute run)",
                    }
                )
                print(f"  {backend}: skipped", flush=True)
                continue
            res, idx = bench(backend, configs[backend], gallery, queries, truth, args.repeats)
            if truth is None:
                if backend != "exact":
                    ex = ExactSearcher(dim, dtype=torch.float16)
                    ex.add(gallery)
                    truth = ex.search(queries, 1)[1]
                    res["recall_at_1"] = recall_at_1(idx, truth)
                    del ex
                else:
                    truth = idx
            note = ", ".join(f"{k}={v}" for k, v in configs[backend].items())
            rows.append({"N": n, "backend": backend, **res, "note": note})
            print(f"  {backend}: {res}", flush=True)
        del gallery
        gc.collect()
    table = pd.DataFrame(rows)
    print()
    print(table.to_string(index=False))
    flat = table[table["backend"] == "faiss-flat"].set_index("N")["queries_per_s"]
    ex = table[table["backend"] == "exact"].set_index("N")["queries_per_s"]
    for n in flat.index.intersection(ex.index):
        print(f"N={n:,}: faiss-flat / exact torch queries/s ratio = {flat[n] / ex[n]:.2f}")


if __name__ == "__main__":
    main()
