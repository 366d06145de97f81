"""Stage-2 fusion of descriptions into one text anchor z_y per individual.

attention (the paper): z_y = LN(h_y + MHA(q=h_y, k=v={g_i : y_i = y})).
mean (what the released code does): z_y = mean of y's g_i.
individual_only (CLIP-ReID): z_y = h_y.
Individuals own different numbers of images, so their g rows are packed into a padded
(N, Kmax, D) table with a key mask, built with a sort and a scatter (no loop over individuals).
An individual without any g row falls back to z_y = h_y.
"""

from __future__ import annotations

import torch
from torch import nn

VARIANTS = ("attention", "mean", "individual_only")


def pack_by_id(g_ids: torch.Tensor, num_ids: int) -> torch.Tensor:
    """key_index (N, Kmax): row y lists the g rows of individual y in order, -1 pads."""
    if g_ids.ndim != 1:
        raise ValueError(f"g_ids must be 1-D, got shape {tuple(g_ids.shape)}")
    if g_ids.numel() and (int(g_ids.min()) < 0 or int(g_ids.max()) >= num_ids):
        raise ValueError(
            f"g_ids must lie in [0, {num_ids}) (one h row per id), got "
            f"[{int(g_ids.min())}, {int(g_ids.max())}]"
        )
    counts = torch.bincount(g_ids, minlength=num_ids)
    k_max = int(counts.max()) if g_ids.numel() else 0
    order = torch.argsort(g_ids, stable=True)
    sorted_ids = g_ids[order]
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(g_ids.numel(), device=g_ids.device) - starts[sorted_ids]
    key_index = torch.full((num_ids, k_max), -1, dtype=torch.long, device=g_ids.device)
    key_index[sorted_ids, slot] = order
    return key_index


class AttentionFusion(nn.Module):
    """forward(h (N, D), g (M, D), g_ids (M,)) -> (z (N, D), weights (N, Kmax) | None,
    key_index (N, Kmax)); weights[y, k] is the attention of h_y on g[key_index[y, k]]."""

    def __init__(self, dim: int, heads: int = 4, variant: str = "attention", dropout: float = 0.0):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"fusion variant must be one of {VARIANTS}, got {variant!r}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.variant = variant
        # Only the paper's variant has parameters; the others would leave them unused (DDP).
        if variant == "attention":
            self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
            self.norm = nn.LayerNorm(dim)

    def forward(
        self, h: torch.Tensor, g: torch.Tensor, g_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        if h.ndim != 2 or g.ndim != 2 or h.shape[1] != g.shape[1] or g.shape[0] != g_ids.shape[0]:
            raise ValueError(
                f"need h (N, D), g (M, D), g_ids (M,); got {tuple(h.shape)}, {tuple(g.shape)}, "
                f"{tuple(g_ids.shape)}"
            )
        key_index = pack_by_id(g_ids, h.shape[0])
        pad = key_index < 0
        empty = pad.all(dim=1, keepdim=True)  # ids with no g rows (all of them if M == 0)
        if self.variant == "individual_only" or key_index.shape[1] == 0:
            return h, None, key_index
        keys = g[key_index.clamp(min=0)]  # (N, Kmax, D); padded slots masked below
        if self.variant == "mean":
            weights = (~pad).to(h.dtype) / (~pad).sum(1, keepdim=True).clamp(min=1)
            z = torch.einsum("nk,nkd->nd", weights, keys)
            return torch.where(empty, h, z), weights, key_index
        # An all-masked row would softmax to NaN: unmask its first (dummy) slot, then discard.
        mask = pad.clone()
        mask[:, 0] &= ~empty[:, 0]
        out, weights = self.attn(
            h.unsqueeze(1), keys, keys, key_padding_mask=mask, need_weights=True
        )
        z = self.norm(h + out.squeeze(1))
        weights = weights.squeeze(1).masked_fill(pad, 0.0)
        return torch.where(empty, h, z), weights, key_index
