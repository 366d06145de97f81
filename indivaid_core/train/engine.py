"""Shared training plumbing: seeding, DDP, atomic checkpoints, cost accounting.

The device helpers live in `indivaid_core.device`.
"""

from __future__ import annotations

import functools
import inspect
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from indivaid_core.device import DistInfo, device_name, dist_info, peak_memory_mb
from indivaid_core.safe_io import folder_lock, load_torch, unreadable

F = TypeVar("F", bound=Callable[..., Any])


class TrainingDiverged(RuntimeError):
    """A NaN or inf loss: the run stops, and the last good checkpoint is kept."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every generator a resumed run must continue, as tensors and plain data only (a checkpoint
    is read back with ``weights_only=True``, which refuses numpy arrays)."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    return {
        "python": random.getstate(),
        "numpy": np_state,
        "torch": torch.get_rng_state(),
        # CUDA generators too, so a resumed GPU run draws the same dropout/augment numbers
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np_state = {**state["numpy"], "state": dict(state["numpy"]["state"])}
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group (gloo on CPU, nccl on CUDA); no-op for one process."""
    info = dist_info()
    if info.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist_info()


def gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Differentiable all-gather + concat, so batch-level losses see the global batch."""
    if dist_info().world_size == 1:
        return x
    import torch.distributed.nn.functional as dfn

    return torch.cat(dfn.all_gather(x), dim=0)


def count_params(*modules: nn.Module) -> dict[str, int]:
    params = {id(p): p for m in modules for p in m.parameters()}.values()
    return {
        "params_total": sum(p.numel() for p in params),
        "params_trainable": sum(p.numel() for p in params if p.requires_grad),
    }


@torch.no_grad()
def flops_per_image(model: nn.Module, image_size: tuple[int, int], device: torch.device) -> int:
    """Forward FLOPs per image (torch's counter); training costs about 3x this.

    Only the forward is counted: the counter overcounts depthwise-conv backward ~10x.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros(2, 3, *image_size, device=device)
    cams = torch.zeros(2, dtype=torch.long, device=device)  # SIE encoders need camera ids
    with FlopCounterMode(display=False) as counter:
        model(x, *((cams,) if getattr(model, "sie", None) is not None else ()))
    model.train(was_training)
    return counter.get_total_flops() // 2


@dataclass
class CostMeter:
    """Wall time and images/s of a stage, for its metrics JSON."""

    images: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, n: int) -> None:
        self.images += n

    def summary(self, device: torch.device) -> dict[str, Any]:
        wall = time.perf_counter() - self.start
        return {
            "wall_time_s": round(wall, 2),
            "images_per_s": round(self.images / max(wall, 1e-9), 2),
            "peak_memory_mb": round(peak_memory_mb(device), 1),
            "device": device_name(device),
        }


CHECKPOINT_KEYS = ("modules", "optimizer", "scheduler", "epoch", "history", "rng")


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """A checkpoint's contents, or None when there is none. It is read with
    ``weights_only=True``: checkpoints travel between machines, and loading one never runs code.
    """
    path = Path(path)
    if not path.exists():
        return None
    fix = "delete it to train afresh, or rerun without resuming (--no-resume, or resume=False)"
    ckpt = load_torch(path, fix, "training checkpoint")
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise unreadable(path, "training checkpoint", f"it lacks {missing}", fix)
    return ckpt


def check_finite(loss: torch.Tensor, where: str, checkpoint: Path) -> None:
    """Stop at a NaN or inf loss; the message points at a checkpoint only where one exists."""
    if not torch.isfinite(loss).all():
        kept = (
            f"the last good checkpoint is kept at {checkpoint}"
            if Path(checkpoint).exists()
            else "no checkpoint was written yet"
        )
        raise TrainingDiverged(
            f"{where}: loss is {loss.item()} — stopping; {kept} (lower the learning rate or "
            "check the data)"
        )


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run the block on `n` intra-op CPU threads (0 = leave torch's setting), then restore.

    Stage 1 on 2 threads gave weights that differed by up to 9e-8 from one process to the next
    (a multi-threaded reduction); on 1 thread they were identical in every process.
    """
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def main_process_first(info: DistInfo) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. writes a cache); the others then reuse its result."""
    if info.world_size > 1 and not info.is_main:
        dist.barrier()
    yield
    if info.world_size > 1 and info.is_main:
        dist.barrier()


@contextmanager
def maybe_ddp(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Wrap in DistributedDataParallel (with SyncBatchNorm) when running under torchrun."""
    if dist_info().world_size == 1:
        yield model
        return
    if device.type == "cuda":  # SyncBatchNorm is CUDA-only; on CPU BN keeps per-rank stats
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    yield nn.parallel.DistributedDataParallel(model, device_ids=ids)


def exclusive_run(fn: F) -> F:
    """Hold the lock of the run folder (`fn`'s `out_dir` argument) for the call, on rank 0.

    Two runs writing one folder would overwrite each other's checkpoints and temporaries, so
    the second is refused at once with a LockedError naming the first's process.
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not dist_info().is_main:  # the other ranks write nothing there
            return fn(*args, **kwargs)
        out_dir = Path(signature.bind(*args, **kwargs).arguments["out_dir"])
        with folder_lock(out_dir, f"training run folder {out_dir}"):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
