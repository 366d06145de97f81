"""Stage-2 training rate with its input path, against the bare step on a batch in memory.

Three ways to feed the same training step (lite0 or params.yaml's model; ReIDEncoder forward,
ID + triplet losses, backward, Adam), timed round-robin so all see the same load:
  bare      one normalised batch already on the device (the step alone: the ceiling);
  cached    the pipeline's path: P x K batches from the sampler, uint8 pixels gathered from
            the decoded-image memmap, augmented per image on the device (train.augment);
  per-image the previous path: a DataLoader decoding each JPEG and running the v2 transform
            per image under its own seed (num_workers = data.num_workers).
Prints images/s (median over rounds) and each path's rate as a fraction of the bare rate.
Run: python benchmarks/bench_stage2_input.py [--dataset synth-tiger] [--rounds 5] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from indivaid_core.data.dataset import ImageTableDataset
from indivaid_core.data.decoded import decoded_images
from indivaid_core.data.images import draft_for
from indivaid_core.device import autocast, memory_format, resolve_device
from indivaid_core.losses import id_loss, triplet_loss
from indivaid_core.model import ReIDEncoder, build_clip_for, preprocess_info
from indivaid_core.repro.paths import Paths, load_config
from indivaid_core.repro.prepare import read_table, train_split
from indivaid_core.train.augment import BatchAugment
from indivaid_core.train.engine import seed_everything
from indivaid_core.train.sampler import PKSampler
from indivaid_core.train.stage2 import optimizer as stage2_optimizer
from indivaid_core.transforms import train_transform


class PerSampleSeeded(Dataset):
    """The previous stage-2 dataset: each sample's transform under its own CPU seed."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        row, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.base[row]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="synth-tiger")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=6, help="steps per path per round")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    cfg = load_config("params.yaml")
    m, s2 = cfg.model, cfg.stage2
    device = resolve_device(args.device)
    table = read_table(cfg, args.dataset)
    train, root = train_split(table), Paths.image_root(table)
    labels_of = {y: i for i, y in enumerate(sorted(train.identity.astype(str).unique()))}
    y_all = torch.tensor(train.identity.astype(str).map(labels_of).to_numpy())
    seed_everything(0)
    clip = build_clip_for(m)
    info = preprocess_info(clip)
    fmt = memory_format(m.channels_last)
    net = ReIDEncoder(clip, len(labels_of)).to(device, memory_format=fmt).train()
    opt = stage2_optimizer(net, s2)
    # enough batches per round
    sampler = PKSampler(y_all.tolist(), p=s2.p, k=s2.k, seed=0, min_iters_per_epoch=10_000)
    size = tuple(m.image_size)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        pixels = decoded_images(train, root, size, info.resize_backend, Path(cache))
        decode_s = time.perf_counter() - t0
        augment = BatchAugment(s2.augment, info.mean, info.std)
        tf = train_transform(size, info.mean, info.std, s2.augment, info.resize_backend)
        ds = PerSampleSeeded(ImageTableDataset(train, root, tf, labels_of, draft=draft_for(size)))
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=cfg.data.num_workers)
        fixed = augment(torch.from_numpy(pixels[: s2.p * s2.k].copy()).to(device), range(32))
        fixed_y = y_all[: s2.p * s2.k].to(device)

        def step(images: torch.Tensor, y: torch.Tensor) -> None:
            with autocast(device, s2.amp):
                out = net(images.contiguous(memory_format=fmt))
                loss = id_loss(out["logits"], y, s2.label_smoothing) * s2.loss_weights.id
                loss = loss + sum(triplet_loss(f, y, s2.margin) for f in out["triplet"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def bare():
            while True:
                yield fixed, fixed_y

        def cached():
            for batch in sampler:
                rows = [r for r, _ in batch]
                x = torch.from_numpy(pixels[rows]).to(device)
                yield augment(x, [s for _, s in batch]), y_all[rows].to(device)

        def per_image():
            for batch in loader:
                yield batch["image"].to(device), batch["label"].to(device)

        paths = {"bare": bare(), "cached": cached(), "per-image": per_image()}
        for it in paths.values():  # warm-up
            step(*next(it))
        rates: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(args.rounds):
            for name, it in paths.items():
                sync(device)
                t0 = time.perf_counter()
                n = 0
                for _ in range(args.steps):
                    images, y = next(it)
                    step(images, y)
                    n += len(images)
                sync(device)
                rates[name].append(n / (time.perf_counter() - t0))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} cores")
    print(f"{args.dataset}: {len(train)} training images, {m.backbone} {size}, P x K {s2.p}x{s2.k}")
    print(f"decode once into the cache: {decode_s:.2f} s\n")
    bare_rate = statistics.median(rates["bare"])
    print(f"{'path':>10s} {'img/s (median)':>15s} {'of bare':>8s}   rounds")
    for name, r in rates.items():
        med = statistics.median(r)
        each = " ".join(f"{x:.0f}" for x in r)
        print(f"{name:>10s} {med:15.1f} {med / bare_rate:8.1%}   {each}")
    print(f"\n{args.rounds} rounds x {args.steps} steps per path, round-robin")


if __name__ == "__main__":
    main()
