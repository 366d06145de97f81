"""Stage-2 training throughput of lite0 at params.yaml's resolution, and the achieved FLOP/s as
a fraction of a torch.mm fp32 peak measured in the same run.

A step is what `train_stage2` does per batch without the data loader: ReIDEncoder forward on a
P x K batch, ID cross-entropy (label smoothing) on both heads + batch-hard triplet, backward,
Adam step with the stage-2 parameter groups. FLOPs: the forward is counted by
`flops_per_image` (torch's FlopCounterMode); a training step is taken as 3x forward, because
the counter overcounts depthwise-conv backward about 10x (DESIGN.md). The mm peak is measured
next to every step, so both see the same load. Usage: python benchmarks/bench_stage2.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from indivaid_core import config as config_mod
from indivaid_core.losses import id_loss, triplet_loss
from indivaid_core.model import ReIDEncoder, build_clip
from indivaid_core.train.engine import flops_per_image, seed_everything
from indivaid_core.train.stage2 import param_groups


def load_avg() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


def mm_flops(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    """fp32 torch.mm FLOP/s, median of repeats."""
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps (~30 s)")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps (median)")
    ap.add_argument("--mm-size", type=int, default=2048)
    ap.add_argument("--num-classes", type=int, default=100, help="ID-head width")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # on a shared machine 1 thread can beat 2
    steps = args.steps or (3 if args.quick else 10)

    cfg = config_mod.load("params.yaml")
    m, s2 = cfg.model, cfg.stage2
    size = tuple(m.image_size)
    batch = s2.p * s2.k
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"load average before: {load_avg()}")
    print(f"{m.backbone} ({m.pretrained}) {size[0]}x{size[1]}, P x K = {s2.p} x {s2.k}\n")

    seed_everything(cfg.seed)
    clip = build_clip(m.backbone, m.pretrained, size, m.stride or None)
    net = ReIDEncoder(clip, args.num_classes).train()
    opt = torch.optim.Adam(
        param_groups(net, s2.lr, s2.weight_decay, s2.bias_lr_factor, s2.backbone_lr_factor)
    )
    images = torch.randn(batch, 3, *size)
    labels = torch.arange(s2.p).repeat_interleave(s2.k)
    w = s2.loss_weights

    def step() -> None:
        out = net(images)
        loss = id_loss(out["logits"], labels, s2.label_smoothing) * w.id
        loss = loss + sum(triplet_loss(f, labels, s2.margin) for f in out["triplet"]) * w.triplet
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fwd_flops = flops_per_image(net, size, torch.device("cpu"))
    net.train()
    a, b = torch.randn(args.mm_size, args.mm_size), torch.randn(args.mm_size, args.mm_size)
    step()  # warm-up
    step_s, peaks = [], []
    for _ in range(steps):
        peaks.append(mm_flops(a, b, 3))
        t0 = time.perf_counter()
        step()
        step_s.append(time.perf_counter() - t0)
    print(f"load average after: {load_avg()}\n")

    t = statistics.median(step_s)
    peak = statistics.median(peaks)
    ips = batch / t
    achieved = 3 * fwd_flops * ips
    rows = [
        ("step s (median)", f"{t:.3f}"),
        ("images/s", f"{ips:.1f}"),
        ("fwd GFLOP/image", f"{fwd_flops / 1e9:.3f}"),
        ("train GFLOP/image (3x fwd)", f"{3 * fwd_flops / 1e9:.3f}"),
        ("achieved GFLOP/s", f"{achieved / 1e9:.1f}"),
        (f"torch.mm {args.mm_size}^2 fp32 peak GFLOP/s", f"{peak / 1e9:.1f}"),
        ("fraction of mm peak", f"{achieved / peak:.1%}"),
    ]
    for name, value in rows:
        print(f"{name:36s} {value:>10s}")
    print(f"({steps} timed steps; mm peak median of {steps} x 3, taken next to each step)")


if __name__ == "__main__":
    main()
