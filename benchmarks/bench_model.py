"""Training-step speed of the re-ID image encoders and the stage-1 text side, against the
machine's torch.mm fp32 peak measured in the same run.

FLOPs are counted on the forward pass with torch.utils.flop_counter; a training step is taken
as 3x forward, because the counter overcounts depthwise-conv backward about 10x (DESIGN.md).
Times are medians over repeats. Usage: python benchmarks/bench_model.py [--batch 32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from indivaid_core.losses import id_loss, supcon_loss
from indivaid_core.model import DescriptionGenerator, ReIDEncoder, build_clip


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mm_peak(n: int, repeats: int) -> float:
    """fp32 torch.mm FLOP/s on n x n matrices (median of repeats)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_time(lambda: torch.mm(a, b), repeats)


def forward_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def time_step(forward, mm, repeats: int) -> tuple[float, float, float]:
    """Median forward time, backward time and mm peak of `forward() -> loss`.

    The mm peak is re-measured next to every step, because other jobs share this machine's
    cores and a peak taken once at start-up would not describe the same conditions."""
    fwd, bwd, peak = [], [], []
    forward().backward()  # warm-up
    for _ in range(repeats):
        peak.append(mm())
        t0 = time.perf_counter()
        loss = forward()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t2 - t1)
    return statistics.median(fwd), statistics.median(bwd), statistics.median(peak)


def image_case(backbone: str, pretrained: str | None, size: tuple[int, int], batch: int):
    clip = build_clip(backbone, pretrained, size)
    enc = ReIDEncoder(clip, num_classes=100).train()
    images = torch.randn(batch, 3, *size)
    labels = torch.arange(batch) % 100

    def forward():
        return id_loss(enc(images)["logits"], labels)

    return forward


def raw_timm_case(size: tuple[int, int], batch: int):
    """Plain timm lite0 with a 100-way head: the baseline the wrapper is compared with."""
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=100).train()
    images, labels = torch.randn(batch, 3, *size), torch.arange(batch) % 100

    def forward():
        return F.cross_entropy(net(images), labels)

    return forward


def text_case(backbone: str, pretrained: str | None, batch: int):
    clip = build_clip(backbone, pretrained)
    for p in clip.parameters():
        p.requires_grad_(False)
    gen = DescriptionGenerator(clip, num_ids=100, species="zebra").train()
    dim = gen.prompt_learner.meta_net[0].in_features
    feats, ids = torch.randn(batch, dim), torch.arange(batch) % 100

    def forward():
        g, h = gen(ids, feats)
        return supcon_loss(feats, g, ids, ids, 10.0) + supcon_loss(feats, h, ids, ids, 10.0)

    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mm-size", type=int, default=1024)
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"peak: torch.mm fp32 {args.mm_size}^3, measured next to each step")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores\n")
    cases = [
        ("timm lite0 (baseline) 96x96", raw_timm_case((96, 96), args.batch)),
        ("lite0 image 96x96", image_case("lite0", "lite0-imagenet", (96, 96), args.batch)),
        ("tiny-vit image 96x96", image_case("tiny-vit", None, (96, 96), args.batch)),
        ("lite0 text (stage 1: g+h)", text_case("lite0", "lite0-imagenet", args.batch)),
    ]
    header = f"{'case':28s} {'fwd ms/img':>10s} {'bwd ms/img':>10s} {'img/s':>7s}"
    print(header + f" {'fwd GFLOP/img':>13s} {'GFLOP/s':>8s} {'peak':>6s} {'of peak':>8s}")

    def mm():
        return mm_peak(args.mm_size, 3)

    for name, forward in cases:
        fwd, bwd, peak = time_step(forward, mm, args.repeats)
        flops = forward_flops(forward)
        step = 3 * flops / (fwd + bwd)
        print(
            f"{name:28s} {1e3 * fwd / args.batch:10.2f} {1e3 * bwd / args.batch:10.2f} "
            f"{args.batch / (fwd + bwd):7.1f} {flops / args.batch / 1e9:13.3f} "
            f"{step / 1e9:8.1f} {peak / 1e9:6.1f} {step / peak:8.1%}"
        )
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (above the core count = contended)")


if __name__ == "__main__":
    main()
