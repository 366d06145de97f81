"""Train and eval image transforms (torchvision v2), shared by training, evaluation and identify."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from .config import AugmentCfg


def eval_transform(
    image_size: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """Deterministic resize + normalise: the only preprocessing features are computed with."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(tuple(image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


def train_transform(
    image_size: Sequence[int], mean: Sequence[float], std: Sequence[float], aug: AugmentCfg
) -> v2.Compose:
    """Re-ID style augmentation; horizontal flip only when asked (it swaps the visible flank)."""
    steps: list = [v2.ToImage(), v2.Resize(tuple(image_size), antialias=True)]
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if aug.pad:
        steps += [v2.Pad(aug.pad), v2.RandomCrop(tuple(image_size))]
    if aug.color_jitter:
        c = aug.color_jitter
        steps.append(v2.ColorJitter(brightness=c, contrast=c, saturation=c))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    if aug.random_erasing:
        steps.append(v2.RandomErasing(p=aug.random_erasing, value=0))
    return v2.Compose(steps)
