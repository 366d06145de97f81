"""Which device to run on and what it is: the one place core and reproduction layer ask.

Low in the package (imports only torch): evaluation, identification and training share it.
"""

from __future__ import annotations

import os
import resource
import sys
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` picks CUDA when present; `cuda` without a GPU is a clear error."""
    device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("params.yaml asks for device: cuda, but no CUDA device is visible")
    if dist_info().world_size > 1 and device == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(device)


def memory_format(channels_last: bool) -> torch.memory_format:
    """NHWC makes lite0's (depthwise) convolutions 1.3-1.6x faster on the CPU; see bench_stage2."""
    return torch.channels_last if channels_last else torch.contiguous_format


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA (no grad scaler needed); a no-op on the CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def peak_memory_mb(device: torch.device) -> float:
    """Peak RSS of this process (CPU) or peak allocated CUDA memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
