"""Figures of the stage-1 and stage-2 notebooks: loss curves, description similarity.

seaborn (with scipy.stats, ~1 s) is imported by the one function that draws with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file


def loss_curves(history_json: Path, title: str = "") -> plt.Figure:
    """Every logged loss term per epoch (log scale), from a stage's history.json."""
    hist = pd.DataFrame(json.loads(Path(history_json).read_text()))
    terms = [c for c in hist.columns if c not in ("epoch", "lr")]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for c in terms:
        ax.plot(hist["epoch"], hist[c], marker=".", label=c, lw=2 if c == "loss" else 1)
    ax.set(xlabel="epoch", ylabel="loss", title=title)
    ax.legend(fontsize=8)
    return fig


def description_similarity(path: Path, max_ids: int = 40) -> plt.Figure:
    """Cosine similarity of the individual descriptions h: distinct individuals -> dark."""
    import seaborn as sns

    h = load_file(str(path))["h"][:max_ids]
    h = torch.nn.functional.normalize(h.float(), dim=1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    sns.heatmap(
        (h @ h.T).numpy(),
        ax=ax,
        cmap="viridis",
        vmin=-1,
        vmax=1,
        square=True,
        xticklabels=False,
        yticklabels=False,
    )
    ax.set_title("cos(h_y, h_y') between individuals")
    return fig


def description_scores(scores: pd.DataFrame, title: str = "") -> plt.Figure:
    """Attribute recovery of g and h per text run (mean over seeds), with chance marked."""
    if scores.empty:  # real data: no truth to score against, and the figure says so
        fig, ax = plt.subplots(figsize=(5, 1))
        ax.text(0.5, 0.5, f"{title}: no attribute truth to score against", ha="center")
        ax.axis("off")
        return fig
    df = scores[scores["attribute"] != "consistency"]
    df = df.groupby(["text", "attribute", "target"], sort=False)[["accuracy", "chance"]].mean()
    df = df.reset_index()
    df["task"] = df["attribute"] + " · " + df["target"]
    tasks, texts = df["task"].unique(), df["text"].unique()
    y = np.arange(len(tasks))
    width = 0.8 / len(texts)
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(tasks) * max(1, len(texts) / 2) + 1))
    for i, text in enumerate(texts):
        part = df[df["text"] == text].set_index("task").loc[tasks]
        ax.barh(y - 0.4 + width * (i + 0.5), part["accuracy"], width, label=text)
    chance = df.drop_duplicates("task").set_index("task").loc[tasks, "chance"]
    ax.scatter(chance, y, marker="|", s=200, color="k", label="chance", zorder=3)
    ax.set_yticks(y, tasks, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="attribute recovered (nearest value phrase)", xlim=(0, 1), title=title)
    ax.legend(fontsize=7, loc="lower right")
    return fig
