"""Figures and the split table of the prepare stage (01_prepare_data)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from indivaid_core.data.images import load_rgb
from indivaid_core.repro.paths import Paths


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
