"""Train and eval image transforms (torchvision v2), shared by training, evaluation and identify."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from indivaid_core.config import AugmentCfg


def _resize(image_size: Sequence[int], backend: str, train: bool) -> list:
    """`tensor`: bilinear antialiased resize of the tensor (the CPU default). `pil`: CLIP-ReID's
    path, PIL's own filter on the decoded image (bilinear at test time, bicubic in training),
    which the golden preprocessing test matches exactly."""
    if backend == "tensor":
        return [v2.ToImage(), v2.Resize(tuple(image_size), antialias=True)]
    if backend != "pil":
        raise ValueError(f"resize backend must be 'tensor' or 'pil', got {backend!r}")
    mode = v2.InterpolationMode.BICUBIC if train else v2.InterpolationMode.BILINEAR
    return [v2.Resize(tuple(image_size), interpolation=mode), v2.ToImage()]


def train_resize(image_size: Sequence[int], backend: str = "tensor") -> list:
    """The deterministic first steps of `train_transform`, decoded image -> uint8 tensor at
    the training size: what `data.decoded` caches."""
    return _resize(image_size, backend, train=True)


def eval_resize(image_size: Sequence[int], backend: str = "tensor") -> list:
    """The first steps of `eval_transform`, decoded image -> uint8 tensor at the model size
    (what `data.decoded` caches for evaluation; the same as `train_resize` for `tensor`)."""
    return _resize(image_size, backend, train=False)


def eval_normalize(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """The last steps of `eval_transform`, on uint8 tensors: one image or a batch of them,
    with the same arithmetic per pixel."""
    return v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    )


def eval_transform(
    image_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    resize_backend: str = "tensor",
) -> v2.Compose:
    """Deterministic resize + normalise: the only preprocessing features are computed with."""
    return v2.Compose(
        [*eval_resize(image_size, resize_backend), *eval_normalize(mean, std).transforms]
    )


def train_transform(
    image_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    aug: AugmentCfg,
    resize_backend: str = "tensor",
) -> v2.Compose:
    """Re-ID style augmentation; horizontal flip only when asked (it swaps the visible flank)."""
    steps: list = _resize(image_size, resize_backend, train=True)
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
