"""Stage-1 text side: per-individual prompt learner with a CoCoOp meta-net, and a text encoder
that takes prompt embeddings instead of token ids.

Prompt: "A photo of a X X X X <species>." The n_ctx X slots of image i of individual y hold
`ctx_y + pi(f_i)` for the image-specific description g_i, and `ctx_y` alone for the
individual-specific description h_y. Everything is batched: each row gathers its own ctx, so
any batch size works (the released code only ran at batch size 1).
"""

from __future__ import annotations

import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import text_global_pool
from torch import nn

CTX_PLACEHOLDER = "X"


def _text_dims(clip_model: open_clip.CLIP) -> tuple[int, int]:
    """(token width d_text, joint embedding D) of a native open_clip text tower."""
    if not hasattr(clip_model, "token_embedding"):
        raise TypeError(
            f"{type(clip_model).__name__} has no native open_clip text tower "
            "(HF text towers are not supported by the prompt learner)"
        )
    proj = clip_model.text_projection
    d_text = clip_model.token_embedding.weight.shape[1]
    if proj is None:
        return d_text, d_text
    return d_text, proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]


class TextEncoder(nn.Module):
    """open_clip's `encode_text` from embeddings on: + positions, transformer, ln_final, EOT
    pooling, projection. Token ids are still needed to find the end-of-text slot.

    `truncate`: run the transformer only over the slots up to the last end-of-text token. The
    attention mask is causal, so the slots after it never reach the pooled feature: the result
    is the same to float rounding (about 2e-6), and ViT-B-16's 77-slot text tower runs 7.5x
    faster on a 12-slot prompt (measured on the CPU; tests/test_prompts.py checks equality).
    """

    def __init__(self, clip_model: open_clip.CLIP, truncate: bool = False):
        super().__init__()
        self.truncate = truncate
        _text_dims(clip_model)
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.pool_type = clip_model.text_pool_type
        self.eos_id = getattr(clip_model, "text_eos_id", None)
        self.register_buffer("attn_mask", clip_model.attn_mask, persistent=False)

    def forward(self, prompts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """prompts (B, L, d_text) embeddings; tokens (B, L) or (1, L) ids -> (B, D)."""
        dtype = self.transformer.get_cast_dtype()
        n = prompts.shape[1]
        if self.truncate and self.pool_type == "argmax":
            n = int(tokens.argmax(dim=-1).max()) + 1  # the EOT id is the largest token id
        x = prompts[:, :n].to(dtype) + self.positional_embedding[:n].to(dtype)
        mask = None if self.attn_mask is None else self.attn_mask[:n, :n]
        x = self.transformer(x, attn_mask=mask)  # batch-first in, handles its layout
        x = self.ln_final(x)
        x = text_global_pool(x, tokens[:, :n].expand(x.shape[0], -1), self.pool_type, self.eos_id)
        if self.text_projection is None:
            return x
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection


class PromptLearner(nn.Module):
    """Learnable per-individual context tokens plus the meta-net pi (Linear-ReLU-Linear)."""

    def __init__(
        self,
        num_ids: int,
        clip_model: open_clip.CLIP,
        species: str = "animal",
        n_ctx: int = 4,
        meta_net: bool = True,
        img_dim: int | None = None,
        ctx_init_std: float = 0.02,
        meta_reduction: int = 16,
    ):
        super().__init__()
        if num_ids < 1 or n_ctx < 1:
            raise ValueError(f"num_ids and n_ctx must be >= 1, got {num_ids}, {n_ctx}")
        d_text, d_joint = _text_dims(clip_model)
        self.n_ctx = n_ctx
        self.template = f"A photo of a {' '.join([CTX_PLACEHOLDER] * n_ctx)} {species}."

        tokenizer = SimpleTokenizer(context_length=clip_model.context_length)
        if len(tokenizer.encode(self.template)) + 2 > clip_model.context_length:  # + SOT, EOT
            raise ValueError(
                f"prompt {self.template!r} does not fit the text context length "
                f"{clip_model.context_length}; use a shorter species name or fewer ctx tokens"
            )
        tokens = tokenizer([self.template])  # (1, L)
        n_prefix = 1 + len(tokenizer.encode("A photo of a"))  # start token + words before X
        x_id = tokenizer.encode(CTX_PLACEHOLDER)
        if len(x_id) != 1 or not bool((tokens[0, n_prefix : n_prefix + n_ctx] == x_id[0]).all()):
            raise ValueError(f"cannot locate the {n_ctx} context slots in {self.template!r}")
        self.register_buffer("tokens", tokens, persistent=False)
        self.eot_index = int((tokens[0] == tokenizer.eot_token_id).nonzero()[0])
        with torch.no_grad():
            # the CLIP model may already sit on the GPU; the buffers follow the module's .to()
            emb = clip_model.token_embedding(tokens.to(clip_model.token_embedding.weight.device))
        self.register_buffer("prefix", emb[:, :n_prefix].cpu().clone(), persistent=False)
        self.register_buffer("suffix", emb[:, n_prefix + n_ctx :].cpu().clone(), persistent=False)

        self.ctx = nn.Parameter(torch.randn(num_ids, n_ctx, d_text) * ctx_init_std)
        self.meta_net = None
        if meta_net:
            d_in = img_dim or d_joint
            hidden = max(1, d_in // meta_reduction)
            self.meta_net = nn.Sequential(
                nn.Linear(d_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, d_text)
            )

    @property
    def num_ids(self) -> int:
        return self.ctx.shape[0]

    def _assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        b = ctx.shape[0]
        return torch.cat([self.prefix.expand(b, -1, -1), ctx, self.suffix.expand(b, -1, -1)], dim=1)

    def individual_prompts(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) -> prompt embeddings with ctx_y alone, (B, L, d_text)."""
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_ids):
            raise ValueError(
                f"ids must lie in [0, {self.num_ids}), got [{int(ids.min())}, {int(ids.max())}]"
            )
        return self._assemble(self.ctx[ids])

    def forward(
        self, ids: torch.Tensor, img_feats: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B,), img_feats (B, d_in) -> (prompts_g, prompts_h), each (B, L, d_text).

        Without a meta-net prompts_g is prompts_h (the CLIP-ReID prompt)."""
        prompts_h = self.individual_prompts(ids)
        if self.meta_net is None:
            return prompts_h, prompts_h
        if img_feats is None or img_feats.shape[0] != ids.shape[0]:
            raise ValueError("the meta-net needs img_feats with one row per id")
        shift = self.meta_net(img_feats.to(self.ctx.dtype)).unsqueeze(1)  # same for each slot
        return self._assemble(self.ctx[ids] + shift), prompts_h


class DescriptionGenerator(nn.Module):
    """Prompt learner + text encoder: image-specific g_i and individual-specific h_y, (B, D)."""

    def __init__(
        self,
        clip_model: open_clip.CLIP,
        num_ids: int,
        species: str = "animal",
        n_ctx: int = 4,
        meta_net: bool = True,
        img_dim: int | None = None,
        truncate_text: bool = False,
    ):
        super().__init__()
        self.prompt_learner = PromptLearner(num_ids, clip_model, species, n_ctx, meta_net, img_dim)
        self.text_encoder = TextEncoder(clip_model, truncate_text)

    def forward(
        self, ids: torch.Tensor, img_feats: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # h depends on the identity only: encode each identity of the batch once.
        uniq, inverse = torch.unique(ids, return_inverse=True)
        tokens = self.prompt_learner.tokens
        prompts_h = self.prompt_learner.individual_prompts(uniq)
        if self.prompt_learner.meta_net is None:
            h = self.text_encoder(prompts_h, tokens)[inverse]
            return h, h
        prompts_g, _ = self.prompt_learner(ids, img_feats)
        both = self.text_encoder(torch.cat([prompts_g, prompts_h]), tokens)  # one pass
        return both[: ids.shape[0]], both[ids.shape[0] :][inverse]

    def individual(self, ids: torch.Tensor) -> torch.Tensor:
        """h_y for each id, (B, D); no image needed."""
        prompts_h = self.prompt_learner.individual_prompts(ids)
        return self.text_encoder(prompts_h, self.prompt_learner.tokens)
