"""Running `indivaid` in a test and reading its one-line refusals (shared by the CLI tests)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from indivaid_core import cli
from indivaid_core.config import Config
from indivaid_core.identify.demo import random_export


def run_main(*args: str | Path, capsys) -> tuple[int, str]:
    """`indivaid ARGS` in this process: (exit status, stderr)."""
    rc = cli.main([str(a) for a in args])
    return rc, capsys.readouterr().err


def run_main_out(*args: str | Path, capsys) -> tuple[int, str, str]:
    """`indivaid ARGS` in this process: (exit status, stdout, stderr)."""
    rc = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_line(err: str, *needles: str) -> str:
    """The single `error:` line of a refusal, which names each of `needles`."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def user_folder(root: Path, table: pd.DataFrame, images: Path, cfg: Config) -> Path:
    """A user's folder: `gal/<identity>/*.jpg` from the tiny suite, and a random export `model`."""
    for ident, rows in table.groupby("identity", sort=True):
        (root / "gal" / ident).mkdir(parents=True)
        for rel in rows["path"]:
            shutil.copy(images / rel, root / "gal" / ident / Path(rel).name)
    random_export(root / "model", cfg.model, sorted(table["identity"].unique()), seed=0)
    return root
