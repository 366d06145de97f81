"""IndivAID model: open_clip backbones, re-ID image encoder, prompt learner, fusion."""

from indivaid_core.model.backbones import (
    LITE0_TAG,
    PreprocessInfo,
    build_clip,
    build_clip_for,
    convert_lite0_state_dict,
    lite0_imagenet_classifier,
    load_lite0_imagenet,
    preprocess_info,
    resize_pos_embed,
)
from indivaid_core.model.encoder import ReIDEncoder
from indivaid_core.model.fusion import VARIANTS as FUSION_VARIANTS
from indivaid_core.model.fusion import AttentionFusion, pack_by_id
from indivaid_core.model.prompts import DescriptionGenerator, PromptLearner, TextEncoder

__all__ = [
    "FUSION_VARIANTS",
    "LITE0_TAG",
    "AttentionFusion",
    "DescriptionGenerator",
    "PreprocessInfo",
    "PromptLearner",
    "ReIDEncoder",
    "TextEncoder",
    "build_clip",
    "build_clip_for",
    "convert_lite0_state_dict",
    "lite0_imagenet_classifier",
    "load_lite0_imagenet",
    "pack_by_id",
    "preprocess_info",
    "resize_pos_embed",
]
