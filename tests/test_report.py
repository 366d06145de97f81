"""Report tables, the paired bootstrap, corruptions and Grad-CAM."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from indivaid_core.model import ReIDEncoder, build_clip
from indivaid_core.repro import significance, tables
from indivaid_core.repro.results_md import to_markdown
from indivaid_core.repro.robustness import corruption
from indivaid_core.repro.saliency import gradcam

VARIANTS = ["zero_shot", "image_only", "clipreid", "indivaid"]


def _write_run(root, ds, variant, mAP, aps):
    (root / "metrics" / "eval" / ds).mkdir(parents=True, exist_ok=True)
    m = {
        "dataset": ds,
        "variant": variant,
        "mAP": mAP,
        "R1": 0.5,
        "R5": 0.7,
        "R10": 0.8,
        "mINP": 0.2,
        "std": {k: 0.0 for k in ("mAP", "R1", "R5", "R10", "mINP")},
        "n_seeds": 1,
        "device": "cpu",
        "inference_images_per_s": 10.0,
    }
    (root / "metrics" / "eval" / ds / f"{variant}.json").write_text(json.dumps(m))
    (root / "pq" / ds).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "image_id": [f"q{i}" for i in range(len(aps))],
            "ap": aps,
            "seed": 0,
            "daynight": ["day", "night"] * (len(aps) // 2),
        }
    ).to_csv(root / "pq" / ds / f"{variant}.csv", index=False)


def test_main_table_says_not_run_for_absent_cells(tmp_path):
    _write_run(tmp_path, "a", "indivaid", 0.5, [0.5, 0.5])
    df = tables.collect_metrics(tmp_path / "metrics")
    t = tables.main_table(df, ["a", "Stoat"], ("mAP", "R1"), VARIANTS)
    assert t.loc["indivaid", ("a", "mAP")] == "50.0"
    assert t.loc["indivaid", ("Stoat", "mAP")] == "not run"
    assert t.loc["clipreid", ("a", "mAP")] == "not run"


def test_fit_table_pairs_training_and_test_map_and_tolerates_old_metrics(tmp_path):
    _write_run(tmp_path, "a", "indivaid", 0.5, [0.5, 0.5])
    old = tables.fit_table(tables.collect_metrics(tmp_path / "metrics"), ["a"], VARIANTS)
    assert old.loc["indivaid", ("a", "train_mAP")] == "not run"  # JSON from before train_mAP
    path = tmp_path / "metrics" / "eval" / "a" / "indivaid.json"
    m = json.loads(path.read_text())
    m["train_mAP"], m["std"]["train_mAP"] = 0.75, 0.0
    path.write_text(json.dumps(m))
    t = tables.fit_table(tables.collect_metrics(tmp_path / "metrics"), ["a"], VARIANTS)
    assert t.loc["indivaid", ("a", "train_mAP")] == "75.0"
    assert t.loc["indivaid", ("a", "mAP")] == "50.0"
    assert t.loc["clipreid", ("a", "mAP")] == "not run"


def test_paired_bootstrap_matches_an_independent_recomputation(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, 200)
    b = np.clip(a - 0.1 + rng.normal(0, 0.05, 200), 0, 1)
    _write_run(tmp_path, "a", "indivaid", a.mean(), a)
    _write_run(tmp_path, "a", "clipreid", b.mean(), b)
    sig = significance.significance_table(
        tmp_path / "pq", ["a"], n_resamples=2000, seed=3, comparisons=[("indivaid", "clipreid")]
    )
    row = sig.iloc[0]
    assert row["ΔmAP"] == pytest.approx(100 * (a - b).mean())
    # independent recomputation with the same resampling indices over the sorted query ids
    order = np.argsort(np.array([f"q{i}" for i in range(200)]))
    idx = np.random.default_rng(3).integers(0, 200, size=(2000, 200))
    boot = (a - b)[order][idx].mean(axis=1)
    assert row["CI low"] == pytest.approx(100 * np.quantile(boot, 0.025))
    assert row["CI high"] == pytest.approx(100 * np.quantile(boot, 0.975))
    assert row["CI low"] > 0  # a clear gain over queries, but one seed cannot decide it
    assert row["verdict"] == "not decidable (1 seed)"
    assert "not decidable" in significance.significance_sentences(sig)[0]


def test_significance_lists_each_seeds_difference_and_flags_a_sign_flip(tmp_path):
    (tmp_path / "pq" / "a").mkdir(parents=True)
    ids = [f"q{i}" for i in range(4)]
    # seed 0: a beats b by 0.3 on every query; seed 1: b beats a by 0.1 on every query
    for variant, ap0, ap1 in (("indivaid", 0.8, 0.4), ("clipreid", 0.5, 0.5)):
        pd.DataFrame(
            {"image_id": ids * 2, "ap": [ap0] * 4 + [ap1] * 4, "seed": [0] * 4 + [1] * 4}
        ).to_csv(tmp_path / "pq" / "a" / f"{variant}.csv", index=False)
    sig = significance.significance_table(
        tmp_path / "pq", ["a"], 500, 0, comparisons=[("indivaid", "clipreid")]
    )
    row = sig.iloc[0]
    assert row["ΔmAP"] == pytest.approx(10.0)  # seed-averaged AP: 0.6 vs 0.5 on every query
    assert row["query-only CI low"] > 0  # over queries, with no query variance
    assert row["verdict"] == "not decidable (2 seeds)"
    assert row["per-seed ΔmAP"] == "s0 +30.0 / s1 -10.0"
    assert (row["seeds with that sign"], row["seeds"]) == (1, 2)
    assert "that sign in 1 of 2" in significance.significance_sentences(sig)[0]
    one_seed = pd.read_csv(tmp_path / "pq" / "a" / "clipreid.csv").query("seed == 0")
    one_seed.to_csv(tmp_path / "pq" / "a" / "clipreid.csv", index=False)
    with pytest.raises(ValueError, match=r"seeds \[1\] are in only one"):
        significance.significance_table(tmp_path / "pq", ["a"], 500, 0, [("indivaid", "clipreid")])


def test_condition_table_splits_per_query_ap(tmp_path):
    _write_run(tmp_path, "a", "indivaid", 0.5, [1.0, 0.0, 1.0, 0.0])
    cond = tables.condition_table(tmp_path / "pq", ["a"], ["indivaid"], ["daynight"])
    by = cond.set_index("value")["mAP"]
    assert by["day"] == 100.0 and by["night"] == 0.0


@pytest.mark.parametrize("name", ["blur", "noise", "low_light", "fog"])
def test_corruptions_are_identity_at_zero_and_grow_with_strength(name):
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    # Exactly: robustness_sweep serves every strength-0 row with the clean query features.
    assert torch.equal(corruption(name, 0.0)(x), x)
    d = [float((corruption(name, s)(x) - x).abs().mean()) for s in (0.25, 0.5, 1.0)]
    assert d[0] < d[1] < d[2]
    with pytest.raises(ValueError, match="strength"):
        corruption(name, 1.5)


@pytest.mark.parametrize("backbone", ["tiny-vit", "lite0"])
def test_gradcam_returns_a_normalised_map_that_depends_on_the_target(backbone):
    clip = build_clip(backbone, None, (64, 64), None)
    enc = ReIDEncoder(clip, 3)
    img, other, third = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    enc.eval()
    with torch.no_grad():
        out = enc(torch.stack([other, third]))
    t1, t2 = torch.cat([out["global"], out["proj"]], dim=1)
    cam1, cam2 = gradcam(enc, img, t1), gradcam(enc, img, t2)
    assert cam1.shape == (64, 64) and float(cam1.min()) >= 0 and float(cam1.max()) == 1.0
    assert not torch.allclose(cam1, cam2)


def test_markdown_shows_missing_numbers_as_a_dash_not_nan():
    frame = pd.DataFrame({"variant": ["zero_shot", "indivaid"], "img/s": [np.nan, 36.5]})
    md = to_markdown(frame)
    assert md.splitlines()[2:] == ["| zero_shot | — |", "| indivaid | 36.50 |"]
