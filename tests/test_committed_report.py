"""The committed report agrees with the per-query CSVs it was computed from.

Recomputed here with numpy and pandas only, following the recipe results.md states, so a
report/table bug cannot hide behind the same code path. Covers `reports/` and any profile
snapshot under it (`reports/<profile>/`, see indivaid_core.repro.snapshot)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from indivaid_core.config import load

REPO = Path(__file__).resolve().parents[1]
REPORTS = [
    d
    for d in [REPO / "reports", *(p.parent for p in sorted(REPO.glob("reports/*/PROVENANCE.md")))]
    if (d / "tables" / "significance.csv").exists()
]


def _ap(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image_id": str}).dropna(subset=["ap"])


@pytest.mark.skipif(not REPORTS, reason="no committed report in this checkout")
@pytest.mark.parametrize("reports", REPORTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_significance_table_is_recomputed_from_the_per_query_csvs(reports):
    """Each row against a plain re-implementation of the two-level bootstrap: per resample,
    draw queries, then seeds, with the same generator calls as evaluate/statistics.py."""
    n_resamples = load(REPO / "params.yaml").eval.bootstrap
    sig = pd.read_csv(reports / "tables" / "significance.csv")
    assert len(sig) > 0
    for _, row in sig.iterrows():
        a, b = (v.strip() for v in row["comparison"].split("−"))
        pa, pb = (_ap(reports / "per_query" / row["dataset"] / f"{v}.csv") for v in (a, b))
        j = pa.merge(pb, on=["seed", "image_id"])
        d = (j["ap_x"] - j["ap_y"]).groupby([j["seed"], j["image_id"]]).first().unstack()
        d = d.dropna(axis=1).to_numpy()
        n_seeds, n_q = d.shape
        rng = np.random.default_rng(0)
        chunk = max(1, 2**22 // (n_seeds * n_q))
        boot = []
        for lo in range(0, n_resamples, chunk):
            n = min(chunk, n_resamples - lo)
            q = rng.integers(0, n_q, size=(n, n_q))
            s = rng.integers(0, n_seeds, size=(n, n_seeds))
            for r in range(n):
                boot.append(np.mean([d[k, q[r]].mean() for k in s[r]]))
        lo, hi = np.quantile(boot, [0.025, 0.975])
        assert (row["queries"], row["seeds"]) == (n_q, n_seeds)
        assert row["ΔmAP"] == pytest.approx(100 * d.mean(), abs=1e-9)
        assert (row["CI low"], row["CI high"]) == pytest.approx((100 * lo, 100 * hi), abs=1e-9)
        significant = "significant gain" if lo > 0 else "significant loss" if hi < 0 else None
        if n_seeds < 3:
            significant = f"not decidable ({n_seeds} seed{'s' if n_seeds > 1 else ''})"
        assert row["verdict"] == (significant or "not significant")


@pytest.mark.skipif(not REPORTS, reason="no committed report in this checkout")
@pytest.mark.parametrize("reports", REPORTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_main_table_map_is_the_seed_mean_of_per_query_ap(reports):
    main = pd.read_csv(reports / "tables" / "main.csv", header=[0, 1], index_col=0, dtype=str)
    checked = 0
    for dataset, metric in main.columns:
        for variant, cell in main[(dataset, metric)].items():
            csv = reports / "per_query" / dataset / f"{variant}.csv"
            if metric != "mAP" or cell == "not run" or not csv.exists():
                continue
            per_seed = 100 * _ap(csv).groupby("seed")["ap"].mean()
            numbers = [float(x) for x in re.findall(r"\d+\.\d", cell)]
            assert numbers[0] == pytest.approx(per_seed.mean(), abs=0.051), (dataset, variant)
            if len(per_seed) > 1:  # "mean ± std": the sample std over seeds
                assert numbers[1] == pytest.approx(per_seed.std(ddof=1), abs=0.051)
            checked += 1
    assert checked > 0


SNAPSHOTS = [d for d in REPORTS if d != REPO / "reports"]


@pytest.mark.skipif(not SNAPSHOTS, reason="no profile snapshot in this checkout")
@pytest.mark.parametrize("snapshot", SNAPSHOTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_a_snapshot_reproduces_every_default_cell_for_the_seeds_it_shares(snapshot):
    """A profile that only adds seeds (and corruption strengths) must give every cell of the
    default run, for the seeds both have. Untrained cells are exact on any machine. Trained
    cells are exact only on the same CPU kernel path: last bits grow through training into
    several mAP points (docs/reproducibility.md). So they are held exactly equal when the
    snapshot's PROVENANCE.md says it shares the default report's kernel path."""
    cfg = load(REPO / "params.yaml")
    provenance = (snapshot / "PROVENANCE.md").read_text()
    name = re.search(r"profile `(\w+)`", provenance).group(1)
    same_path = "Same kernel path as reports/: yes" in provenance
    changes = {f"{k}.{sub}" for k, v in cfg.profiles[name].items() for sub in v}
    if not changes <= {"pipeline.seeds", "eval.corruption_levels"}:
        pytest.skip(f"profile {name} changes {sorted(changes)}, not only seeds")
    cells = sorted((REPO / "metrics" / "eval").glob("*/*.json"))
    assert cells, "the default run has no metrics/eval cells"
    exact = 0
    for default in cells:
        path = snapshot / "metrics" / "eval" / default.parent.name / default.name
        assert path.exists(), f"{path}: a default cell is missing from the snapshot"
        ours, theirs = (json.loads(p.read_text())["per_seed"] for p in (path, default))
        shared = set(ours) & set(theirs)
        assert shared, f"{path}: no seed in common with {default}"
        if same_path or cfg.variants[default.stem].train is False:
            for seed in shared:
                assert ours[seed] == theirs[seed], (path, seed)
                exact += 1
    assert exact > 0
