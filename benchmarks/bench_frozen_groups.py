"""What freezing the image tower's first layer groups (`stage2.frozen_groups`) saves per
stage-2 training step, at params.yaml's model, input size and P x K.

A step is `Stage2Model` forward on a P x K batch, ID cross-entropy and batch-hard triplet,
backward and the stage-2 optimiser's step: what `train_stage2` does per batch, without the
data loader. A frozen group needs no weight gradients, and the groups before the first
trainable one need no input gradients either, so their backward is skipped. The settings are
timed round-robin, one step each in turn, so a load change on the machine hits them alike;
each row is the median over its steps and its ratio to `frozen_groups: 0`.
Usage: python benchmarks/bench_frozen_groups.py --groups 0 2 4 6 9 [--steps 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from indivaid_core import config as config_mod
from indivaid_core.device import memory_format
from indivaid_core.losses import id_loss, triplet_loss
from indivaid_core.model import ReIDEncoder, build_clip
from indivaid_core.train.engine import seed_everything
from indivaid_core.train.stage2 import Stage2Model
from indivaid_core.train.stage2 import optimizer as stage2_optimizer


def make_step(cfg: config_mod.Config, frozen: int, num_classes: int):
    """One setting's training step on a fixed random batch, as a closure."""
    m, s2 = cfg.model, cfg.stage2
    size = tuple(m.image_size)
    seed_everything(cfg.seed)
    clip = build_clip(m.backbone, m.pretrained, size, m.stride or None)
    fmt = memory_format(m.channels_last)
    net = Stage2Model(ReIDEncoder(clip, num_classes), None, frozen_groups=frozen)
    net = net.to(memory_format=fmt).train()
    opt = stage2_optimizer(net, s2)
    batch = s2.p * s2.k
    images = torch.randn(batch, 3, *size).contiguous(memory_format=fmt)
    labels = torch.arange(s2.p).repeat_interleave(s2.k)

    def step() -> float:
        t0 = time.perf_counter()
        out = net(images)
        loss = id_loss(out["logits"], labels, s2.label_smoothing) * s2.loss_weights.id
        trip = sum(triplet_loss(f, labels, s2.margin) for f in out["triplet"])
        loss = loss + trip * s2.loss_weights.triplet
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    trainable = sum(p.numel() for p in net.encoder.visual.parameters() if p.requires_grad)
    return step, trainable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, nargs="+", default=[0, 2, 4, 6, 9])
    ap.add_argument("--steps", type=int, default=15, help="timed steps per setting (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (stage 2 uses 1)")
    ap.add_argument("--num-classes", type=int, default=64, help="ID-head width")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config_mod.load("params.yaml")
    runs = {g: make_step(cfg, g, args.num_classes) for g in args.groups}
    times: dict[int, list[float]] = {g: [] for g in args.groups}
    for step, _ in runs.values():  # warm-up
        step()
    for _ in range(args.steps):
        for g, (step, _) in runs.items():
            times[g].append(step())
    m, s2 = cfg.model, cfg.stage2
    print(f"{m.backbone} ({m.pretrained}) {m.image_size}, P x K = {s2.p} x {s2.k}, ", end="")
    print(f"{torch.get_num_threads()} thread(s), {args.steps} steps each, round-robin")
    base = statistics.median(times[args.groups[0]])
    print(f"{'frozen_groups':>13s} {'tower params training':>22s} {'step s':>8s} {'ratio':>6s}")
    for g, (_, trainable) in runs.items():
        t = statistics.median(times[g])
        print(f"{g:13d} {trainable:22,d} {t:8.4f} {t / base:6.2f}")


if __name__ == "__main__":
    main()
