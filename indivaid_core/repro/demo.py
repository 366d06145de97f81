"""The identification demo over the pipeline's outputs: a model, a gallery and new photos.

Real run: the first seed's trained export of a variant and the dataset's test identities.
Tiny run: a random export on a few identities (`indivaid_core.identify.demo`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from indivaid_core.config import Config
from indivaid_core.data.table import EVAL_SPLITS
from indivaid_core.identify.demo import gallery_and_new_photos, random_export, score_results
from indivaid_core.repro.paths import Paths
from indivaid_core.repro.prepare import read_table
from indivaid_core.repro.synthetic import generate_preset, tiny_preset
from indivaid_core.safe_io import write_csv

__all__ = ["gallery_and_new_photos", "prepare_demo", "random_export", "score_results"]


def prepare_demo(
    cfg: Config,
    dataset: str,
    variant: str,
    tiny: bool,
    out_dir: str | Path,
    new_fraction: float = 0.2,
    tiny_identities: int = 6,
    tiny_images: int = 3,
    tiny_image_size: int = 48,
    seed: int = 0,
) -> dict:
    """Model folder, gallery CSV and a folder of "new photos" with their true identities.

    Real run: the trained export of ``variant`` (its first seed) and the dataset's test
    identities (never seen in training). Tiny run: a random export, and the first identities
    of the embedded suite when ``data/`` holds it, else a freshly generated few-individual set.
    """
    out_dir = Path(out_dir)
    if tiny:
        table, root = _tiny_table(
            cfg,
            dataset,
            out_dir / "data",
            identities=tiny_identities,
            images=tiny_images,
            image_size=tiny_image_size,
            seed=seed,
        )
        model_dir = random_export(
            out_dir / "model", cfg.model, sorted(table["identity"].astype(str).unique()), seed
        )
    else:
        model_dir = Paths(cfg, dataset).stage2(variant, cfg.pipeline.seeds[0])
        full = read_table(cfg, dataset)
        table = full[full["split"].isin(EVAL_SPLITS)]  # test individuals only
        root = Paths.image_root(full)
    gallery, photos = gallery_and_new_photos(table, root, new_fraction, seed=seed)
    return {"model_dir": Path(model_dir), **_write_demo(out_dir, gallery, photos)}


def _tiny_table(
    cfg: Config,
    dataset: str,
    data_dir: Path,
    *,
    identities: int,
    images: int,
    image_size: int,
    seed: int,
) -> tuple[pd.DataFrame, Path]:
    """(table, image root) of the first `identities` of the embedded suite when `data/` holds
    it, else of a few-individual set generated into `data_dir`."""
    csv = Path(cfg.data.root) / cfg.dataset(dataset).path
    if csv.is_file():
        table = pd.read_csv(csv, dtype={"identity": str})
        keep = sorted(table["identity"].unique())[:identities]
        return table[table["identity"].isin(keep)], csv.parent
    table = generate_preset(
        data_dir, tiny_preset(dataset, identities, images), seed=seed, image_size=image_size
    )
    return table, data_dir


def _write_demo(out_dir: Path, gallery: pd.DataFrame, photos: pd.DataFrame) -> dict:
    """Copy the new photos into `out_dir/new_photos` (a fresh folder) and write the gallery
    CSV; their paths and the photos' true identities."""
    photos_dir = out_dir / "new_photos"
    if photos_dir.exists():
        shutil.rmtree(photos_dir)
    photos_dir.mkdir(parents=True)
    copies = [photos_dir / f"{i:04d}_{Path(p).name}" for i, p in enumerate(photos["path"])]
    for src, dst in zip(photos["path"], copies, strict=True):
        shutil.copy(src, dst)
    gallery_csv = out_dir / "gallery.csv"  # paths relative to the CSV, as a user would write
    relative = gallery.assign(path=[os.path.relpath(p, out_dir) for p in gallery["path"]])
    write_csv(relative, gallery_csv, index=False)
    truth = pd.DataFrame(
        {
            "query": [str(c) for c in copies],
            "identity": photos["identity"],
            "is_new": photos["is_new"],
        }
    )
    return {"gallery_csv": gallery_csv, "photos_dir": photos_dir, "truth": truth}
