"""Re-ID image encoder over an open_clip image tower: features, BN necks, two ID heads.

Feature choice, following CLIP-ReID (facts, not code):
- ViT: `global` is `ln_post` of the class token at the output of the LAST transformer block
  (CLIP-ReID's `img_feature`); `penultimate` is the class token at the output of the
  second-to-last block, without LayerNorm (CLIP-ReID's `img_feature_last`); `proj` is
  `global @ proj`, the CLIP image embedding (CLIP-ReID's `img_feature_proj`). The golden
  tests (tests/test_golden_clipreid.py) check all three against the released code.
  SIE adds `sie_coef * E[cam]` to the class token before the position table and `ln_pre`.
- timm trunks (lite0): `global` is the trunk's pooled feature (1280 for lite0) and `proj` the
  open_clip head projection of it; there is no penultimate token.
Both BN necks have a frozen bias (BNNeck), and each feeds a bias-free ID classifier.
"""

from __future__ import annotations

import open_clip
import torch
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from torch import nn


def _bn_neck(dim: int) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(dim)
    bn.bias.requires_grad_(False)  # BNNeck: a shift before the classifier only fights the loss
    return bn


def _id_head(dim: int, num_classes: int, init_std: float) -> nn.Linear:
    head = nn.Linear(dim, num_classes, bias=False)
    nn.init.normal_(head.weight, std=init_std)
    return head


class ReIDEncoder(nn.Module):
    """Image encoder for re-ID training and evaluation (stage 2), ViT or timm trunk.

    forward(images, cams) returns a dict:
      global, proj          pre-BN features (B, d_v), (B, D); evaluation uses these
      global_bn, proj_bn    after the BN necks
      logits                [global head (B, C), proj head (B, C)]
      triplet               features the triplet loss is applied to (CLIP-ReID: all of them)
      penultimate           ViT only: class token of the second-to-last block (B, d_v)
    """

    def __init__(
        self,
        clip_model: open_clip.CLIP | nn.Module,
        num_classes: int,
        num_cameras: int = 0,
        sie_coef: float = 0.0,
        sie_init_std: float = 0.02,
        head_init_std: float = 0.001,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        visual = getattr(clip_model, "visual", clip_model)  # a CLIP model or its tower alone
        self.visual = visual
        if isinstance(visual, VisionTransformer):
            self.kind = "vit"
            if visual.attn_pool is not None or visual.pool_type != "tok" or visual.proj is None:
                raise ValueError(
                    "ReIDEncoder needs a ViT with class-token pooling, no attention pooler and a "
                    f"projection (got pool_type={visual.pool_type!r})"
                )
            d_v, d_proj = visual.proj.shape
        elif isinstance(visual, TimmModel):
            self.kind = "timm"
            if "pool" in dict(visual.head.named_children()):
                raise ValueError("ReIDEncoder needs a timm tower with plain pooling, not attn pool")
            d_v = visual.trunk.num_features
            linears = [m for m in visual.head.modules() if isinstance(m, nn.Linear)]
            d_proj = linears[-1].out_features if linears else d_v
        else:
            raise TypeError(f"unsupported image tower {type(visual).__name__}; ViT or timm only")
        self.dims = {"global": int(d_v), "proj": int(d_proj)}

        self.sie_coef = float(sie_coef)
        self.sie = None
        if num_cameras > 0 and self.sie_coef > 0:
            if self.kind != "vit":
                raise ValueError("SIE camera embedding needs a ViT class token; lite0 has none")
            self.sie = nn.Parameter(torch.zeros(num_cameras, d_v))
            nn.init.trunc_normal_(self.sie, std=sie_init_std)

        self.bn_global = _bn_neck(d_v)
        self.bn_proj = _bn_neck(d_proj)
        self.head_global = _id_head(d_v, num_classes, head_init_std)
        self.head_proj = _id_head(d_proj, num_classes, head_init_std)

    @property
    def feature_dims(self) -> dict[str, int]:
        """{'global': d_v, 'proj': D}; the evaluation feature has d_v + D dims."""
        return dict(self.dims)

    def _vit_features(
        self, images: torch.Tensor, cams: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        # Own token embedding (instead of VisionTransformer._embeds) because SIE adds a
        # per-sample camera vector to the class token before ln_pre.
        v = self.visual
        x = v.conv1(images)
        if tuple(x.shape[-2:]) != tuple(v.grid_size):
            raise ValueError(
                f"images of size {tuple(images.shape[-2:])} give a {tuple(x.shape[-2:])} patch "
                f"grid, but the model was built for {tuple(v.grid_size)} "
                f"(image_size {tuple(v.image_size)}); rebuild with build_clip(image_size=...)"
            )
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        if self.sie is not None:
            cls = cls + self.sie_coef * self.sie[cams].unsqueeze(1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(v.patch_dropout(x))
        n_layers = len(v.transformer.resblocks)
        if n_layers >= 2:
            x, (pen,) = v.transformer.forward_intermediates(x, indices=[n_layers - 2])
        else:
            pen, x = x, v.transformer(x)
        cls_out = v.ln_post(x[:, 0])
        return {"global": cls_out, "penultimate": pen[:, 0], "proj": cls_out @ v.proj}

    def forward(self, images: torch.Tensor, cams: torch.Tensor | None = None) -> dict:
        if self.sie is not None:
            if cams is None:
                raise ValueError("this encoder has SIE camera embeddings: pass cams")
            if cams.min() < 0 or cams.max() >= self.sie.shape[0]:
                raise ValueError(
                    f"camera ids must lie in [0, {self.sie.shape[0]}), got "
                    f"[{int(cams.min())}, {int(cams.max())}]"
                )
        if self.kind == "vit":
            out = self._vit_features(images, cams)
            out["triplet"] = [out["penultimate"], out["global"], out["proj"]]
        else:
            pooled = self.visual.trunk(images)
            out = {"global": pooled, "proj": self.visual.head(pooled)}
            out["triplet"] = [out["global"], out["proj"]]
        out["global_bn"] = self.bn_global(out["global"])
        out["proj_bn"] = self.bn_proj(out["proj"])
        out["logits"] = [self.head_global(out["global_bn"]), self.head_proj(out["proj_bn"])]
        return out
