"""Per-sample augmentation reseeding: `torch.manual_seed` against the CPU generator alone.

`SeededDataset` reseeds before every training sample so augmentation does not depend on the
worker or rank layout. `torch.manual_seed` also queues a reseed of every accelerator
generator (CUDA, XPU, MTIA), each of which formats a stack trace while the device is not
initialised; `torch.default_generator.manual_seed` does only what the transforms read.
Both are timed on the real stage-2 training transform over synth-tiger's training images,
alternating rounds so both see the same load, and checked to give the same tensors.
Run: python benchmarks/bench_seeding.py [--dataset synth-tiger] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from indivaid_core import pipeline
from indivaid_core.data.dataset import ImageTableDataset
from indivaid_core.model import build_clip, preprocess_info
from indivaid_core.train.sampler import SeededDataset, sample_seed
from indivaid_core.transforms import train_transform


class ManualSeedDataset(SeededDataset):
    """The previous behaviour: `torch.manual_seed` inside the same fork_rng."""

    def __getitem__(self, key: tuple[int, int]) -> dict:
        row, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.base[row]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dataset", default="synth-tiger")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    cfg = pipeline.load_config(args.params, False)
    table = pipeline.read_table(cfg, args.dataset)
    train = pipeline.train_split(table).reset_index(drop=True)
    m = cfg.model
    clip_model = build_clip(m.backbone, "none", tuple(m.image_size), m.stride or None)
    pp = preprocess_info(clip_model)
    tf = train_transform(m.image_size, pp.mean, pp.std, cfg.stage2.augment)
    base = ImageTableDataset(train, Path(table["image_root"].iloc[0]), tf)
    keys = [(i, sample_seed(cfg.seed, 0, i // 32, i % 32)) for i in range(len(base))]
    new, old = SeededDataset(base), ManualSeedDataset(base)
    for k in keys[:16]:
        if not torch.equal(new[k]["image"], old[k]["image"]):
            raise SystemExit(f"row {k[0]}: the two reseeding ways gave different images")
    times: dict[str, list[float]] = {"torch.manual_seed": [], "default_generator": []}
    for _ in range(args.rounds):
        for name, ds in (("torch.manual_seed", old), ("default_generator", new)):
            t0 = time.perf_counter()
            for k in keys:
                ds[k]
            times[name].append((time.perf_counter() - t0) / len(keys) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{args.dataset}: {len(keys)} training samples, {args.rounds} alternating rounds, "
        f"{torch.get_num_threads()} threads; identical images on the first 16"
    )
    for name, ms in med.items():
        print(f"  {name:18s} median {ms:.3f} ms/sample")
    saved = med["torch.manual_seed"] - med["default_generator"]
    print(
        f"  ratio old/new {med['torch.manual_seed'] / med['default_generator']:.2f}x; "
        f"{saved:.3f} ms/sample saved"
    )


if __name__ == "__main__":
    main()
