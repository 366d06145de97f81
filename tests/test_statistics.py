"""The two-level bootstrap on synthetic inputs whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from indivaid_core.evaluate import statistics as stats


def _diff(per_seed_effect: list[float], n_queries: int = 200, noise: float = 0.02, seed: int = 0):
    """(seeds, queries) AP differences: each seed's own effect plus small query noise."""
    rng = np.random.default_rng(seed)
    effect = np.asarray(per_seed_effect)[:, None]
    return effect + rng.normal(0, noise, size=(len(per_seed_effect), n_queries))


def test_a_real_effect_that_every_seed_shows_is_significant():
    ci = stats.two_level_bootstrap(_diff([0.10, 0.12, 0.09, 0.11, 0.10]), 4000, seed=1)
    assert ci["lo"] > 0.05 and ci["hi"] < 0.15
    assert stats.verdict(ci) == "significant gain"
    loss = stats.two_level_bootstrap(-_diff([0.10, 0.12, 0.09]), 4000, seed=1)
    assert stats.verdict(loss) == "significant loss"


def test_seed_variance_the_query_bootstrap_misses_is_not_significant():
    """Seeds disagree in sign (+8, -6, +7, -5, +6 points): the seed-averaged AP is +2 points
    with tight query noise, so the query-only interval excludes 0; it must not be called."""
    diff = _diff([0.08, -0.06, 0.07, -0.05, 0.06])
    query_only = stats.query_only_bootstrap(diff, 4000, seed=2)
    assert query_only["lo"] > 0  # the old method calls this a significant gain
    ci = stats.two_level_bootstrap(diff, 4000, seed=2)
    assert ci["lo"] < 0 < ci["hi"]
    assert stats.verdict(ci) == "not significant"


def test_no_effect_is_covered_at_about_the_nominal_rate():
    """With no true effect and seed variance, 95 % intervals should rarely exclude 0."""
    rng = np.random.default_rng(5)
    misses = 0
    for trial in range(60):
        effects = rng.normal(0, 0.04, size=5)  # seed effects around a true difference of 0
        ci = stats.two_level_bootstrap(_diff(list(effects), 100, 0.05, trial), 1000, trial)
        misses += not (ci["lo"] <= 0 <= ci["hi"])
    assert misses <= 12  # ~5 % expected; the seed level with 5 draws is known to undercover


@pytest.mark.parametrize("n_seeds", [1, 2])
def test_fewer_than_three_seeds_is_never_significant(n_seeds):
    diff = _diff([0.2] * n_seeds, noise=0.001)
    ci = stats.two_level_bootstrap(diff, 1000)
    assert ci["lo"] > 0  # the interval alone would say "gain"
    assert stats.verdict(ci).startswith("not decidable")


def test_paired_matrix_keeps_queries_every_seed_has():
    a = pd.DataFrame({"seed": [0, 0, 1, 1], "image_id": ["q1", "q2", "q1", "q2"], "ap": [1.0] * 4})
    b = pd.DataFrame({"seed": [0, 0, 1], "image_id": ["q1", "q2", "q1"], "ap": [0.5, 0.5, 0.25]})
    diff, seeds, queries = stats.paired_matrix(a, b)
    assert seeds == [0, 1] and queries == ["q1"]
    np.testing.assert_allclose(diff, [[0.5], [0.75]])
