"""A copy of the working tree as git sees it, for runs that must not touch this checkout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def copy_worktree(src: Path, dst: Path, skip: tuple[str, ...] = ("reports/", "metrics/")) -> None:
    """Tracked and untracked-but-not-ignored files of `src` into `dst` (a new git repo there).

    Paths starting with one of `skip` are left out: the committed outputs, so that a run in the
    copy cannot be mistaken for them.
    """
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=src,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for rel in filter(None, out.split("\0")):
        if (src / rel).is_file() and not rel.startswith(skip):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
