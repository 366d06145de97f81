"""Stage-1 text encoder: the full context against `truncate_text` (slots up to end-of-text),
side by side in one run, with the largest difference of the outputs.
Usage: python benchmarks/bench_text_truncation.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from indivaid_core.model import build_clip
from indivaid_core.model.prompts import DescriptionGenerator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="stage 1 runs on 1 thread")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name, pretrained, size in (
        ("lite0", "lite0-imagenet", (96, 96)),
        ("ViT-B-16", None, (256, 128)),
    ):
        clip = build_clip(name, pretrained, size)
        gens = [
            DescriptionGenerator(clip, 50, "tiger", 4, True, truncate_text=t).eval()
            for t in (False, True)
        ]
        gens[1].load_state_dict(gens[0].state_dict())
        ids = torch.randint(0, 50, (args.batch,), generator=torch.Generator().manual_seed(0))
        feats = torch.randn(args.batch, clip.text_projection.shape[1])
        times: dict[bool, list[float]] = {False: [], True: []}
        outs = {}
        with torch.no_grad():
            for _ in range(args.repeats):  # alternate, so both see the same machine load
                for trunc, gen in zip((False, True), gens, strict=True):
                    t0 = time.perf_counter()
                    outs[trunc] = gen(ids, feats)[0]
                    times[trunc].append(time.perf_counter() - t0)
        full, short = (statistics.median(times[t]) for t in (False, True))
        slots = gens[0].prompt_learner.tokens.shape[1]
        used = int(gens[0].prompt_learner.tokens.argmax()) + 1
        diff = (outs[False] - outs[True]).abs().max().item()
        print(
            f"{name:9} context {slots:2d}, prompt {used:2d} slots: full {full:.3f} s, "
            f"truncated {short:.3f} s, ratio {full / short:.2f}x (median of {args.repeats}); "
            f"max |diff| {diff:.1e}"
        )


if __name__ == "__main__":
    main()
