"""Grad-CAM for retrieval: which pixels make a query look like its best gallery match.

Grad-CAM (Selvaraju et al. 2017) is a dozen lines with hooks; it is written here because
the common packages target classifiers, while the score here is a feature similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .evaluate.features import _combine


def target_layer(encoder: nn.Module) -> nn.Module:
    """Last spatial layer: the timm trunk's final BN; for a ViT the input norm of the last
    block (the last block's own patch outputs no longer reach the class token)."""
    if encoder.kind == "timm":
        trunk = encoder.visual.trunk
        return getattr(trunk, "bn2", None) or trunk.conv_head
    return encoder.visual.transformer.resblocks[-1].ln_1


def _spatial(act: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
    """(B, C, h, w) activations; ViT tokens (B, 1 + h*w, C) are reshaped to the patch grid."""
    if act.dim() == 4:
        return act
    h, w = encoder.visual.grid_size
    return act[:, 1:].transpose(1, 2).reshape(act.shape[0], -1, h, w)


def gradcam(
    encoder: nn.Module,
    image: torch.Tensor,
    target: torch.Tensor,
    feature: str = "concat",
    camera: int | None = None,
) -> torch.Tensor:
    """Heatmap (H, W) in [0, 1] of cos(feature(image), target) w.r.t. the last spatial layer.

    `camera` is the image's SIE camera id, for encoders trained with camera embeddings.
    """
    cams = () if camera is None else (torch.tensor([camera], device=image.device),)
    store: dict[str, torch.Tensor] = {}

    def keep(_m, _i, out):
        out = out[0] if isinstance(out, tuple) else out
        out.retain_grad()
        store["act"] = out

    handle = target_layer(encoder).register_forward_hook(keep)
    try:
        encoder.eval()
        with torch.enable_grad():
            feat = _combine(encoder(image[None], *cams), feature)
            score = F.cosine_similarity(feat, target[None].to(feat)).sum()
            score.backward()
    finally:
        handle.remove()
    act = _spatial(store["act"], encoder)
    grad = _spatial(store["act"].grad, encoder)
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return (cam / cam.max().clamp_min(1e-12)).detach()
