"""BAKS/BAUS (wildlife-datasets' definitions), KNN prediction, threshold choice, AUROC."""

import numpy as np
import pytest
import torch

from indivaid_core.evaluate import (
    apply_threshold,
    baks,
    baus,
    choose_threshold,
    knn_identity,
    new_individual_auroc,
    open_set_metrics,
)

# Known ids a (3 samples), b (1); unknown ids u (2), v (1).
Y_TRUE = ["a", "a", "a", "b", "u", "u", "v"]
Y_PRED = ["a", "new", "b", "b", "new", "a", "new"]
TEST_ONLY = ["u", "v"]


def test_baks_baus_hand_computed() -> None:
    assert baks(Y_TRUE, Y_PRED, TEST_ONLY) == pytest.approx((1 / 3 + 1) / 2)
    assert baus(Y_TRUE, Y_PRED, TEST_ONLY, "new") == pytest.approx((1 / 2 + 1) / 2)
    # Integer labels with an integer new class, as wildlife-datasets expects.
    assert baks([1, 1, 2], [1, -1, -1], [3]) == pytest.approx((0.5 + 0) / 2)
    assert baus([3, 3, 1], [-1, 3, 1], [3], -1) == pytest.approx(0.5)
    assert np.isnan(baks(["u"], ["new"], ["u"]))
    assert np.isnan(baus(["a"], ["a"], ["u"], "new"))
    with pytest.raises(ValueError, match="y_pred has"):
        baks(["a"], ["a", "b"], [])


def test_baks_baus_equal_wildlife_datasets() -> None:
    wd = pytest.importorskip(
        "wildlife_datasets.metrics", reason="wildlife-datasets (optional AGPL extra) not installed"
    )
    rng = np.random.default_rng(0)
    for _ in range(20):
        y_true = rng.integers(0, 8, 60).tolist()
        test_only = [6, 7]
        y_pred = [int(v) if rng.random() < 0.5 else -1 for v in rng.integers(0, 8, 60)]
        assert baks(y_true, y_pred, test_only) == pytest.approx(wd.BAKS(y_true, y_pred, test_only))
        assert baus(y_true, y_pred, test_only, -1) == pytest.approx(
            wd.BAUS(y_true, y_pred, test_only, -1)
        )
    s_true = [f"id{v}" for v in rng.integers(0, 5, 40)]
    s_pred = [f"id{v}" if rng.random() < 0.6 else "new" for v in rng.integers(0, 5, 40)]
    assert baus(s_true, s_pred, ["id3", "id4"], "new") == pytest.approx(
        wd.BAUS(s_true, s_pred, ["id3", "id4"], "new")
    )


def test_knn_identity_majority_with_nearest_tie_break() -> None:
    dist = torch.tensor([[0.1, 0.2, 0.3, 0.9], [0.5, 0.1, 0.4, 0.2]])
    gal = ["x", "y", "y", "z"]
    pred, nn = knn_identity(dist, gal, k=1)
    assert pred.tolist() == ["x", "y"] and np.allclose(nn, [0.1, 0.1])
    pred, _ = knn_identity(dist, gal, k=3)  # row 0: x,y,y -> y; row 1: y,z,y -> y
    assert pred.tolist() == ["y", "y"]
    pred, _ = knn_identity(dist, gal, k=2)  # one vote each: nearest wins
    assert pred.tolist() == ["x", "y"]
    with pytest.raises(ValueError, match="k must be"):
        knn_identity(dist, gal, k=5)


def _brute_force_best(nn, y_true, y_pred, test_only):
    best = -1.0
    for t in np.concatenate([nn, [nn.min() - 1]]):
        p = apply_threshold(y_pred, nn, t, "new")
        best = max(best, (baks(y_true, p, test_only) + baus(y_true, p, test_only, "new")) / 2)
    return best


def test_choose_threshold_is_optimal_on_held_out_data() -> None:
    rng = np.random.default_rng(1)
    y_true = np.array([f"k{i}" for i in rng.integers(0, 6, 80)], dtype=object)
    unknown = rng.random(80) < 0.3
    y_true[unknown] = [f"u{i}" for i in rng.integers(0, 3, unknown.sum())]
    nn = np.round(rng.random(80) + unknown * 0.5, 2)  # unknowns sit further away; ties exist
    y_pred = np.where(rng.random(80) < 0.8, y_true, "k0")
    y_pred[unknown] = "k1"
    test_only = ["u0", "u1", "u2"]
    res = choose_threshold(nn, y_true, y_pred, test_only)
    assert res["score"] == pytest.approx(_brute_force_best(nn, y_true, y_pred, test_only))
    p = apply_threshold(y_pred, nn, res["threshold"], "new")
    assert res["baks"] == pytest.approx(baks(y_true, p, test_only))
    assert res["baus"] == pytest.approx(baus(y_true, p, test_only, "new"))
    with pytest.raises(ValueError, match="both known and unknown"):
        choose_threshold(nn[~unknown], y_true[~unknown], y_pred[~unknown], test_only)


def test_auroc_and_open_set_metrics() -> None:
    assert new_individual_auroc(np.array([0.1, 0.2, 0.8, 0.9]), [0, 0, 1, 1]) == 1.0
    assert (
        new_individual_auroc(np.array([0.9, 0.2, 0.8, 0.1]), [0, 0, 1, 1]) == 0.25
    )  # 1 of 4 pairs
    assert np.isnan(new_individual_auroc(np.array([0.1, 0.2]), [0, 0]))
    dist = torch.tensor([[0.1, 0.8], [0.7, 0.2], [0.6, 0.9], [0.3, 0.95]])
    m = open_set_metrics(dist, ["a", "b", "u", "b"], ["a", "b"], threshold=0.5)
    # Closed set: a->a, b->b, b->a (wrong). Thresholded: query 2 (u, nn 0.6) -> new.
    assert m["top1_closed_set"] == pytest.approx(2 / 3)
    assert m["baks"] == pytest.approx((1 + 0.5) / 2)
    assert m["baus"] == 1.0
    assert m["auroc_new"] == 1.0
    assert (m["n_known_queries"], m["n_unknown_queries"]) == (3, 1)
