"""Power of the significance table: the minimal detectable difference and the seeds it needs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from indivaid_core.evaluate import statistics as stats
from indivaid_core.repro import significance

Z = 1.959964 + 0.841621  # z_0.975 + z_0.80, from a printed normal table


def _mdd(s2_seed: float, s2_query: float, n_seeds: int, n_queries: int) -> float:
    return Z * math.sqrt(s2_seed / n_seeds + s2_query / n_queries)


def test_mdd_is_exact_for_additive_seed_and_query_effects():
    """diff = seed effect + query effect: both variance components are known exactly."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 0.03, 4), rng.normal(0.05, 0.2, 300)
    out = stats.detectable_difference(a[:, None] + b[None, :])
    assert out["s2_seed"] == pytest.approx(a.var(ddof=1))
    assert out["s2_query"] == pytest.approx(b.var(ddof=1))
    assert out["mdd"] == pytest.approx(_mdd(a.var(ddof=1), b.var(ddof=1), 4, 300), rel=1e-5)


def test_mdd_matches_the_model_and_shrinks_with_more_seeds():
    """seed sd 3 points, query sd 15 points, interaction sd 10 points: with many seeds the
    estimate is near the analytic value, and ten times the seeds detect a smaller difference."""
    sa, sb, se, n_queries = 0.03, 0.15, 0.10, 400

    def draw(n_seeds, seed):
        rng = np.random.default_rng(seed)
        return (
            rng.normal(0, sa, (n_seeds, 1))
            + rng.normal(0, sb, (1, n_queries))
            + rng.normal(0, se, (n_seeds, n_queries))
        )

    def analytic(n_seeds):  # per-seed means carry se²/Q, query means carry se²/S
        return _mdd(sa**2 + se**2 / n_queries, sb**2 + se**2 / n_seeds, n_seeds, n_queries)

    many = stats.detectable_difference(draw(300, 1))
    assert many["mdd"] == pytest.approx(analytic(300), rel=0.1)
    assert many["s2_seed"] == pytest.approx(sa**2 + se**2 / n_queries, rel=0.25)
    few, more = (stats.detectable_difference(draw(s, 2))["mdd"] for s in (4, 40))
    assert more < 0.6 * few
    assert few == pytest.approx(analytic(4), rel=0.5)  # 3 degrees of freedom: a loose check


def test_one_seed_has_no_seed_term():
    diff = np.random.default_rng(3).normal(0.1, 0.2, (1, 50))
    out = stats.detectable_difference(diff)
    assert out["s2_seed"] == 0.0
    assert out["mdd"] == pytest.approx(Z * diff.std(ddof=1) / math.sqrt(50), rel=1e-5)


@pytest.mark.parametrize(
    "target, s2_seed, s2_query, n_queries",
    [(0.03, 0.0004, 0.04, 471), (0.03, 0.0025, 0.01, 400), (0.01, 1e-4, 0.02, 5000)],
)
def test_seeds_for_is_the_smallest_count_that_reaches_the_target(
    target, s2_seed, s2_query, n_queries
):
    n = stats.seeds_for(target, s2_seed, s2_query, n_queries)
    assert n is not None and n > 1
    assert _mdd(s2_seed, s2_query, n, n_queries) <= target * (1 + 1e-6)
    assert _mdd(s2_seed, s2_query, n - 1, n_queries) > target


def test_seeds_for_says_none_when_queries_alone_exceed_the_target():
    # query term alone: 2.80 * sqrt(0.04 / 100) = 5.6 points > 3 points, whatever the seeds
    assert stats.seeds_for(0.03, 0.0001, 0.04, 100) is None
    assert stats.seeds_for(0.03, 0.0, 0.001, 471) == 1  # no seed variance: one seed suffices


def _write(root, variant, ap_by_seed, ids):
    (root / "a").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "image_id": list(ids) * len(ap_by_seed),
            "ap": np.concatenate(ap_by_seed),
            "seed": np.repeat(np.arange(len(ap_by_seed)), len(ids)),
        }
    ).to_csv(root / "a" / f"{variant}.csv", index=False)


def test_significance_table_adds_power_columns_and_zero_shot_comparisons(tmp_path):
    rng = np.random.default_rng(7)
    n_q = 60
    ids = [f"q{i:02d}" for i in range(n_q)]
    base = rng.uniform(0, 0.1, n_q)
    _write(tmp_path, "zero_shot", [base] * 3, ids)  # untrained: the same rows in every seed
    for v, gain in (("image_only", 0.2), ("clipreid", 0.25), ("indivaid", 0.3)):
        aps = [np.clip(base + gain + s + rng.normal(0, 0.02, n_q), 0, 1) for s in (0, 0.01, -0.01)]
        _write(tmp_path, v, aps, ids)
    sig = significance.significance_table(tmp_path, ["a"], 300, 0)
    assert list(sig.columns[-2:]) == [significance.MDD_COLUMN, significance.SEEDS_COLUMN]
    assert significance.SEEDS_COLUMN == "seeds for a 3-point detectable Δ"
    assert list(sig["comparison"]) == [f"{a} − {b}" for a, b in significance.COMPARISONS]
    assert list(sig["comparison"][-3:]) == [
        "image_only − zero_shot",
        "clipreid − zero_shot",
        "indivaid − zero_shot",
    ]
    # the MDD recomputed independently from the written files
    a = pd.read_csv(tmp_path / "a" / "indivaid.csv").pivot(index="seed", columns="image_id")
    b = pd.read_csv(tmp_path / "a" / "zero_shot.csv").pivot(index="seed", columns="image_id")
    d = (a - b).to_numpy()
    expected = 100 * _mdd(d.mean(axis=1).var(ddof=1), d.mean(axis=0).var(ddof=1), 3, n_q)
    row = sig.set_index("comparison").loc["indivaid − zero_shot"]
    assert row[significance.MDD_COLUMN] == pytest.approx(expected, rel=1e-5)
    assert row["verdict"] == "significant gain"
    assert sig[significance.SEEDS_COLUMN].notna().all()
    need = int(row[significance.SEEDS_COLUMN])
    assert need == stats.seeds_for(
        0.03, d.mean(axis=1).var(ddof=1), d.mean(axis=0).var(ddof=1), n_q
    )
    line = significance.significance_sentences(sig)[-1]
    assert f"detectable at 80 % power: ±{expected:.1f} points" in line
    assert f"({need} seed" in line and "would bring it to 3)." in line


def test_unreachable_and_one_seed_leave_the_seed_count_empty(tmp_path):
    rng = np.random.default_rng(1)
    ids = [f"q{i}" for i in range(20)]
    # query sd ~0.4 over 20 queries: the query term alone is ~25 points, far above 3
    _write(tmp_path, "clipreid", [rng.uniform(0, 1, 20)] * 3, ids)
    _write(tmp_path, "indivaid", [rng.uniform(0, 1, 20) for _ in range(3)], ids)
    # one seed and a tight difference: reachable by the formula, but seed variance is unseen
    one = rng.uniform(0, 0.8, 20)
    _write(tmp_path / "one", "clipreid", [one], ids)
    _write(tmp_path / "one", "indivaid", [one + 0.1 + rng.normal(0, 0.001, 20)], ids)
    for root, words in ((tmp_path, "more seeds alone would not"), (tmp_path / "one", "one seed")):
        sig = significance.significance_table(root, ["a"], 200, 0, [("indivaid", "clipreid")])
        assert pd.isna(sig[significance.SEEDS_COLUMN].iloc[0])
        assert words in significance.significance_sentences(sig)[0]
        csv = tmp_path / "sig.csv"
        sig.to_csv(csv, index=False)
        assert csv.read_text().strip().endswith(",")  # an empty cell, not "nan" or "<NA>"
    assert sig[significance.MDD_COLUMN].iloc[0] < 1  # the one-seed pair alone would say "1"
