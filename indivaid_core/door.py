"""The door of the `indivaid` command: arguments checked before any work, and how it ends.

Every option is checked here by its command-line name before a model is loaded or a photo
embedded, with one rule for every command (an option that a command lacks is skipped). How a
run ends is decided here too: a user's error is one line and exit 2, Ctrl-C or SIGTERM is one
line and 128 + the signal's number (outputs are written whole or not at all, so nothing is
left half-written), and anything else is a bug: its traceback and where to report it, exit 1.
"""

from __future__ import annotations

import argparse
import errno
import math
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEVICES = ("auto", "cpu", "cuda")
# Options that count something: 0 or less crashes FAISS (SIGABRT), or silently misleads.
AT_LEAST_ONE = (
    "top_k",
    "batch_size",
    "calibration_repeats",
    "nlist",
    "nprobe",
    "hnsw_m",
    "ef_search",
    "max_pixels",
)
# A full disk, a read-only folder or a file-size limit is the user's to fix, whichever path
# it hits.
ENVIRONMENT_ERRNOS = (
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EFBIG,
)
ENVIRONMENT_FIXES = {
    errno.EFBIG: "a file-size limit (ulimit -f) or the disk's format (FAT) refuses a file this "
    "large; raise the limit or choose a folder on another disk",
}
BUG = (
    "error: this is a bug in indivaid, not a problem with your input. Please report it on "
    "the project's issue tracker with the command you ran and the traceback above"
)


class UsageError(ValueError):
    """A command-line option out of range; the message names the option and what it takes."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `finally` and atomic write cleans up."""


def option(name: str) -> str:
    """`top_k` -> `--top-k`: errors name options as the user typed them."""
    return "--" + name.replace("_", "-")


def check_args(args: argparse.Namespace) -> None:
    """Refuse out-of-range options before any work, each named by its command-line name."""
    for name in AT_LEAST_ONE:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"{option(name)} {value}: expected 1 or more")
    threshold = getattr(args, "threshold", None)
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise UsageError(f"--threshold {threshold}: expected a finite distance, 0 or more")
    typed = getattr(args, "new_threshold", None)  # `index set-threshold INDEX THRESHOLD`
    if typed is not None:
        parse_distance(typed, f"index set-threshold {args.index}: THRESHOLD")
    split = getattr(args, "calibrate_split", None)
    if threshold is None and split is not None and not 0 < split < 1:
        raise UsageError(f"--calibrate-split {split}: expected a fraction between 0 and 1")
    if getattr(args, "device", None) is not None:
        check_device(args.device, f"--device {args.device} (command line)")
    if getattr(args, "allow_outside_root", None) is False:
        check_gallery_inside_root(args.images, args.root)
    out = getattr(args, "out", None)
    if getattr(args, "command", None) == "identify" and out and Path(out).is_dir():
        raise UsageError(f"--out {out}: is a folder; give the CSV file to write")


def parse_distance(text: str, name: str) -> float:
    """A new-individual distance typed as text: a finite number, 0 or more. Anything else is
    one line naming `name`, not argparse's usage block (the value is a positional)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"{name} {text!r} is not a distance; expected a finite number, 0 or more")
    return value


def check_device(value: str, source: str) -> None:
    """`auto`, `cpu`, `cuda` or `cuda:N`, and CUDA only where a GPU is visible; the message
    names where the value came from (an option, --set, or a settings file)."""
    kind, _, ordinal = str(value).partition(":")
    if kind not in DEVICES or (ordinal and (kind != "cuda" or not ordinal.isdigit())):
        raise UsageError(f"{source}: not a device; use one of {', '.join(DEVICES)}")
    if kind == "cuda":
        import torch  # only here: `cpu` and `auto` need no torch to be checked

        if not torch.cuda.is_available():
            raise UsageError(f"{source}: no CUDA device is visible here; use cpu or auto")


def check_overridden_device(overrides: dict[str, Any]) -> None:
    """`--set device=...`, checked before the settings load, so the error names --set."""
    if "device" in overrides:
        check_device(overrides["device"], f"--set device={overrides['device']} (command line)")


def add_outside_root_argument(parser: argparse.ArgumentParser) -> None:
    """The command-line form of the setting data.allow_outside_root."""
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="index CSV rows whose path leaves the image root (../x.jpg, /abs/x.jpg); "
        "refused by default, as data.allow_outside_root is in the pipeline",
    )


def check_gallery_inside_root(images: str | Path, root: str | Path | None) -> None:
    """A gallery CSV's rows stay under its image root (`--root`, else the CSV's folder), as
    the pipeline's `prepare` requires: `../x.jpg` or `/etc/x.jpg` would index outside files."""
    images = Path(images)
    if not (images.is_file() and images.suffix.lower() == ".csv"):
        return  # a folder's images lie under it by construction
    from indivaid_core.data.adapters import from_wildlife_metadata
    from indivaid_core.data.table import check_inside_root

    base = Path(root) if root is not None else images.parent
    table, _ = from_wildlife_metadata(images, base)
    check_inside_root(table, base, str(images), "pass --allow-outside-root to index them anyway")


# `indivaid synth` options and their ranges. Checked here, before the generator's own parser:
# repro/synthetic.py is a dependency of the pipeline's first stage, so it is left unchanged.
SYNTH_RANGES = {
    "--image-size": (16, 4096, "16 to 4096 pixels"),
    "--scale": (1e-6, 1e3, "a factor above 0, at most 1000"),
    "--jpeg-quality": (1, 95, "1 to 95"),
    "--seed": (0, 2**32 - 1, "0 to 4294967295"),
}


def check_synth_argv(argv: list[str]) -> None:
    """Refuse out-of-range `synth` numbers by option name; unparsable ones are left to the
    command's own parser, which names them."""
    pre = argparse.ArgumentParser(add_help=False)
    for name in SYNTH_RANGES:
        pre.add_argument(name)
    known, _ = pre.parse_known_args(argv)
    for name, (low, high, expected) in SYNTH_RANGES.items():
        text = getattr(known, name[2:].replace("-", "_"))
        try:
            value = float(text) if text is not None else None
        except ValueError:
            continue
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            raise UsageError(f"synth {name} {text}: expected {expected}")


def clip_top_k(top_k: int, n_identities: int) -> int:
    """At most as many candidates as the index knows individuals, with a note when clipped."""
    if top_k > n_identities:
        warnings.warn(
            f"--top-k {top_k}: the index knows {n_identities} individuals; listing {n_identities}",
            stacklevel=2,
        )
    return min(top_k, n_identities)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` for the block (main thread only), then is restored."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def _interrupt_behind(err: BaseException | None) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM an error stands for: a signal that lands while a C extension is
    being imported comes out as that import's error, caused by the interrupt."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def exit_status(err: BaseException, user_errors: tuple[type[BaseException], ...]) -> int:
    """Print how the run ended (one line, or a bug's traceback) and return the exit status."""
    interrupt = _interrupt_behind(err)
    if interrupt is not None:
        terminated = isinstance(interrupt, Terminated)
        what = "terminated (SIGTERM)" if terminated else "interrupted (Ctrl-C)"
        print(f"error: {what}; nothing was half-written, rerun to start again", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    if isinstance(err, user_errors):
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {msg}", file=sys.stderr)
        return 2
    if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
        where = f"{err.filename}: " if err.filename else ""
        fix = ENVIRONMENT_FIXES.get(err.errno, "free space or choose a writable folder")
        print(f"error: {where}{err.strerror}; {fix}", file=sys.stderr)
        return 2
    traceback.print_exception(err)
    print(BUG, file=sys.stderr)
    return 1
