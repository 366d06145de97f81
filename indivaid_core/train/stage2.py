"""Stage 2: fine-tune E_I (+ BN necks, ID heads) and train the attention fusion module.

Losses: ID cross-entropy (label smoothing) on both BN-neck heads, batch-hard triplet on the
encoder's pre-BN features (global, projected, and the ViT penultimate token), and
image-to-text cross-entropy of the projected feature against every individual's fused
description z (skipped when its weight is 0).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from indivaid_core.config import Config, ConfigError, to_dict
from indivaid_core.data.dataset import camera_ids
from indivaid_core.data.decoded import decoded_images
from indivaid_core.data.digest import files_digest
from indivaid_core.data.images import DataError
from indivaid_core.device import autocast, memory_format, resolve_device
from indivaid_core.losses import i2t_ce_loss, id_loss, triplet_loss
from indivaid_core.model import AttentionFusion, ReIDEncoder, build_clip_for, preprocess_info
from indivaid_core.safe_io import load_safetensors, read_json, save_torch, write_json
from indivaid_core.train.augment import BatchAugment
from indivaid_core.train.engine import (
    count_params,
    cpu_threads,
    exclusive_run,
    flops_per_image,
    gather_cat,
    init_distributed,
    maybe_ddp,
    seed_everything,
)
from indivaid_core.train.export import file_sha256, save_export
from indivaid_core.train.loop import LoopState, rows_digest, run_epochs
from indivaid_core.train.sampler import PKSampler
from indivaid_core.train.schedule import warmup_multistep
from indivaid_core.train.stage1 import label_map


class Stage2Model(torch.nn.Module):
    """The encoder and the fusion module in one module, so DDP syncs both.

    With `freeze_bn`, the pretrained trunk's BatchNorm layers stay in eval mode while
    training: they keep their ImageNet statistics (their affine weights still learn), because
    re-estimating them from a few hundred augmented images is what shifts the features most.
    """

    def __init__(
        self, encoder: ReIDEncoder, fusion: AttentionFusion | None, freeze_bn: bool = False
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.fusion = fusion
        self.freeze_bn = freeze_bn

    def train(self, mode: bool = True) -> Stage2Model:
        super().train(mode)
        if mode and self.freeze_bn:
            for module in self.encoder.visual.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, images, h=None, g=None, g_labels=None, cams=None):
        out = self.encoder(images, cams)
        if self.fusion is not None:
            out["z"] = self.fusion(h, g, g_labels)[0]
        return out


def param_groups(
    model: torch.nn.Module, lr: float, wd: float, bias_factor: float, backbone_factor: float
) -> list[dict]:
    """Biases (and norm shifts) at lr x bias_factor, as in the re-ID baselines; the pretrained
    trunk (`encoder.visual`) at a further x backbone_factor, so a small set does not erase it."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (name.startswith("encoder.visual."), name.endswith("bias"))
            groups.setdefault(key, []).append(p)
    return [
        {
            "params": params,
            "lr": lr * (backbone_factor if trunk else 1.0) * (bias_factor if bias else 1.0),
            "weight_decay": wd,
        }
        for (trunk, bias), params in sorted(groups.items())
    ]


def load_descriptions(stage1_dir: Path, labels_of: dict[str, int]) -> dict[str, torch.Tensor]:
    """The stage-1 cache, checked against this run's label map and for NaN (a diverged
    stage 1 must be named as such, not surface as stage 2 diverging)."""
    path = stage1_dir / "descriptions.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path}: stage-1 descriptions missing; run stage 1 first")
    fix = "rerun stage 1 for this text run (it rewrites the file)"
    saved = read_json(stage1_dir / "labels.json", fix, ("labels",), "stage-1 label map")["labels"]
    if saved != labels_of:
        raise DataError(
            f"{stage1_dir}: stage-1 identities differ from this run's training set; "
            "train stage 1 on these images first (--stage both)"
        )
    desc = load_safetensors(path, fix, ("g", "g_labels", "h"), "stage-1 descriptions file")
    if not all(bool(torch.isfinite(desc[k]).all()) for k in ("g", "h")):
        raise DataError(
            f"{stage1_dir}: the stage-1 descriptions hold NaN or inf values (stage 1 diverged); "
            "rerun stage 1 with a lower stage1.lr (--stage both)"
        )
    return desc


def run_settings(
    cfg: Config,
    train_table: pd.DataFrame,
    camera_map: dict[str, int] | None,
    stage1_file: Path | None,
    image_root: Path | None = None,
) -> dict[str, Any]:
    """What defines a stage-2 run: a checkpoint made with other settings, or from other photo
    files under the same names, is not resumed."""
    d = to_dict(cfg)
    return {
        "stage": "stage2",
        "seed": cfg.seed,
        "model": d["model"],
        "stage2": d["stage2"],
        "rows": rows_digest(train_table, ("image_id", "identity", "path", "camera")),
        "camera_map": camera_map or {},
        "stage1_descriptions": file_sha256(stage1_file) if stage1_file else None,
        **({"files": files_digest(train_table, image_root)} if image_root is not None else {}),
    }


@exclusive_run
def _train_stage2(
    cfg: Config,
    train_table: pd.DataFrame,
    image_root: Path,
    out_dir: Path,
    stage1_dir: Path | None,
    train: bool = True,
    resume: bool = True,
    interrupt_after_steps: int = 0,
    camera_map: dict[str, int] | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Fine-tune (or, with train=False, just export the zero-shot model) and write metrics.

    `cache_dir` keeps the decoded training images (`data.decoded`) for the next run; None
    decodes them into memory.

    `camera_map` ({camera: id}, covering every split) feeds the SIE embedding when
    `model.sie_coef > 0`; it is stored in the export so evaluation uses the same ids.
    """
    device = resolve_device(cfg.device)
    info = init_distributed(device)
    seed_everything(cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    m, s2 = cfg.model, cfg.stage2
    if m.sie_coef > 0 and not camera_map:
        raise ConfigError(
            "model.sie_coef > 0 needs a camera id for every image (camera_map); photos without "
            "one train with model.sie_coef: 0"
        )
    camera_map = camera_map if m.sie_coef > 0 else None
    clip_model = build_clip_for(m)
    train_table = train_table.reset_index(drop=True)
    labels_of = label_map(train_table["identity"])
    encoder = ReIDEncoder(
        clip_model, len(labels_of), num_cameras=len(camera_map or {}), sie_coef=m.sie_coef
    )
    use_text = train and s2.loss_weights.i2t > 0
    desc = load_descriptions(stage1_dir, labels_of) if use_text and stage1_dir else None
    if use_text and desc is None:
        raise ConfigError(
            "stage2.loss_weights.i2t > 0 needs a stage-1 run: choose a variant with text, or "
            "set stage2.loss_weights.i2t: 0"
        )
    if desc and encoder.feature_dims["proj"] % m.fusion_heads:
        raise ConfigError(
            f"model.fusion_heads: {m.fusion_heads} does not divide this backbone's "
            f"{encoder.feature_dims['proj']}-d text features; choose a divisor"
        )
    fusion = (
        AttentionFusion(encoder.feature_dims["proj"], m.fusion_heads, m.fusion) if desc else None
    )
    fmt = memory_format(m.channels_last)
    net = Stage2Model(encoder, fusion, s2.freeze_bn).to(device, memory_format=fmt)
    meta = {
        "labels": labels_of,
        "image_ids": train_table["image_id"].astype(str).tolist(),
        "camera_map": camera_map or {},
    }
    flops = flops_per_image(encoder, tuple(m.image_size), device)
    if not train:
        save_export(net.encoder, clip_model, cfg, out_dir, meta)
        result = {
            "stage": "stage2",
            "trained": False,
            "flops_per_image": flops,
            **count_params(net),
        }
        write_json(out_dir / "metrics.json", result, indent=2, sort_keys=True)
        return result

    info_pp = preprocess_info(clip_model)
    pixels = decoded_images(
        train_table,
        image_root,
        tuple(m.image_size),
        info_pp.resize_backend,
        cache_dir,
        cfg.data.num_workers,
    )
    augment = BatchAugment(s2.augment, info_pp.mean, info_pp.std)
    labels = torch.tensor(train_table["identity"].astype(str).map(labels_of).to_numpy())
    cameras = torch.tensor(camera_ids(train_table["camera"], camera_map)) if camera_map else None
    sampler = PKSampler(
        labels.tolist(),
        s2.p,
        s2.k,
        cfg.seed,
        s2.iters_per_epoch,
        s2.min_iters_per_epoch,
        info.rank,
        info.world_size,
        mode=s2.sampler,
    )
    groups = param_groups(net, s2.lr, s2.weight_decay, s2.bias_lr_factor, s2.backbone_lr_factor)
    opt = torch.optim.Adam(groups)
    sched = warmup_multistep(opt, s2.warmup_epochs, s2.milestones, s2.gamma)
    state = LoopState({"net": net}, opt, sched)
    text = {k: v.to(device) for k, v in desc.items()} if desc else {}
    raw_i2t = s2.i2t_logits == "raw"  # CLIP-ReID: image_proj @ text.T, no scale
    scale = 1.0 if raw_i2t else clip_model.logit_scale.exp().detach().to(device)
    w = s2.loss_weights

    def batches(epoch: int) -> Iterator[dict[str, Any]]:
        """uint8 pixels gathered from the decoded cache; augmented on the device in `step`."""
        sampler.set_epoch(epoch)
        for batch in sampler:
            rows = [r for r, _ in batch]
            yield {
                "pixels": torch.from_numpy(np.ascontiguousarray(pixels[rows])),
                "seeds": [s for _, s in batch],
                "rows": torch.tensor(rows),
            }

    with maybe_ddp(net, device) as model:
        model.train()

        def step(batch: dict[str, torch.Tensor]):
            pixels_on = batch["pixels"].to(device, non_blocking=True)
            images = augment(pixels_on, batch["seeds"]).contiguous(memory_format=fmt)
            y = labels[batch["rows"]].to(device)
            cams = cameras[batch["rows"]].to(device) if cameras is not None else None
            with autocast(device, s2.amp):
                out = model(images, text.get("h"), text.get("g"), text.get("g_labels"), cams)
            y = gather_cat(y)
            logits = [gather_cat(lg.float()) for lg in out["logits"]]
            trip = [gather_cat(f.float()) for f in out["triplet"]]
            proj = gather_cat(out["proj"].float())
            parts = {
                "id": sum(id_loss(lg, y, s2.label_smoothing) for lg in logits) * w.id,
                "triplet": sum(triplet_loss(f, y, s2.margin) for f in trip) * w.triplet,
            }
            if "z" in out:
                z = out["z"].float()
                i2t = i2t_ce_loss(proj, z, y, scale, s2.i2t_label_smoothing, not raw_i2t)
                parts["i2t"] = i2t * w.i2t
            loss = sum(parts.values())
            return loss, {k: v.item() for k, v in parts.items()}, len(images)

        meter = run_epochs(
            state,
            s2.epochs,
            batches,
            step,
            out_dir / "checkpoint.pt",
            out_dir / "plots",
            "stage2",
            resume,
            interrupt_after_steps,
            settings=run_settings(
                cfg,
                train_table,
                camera_map,
                stage1_dir / "descriptions.safetensors" if desc else None,
                image_root,
            ),
        )
    result = {
        "stage": "stage2",
        "trained": True,
        "epochs": s2.epochs,
        "global_batch": sampler.global_batch,
        "n_images": len(train_table),
        "n_identities": len(labels_of),
        "final_loss": round(state.history[-1]["loss"], 6),
        "flops_per_image": flops,
        **count_params(net),
        **meter.summary(device),
    }
    if info.is_main:
        save_export(net.encoder, clip_model, cfg, out_dir, meta)
        if fusion is not None:
            save_attention(net, text, out_dir)
        write_json(out_dir / "metrics.json", result, indent=2, sort_keys=True)
    return result


def train_stage2(cfg: Config, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """`_train_stage2` (the arguments, and what it writes) on `stage2.num_threads` CPU threads,
    then restored: on one thread a run gives the same bytes in any process, so the seeds of a
    cell can train side by side (repro.training)."""
    with cpu_threads(cfg.stage2.num_threads):
        return _train_stage2(cfg, *args, **kwargs)


@torch.no_grad()
def save_attention(net: Stage2Model, text: dict[str, torch.Tensor], out_dir: Path) -> None:
    """Final z and the fusion's attention weights per individual, for the attention notebook."""
    net.eval()
    z, weights, key_index = net.fusion(text["h"], text["g"], text["g_labels"])
    blob = {"z": z.cpu(), "key_index": key_index.cpu()}
    if weights is not None:
        blob["weights"] = weights.cpu()
    save_torch(blob, out_dir / "attention.pt")  # tensors only: read with weights_only=True
