"""Contrastive image-caption pretraining of an open_clip model (CLIP's own recipe, small).

open_clip's `ClipLoss` and tokenizer do the contrastive part; what is written here is only the
loop over an in-memory uint8 image tensor, which open_clip's training scripts (webdataset,
distributed, many options) do not offer as a library function.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from indivaid_core.model.backbones import preprocess_info
from indivaid_core.train.engine import TrainingDiverged, cpu_threads

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp of the learnable temperature


def to_model_input(model: open_clip.CLIP, images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> the float input `model` expects (its size and normalisation)."""
    info = preprocess_info(model)
    x = images.float() / 255.0
    if tuple(x.shape[-2:]) != info.image_size:
        x = F.interpolate(x, size=info.image_size, mode="bilinear", antialias=True)
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def random_translate(images: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `pad` pixels (edge-replicated), one draw per image."""
    if pad == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="replicate")
    dy, dx = (torch.randint(0, 2 * pad + 1, (2, n), generator=gen)).tolist()
    crops = [
        padded[i, :, y : y + h, x : x + w] for i, (y, x) in enumerate(zip(dy, dx, strict=True))
    ]
    out = torch.stack(crops)
    return out.round().to(torch.uint8)


def param_groups(model: open_clip.CLIP, lr: float, image_lr_factor: float, wd: float) -> list:
    """AdamW groups: image tower at lr x factor; no decay on gains, biases, embeddings, scale."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        visual = name.startswith("visual.")
        decay = p.ndim >= 2 and "embedding" not in name
        groups.setdefault((visual, decay), []).append(p)
    return [
        {"params": ps, "lr": lr * (image_lr_factor if v else 1.0), "weight_decay": wd if d else 0.0}
        for (v, d), ps in groups.items()
    ]


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """A shuffled epoch of index batches; the last short batch is dropped (contrastive)."""
    order = torch.randperm(n, generator=gen)
    for start in range(0, n - batch_size + 1, batch_size):
        yield order[start : start + batch_size]


def pretrain_clip(
    model: open_clip.CLIP,
    images: torch.Tensor,
    tokens: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    image_lr_factor: float,
    weight_decay: float,
    warmup_steps: int,
    pad: int,
    seed: int,
    num_threads: int = 0,
) -> list[dict[str, float]]:
    """Train `model` in place on (image, caption-token) pairs; return the loss per step."""
    if len(images) != len(tokens):
        raise ValueError(f"{len(images)} images but {len(tokens)} captions")
    batch_size = min(batch_size, len(images))
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * (len(images) // batch_size)
    opt = torch.optim.AdamW(param_groups(model, lr, image_lr_factor, weight_decay))

    def schedule(step: int) -> float:  # linear warm-up, then cosine to zero
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, steps - warmup_steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    loss_fn = open_clip.ClipLoss()
    model.train().to(memory_format=torch.channels_last)
    history = []
    with cpu_threads(num_threads), tqdm(total=steps, desc="pretrain", unit="step") as bar:
        for epoch in range(epochs):
            for idx in _batches(len(images), batch_size, gen):
                x = to_model_input(model, random_translate(images[idx], pad, gen))
                img = model.encode_image(x, normalize=True)
                txt = model.encode_text(tokens[idx], normalize=True)
                loss = loss_fn(img, txt, model.logit_scale.exp())
                if not torch.isfinite(loss):
                    raise TrainingDiverged(f"pretrain: loss is {loss.item()} at epoch {epoch}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
                history.append({"step": len(history), "epoch": epoch, "loss": loss.item()})
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    model.eval()
    return history
