"""Evaluation protocols on the table: the paper's identity-disjoint query/gallery split and
leave-one-out (query == gallery, as for the paper's Stoat set).

Both draw the test identities with a seeded generator over the *sorted* identity names, so a
split depends only on (table content, seed), not on row order. Leave-one-out on a table that
already carries a released split (reid_folders' Stoat) keeps that split instead of drawing one.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from indivaid_core.data.images import DataError
from indivaid_core.data.table import (
    check_splits,
    query_identities_missing_from_gallery,
    validate_table,
)

PROTOCOLS = ("disjoint", "leave_one_out", "given")


def split_identities(
    df: pd.DataFrame, test_fraction: float = 0.5, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(train, test) identity names; at least one on each side."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    ids = np.array(sorted(df["identity"].astype(str).unique()))
    if len(ids) < 2:
        raise DataError(f"need at least 2 identities to split train/test, found {len(ids)}")
    n_test = int(np.clip(round(test_fraction * len(ids)), 1, len(ids) - 1))
    order = np.random.default_rng(seed).permutation(len(ids))
    return sorted(ids[order[n_test:]]), sorted(ids[order[:n_test]])


def paper_split(
    df: pd.DataFrame, test_fraction: float = 0.5, query_per_identity: int = 1, seed: int = 0
) -> pd.DataFrame:
    """Identity-disjoint train/test; each test identity gives `query_per_identity` query
    images and the rest go to the gallery.

    A test identity with n <= query_per_identity images gives n - 1 queries, so it always keeps
    a gallery image; one with a single test image goes to the gallery only (a distractor, as in
    the released protocols), never to the query side where it could not be matched.
    """
    if query_per_identity < 1:
        raise DataError(f"query_per_identity must be >= 1, got {query_per_identity}")
    _, test_ids = split_identities(df, test_fraction, seed)
    out = df.copy()
    test = out["identity"].astype(str).isin(test_ids)
    out["split"] = "train"
    query = _queries(out, test, query_per_identity, [seed, 1])
    out.loc[test, "split"] = np.where(query, "query", "gallery")
    return out


def _queries(
    df: pd.DataFrame, rows: pd.Series, query_per_identity: int, seed: list[int]
) -> np.ndarray:
    """Which of `rows` are queries: a seeded `query_per_identity` of each identity's images,
    at most all but one, so every queried identity keeps a gallery image."""
    key = pd.Series(np.random.default_rng(seed).random(len(df)), index=df.index)
    rank = key[rows].groupby(df.loc[rows, "identity"]).rank(method="first")
    size = df.loc[rows].groupby("identity")["identity"].transform("size")
    return (rank <= np.minimum(query_per_identity, size - 1)).to_numpy()


def leave_one_out_split(
    df: pd.DataFrame, test_fraction: float = 0.5, seed: int = 0
) -> pd.DataFrame:
    """Identity-disjoint train/test; every test image is a query against all other test images
    (split `test`; evaluation drops each query's self-match)."""
    _, test_ids = split_identities(df, test_fraction, seed)
    out = df.copy()
    out["split"] = np.where(out["identity"].astype(str).isin(test_ids), "test", "train")
    return out


def carve_validation(
    df: pd.DataFrame,
    val_individuals: int = 0,
    train_individuals: int = 0,
    query_per_identity: int = 1,
    seed: int = 0,
) -> pd.DataFrame:
    """Move `val_individuals` training individuals to a validation split and keep the first
    `train_individuals` of the rest (0 = all), dropping the others.

    Validation rows take the test protocol's split names behind `val_` (`val_query` and
    `val_gallery`, or `val_test` for leave-one-out), so every choice of a setting can be made
    on individuals disjoint from both sides. The training order is one seeded permutation, so
    smaller training sides are nested in larger ones: a data-scaling curve compares subsets,
    not different draws.
    """
    pool = np.array(sorted(df.loc[df["split"] == "train", "identity"].astype(str).unique()))
    need = val_individuals + max(train_individuals, 1)
    if val_individuals < 0 or train_individuals < 0 or need > len(pool):
        raise DataError(
            f"val_individuals {val_individuals} + train_individuals {train_individuals} need "
            f"{need} training individuals; the split has {len(pool)}"
        )
    order = pool[np.random.default_rng([seed, 2]).permutation(len(pool))]
    val_ids = set(order[:val_individuals])
    rest = order[val_individuals:]
    kept = set(rest[:train_individuals] if train_individuals else rest)
    ident = df["identity"].astype(str)
    is_train = df["split"] == "train"
    out = df[~is_train | ident.isin(kept | val_ids)].copy()
    val = out["identity"].astype(str).isin(val_ids) & (out["split"] == "train")
    if not val.any():
        return out.reset_index(drop=True)
    loo = (df["split"] == "test").any()
    if loo:
        out.loc[val, "split"] = "val_test"
    else:
        query = _queries(out, val, query_per_identity, [seed, 3])
        out.loc[val, "split"] = np.where(query, "val_query", "val_gallery")
    return out.reset_index(drop=True)


def validation_view(df: pd.DataFrame) -> pd.DataFrame:
    """The table with the validation individuals in the evaluation splits' place: training
    rows as they are, `val_*` rows renamed, test rows gone."""
    split = df["split"].astype(str)
    out = df[(split == "train") | split.str.startswith("val_")].copy()
    out["split"] = out["split"].astype(str).str.removeprefix("val_")
    if (out["split"] != "train").sum() == 0:
        raise DataError("the table has no validation rows: set val_individuals for the dataset")
    return out.reset_index(drop=True)


def given_leave_one_out(df: pd.DataFrame) -> pd.DataFrame:
    """Leave-one-out on a split the source already fixed (the released Stoat): its `train`
    rows as given, every other row one query == gallery `test` set.

    Re-drawing would discard the released training identities and, where query/ and gallery/
    hold the same files, score copies of one image against each other. Rows are not
    duplicated: the reid_folders adapter already merged Stoat's identical query/gallery.
    """
    out = df.copy()
    out["split"] = np.where(out["split"].astype(str) == "train", "train", "test")
    return out


def train_identities(df: pd.DataFrame, min_images: int = 2) -> list[str]:
    """Training identities with at least `min_images` images; warns about the excluded ones
    (a single image has no positive to learn from, but it is fine in the test set)."""
    train = df[df["split"] == "train"] if "split" in df else df
    counts = train["identity"].astype(str).value_counts()
    dropped = sorted(counts.index[counts < min_images])
    if dropped:
        warnings.warn(
            f"{len(dropped)} training identities have fewer than {min_images} images and are "
            f"excluded from training: {dropped[:5]}",
            stacklevel=2,
        )
    return sorted(counts.index[counts >= min_images])


def train_rows(df: pd.DataFrame, min_images: int = 2) -> pd.DataFrame:
    """The training rows of the identities kept by `train_identities`."""
    train = df[df["split"] == "train"] if "split" in df else df
    keep = train_identities(df, min_images)
    return train[train["identity"].astype(str).isin(keep)].reset_index(drop=True)


def prepare_table(
    df: pd.DataFrame,
    protocol: str = "disjoint",
    test_fraction: float = 0.5,
    query_per_identity: int = 1,
    seed: int = 0,
    root: str | Path = ".",
    check_images: bool = True,
    min_train_images: int = 2,
    allow_outside_root: bool = False,
    val_individuals: int = 0,
    train_individuals: int = 0,
) -> pd.DataFrame:
    """Validate a dataset table and give it a `split` column under `protocol`.

    protocol: `disjoint` (paper_split), `leave_one_out` or `given` (keep the existing split
    column, e.g. from the released train/query/gallery folders). `leave_one_out` draws a split
    (leave_one_out_split) when the table has no `split` column; when it has one (a released
    split, e.g. Stoat's), that split's train rows are kept and the rest become one `test` set
    (given_leave_one_out), so the released training identities are used as given.
    The returned frame carries `attrs["query_identities_without_match"]`.
    """
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol '{protocol}'; valid: {list(PROTOCOLS)}")
    if protocol == "given" and "split" not in df:
        raise DataError("protocol 'given' needs a 'split' column; the table has none")
    checked = validate_table(
        df,
        root,
        check_images=check_images,
        require_train=False,
        source="dataset",
        allow_outside_root=allow_outside_root,
    )
    if protocol == "disjoint":
        checked = paper_split(checked, test_fraction, query_per_identity, seed)
    elif protocol == "leave_one_out" and "split" in checked:
        checked = given_leave_one_out(checked)
    elif protocol == "leave_one_out":
        checked = leave_one_out_split(checked, test_fraction, seed)
    if val_individuals or train_individuals:
        checked = carve_validation(
            checked,
            val_individuals=val_individuals,
            train_individuals=train_individuals,
            query_per_identity=query_per_identity,
            seed=seed,
        )
    check_splits(checked, f"{protocol} split")
    missing = query_identities_missing_from_gallery(checked)
    unchanged = "split" in df and checked["split"].tolist() == df["split"].astype(str).tolist()
    if missing and not unchanged:  # validate_table already warned about an unchanged split
        warnings.warn(
            f"{len(missing)} test identities have no match to find and are skipped at "
            f"evaluation: {missing[:5]}",
            stacklevel=2,
        )
    checked.attrs["query_identities_without_match"] = len(missing)
    train_identities(checked, min_train_images)  # warns about single-image training identities
    return checked
