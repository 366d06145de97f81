"""The report's two figures: mAP with its CI per cell, and mAP by recording condition."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def headline_figure(intervals: pd.DataFrame) -> plt.Figure:
    """mAP with 95 % CI per variant and dataset: the one picture of the results."""
    datasets = list(dict.fromkeys(intervals["dataset"]))
    variants = list(dict.fromkeys(intervals["variant"]))
    fig, ax = plt.subplots(figsize=(1.2 + 1.9 * len(datasets), 3.4))
    width = 0.8 / max(1, len(variants))
    for k, v in enumerate(variants):
        rows = intervals[intervals["variant"] == v].set_index("dataset").reindex(datasets)
        x = np.arange(len(datasets)) + (k - (len(variants) - 1) / 2) * width
        err = [rows["mAP"] - rows["CI low"], rows["CI high"] - rows["mAP"]]
        ax.bar(x, rows["mAP"], width, label=v, alpha=0.85)
        ax.errorbar(x, rows["mAP"], yerr=err, fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_xticks(np.arange(len(datasets)), datasets)
    ax.set_ylabel("mAP (%)")
    seeds = "/".join(map(str, sorted(set(intervals["seeds"]))))
    plural = "" if seeds == "1" else "s"
    ax.set_title(
        f"mAP with 95 % CI over seeds and queries ({seeds} seed{plural} per cell)", fontsize=10
    )
    ax.legend(fontsize=8, ncol=len(variants), loc="upper left", bbox_to_anchor=(0, -0.12))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def condition_figure(cond: pd.DataFrame, dataset: str) -> plt.Figure:
    """Grouped bars: per-condition mAP for each variant on one dataset."""
    import seaborn as sns

    part = cond[cond["dataset"] == dataset]
    cols = list(dict.fromkeys(part["column"]))
    fig, axes = plt.subplots(
        1, max(1, len(cols)), figsize=(4 * max(1, len(cols)), 3.2), squeeze=False
    )
    for ax, col in zip(axes[0], cols, strict=False):
        sns.barplot(part[part["column"] == col], x="value", y="mAP", hue="variant", ax=ax)
        ax.set(title=f"{dataset}: by {col}", xlabel="", ylabel="mAP (%)")
        ax.legend(fontsize=7)
    return fig
