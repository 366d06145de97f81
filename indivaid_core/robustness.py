"""Moved to `indivaid_core.repro.robustness` (the robustness stage); kept for old imports."""

from indivaid_core.repro.robustness import (
    MAX_BLUR_SIGMA,
    MAX_FOG,
    MAX_NOISE_STD,
    MIN_LIGHT,
    corrupted_transform,
    corruption,
    robustness_sweep,
    sweep_frame,
)

__all__ = [
    "MAX_BLUR_SIGMA",
    "MAX_FOG",
    "MAX_NOISE_STD",
    "MIN_LIGHT",
    "corrupted_transform",
    "corruption",
    "robustness_sweep",
    "sweep_frame",
]
