"""One rule for the photos that `train`, `index build/add` and `identify` read.

- Accepted types: the pipeline's (IMAGE_EXTENSIONS); .gif, .mpo and others are skipped.
- Hidden files and folders (a name starting with "."), Thumbs.db and desktop.ini are skipped.
- Unreadable photos are skipped; a command left with nothing usable fails naming the problem.
- Identity names are stripped of surrounding spaces and put in Unicode NFC.
- Duplicate rows are dropped; the same photo under two identities and an empty identity
  folder are pointed out.
Each kind of skip is one warning line with a count and the first few names.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

#: The image types every reader accepts, the pipeline's included (data.images takes them from
#: here): this module imports nothing heavy, so `--help` can show them.
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
JUNK_NAMES = ("Thumbs.db", "desktop.ini")
SHOWN = 3
POLICY = (
    "Photos: accepted types are "
    + " ".join(SUFFIXES)
    + " (others, .gif and .mpo included, are skipped); hidden files and folders are skipped; "
    "unreadable photos are skipped; each kind of skip is one warning with a count and the "
    "first names. Identity names are stripped and put in Unicode NFC; duplicates are warned "
    "about. Nothing usable left: exit 2."
)


class BadInputWarning(UserWarning):
    """A file or folder that was skipped; the run goes on without it."""


class InputNoteWarning(UserWarning):
    """Something kept as given but worth a look: a duplicate, a normalised name."""


def listed(items: Sequence[object], n: int = SHOWN) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def warn(
    where: object,
    what: str,
    items: Sequence[object],
    category: type = BadInputWarning,
    tail: str = "",
) -> None:
    """One line: `<where>: <what> (<count>): first, second, third and N more<tail>`."""
    if items:
        warnings.warn(f"{where}: {what} ({len(items)}): {listed(items)}{tail}", category, 3)


def is_hidden(rel: str | Path) -> bool:
    parts = Path(rel).parts
    return any(p.startswith(".") and p not in (".", "..") for p in parts) or (
        bool(parts) and parts[-1] in JUNK_NAMES
    )


def accepted(path: str | Path) -> bool:
    return Path(path).suffix.lower() in SUFFIXES


def clean_identity(name: object) -> str:
    return unicodedata.normalize("NFC", str(name).strip())


def file_hash(path: str | Path) -> str:
    """sha256 of the file's bytes ("" when unreadable): renamed or moved copies still match."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def _rel(path: str, base: Path) -> str:
    """The part of `path` that is the user's layout: relative to `base` when inside it."""
    p = Path(path)
    if not p.is_absolute():
        return str(p)
    try:
        return str(p.relative_to(base))
    except ValueError:
        return p.name


def tidy_gallery(table: pd.DataFrame, base: str | Path, source: object) -> pd.DataFrame:
    """A labelled table (`identity`, `path` relative to `base` or absolute) after the rules
    above, with one warning per kind of change. Rows are dropped, never added."""
    import pandas as pd

    base = Path(os.path.abspath(base))
    df = table.copy()
    raw = list(df["identity"].astype(str))
    clean = [clean_identity(n) for n in raw]
    df["identity"] = clean
    changed = sorted({f"{r!r} -> {c!r}" for r, c in zip(raw, clean, strict=True) if r != c})
    note = "identity names normalised (surrounding spaces, Unicode NFC)"
    warn(source, note, changed, InputNoteWarning)
    rel = [_rel(str(p), base) for p in df["path"]]
    hidden = [is_hidden(r) for r in rel]
    shown = {r for r, h in zip(rel, hidden, strict=True) if h}
    if Path(source).is_dir():  # the folder reader drops hidden files without a word
        shown |= set(hidden_below(Path(source)))
    warn(source, "skipped hidden files or folders", sorted(shown))
    wrong = [not h and not accepted(r) for r, h in zip(rel, hidden, strict=True)]
    warn(
        source,
        "skipped files of an unaccepted type",
        [r for r, w in zip(rel, wrong, strict=True) if w],
        tail=f"; accepted: {' '.join(SUFFIXES)}",
    )
    keep = [not (h or w) for h, w in zip(hidden, wrong, strict=True)]
    df = df[pd.Series(keep, index=df.index, dtype=bool)]  # a bare [] would select columns
    resolved = pd.Series([os.path.realpath(base / p) for p in df["path"]], index=df.index)
    dup = pd.Series(list(zip(df["identity"], resolved, strict=True)), index=df.index).duplicated()
    warn(source, "skipped duplicate rows (same identity and photo)", list(df.loc[dup, "path"]))
    df, resolved = df[~dup], resolved[~dup]
    content = [file_hash(p) or p for p in resolved]
    per = pd.DataFrame({"h": content, "identity": df["identity"].to_numpy()})
    many = per.groupby("h")["identity"].nunique()
    shared = [str(p) for p, h in zip(df["path"], content, strict=True) if many.get(h, 0) > 1]
    note = "photos found under more than one identity (kept under each)"
    warn(source, note, shared, InputNoteWarning)
    return df.reset_index(drop=True)


def hidden_below(folder: Path) -> list[str]:
    """Hidden files inside the identity folders of `folder`, and hidden entries at its top
    (a hidden top-level folder counts once: it may be a whole .git)."""
    out = []
    for entry in folder.iterdir():
        if is_hidden(entry.name):
            out.append(entry.name)
        elif entry.is_dir():
            out += [
                f.relative_to(folder).as_posix()
                for f in entry.rglob("*")
                if f.is_file() and is_hidden(f.relative_to(folder))
            ]
    return out


def warn_empty_folders(folder: str | Path, table: pd.DataFrame) -> None:
    """Identity sub-folders of `folder` that gave no photo."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    used = set(table["identity"])
    empty = sorted(
        d.name
        for d in folder.iterdir()
        if d.is_dir() and not is_hidden(d.name) and clean_identity(d.name) not in used
    )
    warn(folder, "identity folders without usable photos, left out", empty)


def warn_unreadable(where: object, errors: Sequence[tuple[str, str]], listed_in: str = "") -> None:
    """One line for every photo that could not be read, the same for every command: the
    count, the first names, the first error, and where the whole list is (`listed_in`)."""
    if errors:
        tail = f"; first error: {errors[0][1]}"
        tail += f"; all {len(errors)} are listed in {listed_in}" if listed_in else ""
        warn(where, "skipped unreadable photos", [p for p, _ in errors], tail=tail)


def readable(table: pd.DataFrame, base: str | Path, source: object) -> pd.DataFrame:
    """Rows whose photo decodes (all are tried; every bad one is counted in one warning)."""
    from indivaid_core.data.images import load_rgb

    bad: list[tuple[str, str]] = []
    for p in table["path"]:
        try:
            load_rgb(Path(base) / p, (32, 32))
        except Exception as err:  # noqa: BLE001 - any decoder failure is this file's error
            bad.append((str(p), f"{type(err).__name__}: {err}"))
    warn_unreadable(source, bad)
    names = {p for p, _ in bad}
    return table[~table["path"].astype(str).isin(names)].reset_index(drop=True)
