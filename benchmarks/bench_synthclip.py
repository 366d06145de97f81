"""The synthetic CLIP: its alignment on photos of new individuals, and what a retrain costs.

  score     (default) draws a fresh captioned set at another seed (`--seed`, individuals the
            weights never saw), and reports, for the committed `synthclip` weights beside the
            same model with an untrained text tower: own-caption accuracy (a photo's caption
            against another photo's; chance 0.5), retrieval R@1/R@5 in pools of 1,000, and
            zero-shot attribute accuracy against chance. This is the issue's checker procedure.
  --retrain times the whole `pretrain` stage function (render, train, score) with params.yaml's
            settings into a temporary folder, against the 20-minute budget.
Run: python benchmarks/bench_synthclip.py [--seed 2000] [--scale 0.3] [--retrain]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from indivaid_core.data.decoded import decoded_images
from indivaid_core.model import build_clip
from indivaid_core.repro.paths import load_config
from indivaid_core.repro.pretrain import alignment_report, make_corpus, run_pretrain


def score(seed: int, scale: float) -> None:
    cfg = load_config()
    p = dataclasses.replace(cfg.pretrain, seed=seed, scale=scale)
    size = (p.image_size, p.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        table = make_corpus(p, Path(tmp))
        images = torch.from_numpy(decoded_images(table, Path(tmp), size, "tensor", None, 0, False))
    rows = {}
    for name, weights in (("synthclip", "synthclip"), ("untrained text", p.init)):
        r = alignment_report(build_clip(p.backbone, weights, size), table, images)
        rows[name] = {
            "own caption": r["own_caption_accuracy"],
            **{k: v for k, v in r["retrieval"].items() if k != "pool"},
            "attributes (mean)": r["attribute_mean_accuracy"],
            "attributes chance": r["attribute_mean_chance"],
        }
    print(f"{len(table)} photos of {table.identity.nunique()} new individuals (seed {seed})")
    print(pd.DataFrame(rows).round(3).to_string())


def retrain() -> None:
    cfg = load_config()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        m = run_pretrain(cfg.pretrain, Path(tmp) / "work", Path(tmp) / "models").metrics
    total = time.perf_counter() - t0
    print(
        f"render {m['corpus']['render_seconds']:.0f} s, train {m['train']['seconds']:.0f} s, "
        f"total {total:.0f} s = {total / 60:.1f} min against the 20-minute budget"
    )
    print(f"own-caption accuracy {m['synthclip']['own_caption_accuracy']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--scale", type=float, default=0.3)
    ap.add_argument("--retrain", action="store_true")
    args = ap.parse_args()
    retrain() if args.retrain else score(args.seed, args.scale)


if __name__ == "__main__":
    main()
