"""Stage-2 augmentation on whole batches of uint8 tensors, with each image's own parameters.

Written here because torchvision's v2 transforms draw one parameter set per call: on a batch
tensor every image would share one flip, crop, jitter and erasing box. The steps, their
order and their distributions are those of `transforms.train_transform` (flip p 0.5; zero pad
then a uniform crop; brightness, contrast and saturation factors uniform in [1 - c, 1 + c], in
a random order; normalise; RandomErasing with torchvision's scale, ratio and 10 tries). One
difference: jitter runs on floats in [0, 1] instead of uint8, so nothing is rounded between
the jitter steps. `tests/test_augment.py` checks each step against torchvision's own kernel.

Each image's parameters come from its own seed (the sampler's per-sample seed), so they do
not depend on the batch it lands in, the rank layout or the resume point.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from indivaid_core.config import AugmentCfg

ERASE_TRIES = 10  # torchvision RandomErasing's attempts before it gives up
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_FLIP, _CROP, _JITTER, _ORDER, _ERASE_P, _ERASE = 0, 1, 3, 6, 9, 10
N_UNIFORMS = _ERASE + 4 * ERASE_TRIES


def uniforms(seeds: Sequence[int]) -> torch.Tensor:
    """(B, N_UNIFORMS) float64 uniforms in [0, 1), one independent stream per sample seed."""
    return torch.from_numpy(
        np.stack([np.random.default_rng(int(s)).random(N_UNIFORMS) for s in seeds])
    )


def _col(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1, 1)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f + other * (1 - f)).clamp_(0, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (r * _GRAY[0] + g * _GRAY[1] + b * _GRAY[2]).unsqueeze(1)


def jitter_op(x: torch.Tensor, op: int, f: torch.Tensor) -> torch.Tensor:
    """Brightness (0), contrast (1) or saturation (2) by per-image factors f (B, 1, 1, 1)."""
    if op == 0:
        return _blend(x, torch.zeros_like(x), f)
    if op == 1:
        return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)
    return _blend(x, _gray(x), f)


def pad_crop(x: torch.Tensor, pad: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Zero-pad by `pad` then crop each image back to its size at its own (top, left)."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (top.view(-1, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1)
    cols = (left.view(-1, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    chan = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, chan, rows, cols]


def erase_boxes(u: torch.Tensor, p: float, h: int, w: int) -> torch.Tensor:
    """(B, 4) boxes (top, left, height, width) as torchvision's RandomErasing draws them;
    height 0 where the image is not erased (the coin, or no try fitting)."""
    area = h * w
    tries = u[:, _ERASE:].view(-1, ERASE_TRIES, 4)
    scale = ERASE_SCALE[0] + tries[..., 0] * (ERASE_SCALE[1] - ERASE_SCALE[0])
    lo, hi = np.log(ERASE_RATIO[0]), np.log(ERASE_RATIO[1])
    aspect = torch.exp(lo + tries[..., 1] * (hi - lo))
    eh = torch.round(torch.sqrt(area * scale * aspect)).long()
    ew = torch.round(torch.sqrt(area * scale / aspect)).long()
    fits = (eh < h) & (ew < w)
    first = fits.long().argmax(dim=1, keepdim=True)  # the first try that fits, as torchvision
    pick = lambda t: t.gather(1, first).squeeze(1)  # noqa: E731
    eh, ew = pick(eh), pick(ew)
    top = (pick(tries[..., 2]) * (h - eh + 1)).floor().long()
    left = (pick(tries[..., 3]) * (w - ew + 1)).floor().long()
    on = (u[:, _ERASE_P] < p) & fits.any(dim=1)
    return torch.stack([top, left, eh * on, ew * on], dim=1)


def erase(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Zero each image's box (top, left, height, width), on every channel."""
    _, _, h, w = x.shape
    b = boxes.to(x.device).view(-1, 4, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    top, left, eh, ew = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    inside = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
    return x.masked_fill(inside.unsqueeze(1), 0.0)


class BatchAugment:
    """uint8 (B, 3, H, W) images at the training size -> augmented, normalised float32."""

    def __init__(self, aug: AugmentCfg, mean: Sequence[float], std: Sequence[float]) -> None:
        self.aug = aug
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(
                f"BatchAugment takes uint8 (B, C, H, W), got {images.dtype} {images.shape}"
            )
        a, dev = self.aug, images.device
        u = uniforms(seeds)
        x = images.float().div_(255)
        if a.hflip:
            flip = _col(u[:, _FLIP] < 0.5).to(dev)
            x = torch.where(flip, x.flip(-1), x)
        if a.pad:
            offsets = (u[:, _CROP : _CROP + 2] * (2 * a.pad + 1)).floor().long().to(dev)
            x = pad_crop(x, a.pad, offsets[:, 0], offsets[:, 1])
        if a.color_jitter:
            c = a.color_jitter
            lo = max(0.0, 1 - c)
            factors = (lo + u[:, _JITTER : _JITTER + 3] * (1 + c - lo)).float().to(dev)
            order = u[:, _ORDER : _ORDER + 3].argsort(dim=1).to(dev)  # a random order each
            for position in range(3):
                for op in range(3):
                    chosen = _col(order[:, position] == op)
                    if chosen.any():
                        x = torch.where(chosen, jitter_op(x, op, _col(factors[:, op])), x)
        x = (x - self.mean.to(dev)) / self.std.to(dev)
        if a.random_erasing:
            x = erase(x, erase_boxes(u, a.random_erasing, x.shape[2], x.shape[3]))
        return x
