"""Reproduction within noise: a rerun on another machine against a committed report.

Byte equality holds only on the same CPU kernel path. Elsewhere the last bits differ, and
training grows them into several mAP points. This check passes when every metric lies within
its cell's noise band of the committed value and every significance verdict agrees.

The band of a cell is `z * sqrt(2 / n) * sigma`: the difference of two n-seed means, each with
seed spread `sigma`, at z standard deviations (default 3). `sigma` is the seed spread pooled
over the trained cells of the dataset, read from a snapshot with several seeds, because three
seeds estimate one cell's spread poorly. Where the numerical spread of a cell was measured
(`numerical_spread.csv`: the same seed retrained on another kernel path or thread count) and is
larger, it is used instead: a kernel path alone can move a cell by more than its pooled seed
spread (10 points once). Untrained cells (zero-shot, spread 0) get
`floor` points. z and floor are arguments, so a stricter or looser check is one flag away.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
TABLES = ("main.csv", "ablation.csv")


def pooled_spread(metrics: str | Path) -> dict[str, float]:
    """Seed spread of mAP in points per dataset, from the `eval/*/*.json` under a metrics
    folder: sqrt of the mean variance over trained cells."""
    out: dict[str, list[float]] = {}
    for path in sorted(Path(metrics, "eval").glob("*/*.json")):
        m = json.loads(path.read_text())
        if m.get("n_seeds", 1) > 1 and m.get("std", {}).get("mAP", 0) > 0:
            out.setdefault(path.parent.name, []).append((100 * m["std"]["mAP"]) ** 2)
    return {ds: math.sqrt(sum(v) / len(v)) for ds, v in out.items()}


def read_numerical_spread(path: str | Path, profile: str) -> pd.DataFrame:
    """The rows of `numerical_spread.csv` (benchmarks/numerical_spread.py) measured against
    `profile`'s report: each setting's same-seed mAP change per cell, in points."""
    frame = pd.read_csv(path)
    missing = {"profile", "setting", "dataset", "variant", "delta"} - set(frame)
    if missing:
        raise ValueError(f"{path}: numerical spread table lacks columns {sorted(missing)}")
    return frame[frame["profile"] == profile]


def numerical_spread(path: str | Path, profile: str) -> dict[tuple[str, str], float]:
    """Per (dataset, variant): RMS over the measured settings of the same-seed mAP change, in
    points, over sqrt(2) (the change of two runs is sqrt(2) times one run's spread)."""
    frame = read_numerical_spread(path, profile)
    rms = frame.groupby(["dataset", "variant"])["delta"].apply(lambda d: (d**2).mean() ** 0.5)
    return {key: float(v) / math.sqrt(2) for key, v in rms.items()}


def _value(cell: object) -> float | None:
    found = NUMBER.search(str(cell))
    return float(found.group()) if found else None


def within_noise(
    reference: str | Path,
    reports: str | Path,
    spread: dict[str, float],
    n_seeds: int,
    z: float = 3.0,
    floor: float = 0.5,
    numerical: dict[tuple[str, str], float] | None = None,
) -> pd.DataFrame:
    """Cells outside their band and verdicts that disagree; an empty frame means it passes."""
    numerical = numerical or {}
    rows = []
    for name in TABLES:
        ref_csv, new_csv = Path(reference, "tables", name), Path(reports, "tables", name)
        if not ref_csv.exists():
            continue
        ref = pd.read_csv(ref_csv, header=[0, 1], index_col=0, dtype=str)
        new = pd.read_csv(new_csv, header=[0, 1], index_col=0, dtype=str)
        for (ds, metric), column in ref.items():
            if metric not in ("mAP", "R1") or (ds, metric) not in new:
                continue
            for variant, cell in column.items():
                a, b = _value(cell), _value(new.at[variant, (ds, metric)])
                if a is None and b is None:
                    continue
                sigma = max(spread.get(ds, 0.0), numerical.get((ds, variant), 0.0)) or None
                band = floor if variant == "zero_shot" or sigma is None else z * sigma
                band = max(floor, band * math.sqrt(2 / n_seeds))
                if a is None or b is None or abs(a - b) > band:
                    rows.append(
                        {
                            "table": name,
                            "dataset": ds,
                            "variant": variant,
                            "metric": metric,
                            "committed": a,
                            "rerun": b,
                            "allowed": round(band, 2),
                        }
                    )
    ref_sig = Path(reference, "tables", "significance.csv")
    if ref_sig.exists():
        a = pd.read_csv(ref_sig).set_index(["dataset", "comparison"])["verdict"]
        b = pd.read_csv(Path(reports, "tables", "significance.csv"))
        b = b.set_index(["dataset", "comparison"])["verdict"]
        for key, verdict in a.items():
            if b.get(key) != verdict:
                rows.append(
                    {
                        "table": "significance.csv",
                        "dataset": key[0],
                        "variant": key[1],
                        "metric": "verdict",
                        "committed": verdict,
                        "rerun": b.get(key),
                        "allowed": "same verdict",
                    }
                )
    return pd.DataFrame(rows)
