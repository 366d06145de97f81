"""Photos in, features out, with every bad file reported on its own and the rest still run."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from indivaid_core.data.adapters import from_identity_folders, from_wildlife_metadata
from indivaid_core.data.images import DataError, load_rgb
from indivaid_core.photos import SUFFIXES as IMAGE_SUFFIXES
from indivaid_core.photos import (
    BadInputWarning,
    InputNoteWarning,
    file_hash,
    is_hidden,
    tidy_gallery,
    warn_empty_folders,
)
from indivaid_core.photos import warn as warn_once

__all__ = ["IMAGE_SUFFIXES", "BadInputWarning", "InputNoteWarning", "collect_files", "read_gallery"]


def collect_files(
    sources: Iterable[str | Path], suffixes: Sequence[str] = IMAGE_SUFFIXES
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to query, and (path, error) for what cannot be: missing paths, empty folders,
    files in folders that are not images by their suffix, and files named with a suffix that
    is not accepted (the same types as `train` and `index`, see indivaid_core.photos). Hidden
    files and folders are skipped with a count; a file given twice is queried once.
    """
    files: list[Path] = []
    errors: list[tuple[str, str]] = []
    hidden: list[str] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            every = sorted(f for f in p.rglob("*") if f.is_file())
            hidden += [str(f) for f in every if is_hidden(f.relative_to(p))]
            found = [f for f in every if not is_hidden(f.relative_to(p))]
            images = [f for f in found if f.suffix.lower() in suffixes]
            errors += [
                (str(f), f"not an image file (suffix {f.suffix or 'none'!r})")
                for f in found
                if f.suffix.lower() not in suffixes
            ]
            errors += [
                (str(f), "broken link: its target is missing")
                for f in sorted(p.rglob("*"))
                if f.is_symlink() and not f.exists()
            ]
            if not images:
                errors.append((str(p), "folder holds no image files"))
            files += images
        elif p.is_file() and p.suffix.lower() not in suffixes:
            errors.append((str(p), f"not an accepted image type; accepted: {' '.join(suffixes)}"))
        elif p.is_file():
            files.append(p)
        else:
            errors.append((str(p), "no such file or folder"))
    warn_once("identify", "skipped hidden files or folders", hidden)
    return _once(files), errors


def _once(files: list[Path]) -> list[Path]:
    """`files` without a second mention of the same file; copies with the same content are
    kept (they may be different sightings) but pointed out."""
    seen: dict[str, Path] = {}
    again: list[str] = []
    for f in files:
        key = os.path.realpath(f)
        if key in seen:
            again.append(str(f))
        else:
            seen[key] = f
    warn_once("identify", "skipped queries given more than once", again)
    unique = list(seen.values())
    by_content: dict[str, list[str]] = {}
    for f in unique:
        by_content.setdefault(file_hash(f) or str(f), []).append(str(f))
    same = [p for group in by_content.values() if len(group) > 1 for p in group]
    note = "queries with the same content as another (each kept)"
    warn_once("identify", note, same, InputNoteWarning)
    return unique


def read_gallery(source: str | Path, root: str | Path | None = None) -> pd.DataFrame:
    """Labelled gallery images as a table with ``identity`` and absolute ``path``.

    ``source`` is a folder of identity sub-folders (``root/<identity>/<image>``) or a CSV in the
    wildlife-datasets metadata format (``identity``, ``path`` relative to ``root``, which
    defaults to the CSV's folder, or absolute, as the review page exports them).

    Paths are stored absolute (not relative to an image root the index records) because the
    gallery photos rarely move but the index and the folder `identify` runs from do, and one
    index may grow from several folders (``index add``): an absolute path names its file from
    anywhere, without a root per addition. The vectors, not the photos, are what is searched.
    """
    source = Path(source)
    if source.is_dir():
        df, base = _adapter_result(from_identity_folders(source), source)
    elif source.is_file() and source.suffix.lower() == ".csv":
        base_root = Path(root) if root is not None else source.parent
        df, base = _adapter_result(from_wildlife_metadata(source, base_root), base_root)
    elif source.exists():
        raise DataError(f"{source}: gallery images must be a folder of identity folders or a CSV")
    else:
        raise FileNotFoundError(f"{source}: no such gallery folder or CSV")
    for col in ("identity", "path"):
        if col not in df:
            raise DataError(f"{source}: gallery table has no {col!r} column; it has {list(df)}")
    out = tidy_gallery(df[["identity", "path"]], base, source)
    if source.is_dir():
        warn_empty_folders(source, out)
    out["path"] = [os.path.abspath(Path(base) / p) for p in out["path"]]
    return out.reset_index(drop=True)


def _adapter_result(result, default_root: Path) -> tuple[pd.DataFrame, Path]:
    """Adapters return a table, or (table, image root)."""
    if isinstance(result, tuple):
        return result[0], Path(result[1])
    return result, default_root


class _Images(torch.utils.data.Dataset):
    """Already-decoded images of one chunk, as the dicts extract_features expects."""

    def __init__(self, images: list[torch.Tensor]):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "index": i}


def embed_files(
    encode,
    transform,
    paths: Sequence[str | Path],
    device: torch.device,
    feature: str,
    flip: bool = False,
    batch_size: int = 64,
    chunk: int = 512,
    amp: bool = True,
    draft: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, list[bool], dict[str, str]]:
    """Features of the readable files, a per-file ok mask and {path: error} for the others.

    Files are decoded in chunks (bounded memory); a file that fails to decode (not an image,
    truncated, unreadable, over the pixel limit) is recorded with the reader's message and
    skipped. `draft` (W, H) decodes JPEGs at a reduced scale no smaller than that, so a JPEG
    over the pixel limit (a 105 MP phone photo) is read too (see data.images.load_rgb).
    """
    # Here, not at the top: the evaluation package brings matplotlib, and reading a gallery
    # or listing the queries needs none of it.
    from indivaid_core.evaluate.features import extract_features

    feats: list[torch.Tensor] = []
    ok: list[bool] = []
    errors: dict[str, str] = {}
    for start in tqdm(
        range(0, len(paths), chunk), desc="images", leave=False, disable=len(paths) <= chunk
    ):
        images = []
        for p in paths[start : start + chunk]:
            try:
                images.append(transform(load_rgb(p, draft, reduce_large=True)))
                ok.append(True)
            except Exception as err:  # noqa: BLE001 - any decoder failure is this file's error
                errors[str(p)] = f"{type(err).__name__}: {err}"
                ok.append(False)
        if images:
            loader = torch.utils.data.DataLoader(_Images(images), batch_size=batch_size)
            feats.append(
                extract_features(encode, loader, device, amp=amp, flip=flip, feature=feature)
            )
    dim = feats[0].shape[1] if feats else 0
    return (torch.cat(feats) if feats else torch.empty(0, dim)), ok, errors
