"""Figures and small tables for the data, training and attention notebooks.

Evaluation figures live in `indivaid_core.evaluate.figures`; these cover the other stages.
seaborn (with scipy.stats, ~1 s) and the evaluation figures are imported by the one function
that draws with each, not by every notebook that imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from indivaid_core.data.images import load_rgb
from indivaid_core.repro.paths import Paths
from indivaid_core.safe_io import load_torch, read_json, unreadable

if TYPE_CHECKING:
    from indivaid_core.repro.evaluation import Evaluation


def split_summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Images and identities per dataset and split."""
    rows = []
    for name, t in tables.items():
        for split, part in t.groupby("split"):
            rows.append(
                {
                    "dataset": name,
                    "split": split,
                    "images": len(part),
                    "identities": part["identity"].nunique(),
                }
            )
    return pd.DataFrame(rows).pivot(
        index="dataset", columns="split", values=["images", "identities"]
    )


def images_per_identity(tables: dict[str, pd.DataFrame]) -> plt.Figure:
    """Long-tail plot: images per individual, sorted, one line per dataset."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, t in tables.items():
        counts = t["identity"].value_counts().to_numpy()
        ax.plot(np.arange(1, len(counts) + 1), counts, marker=".", label=name)
    ax.set(
        xlabel="individual (sorted by count)",
        ylabel="images",
        yscale="log",
        title="Images per individual",
    )
    ax.legend()
    return fig


def identity_grid(
    table: pd.DataFrame, n_identities: int = 4, n_images: int = 6, title: str = "", seed: int = 0
) -> plt.Figure:
    """Rows = individuals, columns = their photos: identity should be the coat pattern."""
    root = Paths.image_root(table)
    counts = table["identity"].value_counts()
    ids = counts.index[:n_identities]
    fig, axes = plt.subplots(
        len(ids), n_images, figsize=(1.6 * n_images, 1.7 * len(ids)), squeeze=False
    )
    for r, ident in enumerate(ids):
        rows = table[table["identity"] == ident].sample(
            n=min(n_images, counts[ident]), random_state=seed
        )
        for c in range(n_images):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(rows):
                row = rows.iloc[c]
                ax.imshow(load_rgb(root / row["path"]))
                label = " ".join(str(row[k]) for k in ("viewpoint", "daynight") if k in row)
                ax.set_title(label, fontsize=7)
        axes[r, 0].text(
            -0.1,
            0.5,
            str(ident),
            transform=axes[r, 0].transAxes,
            ha="right",
            va="center",
            fontsize=8,
        )
    fig.suptitle(title)
    return fig


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


def retrieval(ev: Evaluation, k: int = 5, n_queries: int = 6) -> plt.Figure:
    """Ranked-retrieval grid for a `repro.evaluation.evaluate` result."""
    from indivaid_core.evaluate import figures

    root = Path(ev["image_root"])
    q, g = ev["query"], ev["gallery"]
    return figures.retrieval_grid(
        [root / p for p in q["path"]],
        [root / p for p in g["path"]],
        ev["dist"],
        q["identity"].to_numpy(),
        g["identity"].to_numpy(),
        k=k,
        n_queries=n_queries,
        leave_one_out=ev["loo"],
    )


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
