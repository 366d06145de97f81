"""The attention stage: Grad-CAM for retrieval, which pixels make a query match its best hit.

Grad-CAM (Selvaraju et al. 2017) is a dozen lines with hooks; it is written here because
the common packages target classifiers, while the score here is a feature similarity.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from indivaid_core.config import Config
from indivaid_core.data import camera_ids
from indivaid_core.data.images import load_rgb
from indivaid_core.evaluate.features import combine_outputs
from indivaid_core.repro.evaluation import FeatureSettings, eval_split, features_for
from indivaid_core.repro.paths import Paths
from indivaid_core.train.export import load_export
from indivaid_core.transforms import eval_transform


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
            feat = combine_outputs(encoder(image[None], *cams), feature)
            score = F.cosine_similarity(feat, target[None].to(feat)).sum()
            score.backward()
    finally:
        handle.remove()
    act = _spatial(store["act"], encoder)
    grad = _spatial(store["act"].grad, encoder)
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    return (cam / cam.max().clamp_min(1e-12)).detach()


def saliency_pairs(cfg: Config, dataset: str, variant: str, n_queries: int = 4) -> list[tuple]:
    """Grad-CAM of the first queries and their top gallery match (seed 0 model)."""
    split = eval_split(cfg, dataset)
    encoder, spec = load_export(Paths(cfg, dataset).stage2(variant, cfg.pipeline.seeds[0]), "cpu")
    cpu = dataclasses.replace(cfg, device="cpu")
    settings = FeatureSettings.of(cpu)
    qf, gf = split.halves(features_for(encoder, spec, split.test, split.root, settings=settings))
    dist = torch.cdist(qf[:n_queries], gf)
    if split.loo:
        dist[torch.arange(len(dist)), torch.arange(len(dist))] = float("inf")
    tf = eval_transform(
        spec["image_size"], spec["mean"], spec["std"], spec.get("resize_backend", "tensor")
    )
    size = tuple(reversed(spec["image_size"]))
    query, gallery = split.query, split.gallery
    q_cams, g_cams = (_camera_ids(rows, spec.get("camera_map")) for rows in (query, gallery))
    out = []
    for i, j in enumerate(dist.argmin(1).tolist()):
        q_img, g_img = (
            load_rgb(split.root / query["path"][i]),
            load_rgb(split.root / gallery["path"][j]),
        )
        q_cam = gradcam(encoder, tf(q_img), gf[j], spec["eval_feature"], q_cams[i])
        g_cam = gradcam(encoder, tf(g_img), qf[i], spec["eval_feature"], g_cams[j])
        same = query["identity"][i] == gallery["identity"][j]
        out.append(
            (
                np.asarray(q_img.resize(size, Image.BILINEAR)),
                q_cam.numpy(),
                np.asarray(g_img.resize(size, Image.BILINEAR)),
                g_cam.numpy(),
                f"{'✓' if same else '✗'} {gallery['identity'][j]}",
            )
        )
    return out


def _camera_ids(rows, camera_map: dict | None) -> list:
    """The rows' SIE camera ids, or None each for an encoder without camera embeddings."""
    return camera_ids(rows["camera"], camera_map) if camera_map else [None] * len(rows)
