"""Reproduction within noise: a rerun passes inside each cell's band and fails outside it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from indivaid_core.config import load
from indivaid_core.repro import noise, snapshot


def _report(root: Path, maps: dict[str, str], verdict: str) -> Path:
    (root / "tables").mkdir(parents=True)
    cols = pd.MultiIndex.from_tuples([("tiger", "mAP"), ("tiger", "R1")])
    frame = pd.DataFrame([[v, v] for v in maps.values()], index=list(maps), columns=cols)
    frame.to_csv(root / "tables" / "main.csv")
    pd.DataFrame(
        [{"dataset": "tiger", "comparison": "indivaid − clipreid", "verdict": verdict}]
    ).to_csv(root / "tables" / "significance.csv", index=False)
    return root


def _spread_snapshot(root: Path, stds: dict[str, float]) -> Path:
    for variant, std in stds.items():
        path = root / "metrics" / "eval" / "tiger" / f"{variant}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"n_seeds": 3, "mAP": 0.4, "std": {"mAP": std}}))
    return root


def test_pooled_spread_ignores_untrained_cells(tmp_path):
    snap = _spread_snapshot(tmp_path, {"zero_shot": 0.0, "indivaid": 0.03, "clipreid": 0.04})
    assert noise.pooled_spread(snap / "metrics") == {"tiger": pytest.approx((12.5) ** 0.5)}


def test_the_default_reports_seed_spread_comes_from_data_metrics(tmp_path):
    """`--within-noise reports` names the default report, whose metrics live in `metrics/`,
    not `reports/metrics/`: the spread is read there, never silently left empty (every band
    would be the 0.5-point floor)."""
    over = {"data.reports": str(tmp_path / "r"), "data.metrics": str(tmp_path / "m")}
    cfg = load("params.yaml", over)
    assert snapshot.spread_metrics(tmp_path / "r", cfg) == tmp_path / "m"
    snap = _spread_snapshot(tmp_path / "snap", {"indivaid": 0.03})
    assert snapshot.spread_metrics(snap, cfg) == snap / "metrics"


def test_rerun_inside_the_band_passes_and_outside_fails_with_a_table(tmp_path):
    spread = {"tiger": 2.0}  # points; band for one seed: 3 * sqrt(2) * 2 = 8.5
    ref = _report(tmp_path / "ref", {"zero_shot": "25.1", "indivaid": "41.9"}, "not decidable")
    ok = _report(tmp_path / "ok", {"zero_shot": "25.3", "indivaid": "34.2"}, "not decidable")
    assert noise.within_noise(ref, ok, spread, n_seeds=1).empty
    bad = _report(tmp_path / "bad", {"zero_shot": "26.5", "indivaid": "30.0"}, "not decidable")
    out = noise.within_noise(ref, bad, spread, n_seeds=1)
    assert set(out["variant"]) == {"zero_shot", "indivaid"}  # 1.4 > floor; 11.9 > 8.5
    assert (out["allowed"] > 0).all()
    # with three seeds per cell the band shrinks: 3 * sqrt(2/3) * 2 = 4.9
    three = _report(tmp_path / "three", {"zero_shot": "25.1", "indivaid": "36.0"}, "not decidable")
    assert set(noise.within_noise(ref, three, spread, n_seeds=3)["variant"]) == {"indivaid"}


def test_a_verdict_that_flips_fails(tmp_path):
    ref = _report(tmp_path / "ref", {"indivaid": "41.9"}, "significant gain")
    new = _report(tmp_path / "new", {"indivaid": "41.9"}, "significant loss")
    out = noise.within_noise(ref, new, {"tiger": 2.0}, n_seeds=3)
    assert list(out["metric"]) == ["verdict"] and out.iloc[0]["rerun"] == "significant loss"


def test_a_measured_numerical_spread_widens_its_cell_only(tmp_path):
    table = tmp_path / "numerical_spread.csv"
    rows = [
        ("default", "avx2", "image_only", 10.2),
        ("default", "stage2_threads2", "image_only", -6.0),
        ("default", "avx2", "indivaid", 0.3),
        ("smoke", "avx2", "indivaid", 40.0),  # another profile's report: not this one's spread
    ]
    pd.DataFrame(
        [
            {"profile": p, "setting": s, "dataset": "tiger", "variant": v, "delta": d}
            for p, s, v, d in rows
        ]
    ).to_csv(table, index=False)
    numerical = noise.numerical_spread(table, "default")
    assert numerical[("tiger", "image_only")] == pytest.approx(((10.2**2 + 36) / 2) ** 0.5 / 2**0.5)
    ref = _report(tmp_path / "ref", {"image_only": "41.9", "indivaid": "44.0"}, "not decidable")
    new = _report(tmp_path / "new", {"image_only": "31.7", "indivaid": "38.0"}, "not decidable")
    seed_only = noise.within_noise(ref, new, {"tiger": 2.0}, n_seeds=3)  # band 4.9 for both
    assert set(seed_only["variant"]) == {"image_only", "indivaid"}
    both = noise.within_noise(ref, new, {"tiger": 2.0}, n_seeds=3, numerical=numerical)
    assert set(both["variant"]) == {"indivaid"}  # image_only's band: 3 * sqrt(2/3) * 5.9 = 14.5
