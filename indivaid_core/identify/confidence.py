"""A calibrated confidence: the probability that the top-1 individual is right.

Raw distances and cosine scores are not probabilities and shift from model to model, so at
index time held-out gallery photos are identified against the rest and scikit-learn's logistic
regression (Platt scaling) maps (top-1 distance, lead over the runner-up) to "top-1 was right".
Held-out photos of individuals left out of the gallery count as wrong: a never-seen animal
is the other way the top-1 fails. The fit is all but unpenalised, as Platt scaling is:
distances are small numbers, and scikit-learn's default L2 penalty flattens the curve (on a
trained model it pulled every confidence towards the middle: ECE 0.15 on fresh photos). The
fit is judged on held-out identities it did not see (expected calibration error, ECE) and
stored as three numbers in index.json (no pickle).
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_DISTANCE = 2.0  # between unit vectors: stands in for a missing runner-up
MIN_TRIALS = 1000  # held-out queries the fit aims for (its ECE is judged on a third of them)
PLATT_C = 1e4  # all but unpenalised; still finite when the held-out photos separate perfectly


def features(d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """(top-1 distance, lead of the runner-up) per query, the inputs of the confidence."""
    d2 = np.where(np.isfinite(d2), d2, MAX_DISTANCE)
    return np.stack([d1, d2 - d1], axis=1)


def predict(model: dict[str, Any], d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """P(top-1 right) from the stored coefficients."""
    z = features(d1, d2) @ np.asarray(model["coef"]) + model["intercept"]
    return np.exp(-np.logaddexp(0.0, -z))  # the logistic, without overflow for large |z|


def expected_calibration_error(p: np.ndarray, right: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by their size."""
    which = np.minimum((p * bins).astype(int), bins - 1)
    gaps = [
        abs(right[which == b].mean() - p[which == b].mean()) * (which == b).mean()
        for b in range(bins)
        if (which == b).any()
    ]
    return float(np.sum(gaps))


def _trials(x: np.ndarray, ids: np.ndarray, rng: np.random.Generator, unseen: float):
    """One draw: one photo per identity is the query; `unseen` of the identities are left out
    of the reference entirely (never seen). One query per identity either way, so `unseen` is
    the share of new-animal photos the confidence assumes: with every photo of a left-out
    identity as a query, a gallery with many photos per animal would assume mostly new animals
    and understate every confidence. Returns (features, top-1 right, identity of each query)."""
    names = np.unique(ids)
    gone = set(rng.choice(names, size=max(1, round(unseen * len(names))), replace=False))
    query = np.zeros(len(ids), bool)
    for name in names:
        rows = np.flatnonzero(ids == name)
        if name in gone or len(rows) > 1:
            query[rng.choice(rows)] = True
    ref = ~query & ~np.isin(ids, list(gone))
    q, r = x[query], x[ref]
    sq = (q**2).sum(1)[:, None] + (r**2).sum(1)[None, :] - 2.0 * q @ r.T
    d = np.sqrt(np.maximum(sq, 0.0))
    ref_ids = ids[ref]
    order = np.argsort(d, axis=1)
    d1, d2, top1 = [], [], []
    for row, o in zip(d, order, strict=True):
        _, first = np.unique(ref_ids[o], return_index=True)
        first = np.sort(first)
        d1.append(row[o[first[0]]])
        d2.append(row[o[first[1]]] if len(first) > 1 else np.inf)
        top1.append(ref_ids[o[first[0]]])
    right = np.asarray(top1) == ids[query]
    return features(np.asarray(d1), np.asarray(d2)), right, ids[query]


def fit_confidence(
    vectors: np.ndarray,
    identities: Any,
    repeats: int | None = None,
    unseen: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the confidence on held-out gallery photos; report its ECE on held-out identities.

    Returns {"method": "platt", coef, intercept, ece, n} or {"method": "none", "reason"}.
    """
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(vectors, dtype=np.float32)
    ids = np.unique(np.asarray(identities).astype(str), return_inverse=True)[1]  # fast compares
    if len(np.unique(ids)) < 3 or len(ids) < 10:
        return {"method": "none", "reason": "needs at least 3 individuals and 10 photos"}
    rng = np.random.default_rng(seed)
    if repeats is None:  # a draw holds one query per identity: ~MIN_TRIALS of them in all
        repeats = int(np.clip(np.ceil(MIN_TRIALS / len(np.unique(ids))), 5, 50))
    draws = [_trials(x, ids, rng, unseen) for _ in range(repeats)]
    f, right, qid = (np.concatenate(parts) for parts in zip(*draws, strict=True))
    if right.all() or not right.any():
        return {"method": "none", "reason": "held-out photos were all right or all wrong"}
    names = np.unique(qid)
    test = np.isin(qid, rng.choice(names, size=max(1, len(names) // 3), replace=False))
    ece = float("nan")
    if len(np.unique(right[~test])) == 2 and test.any():
        held = LogisticRegression(C=PLATT_C).fit(f[~test], right[~test])
        ece = expected_calibration_error(held.predict_proba(f[test])[:, 1], right[test])
    model = LogisticRegression(C=PLATT_C).fit(f, right)
    return {
        "method": "platt",
        "coef": [float(c) for c in model.coef_[0]],
        "intercept": float(model.intercept_[0]),
        "ece": round(ece, 4),
        "n": int(len(right)),
        "heldout_accuracy": round(float(right.mean()), 4),
    }
