"""Is variant A better than variant B? A two-level bootstrap over training seeds and queries.

Why this method. A cell's mAP varies for two reasons: which queries the test set holds, and
how training went. Training variance covers the seed, and also the last bits of the CPU
kernels, which grow through training into several mAP points. A bootstrap over queries alone
sees only the first. With one seed it called differences "significant" that reversed sign on
another machine. The two-level bootstrap follows how the numbers are made: a model is trained
(a seed), then evaluated on queries. So each resample first draws seeds with replacement, then
draws queries with replacement. The queries are shared by both variants, so the comparison
stays paired. The statistic is the mean over the drawn seeds of each seed's mAP difference on
the drawn queries. With S seeds the seed level has only a few distinct draws (10 for S = 3).
With fewer than `MIN_SEEDS` seeds it cannot see training variance at all, so such a
comparison is "not decidable", never "significant".

Written here because neither scipy's nor scikit-learn's bootstrap resamples nested levels.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import norm

MIN_SEEDS = 3


def paired_matrix(a: pd.DataFrame, b: pd.DataFrame) -> tuple[np.ndarray, list, list]:
    """AP(a) − AP(b) as a (seeds, queries) matrix over the (seed, image_id) pairs both have.

    Each frame has columns `seed`, `image_id`, `ap`. Queries missing in any seed are dropped,
    so every seed is compared on the same queries.
    """
    joined = a.merge(b, on=["seed", "image_id"], suffixes=("_a", "_b"))
    if joined.empty:
        raise ValueError("no common (seed, query) pairs to compare")
    joined["d"] = joined["ap_a"] - joined["ap_b"]
    wide = joined.pivot(index="seed", columns="image_id", values="d").dropna(axis=1)
    if wide.shape[1] == 0:
        raise ValueError("no query is evaluated in every seed")
    return wide.to_numpy(), list(wide.index), list(wide.columns)


def two_level_bootstrap(
    diff: np.ndarray, n_resamples: int = 10000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """CI of the mean difference, resampling seeds (rows) and then queries (columns) of `diff`."""
    diff = np.asarray(diff, dtype=np.float64)
    if diff.ndim != 2 or 0 in diff.shape:
        raise ValueError(f"diff must be a non-empty (seeds, queries) matrix, got {diff.shape}")
    n_seeds, n_queries = diff.shape
    rng = np.random.default_rng(seed)
    boot = np.empty(n_resamples)
    chunk = max(1, 2**22 // (n_seeds * n_queries))  # bounded memory for big test sets
    for lo in range(0, n_resamples, chunk):
        n = min(chunk, n_resamples - lo)
        q = rng.integers(0, n_queries, size=(n, n_queries))
        s = rng.integers(0, n_seeds, size=(n, n_seeds))
        per_seed = diff[:, q].mean(axis=2).T  # (n, seeds): each seed on the drawn queries
        boot[lo : lo + n] = np.take_along_axis(per_seed, s, axis=1).mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    return {
        "diff": float(diff.mean()),
        "lo": float(low),
        "hi": float(high),
        "n_seeds": n_seeds,
        "n_queries": n_queries,
    }


def query_only_bootstrap(
    diff: np.ndarray, n_resamples: int = 10000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Queries resampled, seeds averaged first: blind to training variance, shown beside the
    two-level interval so a reader sees how much of the width training adds."""
    return two_level_bootstrap(
        np.asarray(diff).mean(axis=0, keepdims=True), n_resamples, seed, level
    )


def verdict(ci: dict[str, float], min_seeds: int = MIN_SEEDS) -> str:
    """'significant gain' / 'significant loss' / 'not significant', or 'not decidable' when
    there are too few seeds to see training variance."""
    if ci["n_seeds"] < min_seeds:
        return f"not decidable ({ci['n_seeds']} seed{'s' if ci['n_seeds'] != 1 else ''})"
    if ci["lo"] > 0:
        return "significant gain"
    if ci["hi"] < 0:
        return "significant loss"
    return "not significant"


def _z_sum(alpha: float, power: float) -> float:
    """z_(1−α/2) + z_power: how many standard errors a two-sided test at `alpha` needs between
    0 and the true difference to detect it with probability `power`."""
    return float(norm.ppf(1 - alpha / 2) + norm.ppf(power))


def detectable_difference(
    diff: np.ndarray, alpha: float = 0.05, power: float = 0.8
) -> dict[str, float]:
    """Minimal detectable difference (same units as `diff`) and its two variance components.

    The variance model matches what `two_level_bootstrap` resamples, seeds and queries:
    SE² = s²_seed / S + s²_query / Q, with s²_seed the variance (ddof=1) over seeds of the
    per-seed mean differences (0 with one seed) and s²_query the variance over queries of the
    seed-averaged differences. A "not significant" verdict says little about effects below it.
    Normal approximation: with 3 seeds (2 degrees of freedom at the seed level) it is optimistic.
    """
    diff = np.asarray(diff, dtype=np.float64)
    if diff.ndim != 2 or 0 in diff.shape:
        raise ValueError(f"diff must be a non-empty (seeds, queries) matrix, got {diff.shape}")
    n_seeds, n_queries = diff.shape
    s2_seed = float(diff.mean(axis=1).var(ddof=1)) if n_seeds > 1 else 0.0
    s2_query = float(diff.mean(axis=0).var(ddof=1)) if n_queries > 1 else 0.0
    se = math.sqrt(s2_seed / n_seeds + s2_query / n_queries)
    return {"mdd": _z_sum(alpha, power) * se, "s2_seed": s2_seed, "s2_query": s2_query}


def seeds_for(
    target: float,
    s2_seed: float,
    s2_query: float,
    n_queries: int,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int | None:
    """Smallest number of seeds (same queries) whose detectable difference is ≤ `target`, or
    None when the query term alone already exceeds it: more seeds cannot get there, only more
    queries can. Tells how many seeds a comparison needs before its verdict means something."""
    room = (target / _z_sum(alpha, power)) ** 2 - s2_query / n_queries  # left for s²_seed / S
    if room < 0 or (room == 0 and s2_seed > 0):
        return None
    n = 1 if s2_seed == 0 else max(1, math.ceil(s2_seed / room))
    while n > 1 and s2_seed / (n - 1) <= room:  # guard against rounding in ceil
        n -= 1
    while s2_seed / n > room:
        n += 1
    return n
