"""Open-set threshold from the gallery alone: hold some individuals out and pretend they are new.

Each repeat holds out a random share of the gallery's identities (all their images become
"new individual" queries) and ``known_per_identity`` images of each remaining identity that has
more than that many (known queries); the rest is the calibration gallery. The threshold is the
one :func:`indivaid_core.evaluate.openset.choose_threshold` picks on that held-out data only;
the median over repeats is kept, so that one lucky split does not decide it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from indivaid_core.identify.index import ExactSearcher


class CalibrationError(ValueError):
    """The gallery cannot simulate new individuals (too few identities or images)."""


def _split(
    ids: np.ndarray, rng: np.random.Generator, heldout_fraction: float, known_per_identity: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(unknown query rows, known query rows, calibration gallery rows, held-out identities)."""
    uniq = np.unique(ids)
    counts = pd.Series(ids).value_counts()
    n_out = int(np.clip(round(heldout_fraction * len(uniq)), 1, len(uniq) - 1))
    # Held-out identities are drawn so that at least one identity with a spare image stays known.
    spare = counts.index[counts > known_per_identity].to_numpy()
    keep_one = rng.choice(spare)
    held = rng.choice(uniq[uniq != keep_one], size=n_out, replace=False)
    unknown = np.flatnonzero(np.isin(ids, held))
    known_q: list[int] = []
    for ident in spare:
        if ident in held:
            continue
        rows = np.flatnonzero(ids == ident)
        known_q.extend(rng.choice(rows, size=known_per_identity, replace=False).tolist())
    known = np.asarray(sorted(known_q), dtype=np.int64)
    gallery = np.setdiff1d(np.arange(len(ids)), np.concatenate([unknown, known]))
    return unknown, known, gallery, sorted(held.tolist())


def _cap(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return rows if len(rows) <= n else np.sort(rng.choice(rows, size=n, replace=False))


def calibrate_threshold(
    vectors: torch.Tensor | np.ndarray,
    identities: Sequence,
    heldout_fraction: float = 0.2,
    known_per_identity: int = 1,
    repeats: int = 5,
    max_queries: int = 2000,
    objective: str = "mean",
    seed: int = 0,
) -> dict:
    """Nearest-neighbour distance threshold for the ``new_individual`` flag.

    ``max_queries`` caps the unknown and the known queries of a repeat (each half of it), so
    calibration stays cheap on large galleries. Returns ``threshold`` (median over repeats) and
    the held-out BAKS / BAUS at each repeat's own threshold, for the record.
    """
    # Here, not at the top: the evaluation package brings matplotlib, which only calibration
    # (index build, --recalibrate) needs, never `identify`.
    from indivaid_core.evaluate.openset import choose_threshold

    ids = np.asarray([str(i) for i in identities], dtype=object)
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if len(x) != len(ids):
        raise ValueError(f"{len(x)} vectors but {len(ids)} identities")
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}")
    counts = pd.Series(ids).value_counts()
    if len(counts) < 2 or not (counts > known_per_identity).any():
        raise CalibrationError(
            f"calibrating the new-individual threshold needs >= 2 identities and one with more "
            f"than {known_per_identity} image(s); this gallery has {len(counts)} identities with "
            f"at most {counts.max() if len(counts) else 0} images each. Set the threshold by "
            "hand (--threshold) instead."
        )
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(repeats):
        unknown, known, gallery, held = _split(ids, rng, heldout_fraction, known_per_identity)
        queries = np.concatenate(
            [_cap(unknown, max_queries // 2, rng), _cap(known, max_queries // 2, rng)]
        )
        search = ExactSearcher(x.shape[1])
        search.add(x[gallery])
        nn_dist, nn_idx = search.search(x[queries], 1)
        pred = ids[gallery][nn_idx[:, 0]]
        runs.append(choose_threshold(nn_dist[:, 0], ids[queries], pred, held, objective))
    table = pd.DataFrame(runs)
    return {
        "method": "leave_identities_out",
        # Never below 0: an exact duplicate of a gallery photo is that individual, even when a
        # weak model makes "flag everything" the best held-out choice.
        "threshold": max(0.0, float(table["threshold"].median())),
        "heldout_fraction": heldout_fraction,
        "known_per_identity": known_per_identity,
        "repeats": repeats,
        "objective": objective,
        "seed": seed,
        "heldout_baks": float(table["baks"].mean()),
        "heldout_baus": float(table["baus"].mean()),
        "thresholds": table["threshold"].round(6).tolist(),
    }
