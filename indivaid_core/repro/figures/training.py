"""Figures of the stage-1 and stage-2 notebooks: loss curves, description similarity.

seaborn (with scipy.stats, ~1 s) is imported by the one function that draws with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
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
