"""Learning-rate schedules from torch's own schedulers, stepped once per epoch."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
)


def _with_warmup(opt: Optimizer, warmup: int, after: LRScheduler, start: float) -> LRScheduler:
    if warmup <= 0:
        return after
    ramp = LinearLR(opt, start_factor=start, end_factor=1.0, total_iters=warmup)
    return SequentialLR(opt, [ramp, after], milestones=[warmup])


def warmup_cosine(opt: Optimizer, warmup: int, epochs: int, start: float = 0.1) -> LRScheduler:
    """Linear warmup from `start` x lr, then cosine decay to zero (stage 1)."""
    return _with_warmup(opt, warmup, CosineAnnealingLR(opt, T_max=max(1, epochs - warmup)), start)


def warmup_multistep(
    opt: Optimizer, warmup: int, milestones: list[int], gamma: float, start: float = 0.1
) -> LRScheduler:
    """Linear warmup, then decay by `gamma` at the (absolute) epoch milestones (stage 2)."""
    shifted = [max(1, e - warmup) for e in milestones]
    return _with_warmup(opt, warmup, MultiStepLR(opt, shifted, gamma), start)
