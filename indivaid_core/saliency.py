"""Moved to `indivaid_core.repro.saliency` (the attention stage); kept for old imports."""

from indivaid_core.repro.saliency import gradcam, saliency_pairs, target_layer

__all__ = ["gradcam", "saliency_pairs", "target_layer"]
