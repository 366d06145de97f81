"""Export a trained encoder as safetensors + JSON that reload without any training state."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch

from indivaid_core.config import ModelCfg
from indivaid_core.model import ReIDEncoder, preprocess_info
from indivaid_core.model.backbones import build_image_tower, uses_quick_gelu
from indivaid_core.safe_io import (
    brief,
    load_safetensors,
    read_json,
    save_safetensors,
    unreadable,
    write_json,
)

WEIGHTS, CONFIG = "model.safetensors", "model.json"
# What load_export needs from model.json to rebuild the encoder.
SPEC_KEYS = ("backbone", "image_size", "stride", "sie_coef", "num_classes")
# Bounds of a model.json's values: far above any recipe (the paper's 256x128, 10^4 animals),
# far below what exhausts memory when the encoder is built.
MAX_SIDE, MAX_CLASSES = 1024, 1_000_000
EVAL_FEATURES = ("concat", "global", "proj", "concat_bn")  # config.ModelCfg.eval_feature


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_export(
    encoder: ReIDEncoder,
    clip_model: torch.nn.Module,
    model: ModelCfg,
    out_dir: Path,
    meta: dict,
) -> Path:
    """Weights + the architecture/preprocessing needed to rebuild them; returns model.json.

    Each file is replaced whole. The weights go first: model.json records their sha256, so a
    kill between the two leaves a pair that `identify.load_model` refuses, not a silent mix.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_safetensors(state, out_dir / WEIGHTS)
    info = preprocess_info(clip_model)
    spec = {
        "backbone": model.backbone,
        "pretrained_source": model.pretrained,
        "image_size": list(model.image_size),
        "stride": model.stride,
        "sie_coef": model.sie_coef,
        "num_classes": len(meta["labels"]),
        "eval_feature": model.eval_feature,
        "mean": list(info.mean),
        "std": list(info.std),
        "weights_sha256": file_sha256(out_dir / WEIGHTS),
        **meta,
    }
    if info.resize_backend != "tensor":  # CLIP-ReID's PIL resize (OpenAI weights)
        spec["resize_backend"] = info.resize_backend
    if uses_quick_gelu(encoder.visual):  # OpenAI weights: the rebuild must use it too
        spec["quick_gelu"] = True
    path = out_dir / CONFIG
    write_json(path, spec, indent=1, sort_keys=True)
    return path


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def spec_problem(spec: dict[str, Any]) -> str | None:
    """What is wrong with a model.json's values, or None: checked before the encoder is built,
    since a crafted size or class count would otherwise allocate without bound or crash."""
    size, stride, classes = spec["image_size"], spec["stride"], spec["num_classes"]
    checks = {
        "backbone": (isinstance(spec["backbone"], str), "a model name"),
        "image_size": (
            isinstance(size, list)
            and len(size) == 2
            and all(_is_int(v, 16, MAX_SIDE) for v in size),
            f"[H, W], whole numbers from 16 to {MAX_SIDE}",
        ),
        "stride": (stride is None or _is_int(stride, 0, MAX_SIDE), "null or a whole number"),
        "sie_coef": (_is_number(spec["sie_coef"]) and spec["sie_coef"] >= 0, "a number >= 0"),
        "num_classes": (_is_int(classes, 1, MAX_CLASSES), f"a whole number 1 to {MAX_CLASSES}"),
        "camera_map": (isinstance(spec.get("camera_map") or {}, dict), "an object or null"),
        "mean": (_is_triple(spec.get("mean", [0, 0, 0]), 0), "3 finite numbers"),
        "std": (_is_triple(spec.get("std", [1, 1, 1]), 1e-12), "3 finite numbers > 0"),
        "eval_feature": (spec.get("eval_feature", "concat") in EVAL_FEATURES, str(EVAL_FEATURES)),
        "quick_gelu": (isinstance(spec.get("quick_gelu", False), bool), "true or false"),
    }
    for key, (ok, expected) in checks.items():
        if not ok:
            return f"{key}: {json.dumps(spec.get(key))[:60]} is not {expected}"
    return None


def _is_triple(value: Any, low: float) -> bool:
    """Per-channel mean or std: 3 finite numbers, each at least `low`."""
    return (
        isinstance(value, list)
        and len(value) == 3
        and all(_is_number(v) and v >= low for v in value)
    )


FIX = "re-export the model (rerun its stage 2, or write_export)"


def _read_spec(model_dir: Path) -> dict[str, Any]:
    """model.json, its values checked before anything is built from them."""
    cfg_path = model_dir / CONFIG
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: not an exported model folder (no {CONFIG})")
    spec = read_json(cfg_path, FIX, SPEC_KEYS, "model description")
    bad = spec_problem(spec)
    if bad:
        raise unreadable(cfg_path, "model description", bad, FIX)
    return spec


def _quick_gelu(spec: dict[str, Any]) -> bool:
    """An export written before model.json said: only OpenAI weights train with QuickGELU,
    and only they carry CLIP-ReID's PIL resize."""
    return bool(spec.get("quick_gelu", spec.get("resize_backend") == "pil"))


def _encoder(spec: dict[str, Any], cfg_path: Path) -> ReIDEncoder:
    """The encoder model.json describes, randomly initialised, over the image tower alone:
    the weights that follow replace all of it, and no caller runs the text tower."""
    try:
        tower = build_image_tower(
            spec["backbone"],
            tuple(spec["image_size"]),
            spec["stride"] or None,
            quick_gelu=_quick_gelu(spec),
        )
        return ReIDEncoder(
            tower,
            spec["num_classes"],
            num_cameras=len(spec.get("camera_map") or {}),
            sie_coef=spec["sie_coef"],
        )
    except (KeyError, TypeError, ValueError) as err:
        raise unreadable(cfg_path, "model description", f"bad value: {err}", FIX) from err


def _load_weights(encoder: ReIDEncoder, path: Path) -> None:
    """The export's weights into `encoder`; every tensor must fit and none may be missing."""
    state = load_safetensors(path, FIX, what="model weights file")
    try:
        missing, unexpected = encoder.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of another shape than model.json describes
        detail = f"its tensors do not fit {CONFIG}: {brief(err)}"
        raise unreadable(path, "model weights file", detail, FIX) from err
    if missing or unexpected:
        detail = f"it does not match {CONFIG}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        raise unreadable(path, "model weights file", detail, FIX)


def load_export(
    model_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[ReIDEncoder, dict]:
    """Rebuild the encoder from model.json (random init, no download) and load the weights."""
    model_dir = Path(model_dir)
    spec = _read_spec(model_dir)
    encoder = _encoder(spec, model_dir / CONFIG)
    _load_weights(encoder, model_dir / WEIGHTS)
    return encoder.to(device).eval(), spec
