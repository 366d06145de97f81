"""Losses of both stages. All are means over the anchors that have what the loss needs, so a
batch where an identity appears once, or where every sample shares one identity, stays finite.

Note on the released IndivAID code: its stage-1 supervised contrastive loss returned
`exp(cos)` of matching pairs, which *grows* as pairs get closer, so minimising it pushed
matching image/text pairs apart. `supcon_loss` below is the standard form (mean log-likelihood
of the positives under a softmax over all candidates); tests/test_losses.py shows that a
gradient step on it brings matching pairs closer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _zero_like(t: torch.Tensor) -> torch.Tensor:
    """A 0 that still belongs to the graph, so `.backward()` works when nothing is valid."""
    return t.sum() * 0.0


def supcon_loss(
    feat_a: torch.Tensor,
    feat_b: torch.Tensor,
    labels_a: torch.Tensor,
    labels_b: torch.Tensor,
    logit_scale: float | torch.Tensor,
    normalize: bool = True,
) -> torch.Tensor:
    """Supervised contrastive loss of anchors `feat_a` (N, D) against candidates `feat_b` (M, D).

    Features are L2-normalised; logits are `logit_scale * cos` (logit_scale is the multiplier,
    1 / temperature, e.g. CLIP's `logit_scale.exp()`). `normalize=False` with logit_scale 1
    gives CLIP-ReID's stage-1 SupConLoss (raw dot products, temperature 1).
    For each anchor the loss is minus the mean, over candidates with the same label, of the
    log-softmax over all candidates.
    Anchors without any positive are left out. i2t = supcon(img, txt), t2i = supcon(txt, img).
    It decreases as matching pairs get closer; the released IndivAID loss returned exp(cos),
    which increases instead, so training on it pushed matching pairs apart.
    """
    if feat_a.shape[0] != labels_a.shape[0] or feat_b.shape[0] != labels_b.shape[0]:
        raise ValueError("supcon_loss: each feature row needs one label")
    if normalize:
        feat_a, feat_b = F.normalize(feat_a, dim=1), F.normalize(feat_b, dim=1)
    logits = logit_scale * feat_a @ feat_b.T
    log_prob = F.log_softmax(logits, dim=1)
    pos = (labels_a[:, None] == labels_b[None, :]).to(log_prob.dtype)
    n_pos = pos.sum(1)
    valid = n_pos > 0
    if not bool(valid.any()):
        return _zero_like(logits)
    mean_pos = (log_prob * pos).sum(1)[valid] / n_pos[valid]
    return -mean_pos.mean()


def id_loss(
    logits: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor,
    label_smoothing: float = 0.1,
) -> torch.Tensor:
    """Identity cross-entropy with label smoothing; a list of heads is summed (CLIP-ReID)."""
    heads = [logits] if isinstance(logits, torch.Tensor) else list(logits)
    return sum(F.cross_entropy(x, labels, label_smoothing=label_smoothing) for x in heads)


def triplet_loss(feats: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet loss on Euclidean distances (Hermans et al. 2017).

    Each anchor takes its farthest same-label sample and its nearest other-label sample;
    anchors missing either are left out, and a batch with none left gives 0 (with a graph).
    """
    if feats.shape[0] != labels.shape[0]:
        raise ValueError("triplet_loss: each feature row needs one label")
    dist = torch.cdist(feats, feats, compute_mode="donot_use_mm_for_euclid_dist")
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos, neg = same & ~eye, ~same
    valid = pos.any(1) & neg.any(1)
    if not bool(valid.any()):
        return _zero_like(feats)
    d_ap = dist.masked_fill(~pos, float("-inf")).amax(1)[valid]
    d_an = dist.masked_fill(~neg, float("inf")).amin(1)[valid]
    return F.margin_ranking_loss(d_an, d_ap, torch.ones_like(d_an), margin=margin)


def i2t_ce_loss(
    img_feats: torch.Tensor,
    text_feats_all: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: float | torch.Tensor,
    label_smoothing: float = 0.0,
    normalize: bool = True,
) -> torch.Tensor:
    """Cross-entropy of each image against all C identity descriptions (C, D), row c = id c.

    Both sides are L2-normalised and scaled by `logit_scale` (1 / temperature).
    `normalize=False`, logit_scale 1 and label smoothing 0.1 give CLIP-ReID's stage-2 i2t loss
    (raw `image_proj @ text.T` logits).
    """
    if labels.numel() and int(labels.max()) >= text_feats_all.shape[0]:
        raise ValueError(
            f"i2t_ce_loss: label {int(labels.max())} has no description among "
            f"{text_feats_all.shape[0]} rows"
        )
    if normalize:
        img_feats, text_feats_all = (
            F.normalize(img_feats, dim=1),
            F.normalize(text_feats_all, dim=1),
        )
    logits = logit_scale * img_feats @ text_feats_all.T
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
