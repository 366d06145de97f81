"""Figures of the evaluation and robustness notebooks (the grids themselves are the core's
`evaluate/figures.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import pandas as pd

from indivaid_core.evaluate import figures

if TYPE_CHECKING:
    from indivaid_core.repro.evaluation import Evaluation


def retrieval(ev: Evaluation, k: int = 5, n_queries: int = 6) -> plt.Figure:
    """Ranked-retrieval grid for a `repro.evaluation.evaluate` result."""
    root, q, g = ev.split.root, ev.query, ev.gallery
    return figures.retrieval_grid(
        [root / p for p in q["path"]],
        [root / p for p in g["path"]],
        ev.dist,
        q["identity"].to_numpy(),
        g["identity"].to_numpy(),
        k=k,
        n_queries=n_queries,
        leave_one_out=ev.loo,
    )


def corruption_curves(sweep: pd.DataFrame, metric: str = "mAP") -> plt.Figure:
    """mAP against corruption strength, one panel per corruption, one line per variant."""
    names = list(dict.fromkeys(sweep["corruption"]))
    fig, axes = plt.subplots(
        1, len(names), figsize=(3.2 * len(names), 3), squeeze=False, sharey=True
    )
    for ax, name in zip(axes[0], names, strict=True):
        part = sweep[sweep["corruption"] == name]
        for variant, rows in part.groupby("variant"):
            ax.plot(rows["strength"], 100 * rows[metric], marker="o", label=variant)
        ax.set(title=name, xlabel="strength", ylabel=f"{metric} (%)")
    axes[0, 0].legend(fontsize=7)
    return fig
