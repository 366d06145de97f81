"""Files the project keeps: read without running code, written whole or not at all, one writer.

Reading: every loader here decodes data only (JSON, CSV, safetensors, ``torch.load`` with
``weights_only=True``) and turns any decoding failure into one :class:`UnreadableFileError`
line that names the file and what to do, instead of a library traceback that names neither.

Writing: :func:`atomic_path` / :func:`atomic_write` write to a unique temporary name next to
the target (``tempfile.mkstemp``), fsync it and ``os.replace`` it over the target, so a kill or
a full disk leaves the old file, never half of a new one, and two writers never share a
temporary. :func:`atomic_dir` does the same for a whole folder (a gallery index).

Exclusion: :func:`exclusive` holds a lock file (``flock``, so the kernel frees it when its
process dies, even by ``kill -9``) that records the holder's pid and host; a second writer is
refused with a message naming them instead of racing the first.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import io
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

# Temporary names end with this, and lock files are named LOCK_NAME (see .dvcignore): a kill -9
# can leave one behind, and it must not become part of a DVC output.
TMP_SUFFIX = ".indivaid-tmp"
LOCK_NAME = ".indivaid.lock"


class UnreadableFileError(ValueError):
    """A truncated, corrupt or foreign file: the message is one line, naming it and the fix."""


class LockedError(RuntimeError):
    """Another live process is writing to the same place; this one is refused, not raced."""


def brief(err: BaseException, limit: int = 160) -> str:
    """The gist of a library error on one line: its first sentence, without C++ locations."""
    text = " ".join(str(err).split()) or type(err).__name__
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)  # FAISS prefixes its C++ frame
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    return first if len(first) <= limit else first[: limit - 1] + "…"


def unreadable(path: str | Path, what: str, detail: str, fix: str) -> UnreadableFileError:
    """`<path>: not a readable <what> (<detail>); <fix>` — the one-line form every loader uses."""
    return UnreadableFileError(f"{path}: not a readable {what} ({detail}); {fix}")


# ---------------------------------------------------------------------------------- reading


def read_json(
    path: str | Path, fix: str, required: Collection[str] = (), what: str = "JSON file"
) -> dict[str, Any]:
    """A JSON object from `path`, with its `required` keys present."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise unreadable(path, what, brief(err), fix) from err
    if not isinstance(data, dict):
        raise unreadable(path, what, f"holds a JSON {type(data).__name__}, not an object", fix)
    missing = [k for k in required if k not in data]
    if missing:
        raise unreadable(path, what, f"it lacks {', '.join(map(repr, missing))}", fix)
    return data


def read_npy_cache(
    path: str | Path, fits: Callable[[np.ndarray], bool], expected: str, what: str, redo: str
) -> np.ndarray | None:
    """A cached `.npy` as a read-only memmap, or None (with a warning naming the file) when it
    is unreadable or does not fit: a cache is recomputed, never trusted, and never unpickled."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        why = f"unreadable ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    else:
        if fits(arr):
            return arr
        why = f"holds {arr.dtype} {arr.shape}, not {expected}"
    warnings.warn(f"{path}: {what} {why}; {redo}", stacklevel=3)
    return None


def load_safetensors(
    path: str | Path, fix: str, required: Collection[str] = (), what: str = "safetensors file"
) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file (a format that holds no code), `required` keys present."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {fix}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise unreadable(path, what, brief(err), fix) from err
    missing = [k for k in required if k not in tensors]
    if missing:
        raise unreadable(path, what, f"it lacks tensors {missing}", fix)
    return tensors


def read_csv(
    path: str | Path, fix: str, required: Collection[str] = (), what: str = "CSV table", **kw: Any
) -> pd.DataFrame:
    """A table from a CSV file, with its `required` columns present."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, **kw)
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as err:
        raise unreadable(path, what, brief(err), fix) from err
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise unreadable(path, what, f"it lacks columns {missing}", fix)
    return frame


def load_torch(path: str | Path, fix: str, what: str = "checkpoint") -> Any:
    """``torch.load`` that only ever rebuilds tensors and plain data (``weights_only=True``).

    A pickle that would import anything else (``os.system``, a class) is refused before any of
    it runs; the error says so rather than repeating torch's advice to drop the safeguard.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about the protocol of foreign pickles
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the decoder raises, the file is bad
        text = str(err)
        if "Weights only load failed" in text or type(err).__name__ == "UnpicklingError":
            found = re.search(r"GLOBAL (\S+)", text)
            needs = f" ({found.group(1)})" if found else ""
            detail = (
                f"it holds objects other than tensors and plain data{needs}, which are never "
                "loaded: nothing in it was run"
            )
        elif isinstance(err, EOFError):
            detail = "it is empty or cut short"
        else:
            detail = brief(err)
        raise unreadable(path, what, detail, fix) from err


# ---------------------------------------------------------------------------------- writing


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()  # mkstemp/mkdtemp make 0600/0700; outputs get the usual 0666/0777 & ~umask


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A unique temporary path next to `path`; on success it replaces `path` in one rename.

    For writers that want a file name (safetensors, FAISS, numpy memmaps). On an error the
    temporary is removed and `path` keeps its old contents.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kw: Any) -> Iterator[IO]:
    """An open file whose contents replace `path` whole when the block ends without error."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes a new file: mode 'w' or 'wb', not {mode!r}")
    if mode == "w":
        open_kw.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp, open(tmp, mode, **open_kw) as f:
        yield f
        f.flush()


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def write_json(path: str | Path, data: Any, **dumps_kw: Any) -> None:
    write_text(path, json.dumps(data, **dumps_kw))


def write_csv(frame: pd.DataFrame, path: str | Path, **to_csv_kw: Any) -> None:
    """Write a table whole; its text cells are neutralised (:func:`neutralise_formulas`)."""
    with atomic_write(path, newline="") as f:
        neutralise_formulas(frame).to_csv(f, **to_csv_kw)


# A spreadsheet runs a cell that starts with = + - @ (or tab / CR before them) as a formula, so
# an identity folder named `=HYPERLINK(...)` would become a live link in results.csv. OWASP's
# CSV-injection advice: prefix such text with a single quote. Cells that already start with
# quotes before such a character get one more, so :func:`restore_formulas` can undo it exactly.
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")  # "-1.5" is data, not a formula


def neutralise_cell(value: Any) -> Any:
    """`value` with a leading quote when a spreadsheet would run it as a formula."""
    if isinstance(value, str) and _FORMULA.match(value) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def restore_cell(value: Any) -> Any:
    """The text :func:`neutralise_cell` was given (a quote it added is removed)."""
    if isinstance(value, str) and value.startswith("'") and _FORMULA.match(value, 1):
        return value[1:]
    return value


def _map_text(frame: pd.DataFrame, fn: Callable[[Any], Any]) -> pd.DataFrame:
    """`fn` applied to every text cell, header and index label; numbers are left alone.
    Returns `frame` itself when nothing changes (no copy of a large table)."""
    changed: dict[int, pd.Series] = {}
    for i, dtype in enumerate(frame.dtypes):
        if pd.api.types.is_object_dtype(dtype) or isinstance(dtype, pd.StringDtype):
            col = frame.iloc[:, i]
            new = col.map(fn)
            if not new.equals(col):
                changed[i] = new
    columns = [fn(c) for c in frame.columns]
    index_text = not isinstance(frame.index, pd.MultiIndex) and frame.index.dtype == "O"
    index = frame.index.map(fn) if index_text else frame.index
    if not changed and columns == list(frame.columns) and index.equals(frame.index):
        return frame
    out = frame.copy()
    for i, new in changed.items():
        out.isetitem(i, new)
    out.columns, out.index = columns, index
    return out


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` safe to open in a spreadsheet (or `frame` when it already is)."""
    return _map_text(frame, neutralise_cell)


def restore_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """Undo :func:`neutralise_formulas` on a table read back from a CSV this project wrote."""
    return _map_text(frame, restore_cell)


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` of tensors and plain data only, so :func:`load_torch` can read it back."""
    check_plain(obj, str(path))
    buf = io.BytesIO()  # torch.save names the archive after its file: a temp name would make
    torch.save(obj, buf)  # the bytes differ run to run; a buffer's archive is always "archive"
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.Size, torch.dtype, torch.device)


def check_plain(obj: Any, where: str) -> None:
    """Refuse, at save time, anything ``weights_only=True`` would refuse at resume time."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_plain(k, where)
            check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, list | tuple | set):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(
            f"{where}: a {type(obj).__name__} cannot go into a checkpoint, which holds only "
            "tensors and plain data (convert it, e.g. an array to a list)"
        )


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    done = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if done == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextmanager
def atomic_dir(path: str | Path, replaceable: Collection[str] | None = None) -> Iterator[Path]:
    """A fresh temporary folder next to `path`; on success it takes `path`'s place whole.

    An existing `path` is swapped out in one rename where the OS can (Linux), otherwise moved
    aside first; it is deleted only once the new folder is in place. `replaceable` lists the
    names an existing `path` may hold: a folder holding anything else is refused, so that
    pointing an output at the wrong folder cannot delete a user's files.
    """
    path = Path(path)
    if path.is_symlink():  # replace the folder it points to, not the link
        path = path.resolve()
    if replaceable is not None:
        check_replaceable(path, replaceable)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if not path.exists():
            os.rename(tmp, path)
        elif _exchange(tmp, path):
            shutil.rmtree(tmp)  # now the old folder
        else:
            old = path.with_name(f".{path.name}.{os.getpid()}.{time.time_ns()}.old{TMP_SUFFIX}")
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)


def check_replaceable(path: Path, replaceable: Collection[str]) -> None:
    """Raise unless `path` is absent, or a folder holding only names in `replaceable`."""
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"{path}: exists and is not a folder; choose another output")
    foreign = sorted(p.name for p in path.iterdir() if p.name not in replaceable)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", …" if len(foreign) > 5 else "")
        raise FileExistsError(
            f"{path}: holds files that this output does not own ({shown}); writing it would "
            "replace the folder, so choose a new or empty folder"
        )


# ---------------------------------------------------------------------------------- locking

_held: dict[Path, list[int]] = {}  # lock file -> [fd, depth]: re-entrant within one process
_held_guard = threading.Lock()


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"process {info['pid']} on {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def exclusive(lock: str | Path, what: str) -> Iterator[None]:
    """Hold `lock` for the block, or raise :class:`LockedError` naming the process that does.

    The lock is an ``flock`` on the file, so a holder killed by any signal frees it: a lock
    file left behind by a dead process is simply taken over. Re-entrant within a process.
    """
    lock = Path(os.path.abspath(lock))
    with _held_guard:
        if lock in _held:
            _held[lock][1] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _held_guard:
                _held[lock][1] -= 1
        return
    fd = _acquire(lock, what)
    with _held_guard:
        _held[lock] = [fd, 1]
    try:
        yield
    finally:
        with _held_guard:
            del _held[lock]
        try:
            lock.unlink(missing_ok=True)  # before unlocking: no one can lock this inode after
        finally:
            os.close(fd)


def _acquire(lock: Path, what: str) -> int:
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(
                f"{what} is in use by {_holder(lock)}: another run is writing there (lock file "
                f"{lock}). Wait for it to finish, or write somewhere else"
            ) from None
        try:  # the previous holder may have unlinked the file between our open and our flock
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%FT%T")}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    return fd


def folder_lock(folder: str | Path, what: str | None = None):
    """The lock of a folder whose files one run writes in place (a training run)."""
    folder = Path(folder)
    return exclusive(folder / LOCK_NAME, what or str(folder))


def sibling_lock(path: str | Path, what: str | None = None):
    """The lock of a folder that is replaced whole (:func:`atomic_dir`): kept beside it."""
    path = Path(path)
    real = path.resolve() if path.is_symlink() else path  # one lock, whichever name is used
    return exclusive(real.with_name(f".{real.name}{LOCK_NAME}"), what or str(path))
