"""Metrics as files: one ``metrics.json`` for ``dvc metrics show``, per-query rows, CMC curve."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from indivaid_core.safe_io import write_text

# Metadata columns carried into the per-query CSV when the query table has them.
CONDITION_COLUMNS: tuple[str, ...] = ("condition", "viewpoint", "camera", "daynight", "occlusion")


def _plain(value: Any, decimals: int, where: str) -> Any:
    """JSON-ready value: numpy scalars/arrays unwrapped, floats rounded, NaN -> null."""
    if isinstance(value, dict):
        return {str(k): _plain(v, decimals, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, np.ndarray | list | tuple):
        return [_plain(v, decimals, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        return None if math.isnan(value) else round(value, decimals)
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"metrics value at {where!r} has unsupported type {type(value).__name__}")


def write_metrics_json(path: str | Path, metrics: dict, decimals: int = 6) -> None:
    """Deterministic metrics file: sorted keys, rounded floats, no timestamps."""
    data = _plain(metrics, decimals, "metrics")
    write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def summarise(metrics: dict, ranks: Sequence[int] = (1, 5, 10)) -> dict:
    """Flat scalars of a :func:`rank_metrics` result (mAP, mINP, R1/R5/R10, query counts)."""
    cmc = np.asarray(metrics["cmc"])
    out = {"mAP": metrics["mAP"], "mINP": metrics["mINP"]}
    for r in ranks:
        if not 1 <= r <= len(cmc):
            raise ValueError(f"rank {r} is outside the CMC curve of length {len(cmc)}")
        out[f"R{r}"] = float(cmc[r - 1])
    out["n_valid_queries"] = int(metrics["n_valid_queries"])
    out["n_skipped_queries"] = int(metrics["n_skipped_queries"])
    return out


def per_query_frame(
    metrics: dict, query_table: pd.DataFrame, condition_columns: Sequence[str] = CONDITION_COLUMNS
) -> pd.DataFrame:
    """One row per query: image_id, identity, ap, inp, first_match_rank, valid, conditions.

    Skipped queries keep their row (ap/inp NaN, first_match_rank -1, valid False) so that
    bootstrap CIs can resample the full query set later.
    """
    for col in ("image_id", "identity"):
        if col not in query_table:
            raise KeyError(f"query table has no {col!r} column")
    ap = np.asarray(metrics["ap"])
    if len(ap) != len(query_table):
        raise ValueError(
            f"metrics cover {len(ap)} queries but the query table has {len(query_table)}"
        )
    frame = pd.DataFrame(
        {
            "image_id": query_table["image_id"].to_numpy(),
            "identity": query_table["identity"].to_numpy(),
            "ap": ap,
            "inp": np.asarray(metrics["inp"]),
            "first_match_rank": np.asarray(metrics["first_match_rank"]),
            "valid": ~np.isnan(ap),
        }
    )
    for col in condition_columns:
        if col in query_table:
            frame[col] = query_table[col].to_numpy()
    return frame


def cmc_curve_frame(cmc: Sequence[float]) -> pd.DataFrame:
    """CMC as rows (rank from 1, cmc) for ``dvc plots``."""
    cmc = np.asarray(cmc, dtype=float)
    return pd.DataFrame({"rank": np.arange(1, len(cmc) + 1), "cmc": cmc})


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation over seeds (0 for a single seed)."""
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}
