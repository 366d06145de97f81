"""Growing a gallery safely: the same photo is indexed once, and a name that differs from a
known individual's only in case, spaces or Unicode form is pointed out before it becomes a
second individual."""

from __future__ import annotations

import unicodedata
import warnings

import pandas as pd

from indivaid_core.identify.inputs import BadInputWarning
from indivaid_core.photos import file_hash as content_hash

HASH_COLUMN = "sha256"


class SimilarNameWarning(BadInputWarning):
    """A new identity name that looks like a known one written differently."""


def with_hashes(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with a sha256 column, computed for the rows that lack one (older indexes)."""
    out = table.copy()
    if HASH_COLUMN not in out:
        out[HASH_COLUMN] = ""
    out[HASH_COLUMN] = out[HASH_COLUMN].fillna("").astype(str)
    todo = out[HASH_COLUMN] == ""
    out.loc[todo, HASH_COLUMN] = [content_hash(p) for p in out.loc[todo, "path"]]
    return out


def skip_indexed(gallery: pd.DataFrame, new: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Rows of `new` whose file content is neither in `gallery` nor earlier in `new`, and how
    many were skipped. Unreadable files are kept: the embedder reports them as errors."""
    new = with_hashes(new)
    known = set(gallery[HASH_COLUMN]) - {""}
    h = new[HASH_COLUMN]
    dup = (h.isin(known) | h.duplicated()) & (h != "")
    return new[~dup].reset_index(drop=True), int(dup.sum())


def name_key(name: str) -> str:
    """What a person would call the same name: Unicode NFKC, case folded, spaces dropped."""
    return "".join(unicodedata.normalize("NFKC", name).casefold().split())


def warn_similar_names(known: pd.Series, new: pd.Series, source: str) -> None:
    """Warn, with a did-you-mean, for each new name that only differs in form from a known one."""
    by_key: dict[str, str] = {}
    for name in dict.fromkeys(known.astype(str)):
        by_key.setdefault(name_key(name), name)
    names = set(known.astype(str))
    for name in dict.fromkeys(new.astype(str)):
        match = by_key.get(name_key(name))
        if name not in names and match is not None:
            warnings.warn(
                f"{source}: identity '{name}' differs from the known individual '{match}' only "
                f"in case, spaces or Unicode form; did you mean '{match}'? It was added as a "
                "new individual",
                SimilarNameWarning,
                stacklevel=2,
            )
