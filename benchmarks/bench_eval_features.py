"""Evaluation features of one model on one test set: the previous path against the pipeline's.

  files     the previous path: a DataLoader decoding every JPEG through eval_transform, and
            the encoder as exported (BatchNorm as its own op);
  decoded   the pipeline's path (`repro.evaluation.features_for`): the test images from the
            decoded cache (decoded once for all the models a stage scores), normalised by the
            batch, through a copy of the encoder with BatchNorm folded into the convolutions;
  decoded, unfolded   the decoded images through the encoder as exported (the fold's share).
Timed round-robin, so all see the same load; prints images/s (median over rounds), the ratios,
and how far the folded features are from the unfolded ones. The model is the lite0 ImageNet
encoder (params.yaml's model), exported and loaded as a stage-2 run would be.
Needs the prepared tables (`dvc repro prepare`).
Run: python benchmarks/bench_eval_features.py [--dataset synth-tiger] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from indivaid_core.data.dataset import ImageTableDataset
from indivaid_core.data.images import draft_for
from indivaid_core.evaluate import extract_features
from indivaid_core.model import ReIDEncoder, build_clip_for
from indivaid_core.repro.evaluation import (
    FeatureSettings,
    decoded_batches,
    eval_split,
    features_for,
)
from indivaid_core.repro.paths import load_config
from indivaid_core.train.export import load_export, write_export
from indivaid_core.transforms import eval_transform


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="synth-tiger")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cfg = load_config("params.yaml")
    split = eval_split(cfg, args.dataset)
    settings = FeatureSettings.of(cfg)
    rows, root = split.test, split.root
    with tempfile.TemporaryDirectory() as tmp:
        clip = build_clip_for(cfg.model)
        meta = {"labels": {str(i): i for i in range(10)}, "image_ids": [], "camera_map": {}}
        write_export(ReIDEncoder(clip, 10), clip, cfg.model, Path(tmp), meta)
        encoder, spec = load_export(tmp)
    size = spec["image_size"]
    tf = eval_transform(size, spec["mean"], spec["std"], spec.get("resize_backend", "tensor"))
    if cfg.model.channels_last:
        encoder.to(memory_format=torch.channels_last)

    def files() -> torch.Tensor:
        ds = ImageTableDataset(rows, root, tf, draft=draft_for(size))
        loader = DataLoader(ds, batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers)
        return extract_features(encoder, loader, "cpu", channels_last=True)

    def decoded() -> torch.Tensor:
        return features_for(encoder, spec, rows, root, settings=settings)

    def unfolded() -> torch.Tensor:
        batches = decoded_batches(
            spec,
            rows,
            root,
            batch_size=settings.batch_size,
            cache_dir=settings.cache_dir,
            num_workers=settings.num_workers,
        )
        return extract_features(encoder, batches, "cpu", n_rows=len(rows), channels_last=True)

    paths = {"files": files, "decoded": decoded, "decoded, unfolded": unfolded}
    decoded()  # writes the decoded cache once, as the first model of a stage does
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()}")
    print(f"{cfg.model.backbone} {size[0]}x{size[1]}, {args.dataset}: {len(rows)} test images\n")
    times: dict[str, list[float]] = {name: [] for name in paths}
    out: dict[str, torch.Tensor] = {}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            t0 = time.perf_counter()
            out[name] = fn()
            times[name].append(time.perf_counter() - t0)
    rate = {name: len(rows) / statistics.median(t) for name, t in times.items()}
    for name, r in rate.items():
        print(f"{name:18s} {r:8.1f} images/s   {r / rate['files']:5.2f}x files")
    same = torch.equal(out["files"], out["decoded, unfolded"])
    diff = (out["decoded"] - out["decoded, unfolded"]).abs().max()
    print(f"\ndecoded images give the files path's features bit for bit: {same}")
    print(f"folded against unfolded features (L2-normalised): max |diff| {float(diff):.2e}")
    print(f"({args.rounds} rounds, median; load after {os.getloadavg()})")


if __name__ == "__main__":
    main()
