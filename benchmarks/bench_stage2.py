"""Stage-2 training throughput of lite0 at params.yaml's resolution, and the achieved FLOP/s as
a fraction of a torch.mm peak measured in the same run.

A step is what `train_stage2` does per batch without the data loader: ReIDEncoder forward on a
P x K batch, ID cross-entropy (label smoothing) on both heads + batch-hard triplet, backward,
Adam step with the stage-2 parameter groups. FLOPs: the forward is counted by
`flops_per_image` (torch's FlopCounterMode); a training step is taken as 3x forward, because
the counter overcounts depthwise-conv backward about 10x (DESIGN.md). The mm peak is measured
next to every step, so both see the same load. On CUDA both fp32 and bf16 autocast (the
pipeline's AMP) are timed, each against the mm peak of its own dtype, at the params batch and
at --batch-mult times it. On the CPU, --cpu-bf16 also times torch's CPU bf16 autocast (not a
pipeline setting: it asks whether bf16 would buy the CPU default any speed). Each row is timed
in NCHW and in channels_last (NHWC), one after the other, so the layout ratio is read off
neighbouring rows.
Usage: python benchmarks/bench_stage2.py [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from indivaid_core import config as config_mod
from indivaid_core.device import autocast, memory_format, resolve_device
from indivaid_core.losses import id_loss, triplet_loss
from indivaid_core.model import ReIDEncoder, build_clip
from indivaid_core.train.engine import flops_per_image, seed_everything
from indivaid_core.train.stage2 import optimizer as stage2_optimizer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_avg() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


def mm_flops(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    """torch.mm FLOP/s in a's dtype on a's device, median of repeats."""
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        sync(a.device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(a.device)
        times.append(time.perf_counter() - t0)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps (~30 s)")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps (median)")
    ap.add_argument("--mm-size", type=int, default=None, help="mm side (2048 CPU, 8192 CUDA)")
    ap.add_argument("--num-classes", type=int, default=100, help="ID-head width")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--batch-mult", type=int, default=8, help="CUDA: also time P x K x this")
    ap.add_argument("--cpu-bf16", action="store_true", help="CPU: also time bf16 autocast")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # on a shared machine 1 thread can beat 2
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (3 if args.quick else (30 if cuda else 10))
    mm_size = args.mm_size or (8192 if cuda else 2048)

    cfg = config_mod.load("params.yaml")
    m, s2 = cfg.model, cfg.stage2
    size = tuple(m.image_size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    if cuda:
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    print(f"load average before: {load_avg()}")
    print(f"{m.backbone} ({m.pretrained}) {size[0]}x{size[1]}, P x K = {s2.p} x {s2.k}\n")

    seed_everything(cfg.seed)
    clip = build_clip(m.backbone, m.pretrained, size, m.stride or None)
    net = ReIDEncoder(clip, args.num_classes).train()
    fwd_flops = flops_per_image(net, size, torch.device("cpu"))
    net = net.to(device).train()
    opt = stage2_optimizer(net, s2)
    w = s2.loss_weights

    def timed(batch: int, amp: bool, dtype: torch.dtype, nhwc: bool) -> tuple[float, float]:
        """(median step seconds, median mm peak FLOP/s) for one batch, precision and layout."""
        fmt = memory_format(nhwc)
        net.to(memory_format=fmt)
        images = torch.randn(batch, 3, *size, device=device).contiguous(memory_format=fmt)
        labels = torch.arange(batch // s2.k, device=device).repeat_interleave(s2.k)
        a = torch.randn(mm_size, mm_size, device=device, dtype=dtype)
        b = torch.randn(mm_size, mm_size, device=device, dtype=dtype)

        def step() -> None:
            cpu_amp = amp and not cuda
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if cpu_amp else autocast(device, amp)
            with ctx:
                out = net(images)
                loss = id_loss(out["logits"], labels, s2.label_smoothing) * w.id
                trip = sum(triplet_loss(f, labels, s2.margin) for f in out["triplet"])
                loss = loss + trip * w.triplet
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(3 if cuda else 1):  # warm-up (cuDNN autotune, allocator)
            step()
        step_s, peaks = [], []
        for _ in range(steps):
            peaks.append(mm_flops(a, b, 3))
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            step_s.append(time.perf_counter() - t0)
        return statistics.median(step_s), statistics.median(peaks)

    base = s2.p * s2.k
    cases = [(base, False, torch.float32)]
    if cuda:
        cases += [(base, True, torch.bfloat16)]
        cases += [(base * args.batch_mult, amp, dt) for _, amp, dt in cases]
    elif args.cpu_bf16:
        cases += [(base, True, torch.bfloat16)]
    cases = [(*c, nhwc) for c in cases for nhwc in (False, True)]  # NCHW, then channels_last
    print(
        f"{'batch':>6s} {'precision':>10s} {'layout':>6s} {'step s':>8s} {'images/s':>9s} "
        f"{'GFLOP/s':>9s} {'mm peak GFLOP/s':>16s} {'of peak':>8s}"
    )
    for batch, amp, dtype, nhwc in cases:
        t, peak = timed(batch, amp, dtype, nhwc)
        ips = batch / t
        achieved = 3 * fwd_flops * ips
        prec = "bf16 AMP" if amp else "fp32"
        print(
            f"{batch:6d} {prec:>10s} {'NHWC' if nhwc else 'NCHW':>6s} {t:8.4f} {ips:9.1f} "
            f"{achieved / 1e9:9.1f} {peak / 1e9:16.1f} {achieved / peak:8.2%}"
        )
    print(f"\nload average after: {load_avg()}")
    print(f"fwd GFLOP/image {fwd_flops / 1e9:.3f}; train step taken as 3x fwd")
    print(f"({steps} timed steps per row; mm {mm_size}^2 peak, median of 3, next to each step)")


if __name__ == "__main__":
    main()
