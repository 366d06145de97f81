"""Grid of identified photos: each query, then its best-matching known individuals."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from indivaid_core.figures_common import framed_image

MATCH, MISMATCH, NEW_COLOUR = "tab:green", "tab:red", "tab:orange"


def results_grid(
    results: pd.DataFrame,
    top_k: int = 3,
    n_queries: int = 6,
    truth: pd.Series | None = None,
    border: float = 4.0,
) -> Figure:
    """One row per query (evenly spaced over the readable ones): the photo, then top-k matches.

    The query's frame is orange when flagged ``new_individual``. With ``truth`` (true identity
    per query path), match frames are green for the right individual and red otherwise.
    """
    ok = results[results["error"].fillna("") == ""].reset_index(drop=True)
    if ok.empty:
        raise ValueError("no identified photo to show: every query has an error")
    k = min(top_k, sum(c.endswith("_identity") and c.startswith("top") for c in ok.columns))
    rows = np.unique(np.linspace(0, len(ok) - 1, min(n_queries, len(ok))).round().astype(int))
    fig, axes = plt.subplots(
        len(rows), k + 1, figsize=(1.7 * (k + 1), 2.1 * len(rows)), squeeze=False
    )
    for r, i in enumerate(rows):
        row = ok.iloc[i]
        new = bool(row["new_individual"]) if pd.notna(row["new_individual"]) else False
        true_id = truth.get(row["query"]) if truth is not None else None
        title = f"{Path(row['query']).name}\n{'NEW? ' if new else ''}→ {row['top1_identity']}"
        if true_id is not None:
            title += f"\n(true {true_id})"
        framed_image(
            axes[r, 0],
            row["query"],
            title,
            NEW_COLOUR if new else None,
            border,
            fontsize=7,
            missing_ok=True,
        )
        for c in range(1, k + 1):
            ident = row[f"top{c}_identity"]
            if ident is None or (isinstance(ident, float) and np.isnan(ident)):
                axes[r, c].axis("off")
                continue
            d = float(row[f"top{c}_distance"])
            colour = None if true_id is None else (MATCH if ident == true_id else MISMATCH)
            framed_image(
                axes[r, c],
                row[f"top{c}_image"],
                f"#{c} {ident}\nd={d:.3f} s={1 - d * d / 2:.3f}",
                colour,
                border,
                fontsize=7,
                missing_ok=True,
            )
    fig.tight_layout()
    return fig
