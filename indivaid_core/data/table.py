"""The one table contract every dataset is turned into (wildlife-datasets columns).

One pandas DataFrame per dataset, one row per image:
- required: `image_id` (unique str), `identity` (str), `path` (relative to an image root);
- optional: `date`, `species`, `viewpoint`, `camera` (int or str), `bbox` ([x, y, w, h]);
- project: `split` (`train`, `query`, `gallery`, or `test` for leave-one-out where
  query == gallery; `val_` before an evaluation split marks the validation individuals)
  and condition columns (`daynight`, `viewpoint`, `occlusion`, `camera`).

`validate_table` checks all of it up front, so bad input fails here with the row and file
named, never deep inside training.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from indivaid_core.data.images import DataError, load_rgb

REQUIRED = ("image_id", "identity", "path")
OPTIONAL = ("date", "species", "viewpoint", "camera", "bbox", "split")
CONDITIONS = ("daynight", "viewpoint", "occlusion", "camera")
EVAL_SPLITS = ("query", "gallery", "test")
VAL_SPLITS = tuple(f"val_{s}" for s in EVAL_SPLITS)  # settings are chosen on these, never test
SPLITS = ("train", *EVAL_SPLITS, *VAL_SPLITS)
MAX_LISTED = 5  # how many offending rows an error message lists


def _rows(df: pd.DataFrame, mask: pd.Series, what: str) -> str:
    bad = df[mask]
    shown = ", ".join(
        f"row {i} (image_id {r.image_id!r}, path {r.path!r})"
        for i, r in zip(bad.index[:MAX_LISTED], bad.itertuples(), strict=False)
    )
    more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    return f"{len(bad)} {what}: {shown}{more}"


def check_columns(df: pd.DataFrame, source: str = "table") -> pd.DataFrame:
    """Required columns present and non-null, ids unique; returns a copy with str columns."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing required column(s) {missing}; has {list(df.columns)}")
    df = df.reset_index(drop=True).copy()
    for col in REQUIRED:
        null = df[col].isna() | (df[col].astype(str).str.strip() == "")
        if null.any():
            rows = list(df.index[null][:MAX_LISTED])
            raise DataError(
                f"{source}: empty '{col}' in {int(null.sum())} row(s), e.g. rows {rows}"
            )
        df[col] = df[col].astype(str)
    dup = df["image_id"].duplicated(keep=False)
    if dup.any():
        raise DataError(f"{source}: " + _rows(df, dup, "rows with a duplicate image_id"))
    return df


def check_splits(df: pd.DataFrame, source: str = "table", require_train: bool = True) -> None:
    """Split values known; train (if required) and the evaluation splits non-empty."""
    if "split" not in df:
        return
    bad = ~df["split"].isin(SPLITS)
    if bad.any():
        raise DataError(
            f"{source}: "
            + _rows(df, bad, f"rows with an unknown split (valid: {list(SPLITS)})")
            + f"; values {sorted(df.loc[bad, 'split'].astype(str).unique())}"
        )
    present = set(df["split"])
    evals = ("query", "gallery") if present & {"query", "gallery"} else ("test",)
    for need in (("train",) if require_train else ()) + evals:
        if need not in present:
            why = ""
            if need in ("query", "test") and (df["identity"].value_counts() < 2).all():
                why = (
                    "; every identity has a single image, and a query needs another image "
                    "of its individual to be found"
                )
            raise DataError(
                f"{source}: split '{need}' is empty (splits present: {sorted(present)}){why}"
            )


def query_identities_missing_from_gallery(df: pd.DataFrame) -> list[str]:
    """Query identities with no true match to find.

    With query/gallery splits: query identities absent from the gallery. With a `test` split
    (query == gallery, the self-match removed): identities with a single test image.
    """
    if "split" not in df:
        return []
    if (df["split"] == "query").any():
        gallery = set(df.loc[df["split"] == "gallery", "identity"])
        return sorted(set(df.loc[df["split"] == "query", "identity"]) - gallery)
    counts = df.loc[df["split"] == "test", "identity"].value_counts()
    return sorted(counts.index[counts == 1])


def check_inside_root(
    df: pd.DataFrame,
    root: str | Path,
    source: str,
    fix: str = "set data.allow_outside_root: true to read them anyway",
) -> None:
    """Paths are relative and stay under the data root: `../x.jpg` or `/etc/...` in a table
    someone sent you would read files outside the dataset without a word."""
    root = Path(root).resolve()
    outside = pd.Series(
        [
            Path(p).is_absolute() or not (root / p).resolve().is_relative_to(root)
            for p in df["path"]
        ],
        index=df.index,
    )
    if outside.any():
        raise DataError(
            f"{source}: " + _rows(df, outside, f"path(s) outside the data root {root}") + f"; {fix}"
        )


def check_files(
    df: pd.DataFrame,
    root: str | Path,
    check_images: bool,
    source: str,
    allow_outside_root: bool = False,
) -> None:
    """Every path exists (and, with check_images, fully decodes to RGB)."""
    if not allow_outside_root:
        check_inside_root(df, root, source)
    root = Path(root)
    exists = pd.Series([(root / p).is_file() for p in df["path"]], index=df.index)
    if not exists.all():
        raise DataError(f"{source}: " + _rows(df, ~exists, f"missing file(s) under {root}"))
    if not check_images:
        return
    errors = []
    for i, rel in enumerate(tqdm(df["path"], desc=f"checking {source}", unit="img", leave=False)):
        try:
            load_rgb(root / rel)
        except DataError as exc:
            errors.append(f"row {i} (image_id {df['image_id'].iloc[i]!r}): {exc}")
    if errors:
        more = f" and {len(errors) - MAX_LISTED} more" if len(errors) > MAX_LISTED else ""
        raise DataError(
            f"{source}: {len(errors)} unreadable image(s): " + "; ".join(errors[:MAX_LISTED]) + more
        )


def validate_table(
    df: pd.DataFrame,
    root: str | Path,
    check_images: bool = True,
    source: str = "table",
    require_train: bool = True,
    allow_outside_root: bool = False,
) -> pd.DataFrame:
    """Check the contract; return a clean copy (str ids, 0..n-1 index) or raise DataError.

    Errors (naming rows and files): missing required column, empty required value, duplicate
    image_id, unknown split value, empty split, missing file, unreadable or truncated image.
    Query identities without a gallery match are not an error (real datasets have them): they
    are warned about and counted in `df.attrs["query_identities_without_match"]`.
    """
    df = check_columns(df, source)
    check_splits(df, source, require_train)
    check_files(df, root, check_images, source, allow_outside_root)
    missing = query_identities_missing_from_gallery(df)
    df.attrs["query_identities_without_match"] = len(missing)
    if missing:
        warnings.warn(
            f"{source}: {len(missing)} query identities have no match in the gallery and are "
            f"skipped at evaluation: {missing[:MAX_LISTED]}",
            stacklevel=2,
        )
    return df
