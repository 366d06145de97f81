"""Figures of the attention notebook: training images ranked by fusion attention, Grad-CAM."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from indivaid_core.data.images import load_rgb
from indivaid_core.repro.paths import Paths
from indivaid_core.safe_io import load_torch, read_json, unreadable


def attention_ranking(
    attention_pt: Path,
    labels_json: Path,
    table: pd.DataFrame,
    n_identities: int = 4,
    n_images: int = 6,
) -> plt.Figure:
    """Per individual, its training images sorted by the fusion attention weight they got."""
    fix = "rerun the variant's stage 2, which writes it again"
    blob = load_torch(attention_pt, fix, "attention file")  # tensors only, never code
    if not isinstance(blob, dict) or "key_index" not in blob:
        raise unreadable(attention_pt, "attention file", "it lacks 'key_index'", fix)
    if "weights" not in blob:
        raise ValueError(f"{attention_pt}: this fusion variant has no attention weights")
    meta = read_json(labels_json, "rerun stage 1", ("labels", "image_ids"), "stage-1 label map")
    names = {i: name for name, i in meta["labels"].items()}
    image_ids = meta["image_ids"]
    by_id = table.set_index(table["image_id"].astype(str))
    root = Paths.image_root(table)
    weights, keys = blob["weights"], blob["key_index"]
    counts = (keys >= 0).sum(1)
    ids = torch.argsort(counts, descending=True)[:n_identities].tolist()
    fig, axes = plt.subplots(
        len(ids), n_images, figsize=(1.6 * n_images, 1.8 * len(ids)), squeeze=False
    )
    for r, ident in enumerate(ids):
        valid = keys[ident] >= 0
        w, k = weights[ident][valid], keys[ident][valid]
        order = torch.argsort(w, descending=True)
        for c in range(n_images):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(order):
                row = by_id.loc[image_ids[int(k[order[c]])]]
                ax.imshow(load_rgb(root / row["path"]))
                ax.set_title(f"w={float(w[order[c]]):.2f}", fontsize=8)
        axes[r, 0].text(
            -0.1,
            0.5,
            names[ident],
            transform=axes[r, 0].transAxes,
            ha="right",
            va="center",
            fontsize=8,
        )
    fig.suptitle("Training images ranked by fusion attention (left = most attended)")
    return fig


def saliency_grid(
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]],
) -> plt.Figure:
    """Rows: query, query heat-map, top match, match heat-map (Grad-CAM on E_I)."""
    fig, axes = plt.subplots(len(pairs), 4, figsize=(7, 1.9 * len(pairs)), squeeze=False)
    for r, (q, q_cam, g, g_cam, label) in enumerate(pairs):
        for c, (img, cam) in enumerate([(q, None), (q, q_cam), (g, None), (g, g_cam)]):
            ax = axes[r, c]
            ax.imshow(img)
            if cam is not None:
                ax.imshow(cam, cmap="jet", alpha=0.45)
            ax.axis("off")
        axes[r, 2].set_title(label, fontsize=8)
    for c, t in enumerate(["query", "Grad-CAM", "top match", "Grad-CAM"]):
        axes[0, c].set_xlabel(t)
        axes[0, c].set_title(t if c != 2 else axes[0, 2].get_title(), fontsize=8)
    return fig
