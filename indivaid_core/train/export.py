"""Export a trained encoder as safetensors + JSON that reload without any training state."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from indivaid_core.config import Config
from indivaid_core.model import ReIDEncoder, build_clip, preprocess_info
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


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_export(
    encoder: ReIDEncoder, clip_model: torch.nn.Module, cfg: Config, out_dir: Path, meta: dict
) -> Path:
    """Weights + the architecture/preprocessing needed to rebuild them; returns model.json.

    Each file is replaced whole. The weights go first: model.json records their sha256, so a
    kill between the two leaves a pair that `identify.load_model` refuses, not a silent mix.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_safetensors(state, out_dir / WEIGHTS)
    info = preprocess_info(clip_model)
    m = cfg.model
    spec = {
        "backbone": m.backbone,
        "pretrained_source": m.pretrained,
        "image_size": list(m.image_size),
        "stride": m.stride,
        "sie_coef": m.sie_coef,
        "num_classes": len(meta["labels"]),
        "eval_feature": m.eval_feature,
        "mean": list(info.mean),
        "std": list(info.std),
        "weights_sha256": file_sha256(out_dir / WEIGHTS),
        **meta,
    }
    if info.resize_backend != "tensor":  # CLIP-ReID's PIL resize (OpenAI weights)
        spec["resize_backend"] = info.resize_backend
    path = out_dir / CONFIG
    write_json(path, spec, indent=1, sort_keys=True)
    return path


def load_export(
    model_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[ReIDEncoder, dict]:
    """Rebuild the encoder from model.json (random init, no download) and load the weights."""
    model_dir = Path(model_dir)
    cfg_path = model_dir / CONFIG
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: not an exported model folder (no {CONFIG})")
    fix = "re-export the model (rerun its stage 2, or save_export)"
    spec = read_json(cfg_path, fix, SPEC_KEYS, "model description")
    try:
        clip_model = build_clip(
            spec["backbone"], None, tuple(spec["image_size"]), spec["stride"] or None
        )
        encoder = ReIDEncoder(
            clip_model,
            spec["num_classes"],
            num_cameras=len(spec.get("camera_map") or {}),
            sie_coef=spec["sie_coef"],
        )
    except (KeyError, TypeError, ValueError) as err:
        raise unreadable(cfg_path, "model description", f"bad value: {err}", fix) from err
    state = load_safetensors(model_dir / WEIGHTS, fix, what="model weights file")
    try:
        missing, unexpected = encoder.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of another shape than model.json describes
        detail = f"its tensors do not fit {CONFIG}: {brief(err)}"
        raise unreadable(model_dir / WEIGHTS, "model weights file", detail, fix) from err
    if missing or unexpected:
        detail = f"it does not match {CONFIG}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        raise unreadable(model_dir / WEIGHTS, "model weights file", detail, fix)
    return encoder.to(device).eval(), spec
