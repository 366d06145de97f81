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

import numpy as np
import pandas as pd

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
    """The old interval: queries resampled, seeds averaged first (blind to training variance)."""
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
