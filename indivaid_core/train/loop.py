"""The epoch loop both stages share: resume, per-epoch atomic checkpoints, logging, NaN stop."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .engine import (
    CostMeter,
    atomic_save,
    check_finite,
    dist_info,
    load_checkpoint,
    rng_state,
    set_rng_state,
)


class Interrupted(RuntimeError):
    """Raised by `interrupt_after_steps`: a deterministic stand-in for a killed process."""


@dataclass
class LoopState:
    """Everything that must survive a restart; saved atomically at every epoch end."""

    modules: dict[str, torch.nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "rng": rng_state(),
        }

    def load(self, ckpt: dict[str, Any]) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(ckpt["modules"][k])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch = ckpt["epoch"]
        self.history = ckpt["history"]
        set_rng_state(ckpt["rng"])


def run_epochs(
    state: LoopState,
    epochs: int,
    batches: Callable[[int], Iterable[Any]],
    step: Callable[[Any], tuple[torch.Tensor, dict[str, float], int]],
    checkpoint: Path,
    log_dir: Path,
    desc: str,
    resume: bool = True,
    interrupt_after_steps: int = 0,
) -> CostMeter:
    """Train `epochs` epochs; `step(batch)` returns (loss, loss parts, n images).

    A checkpoint is written at every epoch end; a rerun resumes from it and replays the
    interrupted epoch exactly (batches and augmentation are functions of seed and epoch).
    """
    info = dist_info()
    if resume and (ckpt := load_checkpoint(checkpoint)) is not None:
        try:
            state.load(ckpt)
        except (KeyError, RuntimeError, ValueError) as err:
            raise ValueError(
                f"{checkpoint}: cannot resume, it was written for a different model or "
                f"optimiser setup ({type(err).__name__}: {str(err).splitlines()[0]}); delete "
                "it to train from scratch, or run with resume=False"
            ) from err
    meter = CostMeter()
    steps = 0
    bar = tqdm(range(state.epoch, epochs), desc=desc, disable=not info.is_main, unit="epoch")
    for epoch in bar:
        sums: dict[str, float] = {}
        n_steps = 0
        for batch in batches(epoch):
            loss, parts, n = step(batch)
            check_finite(loss, f"{desc} epoch {epoch}", checkpoint)
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            state.optimizer.step()
            meter.add(n * info.world_size)
            n_steps += 1
            for key, value in {"loss": loss.item(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + value
            steps += 1
            if interrupt_after_steps and steps >= interrupt_after_steps:
                raise Interrupted(f"{desc}: interrupted after {steps} steps (epoch {epoch})")
        state.scheduler.step()
        record = {k: v / max(n_steps, 1) for k, v in sums.items()}
        record["lr"] = state.optimizer.param_groups[0]["lr"]
        state.history.append({"epoch": epoch, **record})
        state.epoch = epoch + 1
        bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}")
        if info.is_main:
            atomic_save(state.state_dict(), checkpoint)
            write_history(state.history, log_dir)
    return meter


def write_history(history: list[dict[str, float]], log_dir: Path) -> None:
    """Per-epoch losses as TSV files `dvc plots` reads (one file per curve, like dvclive)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for row in history for k in row if k != "epoch"})
    for key in keys:
        lines = [f"step\t{key}"] + [
            f"{row['epoch']}\t{row[key]:.6f}" for row in history if key in row
        ]
        (log_dir / f"{key}.tsv").write_text("\n".join(lines) + "\n")
    (log_dir / "history.json").write_text(json.dumps(history, indent=1))
