"""Stage-2 step cost at several input sizes, side by side: what a smaller input saves.

One ReIDEncoder per size (params.yaml's backbone and weights), the pipeline's step (ID +
triplet losses, backward, Adam) on a P x K batch in memory, channels_last as the pipeline
runs it. The sizes are timed round-robin, so all see the same load; prints the median step
time per size and its ratio to the first size. What each size does to validation mAP is
`benchmarks/validation_sweep.py`'s (docs/benchmarks.md has both).

Run: python benchmarks/bench_input_size.py [--sizes 96 80 64] [--rounds 7]
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
from indivaid_core.train.stage2 import optimizer as stage2_optimizer


def make_step(size: int, cfg: config_mod.Config, classes: int = 64):
    """A closure that runs one stage-2 step at `size` x `size`."""
    m, s2 = cfg.model, cfg.stage2
    net = ReIDEncoder(build_clip(m.backbone, m.pretrained, (size, size), m.stride or None), classes)
    fmt = memory_format(True)
    net = net.train().to(memory_format=fmt)
    opt = stage2_optimizer(net, s2)
    images = torch.randn(s2.p * s2.k, 3, size, size).contiguous(memory_format=fmt)
    labels = torch.arange(s2.p).repeat_interleave(s2.k)

    def step() -> None:
        out = net(images)
        loss = id_loss(out["logits"], labels, s2.label_smoothing)
        loss = loss + sum(triplet_loss(f, labels, s2.margin) for f in out["triplet"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 80, 64])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    cfg = config_mod.load("params.yaml")
    torch.manual_seed(0)
    steps = {size: make_step(size, cfg) for size in args.sizes}
    times: dict[int, list[float]] = {size: [] for size in args.sizes}
    for _ in range(args.rounds):
        for size, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[size].append(time.perf_counter() - t0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    first = statistics.median(times[args.sizes[0]])
    for size in args.sizes:
        t = statistics.median(times[size])
        ratio = f"x{t / first:.2f} of {args.sizes[0]}"
        print(f"{size:>4d}x{size:<4d} step {t * 1000:7.1f} ms (median)  {ratio}")


if __name__ == "__main__":
    main()
