"""Identification results as a person reads them: rounded CSV numbers, a short terminal table,
and outputs that are never replaced without being asked to."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported where a table is read: refusing needs none of it
    import pandas as pd

DECIMALS = {"distance": 3, "score": 3, "threshold": 3, "confidence": 2}
TABLE_ROWS = 20


def people_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The results with distances and scores to 3 decimals and confidences to 2: more digits
    only hide the answer (the features themselves are not that precise)."""
    import pandas as pd

    out = frame.copy()
    for col in out.columns:
        kind = col.split("_", 1)[-1] if col.startswith("top") else col
        if kind in DECIMALS and pd.api.types.is_numeric_dtype(out[col]):
            out[col] = out[col].round(DECIMALS[kind])
    return out


def refuse_existing(paths: Iterable[Path], force: bool) -> None:
    """Refuse, before any work, to replace an earlier run's results unless `force`."""
    if force:
        return
    for path in paths:
        if path.exists():
            raise FileExistsError(
                f"{path}: already exists (an earlier run's results); pass --force to replace "
                "it, or --out another file"
            )


def _answer(row: pd.Series) -> str:
    import pandas as pd

    if row.get("error"):
        return "error: " + str(row["error"])[:60]
    conf = row.get("confidence")
    sure = f", {conf:.0%} sure" if conf is not None and pd.notna(conf) else ""
    best = f"{row['top1_identity']} ({row['distance']:.3f}{sure})"
    return f"new individual? nearest {best}" if row["predicted_identity"] == "new" else best


def answers_table(frame: pd.DataFrame, limit: int = TABLE_ROWS, csv: str = "") -> str:
    """One line per photo (its name and answer), at most `limit` lines then how many more."""
    shown = frame.head(limit)
    names = [Path(str(q)).name for q in shown["query"]]
    width = max([len("photo"), *map(len, names)])
    lines = [f"{'photo':<{width}}  answer (distance, confidence that the top-1 is right)"]
    lines += [
        f"{n:<{width}}  {_answer(r)}" for n, (_, r) in zip(names, shown.iterrows(), strict=True)
    ]
    if len(frame) > limit:
        lines.append(f"... and {len(frame) - limit} more photos" + (f" in {csv}" if csv else ""))
    return "\n".join(lines)
