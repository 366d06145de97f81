"""Batched evaluation features, and their storage next to the table rows they belong to.

The paper's protocol (``feature="concat"``): pre-projection global feature ⊕ projected
feature, both taken before the BN necks, concatenated and then L2-normalised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from indivaid_core.device import autocast, memory_format, resolve_device
from indivaid_core.safe_io import atomic_write, unreadable

# Which encoder outputs each feature choice concatenates.
FEATURE_KEYS: dict[str, tuple[str, ...]] = {
    "concat": ("global", "proj"),
    "global": ("global",),
    "proj": ("proj",),
    "concat_bn": ("global_bn", "proj_bn"),
}


def combine_outputs(out: dict, feature: str) -> torch.Tensor:
    """The `feature` an evaluation compares, from an encoder's output dict (FEATURE_KEYS)."""
    missing = [k for k in FEATURE_KEYS[feature] if k not in out]
    if missing:
        raise KeyError(
            f"feature={feature!r} needs encoder outputs {missing}; it returned {sorted(out)}"
        )
    return torch.cat([out[k].float() for k in FEATURE_KEYS[feature]], dim=1)


@torch.inference_mode()
def extract_features(
    encode: Callable[[torch.Tensor], dict],
    loader: Iterable[dict],
    device: str | torch.device = "auto",
    amp: bool = True,
    flip: bool = False,
    feature: str = "concat",
    n_rows: int | None = None,
    cameras: bool = False,
    channels_last: bool = False,
) -> torch.Tensor:
    """(N, D) float32 L2-normalised features on the CPU, in table row order.

    ``loader`` yields dicts with ``image`` (B, 3, H, W) and ``index`` (row numbers in the
    table); ``n_rows`` defaults to ``len(loader.dataset)``. ``flip`` averages the features of
    the image and its horizontal mirror before normalising. AMP (autocast) is used on CUDA
    only. An ``nn.Module`` passed as (or bound to) ``encode`` is put in eval mode meanwhile.
    ``cameras`` passes each batch's ``camera`` ids as ``encode(images, cams)`` (SIE models).
    ``channels_last`` feeds NHWC batches (faster convolutions; convert the module's weights
    too, outside inference mode, as ``features_for`` does, or they become inference tensors).
    """
    if feature not in FEATURE_KEYS:
        raise ValueError(f"unknown feature {feature!r}; choose one of {sorted(FEATURE_KEYS)}")
    dev = resolve_device(device)
    fmt = memory_format(channels_last)
    rows = _RowFeatures(_table_length(loader, n_rows))
    with _eval_mode(encode):
        for batch in tqdm(loader, desc="features", leave=False):
            images, index, extra = _unpack(batch, dev, fmt, rows.n, cameras=cameras)
            with autocast(dev, amp):
                f = combine_outputs(encode(images, *extra), feature)
                if flip:
                    flipped = encode(torch.flip(images, dims=[3]), *extra)
                    f = (f + combine_outputs(flipped, feature)) / 2
            rows.put(index, F.normalize(f.float(), dim=1).cpu())
    return rows.result()


def _table_length(loader: Iterable[dict], n_rows: int | None) -> int:
    """`n_rows`, or the length of the loader's dataset when it is not given."""
    if n_rows is not None:
        return n_rows
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        raise ValueError("pass n_rows: the loader has no .dataset to take the length from")
    return len(dataset)


@contextmanager
def _eval_mode(encode: Callable[..., dict]) -> Iterator[None]:
    """An ``nn.Module`` passed as (or bound to) `encode` in eval mode, its training mode back
    afterwards even when extraction fails."""
    module = encode if isinstance(encode, torch.nn.Module) else getattr(encode, "__self__", None)
    was_training = isinstance(module, torch.nn.Module) and module.training
    if was_training:
        module.eval()
    try:
        yield
    finally:
        if was_training:
            module.train()


def _unpack(
    batch: dict, dev: torch.device, fmt: torch.memory_format, n_rows: int, *, cameras: bool
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """(images on `dev`, table rows on the CPU, the extra `encode` arguments) of one batch,
    refusing a batch without the keys or with rows outside the table."""
    for key in ("image", "index", *(("camera",) if cameras else ())):
        if key not in batch:
            raise KeyError(f"loader batch lacks key {key!r}; it has {sorted(batch)}")
    images = batch["image"].to(dev, non_blocking=True, memory_format=fmt)
    index = torch.as_tensor(batch["index"]).long().cpu()
    if index.min() < 0 or index.max() >= n_rows:
        raise IndexError(f"batch row index {index.tolist()} outside the table [0, {n_rows})")
    extra = (torch.as_tensor(batch["camera"]).long().to(dev),) if cameras else ()
    return images, index, extra


class _RowFeatures:
    """Features put in place by table row; every row must arrive exactly once."""

    def __init__(self, n_rows: int) -> None:
        self.n = n_rows
        self.feats: torch.Tensor | None = None
        self.seen = torch.zeros(n_rows, dtype=torch.bool)

    def put(self, index: torch.Tensor, f: torch.Tensor) -> None:
        if self.feats is None:
            self.feats = torch.zeros(self.n, f.shape[1], dtype=torch.float32)
        if self.seen[index].any():
            raise ValueError(f"rows {index[self.seen[index]].tolist()} were yielded twice")
        self.feats[index] = f
        self.seen[index] = True

    def result(self) -> torch.Tensor:
        if self.feats is None or not self.seen.all():
            missing = torch.nonzero(~self.seen).flatten()[:10].tolist()
            raise ValueError(f"the loader never yielded table rows {missing} (first 10 shown)")
        return self.feats


def save_features(
    path: str | Path,
    feats: torch.Tensor | np.ndarray,
    table: pd.DataFrame,
    model_sha256: str = "",
) -> None:
    """Write features and the table's ``image_id`` column together (.npz), so they stay paired;
    ``model_sha256`` (the weights file's hash) lets a reader refuse another model's features."""
    if "image_id" not in table:
        raise KeyError("table has no 'image_id' column to store next to the features")
    arr = feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
    if arr.ndim != 2 or arr.shape[0] != len(table):
        raise ValueError(f"features of shape {arr.shape} do not fit a table of {len(table)} rows")
    dup = table["image_id"][table["image_id"].duplicated()]
    if len(dup):
        raise ValueError(f"duplicate image_id in table: {dup.head(5).tolist()}")
    with atomic_write(path, "wb") as fh:  # a file object keeps numpy from appending ".npz"
        ids = table["image_id"].astype(str).to_numpy(dtype=str)
        np.savez(fh, features=arr.astype(np.float32), image_id=ids, model=np.array(model_sha256))


def load_features(
    path: str | Path, table: pd.DataFrame | None = None, model_sha256: str | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """Features and their image ids; with ``table``, reordered to its rows (all must exist);
    with ``model_sha256``, refused unless they were saved as that model's.

    Arrays only: a file holding pickled objects is refused, never unpickled."""
    fix = "delete it and rerun the evaluation, which writes it again"
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            for key in ("features", "image_id"):
                if key not in z:
                    raise KeyError(f"{path} has no {key!r} array; was it written by save_features?")
            feats, ids = z["features"], z["image_id"]
            made_by = str(z["model"]) if "model" in z else ""
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError) as err:  # not an .npz, cut short, or pickled data
        detail = " ".join(str(err).split()) or type(err).__name__
        raise unreadable(path, "feature file", detail, fix) from err
    if model_sha256 is not None and made_by != model_sha256:
        raise ValueError(
            f"{path}: features of another model (weights {made_by[:12] or 'not recorded'}, "
            f"expected {model_sha256[:12]}); {fix}"
        )
    if table is not None:
        pos = pd.Series(np.arange(len(ids)), index=ids)
        wanted = table["image_id"].astype(str)
        absent = wanted[~wanted.isin(pos.index)]
        if len(absent):
            raise KeyError(f"{path} lacks features for image_id {absent.head(5).tolist()}")
        order = pos.loc[wanted].to_numpy()
        feats, ids = feats[order], ids[order]
    return torch.from_numpy(feats), ids
