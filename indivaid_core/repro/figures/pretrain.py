"""Figures of the pretraining notebook: loss, attribute accuracy against chance, text queries."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import open_clip
import pandas as pd
import torch

from indivaid_core.evaluate import alignment


def loss_curve(history: list[dict]) -> plt.Figure:
    """ClipLoss per step, with a 20-step running mean."""
    h = pd.DataFrame(history)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(h["step"], h["loss"], lw=0.6, alpha=0.5, label="per step")
    ax.plot(h["step"], h["loss"].rolling(20, min_periods=1).mean(), lw=2, label="running mean")
    ax.set(xlabel="step", ylabel="ClipLoss", title="Pretraining the synthetic CLIP")
    ax.legend(fontsize=8)
    return fig


def attribute_accuracy(metrics: dict) -> plt.Figure:
    """Zero-shot balanced accuracy per attribute: synthclip, untrained text tower, chance."""
    rows = []
    for model in ("synthclip", "untrained_text"):
        for a in metrics[model]["attributes"]:
            rows.append({**a, "model": model, "task": f"{a['species']}: {a['attribute']}"})
    df = pd.DataFrame(rows)
    tasks = df["task"].unique()
    y = np.arange(len(tasks))
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(tasks) + 1))
    for i, (model, colour) in enumerate((("synthclip", "C0"), ("untrained_text", "C7"))):
        part = df[df["model"] == model].set_index("task").loc[tasks]
        ax.barh(y + 0.2 - 0.4 * i, part["accuracy"], 0.4, color=colour, label=model)
    chance = df.drop_duplicates("task").set_index("task").loc[tasks, "chance"]
    ax.scatter(chance, y, marker="|", s=120, color="k", label="chance", zorder=3)
    ax.set_yticks(y, tasks, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="balanced accuracy (held-out individuals)", xlim=(0, 1))
    ax.legend(fontsize=7, loc="lower right")
    return fig


def text_queries(
    model: open_clip.CLIP, images: torch.Tensor, queries: list[str], top: int = 5
) -> plt.Figure:
    """For each text query, the held-out photos the model ranks first."""
    img = alignment.encode_images(model, images)
    txt = alignment.encode_texts(model, queries)
    best = np.argsort(-(txt @ img.T), axis=1)[:, :top]
    fig, axes = plt.subplots(len(queries), top, figsize=(1.6 * top, 1.9 * len(queries)))
    axes = np.atleast_2d(axes)
    for q, row in enumerate(best):
        for j, idx in enumerate(row):
            ax = axes[q, j]
            ax.imshow(images[idx].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
        axes[q, 0].set_title(queries[q], fontsize=7, loc="left")
    fig.tight_layout()
    return fig
