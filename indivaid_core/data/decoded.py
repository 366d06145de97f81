"""Images decoded once, resized to the model's input size, kept as a uint8 memmap.

Stage 2 decoded and resized every JPEG again on every epoch, in the training process; the
resize is deterministic, so its output is cached: (N, 3, H, W) uint8 in a `.npy` under
`work/cache/decoded/`, keyed by the rows, the image files' sizes and times, the size and the
resize backend. Every stage-2 cell and seed of a dataset shares one file. Augmentation then
runs on batches of it (`train.augment`). The evaluation reads its test images the same way,
once for all the models it scores.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import PIL
import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from tqdm.auto import tqdm

from indivaid_core.data.dataset import ImageTableDataset
from indivaid_core.data.digest import files_digest
from indivaid_core.data.images import draft_for
from indivaid_core.safe_io import atomic_path, read_npy_cache
from indivaid_core.transforms import eval_resize, train_resize

FORMAT = 1  # bump when what is stored changes


def decoded_key(
    table: pd.DataFrame, root: Path, image_size: tuple[int, int], backend: str, train: bool = True
) -> str:
    """What the decoded pixels depend on, the files' content included: an edited or replaced
    image changes it, even at the same size and time. The `tensor` resize is the same in
    training and evaluation, so both share one file."""
    resize = [] if train or backend == "tensor" else ["eval"]
    libs = [PIL.__version__, torchvision.__version__]  # their resize kernels make the pixels
    h = hashlib.sha256(json.dumps([FORMAT, list(image_size), backend, *resize, *libs]).encode())
    h.update(table[["image_id", "path"]].to_csv(index=False).encode())
    h.update(files_digest(table, root).encode())
    return h.hexdigest()[:16]


def reserved_memmap(tmp: Path, shape: tuple[int, ...], name: Path) -> np.memmap:
    """A zeroed uint8 `.npy` memmap at `tmp` (the file `np.lib.format.open_memmap` writes)
    whose disk blocks are reserved before it is mapped.

    A sparse file's pages are only allocated when written; on a full disk that write kills the
    process with SIGBUS, leaving the temporary and the run's lock behind. Reserved first, a
    full disk (ENOSPC) or a file-size limit (EFBIG) is an OSError naming `name` instead.
    """
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8))}
    header.update(fortran_order=False, shape=shape)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    size = buf.tell() + math.prod(shape)
    try:
        with open(tmp, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, size)
            f.write(buf.getvalue())
    except OSError as err:
        why = f"{err.strerror} (reserving {size / 1e6:.1f} MB for the decoded images)"
        raise OSError(err.errno, why, str(name)) from err
    return np.memmap(tmp, np.uint8, "r+", buf.tell(), shape)


def _decode_into(out: np.ndarray, ds: ImageTableDataset, batch_size: int, workers: int) -> None:
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, generator=torch.Generator())
    for batch in tqdm(loader, desc="decode images", unit="batch"):
        out[batch["index"].numpy()] = batch["image"].numpy()


def decoded_images(
    table: pd.DataFrame,
    root: Path,
    image_size: tuple[int, int],
    backend: str,
    cache_dir: Path | None,
    num_workers: int = 0,
    train: bool = True,
) -> np.ndarray:
    """(N, 3, H, W) uint8 of `table`'s rows in order, resized as training (or, with
    train=False, evaluation) resizes them.

    With `cache_dir` the array is a read-only memmap of a file written whole (a rerun reuses
    it); without, it is decoded into memory.
    """
    table = table.reset_index(drop=True)
    size = tuple(int(s) for s in image_size)
    tf = v2.Compose(train_resize(size, backend) if train else eval_resize(size, backend))
    ds = ImageTableDataset(table, root, tf, draft=draft_for(size))
    shape = (len(table), 3, *size)
    if cache_dir is None:
        out = np.empty(shape, np.uint8)
        _decode_into(out, ds, 64, num_workers)
        return out
    key = decoded_key(table, Path(root), size, backend, train)
    path = Path(cache_dir) / "decoded" / f"{key}.npy"
    if path.exists():
        fits = lambda a: a.shape == shape and a.dtype == np.uint8  # noqa: E731
        cached = read_npy_cache(
            path, fits, f"{shape} uint8", "decoded-image cache", "decoding again"
        )
        if cached is not None:
            return cached
    with atomic_path(path) as tmp:  # a unique temporary: a killed run leaves no half file
        out = reserved_memmap(tmp, shape, path)
        _decode_into(out, ds, 64, num_workers)
        out.flush()
        del out
    return np.load(path, mmap_mode="r", allow_pickle=False)
