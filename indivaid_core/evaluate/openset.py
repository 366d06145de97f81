"""Open-set identification: KNN identity with a "new individual" distance threshold.

BAKS / BAUS follow wildlife-datasets' definitions (re-implemented so that the AGPL package
stays an optional extra): balanced accuracy over the *known* identities' samples (a sample is
right when predicted as its own identity) and over the *unknown* identities' samples (right
when predicted as ``new_class``). Each identity weighs the same; NaN when there are no such
samples. Unlike wildlife-datasets, mixed label types (int ids with a str ``new_class``) are
accepted instead of raising.

The threshold is chosen on held-out data by :func:`choose_threshold` and only then applied to
the test set; nothing here looks at test labels to pick it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from indivaid_core.evaluate.metrics import encode_labels


def _balanced(y_true: np.ndarray, correct: np.ndarray) -> float:
    if len(y_true) == 0:
        return float("nan")
    per_identity = pd.Series(correct.astype(float)).groupby(pd.Series(y_true)).mean()
    return float(per_identity.mean())


def _objects(x: Sequence) -> np.ndarray:
    arr = np.empty(len(x), dtype=object)
    arr[:] = list(x)
    return arr


def baks(y_true: Sequence, y_pred: Sequence, identity_test_only: Sequence) -> float:
    """Balanced accuracy on known samples (those whose identity is not test-only)."""
    yt, yp = _objects(y_true), _objects(y_pred)
    if len(yt) != len(yp):
        raise ValueError(f"y_true has {len(yt)} labels but y_pred has {len(yp)}")
    known = ~pd.Series(yt).isin(list(identity_test_only)).to_numpy()
    return _balanced(yt[known], yt[known] == yp[known])


def baus(
    y_true: Sequence, y_pred: Sequence, identity_test_only: Sequence, new_class: int | str
) -> float:
    """Balanced accuracy on unknown samples: how often each test-only identity is called new."""
    yt, yp = _objects(y_true), _objects(y_pred)
    if len(yt) != len(yp):
        raise ValueError(f"y_true has {len(yt)} labels but y_pred has {len(yp)}")
    unknown = pd.Series(yt).isin(list(identity_test_only)).to_numpy()
    return _balanced(yt[unknown], yp[unknown] == new_class)


def knn_identity(
    dist: np.ndarray | torch.Tensor, gallery_ids: Sequence, k: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted identity (majority of the k nearest, ties to the nearer) and NN distance.

    The returned distance is that of the nearest gallery item; it is the "newness" score.
    """
    d = dist if isinstance(dist, torch.Tensor) else torch.from_numpy(np.asarray(dist))
    if d.ndim != 2 or d.shape[1] != len(gallery_ids):
        raise ValueError(f"dist shape {tuple(d.shape)} does not fit {len(gallery_ids)} gallery ids")
    if not 1 <= k <= d.shape[1]:
        raise ValueError(f"k must be in [1, {d.shape[1]}], got {k}")
    gal = _objects(gallery_ids)
    (codes,) = encode_labels(gal)
    vals, idx = torch.topk(d, k, dim=1, largest=False, sorted=True)
    top = torch.from_numpy(codes).to(d.device)[idx]
    votes = (top[:, :, None] == top[:, None, :]).sum(-1)  # votes of each neighbour's identity
    winner = idx.gather(1, votes.argmax(1, keepdim=True)).squeeze(1)  # first max = nearest
    return gal[winner.cpu().numpy()], vals[:, 0].float().cpu().numpy()


def apply_threshold(
    pred: Sequence, nn_dist: np.ndarray, threshold: float, new_class: int | str = "new"
) -> np.ndarray:
    """Replace a prediction by ``new_class`` when its NN distance is above ``threshold``."""
    out = _objects(pred)
    out[np.asarray(nn_dist) > threshold] = new_class
    return out


def new_individual_auroc(nn_dist: np.ndarray, is_new: np.ndarray) -> float:
    """AUROC of the NN distance for telling new individuals (positives) from known ones."""
    is_new = np.asarray(is_new, dtype=bool)
    if is_new.all() or not is_new.any():
        return float("nan")
    from sklearn.metrics import roc_auc_score  # here: sklearn adds ~1.4 s to every kernel start

    return float(roc_auc_score(is_new, np.asarray(nn_dist)))


def choose_threshold(
    nn_dist: np.ndarray,
    y_true: Sequence,
    y_pred: Sequence,
    identity_test_only: Sequence,
    objective: str = "mean",
) -> dict:
    """Exact best threshold on held-out data, over every cut between observed NN distances.

    ``y_pred`` is the closed-set (un-thresholded) prediction. ``objective``: "mean" maximises
    (BAKS + BAUS) / 2, "baks"/"baus" one of them. Sample weights make both curves cumulative
    sums over sorted distances, so every candidate is scored in one pass.
    Returns ``threshold``, ``baks``, ``baus`` and ``score`` on that held-out data.
    """
    d = np.asarray(nn_dist, dtype=np.float64)
    yt, yp = _objects(y_true), _objects(y_pred)
    if not len(d) == len(yt) == len(yp):
        raise ValueError(f"lengths differ: nn_dist {len(d)}, y_true {len(yt)}, y_pred {len(yp)}")
    unknown = pd.Series(yt).isin(list(identity_test_only)).to_numpy()
    if unknown.all() or not unknown.any():
        raise ValueError("held-out data needs both known and unknown (test-only) identities")
    size = pd.Series(yt).map(pd.Series(yt).value_counts()).to_numpy(dtype=float)
    n_known_ids = pd.unique(yt[~unknown]).size
    n_unknown_ids = pd.unique(yt[unknown]).size
    # Weight of a sample in its balanced accuracy: 1 / (#identities * #samples of its identity).
    w_known = np.where(~unknown & (yt == yp), 1.0 / (n_known_ids * size), 0.0)
    w_unknown = np.where(unknown, 1.0 / (n_unknown_ids * size), 0.0)

    order = np.argsort(d, kind="stable")
    ds = d[order]
    cuts = np.flatnonzero(np.diff(ds) > 0)  # last index before each change of distance
    # Threshold t keeps a prediction when dist <= t; candidates: below all, between, above all.
    thresholds = np.concatenate([[ds[0] - 1.0], (ds[cuts] + ds[cuts + 1]) / 2, [ds[-1] + 1.0]])
    n_kept = np.concatenate([[0], cuts + 1, [len(ds)]])
    cum_known = np.concatenate([[0.0], np.cumsum(w_known[order])])
    cum_unknown = np.concatenate([[0.0], np.cumsum(w_unknown[order])])
    baks_t = cum_known[n_kept]
    baus_t = cum_unknown[-1] - cum_unknown[n_kept]
    scores = {"mean": (baks_t + baus_t) / 2, "baks": baks_t, "baus": baus_t}
    if objective not in scores:
        raise ValueError(f"unknown objective {objective!r}; use one of {sorted(scores)}")
    best = int(np.argmax(scores[objective]))
    return {
        "threshold": float(thresholds[best]),
        "baks": float(baks_t[best]),
        "baus": float(baus_t[best]),
        "score": float(scores[objective][best]),
    }


def open_set_metrics(
    dist: np.ndarray | torch.Tensor,
    query_ids: Sequence,
    gallery_ids: Sequence,
    threshold: float,
    k: int = 1,
    new_class: int | str = "new",
) -> dict:
    """Closed-set top-1 accuracy, BAKS, BAUS and new-individual AUROC of one query set.

    Test-only identities are the query identities absent from the gallery. ``threshold`` must
    come from :func:`choose_threshold` on held-out data.
    """
    pred, nn = knn_identity(dist, gallery_ids, k=k)
    yt = _objects(query_ids)
    if len(yt) != len(pred):
        raise ValueError(f"query_ids has {len(yt)} entries but dist has {len(pred)} rows")
    test_only = sorted(set(yt.tolist()) - set(_objects(gallery_ids).tolist()), key=str)
    is_new = pd.Series(yt).isin(test_only).to_numpy()
    thresholded = apply_threshold(pred, nn, threshold, new_class)
    known = ~is_new
    return {
        "top1_closed_set": float(np.mean(pred[known] == yt[known])) if known.any() else np.nan,
        "baks": baks(yt, thresholded, test_only),
        "baus": baus(yt, thresholded, test_only, new_class),
        "auroc_new": new_individual_auroc(nn, is_new),
        "threshold": float(threshold),
        "n_known_queries": int(known.sum()),
        "n_unknown_queries": int(is_new.sum()),
    }
