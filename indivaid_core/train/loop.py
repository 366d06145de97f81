"""The epoch loop both stages share: resume, per-epoch atomic checkpoints, logging, NaN stop."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from indivaid_core.device import dist_info
from indivaid_core.safe_io import UnreadableFileError, save_torch, write_json, write_text
from indivaid_core.train.engine import (
    CostMeter,
    check_finite,
    load_checkpoint,
    rng_state,
    set_rng_state,
)


class Interrupted(RuntimeError):
    """Raised by `interrupt_after_steps`: a deterministic stand-in for a killed process."""


class StaleCheckpointWarning(UserWarning):
    """A checkpoint from a run with other settings was found; this run starts afresh."""


def fingerprint(settings: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the settings that define a run."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def rows_digest(table: Any, columns: Iterable[str]) -> str:
    """sha256 of a table's defining columns (those it has), row order included."""
    cols = [c for c in columns if c in table]
    return hashlib.sha256(table[cols].astype(str).to_csv(index=False).encode()).hexdigest()


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def settings_diff(old: dict[str, Any] | None, new: dict[str, Any], limit: int = 6) -> str:
    """The changed settings as `key: old -> new`, for the message that explains a fresh start."""
    if not old:
        return "it records no run settings"
    a, b = _flat(old), _flat(new)
    changed = [
        f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k, "(unset)") != b.get(k, "(unset)")
    ]
    more = f", and {len(changed) - limit} more" if len(changed) > limit else ""
    return ", ".join(changed[:limit]) + more


@dataclass
class LoopState:
    """Everything that must survive a restart; saved atomically at every epoch end."""

    modules: dict[str, torch.nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)  # fingerprint + settings of this run

    def state_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
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
    *,
    epochs: int,
    batches: Callable[[int], Iterable[Any]],
    step: Callable[[Any], tuple[torch.Tensor, dict[str, float], int]],
    checkpoint: Path,
    log_dir: Path,
    desc: str,
    settings: dict[str, Any],
    resume: bool = True,
    interrupt_after_steps: int = 0,
) -> CostMeter:
    """Train `epochs` epochs; `step(batch)` returns (loss, loss parts, n images).

    A checkpoint is written at every epoch end; a rerun resumes from it and replays the
    interrupted epoch exactly (batches and augmentation are functions of seed and epoch).
    `settings` (plain data) define the run: the checkpoint records their fingerprint, and a
    rerun with other settings trains afresh (with a StaleCheckpointWarning saying what changed)
    instead of continuing, or returning, the other run's model. The old checkpoint is only
    replaced when the new run ends its first epoch.
    """
    info = dist_info()
    state.run = {"fingerprint": fingerprint(settings), "settings": settings}
    if resume:
        _resume(state, checkpoint, desc)
    meter = CostMeter()
    steps = 0
    bar = tqdm(range(state.epoch, epochs), desc=desc, disable=not info.is_main, unit="epoch")
    for epoch in bar:
        sums: dict[str, float] = {}
        n_steps = 0
        for batch in batches(epoch):
            losses, n = _train_step(state, step, batch, f"{desc} epoch {epoch}", checkpoint)
            meter.add(n * info.world_size)
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value
            n_steps += 1
            steps += 1
            if interrupt_after_steps and steps >= interrupt_after_steps:
                raise Interrupted(f"{desc}: interrupted after {steps} steps (epoch {epoch})")
        record = _end_epoch(state, epoch, sums, n_steps)
        bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4f}")
        if info.is_main:
            save_torch(state.state_dict(), checkpoint)  # whole or not at all
            write_history(state.history, log_dir)
    return meter


def _resume(state: LoopState, checkpoint: Path, desc: str) -> None:
    """Load the checkpoint into `state` when it was written by a run with these settings."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt is None:
        return
    old = ckpt.get("run") or {}
    if old.get("fingerprint") != state.run["fingerprint"]:
        changed = settings_diff(old.get("settings"), state.run["settings"])
        warnings.warn(
            f"{desc}: not resuming {checkpoint}: it was written by a run with other "
            f"settings ({changed}); training afresh",
            StaleCheckpointWarning,
            stacklevel=3,
        )
        return
    try:
        state.load(ckpt)
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise UnreadableFileError(
            f"{checkpoint}: cannot resume, it does not fit this model or optimiser "
            f"({type(err).__name__}: {str(err).splitlines()[0]}); delete it to train "
            "afresh, or rerun without resuming (--no-resume, or resume=False)"
        ) from err


def _train_step(
    state: LoopState,
    step: Callable[[Any], tuple[torch.Tensor, dict[str, float], int]],
    batch: Any,
    where: str,
    checkpoint: Path,
) -> tuple[dict[str, float], int]:
    """One optimiser update: (the loss and its parts as numbers, the images it saw)."""
    loss, parts, n = step(batch)
    check_finite(loss, where, checkpoint)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    return {"loss": loss.item(), **parts}, n


def _end_epoch(
    state: LoopState, epoch: int, sums: dict[str, float], n_steps: int
) -> dict[str, float]:
    """Step the schedule and record the epoch's mean losses and learning rate."""
    state.scheduler.step()
    record = {k: v / max(n_steps, 1) for k, v in sums.items()}
    record["lr"] = state.optimizer.param_groups[0]["lr"]
    state.history.append({"epoch": epoch, **record})
    state.epoch = epoch + 1
    return record


def write_history(history: list[dict[str, float]], log_dir: Path) -> None:
    """Per-epoch losses as TSV files `dvc plots` reads (one file per curve, like dvclive)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for row in history for k in row if k != "epoch"})
    for key in keys:
        lines = [f"step\t{key}"] + [
            f"{row['epoch']}\t{row[key]:.6f}" for row in history if key in row
        ]
        write_text(log_dir / f"{key}.tsv", "\n".join(lines) + "\n")
    write_json(log_dir / "history.json", history, indent=1)
