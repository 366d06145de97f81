"""Which differences between methods hold: the two-level bootstrap over seeds and queries.

The statistics are in `evaluate/statistics.py`; this module pairs the cells' per-query files,
builds the significance table, and says it in words.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from indivaid_core.evaluate import statistics as stats
from indivaid_core.repro.tables import read_per_query

COMPARISONS = [
    ("indivaid", "clipreid"),
    ("clipreid", "image_only"),
    ("indivaid", "image_only"),
    # each trained variant against the untrained start (zero_shot repeats its rows per seed)
    ("image_only", "zero_shot"),
    ("clipreid", "zero_shot"),
    ("indivaid", "zero_shot"),
]

# the difference (mAP points) a comparison should be able to detect: the table says how many
# seeds would get its detectable difference down to this
TARGET_DETECTABLE_POINTS = 3.0
MDD_COLUMN = "detectable Δ (95 %, 80 % power)"
SEEDS_COLUMN = f"seeds for a {TARGET_DETECTABLE_POINTS:g}-point detectable Δ"

SIGNIFICANCE_COLUMNS = [
    "dataset",
    "comparison",
    "ΔmAP",
    "CI low",
    "CI high",
    "query-only CI low",
    "query-only CI high",
    "queries",
    "verdict",
    "per-seed ΔmAP",
    "seeds with that sign",
    "seeds",
    MDD_COLUMN,
    SEEDS_COLUMN,
]


def read_pair(per_query_a: str | Path, per_query_b: str | Path) -> tuple[pd.DataFrame, ...]:
    """Two cells' per-query rows, refused when a seed was evaluated for one of them only."""
    a, b = read_per_query(per_query_a), read_per_query(per_query_b)
    only = set(a["seed"]) ^ set(b["seed"])
    if only:
        raise ValueError(
            f"seeds {sorted(only)} are in only one of {per_query_a} and {per_query_b}: "
            "re-run the evaluate stage"
        )
    return a, b


def significance_table(
    per_query_dir: str | Path,
    datasets: list[str],
    n_resamples: int = 10000,
    seed: int = 0,
    comparisons: list[tuple[str, str]] = COMPARISONS,
) -> pd.DataFrame:
    """CIs (in mAP points) for each comparison and dataset that has data.

    The verdict comes from the two-level bootstrap over seeds and queries
    (evaluate/statistics.py); the query-only interval is shown beside it for reference. The
    detectable difference (95 %, 80 % power) says how large a difference the measured seed and
    query variance would let the verdict see, and how many seeds would get it down to
    `TARGET_DETECTABLE_POINTS` (empty when seeds alone cannot, or with one seed).
    """
    rows = []
    for ds in datasets:
        for a, b in comparisons:
            pa = Path(per_query_dir) / ds / f"{a}.csv"
            pb = Path(per_query_dir) / ds / f"{b}.csv"
            if not (pa.exists() and pb.exists()):
                continue
            diff, seeds, _ = stats.paired_matrix(*read_pair(pa, pb))
            r = stats.two_level_bootstrap(diff, n_resamples, seed)
            q = stats.query_only_bootstrap(diff, n_resamples, seed)
            # signs at the 0.1 points shown, so rounding noise is a tie, not a flip
            by_seed = pd.Series((100 * diff.mean(axis=1)).round(1), index=seeds)
            agree = int((np.sign(by_seed) == np.sign(round(100 * r["diff"], 1))).sum())
            mdd = stats.detectable_difference(diff)
            need = (  # one seed measures no seed variance: no count to promise from it
                stats.seeds_for(
                    TARGET_DETECTABLE_POINTS / 100, mdd["s2_seed"], mdd["s2_query"], diff.shape[1]
                )
                if len(seeds) > 1
                else None
            )
            rows.append(
                {
                    "dataset": ds,
                    "comparison": f"{a} − {b}",
                    "ΔmAP": 100 * r["diff"],
                    "CI low": 100 * r["lo"],
                    "CI high": 100 * r["hi"],
                    "query-only CI low": 100 * q["lo"],
                    "query-only CI high": 100 * q["hi"],
                    "queries": r["n_queries"],
                    "verdict": stats.verdict(r),
                    "per-seed ΔmAP": " / ".join(f"s{k} {d:+.1f}" for k, d in by_seed.items()),
                    "seeds with that sign": agree,
                    "seeds": len(by_seed),
                    MDD_COLUMN: 100 * mdd["mdd"],
                    SEEDS_COLUMN: pd.NA if need is None else need,
                }
            )
    table = pd.DataFrame(rows, columns=SIGNIFICANCE_COLUMNS)  # a header even with no pair
    return table.astype({SEEDS_COLUMN: "Int64"})  # an empty cell where seeds cannot reach it


def significance_sentences(sig: pd.DataFrame) -> list[str]:
    """The significance table in words, flattering or not, with each seed's own difference."""
    lines = []
    for _, r in sig.iterrows():
        line = (
            f"- **{r.dataset}**, {r.comparison}: {r['ΔmAP']:+.1f} mAP points "
            f"(95 % CI over seeds and queries {r['CI low']:+.1f} … {r['CI high']:+.1f}; "
            f"over queries only {r['query-only CI low']:+.1f} … {r['query-only CI high']:+.1f}; "
            f"{r.queries} queries, {r.seeds} seed{'s' if r.seeds != 1 else ''}) — {r.verdict}"
        )
        agree, n = r["seeds with that sign"], r["seeds"]
        if n > 1 and round(r["ΔmAP"], 1) != 0:
            line += f"; per seed {r['per-seed ΔmAP']}, " + (
                "the same sign in every seed" if agree == n else f"that sign in {agree} of {n}"
            )
        need, target = r[SEEDS_COLUMN], f"{TARGET_DETECTABLE_POINTS:g}"
        if n < 2:
            how_many = "seed variance unmeasured with one seed"
        elif pd.isna(need):
            how_many = f"more seeds alone would not bring it to {target}"
        else:
            how_many = f"{need} seed{'s' if need != 1 else ''} would bring it to {target}"
        line += f"; detectable at 80 % power: ±{r[MDD_COLUMN]:.1f} points ({how_many})"
        lines.append(line + ".")
    return lines
