"""The prepare stage: a dataset through its adapter, validated, split, written as a table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from indivaid_core.config import Config
from indivaid_core.data import load_dataset, prepare_table, train_rows
from indivaid_core.data.adapters import read_metadata_csv
from indivaid_core.data.digest import file_digests
from indivaid_core.repro.paths import Paths
from indivaid_core.safe_io import write_csv


def prepare(cfg: Config, dataset: str) -> pd.DataFrame:
    """Read a dataset through its adapter, validate it, split it, write the table."""
    ds = cfg.dataset(dataset)
    paths = Paths(cfg, dataset)
    df, root = load_dataset(ds.adapter, ds.path, Path(cfg.data.root))
    if cfg.data.max_identities:
        keep = sorted(df["identity"].astype(str).unique())[: cfg.data.max_identities]
        df = df[df["identity"].astype(str).isin(keep)].reset_index(drop=True)
    df = prepare_table(
        df,
        ds.protocol,
        ds.test_fraction,
        ds.query_per_identity,
        cfg.seed,
        root,
        allow_outside_root=cfg.data.allow_outside_root,
        val_individuals=ds.val_individuals,
        train_individuals=ds.train_individuals,
    )
    df["image_root"] = str(Path(root))
    df["file_sha256"] = file_digests(df, root)  # the table changes when a photo does
    write_csv(df, paths.table, index=False)
    return df


def read_table(cfg: Config, dataset: str) -> pd.DataFrame:
    path = Paths(cfg, dataset).table
    if not path.exists():
        raise FileNotFoundError(f"{path}: run the prepare stage first (dvc repro prepare)")
    return read_metadata_csv(path)


def train_split(table: pd.DataFrame) -> pd.DataFrame:
    """Training rows, minus identities with a single image (warned about): nothing to contrast."""
    return train_rows(table)
