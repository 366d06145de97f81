"""Running `indivaid` in a test and reading its one-line refusals (shared by the CLI tests)."""

from __future__ import annotations

from pathlib import Path

from indivaid_core import cli


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
