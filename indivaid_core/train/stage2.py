"""Stage 2: fine-tune E_I (+ BN necks, ID heads) and train the attention fusion module.

Losses: ID cross-entropy (label smoothing) on both BN-neck heads, batch-hard triplet on the
encoder's pre-BN features (global, projected, and the ViT penultimate token), and
image-to-text cross-entropy of the projected feature against every individual's fused
description z (skipped when its weight is 0).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from indivaid_core.config import Config, ConfigError, ModelCfg, Stage2Cfg, to_dict
from indivaid_core.data.dataset import camera_ids
from indivaid_core.data.decoded import decoded_images
from indivaid_core.data.digest import files_digest
from indivaid_core.data.images import DataError
from indivaid_core.device import DistInfo, autocast, memory_format, resolve_device
from indivaid_core.losses import i2t_ce_loss, id_loss, triplet_loss
from indivaid_core.model import AttentionFusion, ReIDEncoder, build_clip_for, preprocess_info
from indivaid_core.model.backbones import freeze_leading_groups
from indivaid_core.safe_io import load_safetensors, read_json, save_torch, write_json
from indivaid_core.train.augment import BatchAugment
from indivaid_core.train.engine import (
    CostMeter,
    count_params,
    cpu_threads,
    exclusive_run,
    flops_per_image,
    gather_cat,
    init_distributed,
    maybe_ddp,
    seed_everything,
)
from indivaid_core.train.export import file_sha256, write_export
from indivaid_core.train.loop import LoopState, rows_digest, run_epochs
from indivaid_core.train.sampler import PKSampler
from indivaid_core.train.schedule import warmup_multistep
from indivaid_core.train.stage1 import label_map


class Stage2Model(torch.nn.Module):
    """The encoder and the fusion module in one module, so DDP syncs both.

    With `freeze_bn`, the pretrained trunk's BatchNorm layers stay in eval mode while
    training: they keep their ImageNet statistics (their affine weights still learn), because
    re-estimating them from a few hundred augmented images is what shifts the features most.
    `frozen_groups` stops the tower's first layer groups from training (`stage2.frozen_groups`);
    their BatchNorm layers keep their statistics too, so a frozen block computes what it did.
    """

    def __init__(
        self,
        encoder: ReIDEncoder,
        fusion: AttentionFusion | None,
        freeze_bn: bool = False,
        frozen_groups: int = 0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.fusion = fusion
        self.freeze_bn = freeze_bn
        freeze_leading_groups(encoder.visual, frozen_groups)

    def train(self, mode: bool = True) -> Stage2Model:
        super().train(mode)
        if mode:
            for module in self.encoder.visual.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and (
                    self.freeze_bn or _is_frozen(module)
                ):
                    module.eval()
        return self

    def forward(self, images, h=None, g=None, g_labels=None, cams=None):
        out = self.encoder(images, cams)
        if self.fusion is not None:
            out["z"] = self.fusion(h, g, g_labels)[0]
        return out


def _is_frozen(module: torch.nn.Module) -> bool:
    """True when the module has parameters and none of them trains."""
    params = list(module.parameters())
    return bool(params) and not any(p.requires_grad for p in params)


def param_groups(
    model: torch.nn.Module, *, lr: float, wd: float, bias_factor: float, backbone_factor: float
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


@dataclass(frozen=True)
class Stage2Run:
    """The settings a stage-2 run reads: its own section, the model section (the checkpoint
    is keyed on all of it, the export records the architecture), the seed and the device."""

    model: ModelCfg
    stage2: Stage2Cfg
    seed: int
    device: str = "auto"
    num_workers: int = 0  # processes decoding the training photos

    @classmethod
    def of(cls, cfg: Config) -> Stage2Run:
        """The stage-2 settings of a run's whole config."""
        return cls(cfg.model, cfg.stage2, cfg.seed, cfg.device, cfg.data.num_workers)


def run_settings(
    run: Stage2Run,
    train_table: pd.DataFrame,
    camera_map: dict[str, int] | None,
    stage1_file: Path | None,
    image_root: Path | None = None,
) -> dict[str, Any]:
    """What defines a stage-2 run: a checkpoint made with other settings, or from other photo
    files under the same names, is not resumed."""
    return {
        "stage": "stage2",
        "seed": run.seed,
        "model": to_dict(run.model),
        "stage2": to_dict(run.stage2),
        "rows": rows_digest(train_table, ("image_id", "identity", "path", "camera")),
        "camera_map": camera_map or {},
        "stage1_descriptions": file_sha256(stage1_file) if stage1_file else None,
        **({"files": files_digest(train_table, image_root)} if image_root is not None else {}),
    }


@dataclass(frozen=True)
class Stage2Parts:
    """What `build_model` makes: the CLIP it started from, the network to train, the stage-1
    descriptions it fuses (on the device; empty without text) and the file they came from,
    and what the export records beside the weights."""

    clip_model: torch.nn.Module
    net: Stage2Model
    labels_of: dict[str, int]
    text: dict[str, torch.Tensor]
    stage1_file: Path | None
    meta: dict[str, Any]
    flops: int


@exclusive_run
def train_stage2(
    run: Stage2Run,
    *,
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

    On `stage2.num_threads` CPU threads: on one, a run gives the same bytes in any process,
    so the seeds of a cell can train side by side. `cache_dir` keeps the decoded training
    images for the next run (None: decoded into memory). `camera_map` ({camera: id}, every
    split) feeds SIE when `model.sie_coef > 0`; the export keeps it for evaluation.
    """
    with cpu_threads(run.stage2.num_threads):
        device = resolve_device(run.device)
        info = init_distributed(device)
        seed_everything(run.seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        camera_map = _sie_camera_map(run.model, camera_map)
        train_table = train_table.reset_index(drop=True)
        text_run = _text_run(run.stage2, stage1_dir) if train else None
        parts = build_model(
            run, train_table, camera_map=camera_map, stage1_dir=text_run, device=device
        )
        if not train:
            return _export_untrained(parts, run.model, out_dir)
        data = build_data(
            run,
            parts,
            train_table=train_table,
            image_root=image_root,
            camera_map=camera_map,
            cache_dir=cache_dir,
            info=info,
        )
        settings = run_settings(
            run,
            train_table,
            camera_map=camera_map,
            stage1_file=parts.stage1_file,
            image_root=image_root,
        )
        result = _fine_tune(
            run,
            parts,
            data,
            settings=settings,
            out_dir=out_dir,
            device=device,
            resume=resume,
            interrupt_after_steps=interrupt_after_steps,
        )
        if info.is_main:
            _write_trained(parts, run.model, out_dir, result)
        return result


def _fine_tune(
    run: Stage2Run,
    parts: Stage2Parts,
    data: Stage2Data,
    *,
    settings: dict[str, Any],
    out_dir: Path,
    device: torch.device,
    resume: bool,
    interrupt_after_steps: int,
) -> dict[str, Any]:
    """The stage-2 epochs, on the network wrapped for DDP when distributed, resuming the
    checkpoint in `out_dir` when it was made with the same `settings`; the run's metrics."""
    state = _loop_state(parts.net, run.stage2)
    with maybe_ddp(parts.net, device) as model:
        model.train()
        meter = run_epochs(
            state,
            epochs=run.stage2.epochs,
            batches=data.batches,
            step=Stage2Step(model, data, parts.text, run=run, clip=parts.clip_model, device=device),
            checkpoint=out_dir / "checkpoint.pt",
            log_dir=out_dir / "plots",
            desc="stage2",
            settings=settings,
            resume=resume,
            interrupt_after_steps=interrupt_after_steps,
        )
    return _trained_metrics(
        parts, data, epochs=run.stage2.epochs, state=state, meter=meter, device=device
    )


def _sie_camera_map(model: ModelCfg, camera_map: dict[str, int] | None) -> dict[str, int] | None:
    """The camera map SIE uses (None without SIE); SIE without one is a settings error."""
    if model.sie_coef > 0 and not camera_map:
        raise ConfigError(
            "model.sie_coef > 0 needs a camera id for every image (camera_map); photos without "
            "one train with model.sie_coef: 0"
        )
    return camera_map if model.sie_coef > 0 else None


def _text_run(s2: Stage2Cfg, stage1_dir: Path | None) -> Path | None:
    """The stage-1 run whose descriptions the i2t loss reads (None when its weight is 0);
    the loss without a stage-1 run is a settings error."""
    if s2.loss_weights.i2t <= 0:
        return None
    if stage1_dir is None:
        raise ConfigError(
            "stage2.loss_weights.i2t > 0 needs a stage-1 run: choose a variant with text, or "
            "set stage2.loss_weights.i2t: 0"
        )
    return stage1_dir


def build_model(
    run: Stage2Run,
    train_table: pd.DataFrame,
    *,
    camera_map: dict[str, int] | None,
    stage1_dir: Path | None,
    device: torch.device,
) -> Stage2Parts:
    """The encoder on a fresh CLIP and, given the `stage1_dir` of a text run, the fusion
    module over its descriptions."""
    m = run.model
    clip_model = build_clip_for(m)
    labels_of = label_map(train_table["identity"])
    encoder = ReIDEncoder(
        clip_model, len(labels_of), num_cameras=len(camera_map or {}), sie_coef=m.sie_coef
    )
    desc = load_descriptions(stage1_dir, labels_of) if stage1_dir is not None else None
    fusion = _fusion(encoder, m) if desc else None
    try:
        net = Stage2Model(encoder, fusion, run.stage2.freeze_bn, run.stage2.frozen_groups)
    except ValueError as err:
        raise ConfigError(f"stage2.frozen_groups: {err}") from None
    net = net.to(device, memory_format=memory_format(m.channels_last))
    meta = {
        "labels": labels_of,
        "image_ids": train_table["image_id"].astype(str).tolist(),
        "camera_map": camera_map or {},
    }
    flops = flops_per_image(encoder, tuple(m.image_size), device)
    text = {k: v.to(device) for k, v in desc.items()} if desc else {}
    stage1_file = stage1_dir / "descriptions.safetensors" if desc else None
    return Stage2Parts(clip_model, net, labels_of, text, stage1_file, meta, flops)


def _fusion(encoder: ReIDEncoder, model: ModelCfg) -> AttentionFusion:
    """The fusion module over the encoder's projected (text-space) features."""
    dim = encoder.feature_dims["proj"]
    if dim % model.fusion_heads:
        raise ConfigError(
            f"model.fusion_heads: {model.fusion_heads} does not divide this backbone's "
            f"{dim}-d text features; choose a divisor"
        )
    return AttentionFusion(dim, model.fusion_heads, model.fusion)


def _export_untrained(parts: Stage2Parts, model: ModelCfg, out_dir: Path) -> dict[str, Any]:
    """The zero-shot model: the export and its size and cost, nothing trained."""
    write_export(parts.net.encoder, parts.clip_model, model, out_dir, parts.meta)
    result = {
        "stage": "stage2",
        "trained": False,
        "flops_per_image": parts.flops,
        **count_params(parts.net),
    }
    write_json(out_dir / "metrics.json", result, indent=2, sort_keys=True)
    return result


@dataclass(frozen=True)
class Stage2Data:
    """The training images as decoded uint8 pixels, their labels and camera ids, the P x K
    sampler that draws them and the augmentation applied on the device."""

    pixels: np.ndarray
    labels: torch.Tensor
    cameras: torch.Tensor | None
    sampler: PKSampler
    augment: BatchAugment

    def batches(self, epoch: int) -> Iterator[dict[str, Any]]:
        """uint8 pixels gathered from the decoded cache; augmented on the device in the step."""
        self.sampler.set_epoch(epoch)
        for batch in self.sampler:
            rows = [r for r, _ in batch]
            yield {
                "pixels": torch.from_numpy(np.ascontiguousarray(self.pixels[rows])),
                "seeds": [s for _, s in batch],
                "rows": torch.tensor(rows),
            }


def build_data(
    run: Stage2Run,
    parts: Stage2Parts,
    *,
    train_table: pd.DataFrame,
    image_root: Path,
    camera_map: dict[str, int] | None,
    cache_dir: Path | None,
    info: DistInfo,
) -> Stage2Data:
    """Decode the training images at the model's size and set up their sampling."""
    s2 = run.stage2
    pp = preprocess_info(parts.clip_model)
    pixels = decoded_images(
        train_table,
        image_root,
        tuple(run.model.image_size),
        pp.resize_backend,
        cache_dir,
        run.num_workers,
    )
    augment = BatchAugment(s2.augment, pp.mean, pp.std)
    labels = torch.tensor(train_table["identity"].astype(str).map(parts.labels_of).to_numpy())
    cameras = torch.tensor(camera_ids(train_table["camera"], camera_map)) if camera_map else None
    sampler = PKSampler(
        labels.tolist(),
        p=s2.p,
        k=s2.k,
        seed=run.seed,
        iters_per_epoch=s2.iters_per_epoch,
        min_iters_per_epoch=s2.min_iters_per_epoch,
        rank=info.rank,
        world_size=info.world_size,
        mode=s2.sampler,
    )
    return Stage2Data(pixels, labels, cameras, sampler, augment)


def optimizer(net: torch.nn.Module, s2: Stage2Cfg) -> torch.optim.Adam:
    """Stage 2's Adam over `param_groups` with the section's rates (the benchmarks time it)."""
    return torch.optim.Adam(
        param_groups(
            net,
            lr=s2.lr,
            wd=s2.weight_decay,
            bias_factor=s2.bias_lr_factor,
            backbone_factor=s2.backbone_lr_factor,
        )
    )


def _loop_state(net: Stage2Model, s2: Stage2Cfg) -> LoopState:
    """Adam over the parameter groups, warmup then the multi-step decay."""
    opt = optimizer(net, s2)
    sched = warmup_multistep(opt, s2.warmup_epochs, s2.milestones, s2.gamma)
    return LoopState({"net": net}, opt, sched)


class Stage2Step:
    """One step's loss: ID cross-entropy on both heads, batch-hard triplet on the pre-BN
    features, and image-to-text cross-entropy against the fused descriptions z."""

    def __init__(
        self,
        model: torch.nn.Module,
        data: Stage2Data,
        text: dict[str, torch.Tensor],
        *,
        run: Stage2Run,
        clip: torch.nn.Module,
        device: torch.device,
    ) -> None:
        self.model, self.data, self.text, self.device = model, data, text, device
        self.s2 = run.stage2
        self.fmt = memory_format(run.model.channels_last)
        self.raw_i2t = self.s2.i2t_logits == "raw"  # CLIP-ReID: image_proj @ text.T, no scale
        self.scale = 1.0 if self.raw_i2t else clip.logit_scale.exp().detach().to(device)

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float], int]:
        s2, w, text, device = self.s2, self.s2.loss_weights, self.text, self.device
        pixels_on = batch["pixels"].to(device, non_blocking=True)
        images = self.data.augment(pixels_on, batch["seeds"]).contiguous(memory_format=self.fmt)
        y = self.data.labels[batch["rows"]].to(device)
        cameras = self.data.cameras
        cams = cameras[batch["rows"]].to(device) if cameras is not None else None
        with autocast(device, s2.amp):
            out = self.model(images, text.get("h"), text.get("g"), text.get("g_labels"), cams)
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
            i2t = i2t_ce_loss(proj, z, y, self.scale, s2.i2t_label_smoothing, not self.raw_i2t)
            parts["i2t"] = i2t * w.i2t
        loss = sum(parts.values())
        return loss, {k: v.item() for k, v in parts.items()}, len(images)


def _trained_metrics(
    parts: Stage2Parts,
    data: Stage2Data,
    *,
    epochs: int,
    state: LoopState,
    meter: CostMeter,
    device: torch.device,
) -> dict[str, Any]:
    """The trained run's metrics: its size, final loss and cost."""
    return {
        "stage": "stage2",
        "trained": True,
        "epochs": epochs,
        "global_batch": data.sampler.global_batch,
        "n_images": len(data.labels),
        "n_identities": len(parts.labels_of),
        "final_loss": round(state.history[-1]["loss"], 6),
        "flops_per_image": parts.flops,
        **count_params(parts.net),
        **meter.summary(device),
    }


def _write_trained(
    parts: Stage2Parts, model: ModelCfg, out_dir: Path, result: dict[str, Any]
) -> None:
    """The export, the fusion's attention (with text) and metrics.json."""
    write_export(parts.net.encoder, parts.clip_model, model, out_dir, parts.meta)
    if parts.net.fusion is not None:
        save_attention(parts.net, parts.text, out_dir)
    write_json(out_dir / "metrics.json", result, indent=2, sort_keys=True)


@torch.no_grad()
def save_attention(net: Stage2Model, text: dict[str, torch.Tensor], out_dir: Path) -> None:
    """Final z and the fusion's attention weights per individual, for the attention notebook."""
    net.eval()
    z, weights, key_index = net.fusion(text["h"], text["g"], text["g_labels"])
    blob = {"z": z.cpu(), "key_index": key_index.cpu()}
    if weights is not None:
        blob["weights"] = weights.cpu()
    save_torch(blob, out_dir / "attention.pt")  # tensors only: read with weights_only=True
