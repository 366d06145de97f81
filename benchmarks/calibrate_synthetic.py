"""Zero-shot difficulty of the synthetic suite: ImageNet lite0 features, no training.

The suite is calibrated so that these scores land in 20-60 % mAP on every preset (no method
saturates, none is hopeless). Runs the real pipeline pieces: adapter -> prepare_table (the
preset's protocol) -> ImageTableDataset -> ReIDEncoder (lite0, ImageNet) -> pre-BN concat
features -> Euclidean distance -> rank_metrics. Features are computed once per preset; the
split is redrawn for several seeds to show how much the figure moves with the split.

    python benchmarks/calibrate_synthetic.py --data data [--presets ...] [--split-seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader

from indivaid_core.data import ImageTableDataset, load_dataset, prepare_table
from indivaid_core.evaluate.features import extract_features
from indivaid_core.evaluate.metrics import pairwise_distance, rank_metrics
from indivaid_core.model.backbones import build_clip, preprocess_info
from indivaid_core.model.encoder import ReIDEncoder
from indivaid_core.repro.synthetic import DEFAULT_PRESETS, PRESETS
from indivaid_core.transforms import eval_transform


def zero_shot_features(df, root, image_size, batch_size) -> torch.Tensor:
    clip = build_clip("lite0", "lite0-imagenet", image_size)
    info = preprocess_info(clip)
    encoder = ReIDEncoder(clip, num_classes=1).eval()
    tf = eval_transform(info.image_size, info.mean, info.std)
    loader = DataLoader(ImageTableDataset(df, root, tf), batch_size=batch_size)
    return extract_features(encoder.encode, loader, device="cpu", feature="concat")


def score(table, feats) -> dict:
    if (table["split"] == "test").any():
        rows = np.flatnonzero(table["split"] == "test")
        ids = table["identity"].to_numpy()[rows]
        f = feats[rows]
        return rank_metrics(pairwise_distance(f, f), ids, ids, leave_one_out=True)
    q = np.flatnonzero(table["split"] == "query")
    g = np.flatnonzero(table["split"] == "gallery")
    ids = table["identity"].to_numpy()
    return rank_metrics(pairwise_distance(feats[q], feats[g]), ids[q], ids[g])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data", help="folder holding <preset>/metadata.csv")
    ap.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    ap.add_argument("--split-seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--test-fraction", type=float, default=0.5)
    ap.add_argument("--image-size", type=int, nargs=2, default=[96, 96])
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    print(
        f"{'preset':15s} {'protocol':14s} {'images':>6s} {'ids':>4s}  mAP % (per split seed)"
        "          R1 %"
    )
    for name in args.presets:
        df, root = load_dataset("wildlife_csv", f"{name}/metadata.csv", args.data)
        feats = zero_shot_features(df, root, tuple(args.image_size), args.batch_size)
        protocol = PRESETS[name].protocol
        maps, r1s = [], []
        for seed in args.split_seeds:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # single-image identities: expected, counted
                table = prepare_table(
                    df, protocol, args.test_fraction, 1, seed, root, check_images=False
                )
            m = score(table, feats)
            maps.append(100 * m["mAP"])
            r1s.append(100 * m["cmc"][0])
        print(
            f"{name:15s} {protocol:14s} {len(df):6d} {df.identity.nunique():4d}  "
            f"{np.mean(maps):5.1f} ({' '.join(f'{v:.1f}' for v in maps)})   "
            f"{np.mean(r1s):5.1f} ({' '.join(f'{v:.1f}' for v in r1s)})",
            flush=True,
        )


if __name__ == "__main__":
    main()
