"""Inputs for trying identification without a trained model: a random export, suite splits.

The notebook and the tests use these; a real run uses a trained export instead (the demo set-up
over the pipeline's outputs is `indivaid_core.repro.demo.prepare_demo`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from indivaid_core.config import ModelCfg
from indivaid_core.model import ReIDEncoder, build_clip_for
from indivaid_core.train.export import write_export


def random_export(
    out_dir: str | Path, model: ModelCfg, labels: Sequence[str], seed: int = 0
) -> Path:
    """Export a randomly initialised encoder exactly as training would (model.json + weights).

    Its features carry no identity signal beyond pixel statistics; it exercises the plumbing.
    """
    m = model
    torch.manual_seed(seed)
    clip = build_clip_for(m, random_init=True)
    encoder = ReIDEncoder(clip, len(labels), sie_coef=m.sie_coef)
    meta = {"labels": {str(name): i for i, name in enumerate(labels)}, "image_ids": []}
    write_export(encoder.eval(), clip, m, Path(out_dir), meta)
    return Path(out_dir)


def gallery_and_new_photos(
    table: pd.DataFrame,
    image_root: str | Path,
    new_fraction: float = 0.2,
    photos_per_identity: int = 1,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a labelled table into a gallery and "new photos" to identify.

    A ``new_fraction`` share of identities is left out of the gallery entirely (their photos
    should come back as new individuals); of every other identity with more than
    ``photos_per_identity`` images, that many images become new photos of known individuals.
    Returns (gallery with identity/path, photos with path and the true identity + is_new).
    """
    df = table.reset_index(drop=True).copy()
    df["identity"] = df["identity"].astype(str)
    df["path"] = [str(Path(image_root) / p) for p in df["path"]]
    rng = np.random.default_rng(seed)
    ids = np.array(sorted(df["identity"].unique()))
    n_new = int(round(new_fraction * len(ids)))
    new_ids = set(rng.choice(ids, size=min(n_new, len(ids) - 1), replace=False).tolist())
    is_new = df["identity"].isin(new_ids)
    photos = df[is_new].index.tolist()
    for _, rows in df[~is_new].groupby("identity"):
        if len(rows) > photos_per_identity:
            photos += rng.choice(rows.index, size=photos_per_identity, replace=False).tolist()
    chosen = df.index.isin(photos)
    gallery = df.loc[~chosen, ["identity", "path"]].reset_index(drop=True)
    new_photos = df.loc[chosen, ["identity", "path"]].reset_index(drop=True)
    new_photos["is_new"] = new_photos["identity"].isin(new_ids)
    return gallery, new_photos


def score_results(results: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """How the identification did when the true identities are known (the demo's check)."""
    df = results.merge(truth, on="query", how="inner")
    df = df[df["error"].fillna("") == ""]
    known, new = df[~df["is_new"]], df[df["is_new"]]
    flagged = df["new_individual"].astype("boolean").fillna(False).astype(bool)
    return {
        "n_known_photos": len(known),
        "n_new_photos": len(new),
        "top1_accuracy_known": float((known["top1_identity"] == known["identity"]).mean()),
        "new_flagged_share": float(flagged[df["is_new"]].mean()) if len(new) else float("nan"),
        "known_flagged_share": float(flagged[~df["is_new"]].mean()) if len(known) else float("nan"),
    }
