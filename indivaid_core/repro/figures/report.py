"""The report's figures: mAP with its CI per cell, mAP against the number of training
individuals (the scaling study), and mAP by recording condition."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def headline_figure(intervals: pd.DataFrame) -> plt.Figure:
    """mAP with 95 % CI per variant and dataset: the one picture of the results."""
    if intervals.empty:  # nothing evaluated yet: an empty frame, not a crash of the report
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "no cell has a per-query file yet", ha="center", va="center")
        ax.set_axis_off()
        return fig
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


def scaling_figure(scaling: pd.DataFrame, differences: pd.DataFrame) -> plt.Figure:
    """Left: mAP against training individuals per variant; right: the paired differences.

    Both with their two-level 95 % CIs, so a gap that looks like it narrows with more
    individuals can be read against its noise.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    sizes = sorted(set(scaling["train_individuals"]))
    _scaling_curves(left, scaling)
    _difference_curves(right, differences)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training individuals")
        ax.grid(alpha=0.3)
    dataset = scaling["dataset"].iloc[0]
    fig.suptitle(
        "Do descriptions matter most where labelled individuals are scarce? "
        f"({dataset}, 95 % CI over seeds and queries)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def _scaling_curves(ax: plt.Axes, scaling: pd.DataFrame) -> None:
    """One line and CI band per trained variant; zero_shot, which trains on nothing, dashed.
    Colours follow the table's variant order, as in the headline figure."""
    for k, (v, rows) in enumerate(scaling.groupby("variant", sort=False)):
        rows, color = rows.sort_values("train_individuals"), f"C{k}"
        x = rows["train_individuals"]
        if v == "zero_shot":
            ax.axhline(rows["mAP"].iloc[0], color=color, ls="--", lw=1, label=v)
            ax.axhspan(rows["CI low"].iloc[0], rows["CI high"].iloc[0], color=color, alpha=0.1)
            continue
        ax.plot(x, rows["mAP"], marker="o", color=color, label=v)
        ax.fill_between(x, rows["CI low"], rows["CI high"], color=color, alpha=0.2)
    ax.set(ylabel="mAP (%)", title="mAP")
    ax.legend(fontsize=8)


def _difference_curves(ax: plt.Axes, differences: pd.DataFrame) -> None:
    """Each comparison's paired ΔmAP with error bars, against a zero line."""
    ax.axhline(0, color="black", lw=0.8)
    comparisons = list(dict.fromkeys(differences["comparison"]))
    for k, (c, rows) in enumerate(differences.groupby("comparison", sort=False)):
        rows = rows.sort_values("train_individuals")
        x = rows["train_individuals"] * 2 ** ((k - (len(comparisons) - 1) / 2) * 0.05)  # dodge
        err = [rows["ΔmAP"] - rows["CI low"], rows["CI high"] - rows["ΔmAP"]]
        err = [e.clip(lower=0) for e in err]  # a zero-width CI can sit 1e-15 off its estimate
        ax.errorbar(x, rows["ΔmAP"], yerr=err, marker="o", capsize=3, color=f"C{k + 4}", label=c)
    ax.set(ylabel="ΔmAP (points)", title="paired difference")
    if comparisons:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no pair evaluated", transform=ax.transAxes, ha="center")
