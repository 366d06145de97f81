"""Evaluation figures for the notebooks; every function returns a matplotlib Figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from indivaid_core.evaluate.metrics import encode_labels
from indivaid_core.figures_common import framed_image

CORRECT_COLOUR = "tab:green"
WRONG_COLOUR = "tab:red"


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def retrieval_grid(
    query_paths: Sequence[str | Path],
    gallery_paths: Sequence[str | Path],
    dist: np.ndarray | torch.Tensor,
    query_ids: Sequence,
    gallery_ids: Sequence,
    k: int = 5,
    n_queries: int = 6,
    leave_one_out: bool = False,
    query_indices: Sequence[int] | None = None,
    border: float = 4.0,
) -> Figure:
    """Each row: a query, then its top-k gallery images framed green (same id) or red.

    Queries default to ``n_queries`` evenly spaced rows. With ``leave_one_out`` the query's own
    image is left out of its ranking. Ties are broken by gallery order (stable sort).
    """
    d = _numpy(dist).astype(np.float64, copy=True)
    nq, ng = d.shape
    if len(query_paths) != nq or len(gallery_paths) != ng:
        raise ValueError(
            f"{len(query_paths)} query / {len(gallery_paths)} gallery paths for {d.shape}"
        )
    if leave_one_out:
        np.fill_diagonal(d, np.inf)
        ng -= 1
    k = min(k, ng)
    rows = (
        np.asarray(query_indices)
        if query_indices is not None
        else np.unique(np.linspace(0, nq - 1, min(n_queries, nq)).round().astype(int))
    )
    qid, gid = np.asarray(query_ids, dtype=object), np.asarray(gallery_ids, dtype=object)
    fig, axes = plt.subplots(
        len(rows), k + 1, figsize=(1.6 * (k + 1), 2.0 * len(rows)), squeeze=False
    )
    for r, q in enumerate(rows):
        framed_image(axes[r, 0], query_paths[q], f"query\n{qid[q]}", None, border)
        top = np.argsort(d[q], kind="stable")[:k]
        for c, g in enumerate(top, start=1):
            colour = CORRECT_COLOUR if gid[g] == qid[q] else WRONG_COLOUR
            framed_image(
                axes[r, c], gallery_paths[g], f"#{c} {gid[g]}\nd={d[q, g]:.3f}", colour, border
            )
    fig.tight_layout()
    return fig


def pair_distances(
    dist: np.ndarray | torch.Tensor,
    query_ids: Sequence,
    gallery_ids: Sequence,
    leave_one_out: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Distances of positive (same identity) and negative pairs; LOO drops the diagonal."""
    d = _numpy(dist)
    qid, gid = encode_labels(query_ids, gallery_ids)
    same = qid[:, None] == gid[None, :]
    keep = np.ones_like(same)
    if leave_one_out:
        if d.shape[0] != d.shape[1]:
            raise ValueError(f"leave_one_out needs a square matrix, got {d.shape}")
        np.fill_diagonal(keep, False)
    return d[same & keep], d[~same & keep]


def distance_distributions(
    dist: np.ndarray | torch.Tensor,
    query_ids: Sequence,
    gallery_ids: Sequence,
    leave_one_out: bool = False,
    bins: int = 50,
) -> Figure:
    """Overlaid density histograms of positive and negative pair distances."""
    pos, neg = pair_distances(dist, query_ids, gallery_ids, leave_one_out)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"need both pair kinds, got {len(pos)} positive and {len(neg)} negative")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    edges = np.histogram_bin_edges(np.concatenate([pos, neg]), bins=bins)
    ax.hist(
        neg,
        bins=edges,
        density=True,
        alpha=0.6,
        color=WRONG_COLOUR,
        label=f"negative (n={len(neg)})",
    )
    ax.hist(
        pos,
        bins=edges,
        density=True,
        alpha=0.6,
        color=CORRECT_COLOUR,
        label=f"positive (n={len(pos)})",
    )
    ax.set_xlabel("distance")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    return fig


def embedding_map(
    feats: np.ndarray | torch.Tensor,
    ids: Sequence,
    perplexity: float = 15,
    seed: int = 0,
    max_legend: int = 20,
) -> Figure:
    """2-D t-SNE of the features, one colour per identity (perplexity capped at n - 1)."""
    x = _numpy(feats).astype(np.float32)
    if x.ndim != 2 or len(x) != len(ids):
        raise ValueError(f"features of shape {x.shape} do not fit {len(ids)} identities")
    if len(x) < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {len(x)}")
    from sklearn.manifold import TSNE  # here: importing it costs ~2 s in every notebook kernel

    xy = TSNE(
        n_components=2, perplexity=min(perplexity, len(x) - 1), init="pca", random_state=seed
    ).fit_transform(x)
    (codes,) = encode_labels(ids)
    labels = np.asarray(ids, dtype=object)
    fig, ax = plt.subplots(figsize=(5, 5))
    cmap = plt.get_cmap("tab20", max(codes.max() + 1, 1))
    for c in np.unique(codes):
        m = codes == c
        ax.scatter(xy[m, 0], xy[m, 1], s=12, color=cmap(c), label=str(labels[m][0]))
    if codes.max() + 1 <= max_legend:
        ax.legend(fontsize=6, markerscale=0.8, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("t-SNE of embeddings, coloured by identity")
    fig.tight_layout()
    return fig


def condition_bars(per_query_df: pd.DataFrame, column: str, metric: str = "ap") -> Figure:
    """Mean of a per-query metric for each value of a condition column, with query counts.

    ``metric`` is a column (e.g. ``ap``, ``inp``) or ``rankK`` (share with first match <= K).
    Skipped queries (``valid`` False) are left out.
    """
    if column not in per_query_df:
        raise KeyError(f"per-query table has no column {column!r}")
    df = per_query_df
    if "valid" in df:
        df = df[df["valid"]]
    if metric.startswith("rank") and metric[4:].isdigit():
        values = (df["first_match_rank"] <= int(metric[4:])).astype(float)
    elif metric in df:
        values = df[metric].astype(float)
    else:
        raise KeyError(f"per-query table has no metric column {metric!r}")
    grouped = values.groupby(df[column].astype(str)).agg(["mean", "count"])
    fig, ax = plt.subplots(figsize=(max(3.0, 0.9 * len(grouped) + 1.5), 3.5))
    bars = ax.bar(grouped.index, grouped["mean"], color="tab:blue")
    ax.bar_label(bars, labels=[f"n={n}" for n in grouped["count"]], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel(column)
    ax.set_ylabel(metric)
    fig.tight_layout()
    return fig
