"""Test-time corruption sweep: blur, noise, low light and fog at increasing strength.

Only the queries are corrupted (the gallery is the clean reference a camera-trap project
would hold); strength 0 is the clean baseline. Corruptions are torchvision ops on tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

# Full-strength parameters (strength 1.0); each scales linearly with the strength.
MAX_BLUR_SIGMA = 3.0
MAX_NOISE_STD = 0.25
MIN_LIGHT = 0.15
MAX_FOG = 0.7


def corruption(name: str, strength: float, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function on a float image tensor in [0, 1] (C, H, W) -> corrupted, clamped."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"corruption strength must lie in [0, 1], got {strength}")
    if name == "blur":
        sigma = max(MAX_BLUR_SIGMA * strength, 1e-3)
        k = 2 * int(3 * sigma) + 1
        return lambda x: TF.gaussian_blur(x, [k, k], [sigma, sigma])
    if name == "noise":
        gen = torch.Generator().manual_seed(seed)
        return lambda x: (x + MAX_NOISE_STD * strength * torch.randn(x.shape, generator=gen)).clamp(
            0, 1
        )
    if name == "low_light":
        factor = 1.0 - (1.0 - MIN_LIGHT) * strength
        return lambda x: TF.adjust_gamma(x, 1.0 + strength) * factor
    if name == "fog":
        a = MAX_FOG * strength
        return lambda x: ((1 - a) * x + a * x.mean() * 0.5 + a * 0.5).clamp(0, 1)
    raise ValueError(f"unknown corruption '{name}'; choose from blur, noise, low_light, fog")


def corrupted_transform(
    name: str,
    strength: float,
    image_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
) -> v2.Compose:
    """The evaluation transform with a corruption applied before normalisation."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(tuple(image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Lambda(corruption(name, strength, seed)),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


def sweep_frame(rows: list[dict]) -> pd.DataFrame:
    """Tidy frame (variant, corruption, strength, mAP, R1) for plotting."""
    return pd.DataFrame(rows).sort_values(["variant", "corruption", "strength"])
