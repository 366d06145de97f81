"""The content of a table's image files as one digest: what caches and resumes are keyed on,
so a photo replaced under the same name is never served stale."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any


def files_digest(table: Any, root: str | Path) -> str:
    """sha256 over the content of every row's image file, in row order: replacing a photo
    but keeping its name changes the digest (a missing file counts as such)."""
    h = hashlib.sha256()
    for digest in file_digests(table, root):
        h.update(digest.encode() + b"|")
    return h.hexdigest()


def file_digests(table: Any, root: str | Path) -> list[str]:
    """Each row's image file sha256 ("missing" for a file that is not there). The prepared
    tables carry them, so DVC re-runs a dataset's stages when a photo changes under its name."""
    out = []
    for rel in table["path"].astype(str):
        file = Path(root) / rel
        try:
            st = file.stat()
        except OSError:
            out.append("missing")
            continue
        out.append(_file_sha256(str(file), st.st_size, st.st_mtime_ns, st.st_ino))
    return out


@functools.lru_cache(maxsize=1 << 16)
def _file_sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """A file's sha256, read once per process while its size, time and inode stay the same
    (stage 1 asks for the same files' digest for its cache and for its run settings)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
