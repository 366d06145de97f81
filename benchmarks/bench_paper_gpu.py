"""The paper path on a GPU: ViT-B-16 at 256x128 with AMP, stage-1 and stage-2 images/s, and one
released-layout dataset (fake Stoat) end to end through the pipeline's own calls.

The weights are random (a fake OpenAI checkpoint in OpenAI's TorchScript format) and the
images synthetic, so the mAP means nothing. What it measures:

- stage 1: the prompt learner + text encoder step rate at batch 64 (image features cached);
- stage 2: the bare training step on in-memory tensors (P x K = 64, bf16 autocast), and the
  rate inside `train_stage2` with its data loader. The ratio shows how far the input path
  keeps the GPU busy;
- the time of prepare -> stage 1 -> stage 2 -> evaluate on the fake Stoat tree.

Usage: python benchmarks/bench_paper_gpu.py --device cuda --out work/paper_gpu
       python benchmarks/bench_paper_gpu.py --device cpu --out work/paper_cpu --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from indivaid_core import config
from indivaid_core.device import autocast, resolve_device
from indivaid_core.losses import id_loss, supcon_loss, triplet_loss
from indivaid_core.model import DescriptionGenerator, ReIDEncoder, build_clip
from indivaid_core.repro.evaluation import evaluate
from indivaid_core.repro.fake_release import write_fake_openai_vit_b16, write_fake_release_trees
from indivaid_core.repro.prepare import prepare
from indivaid_core.repro.training import run_stage2, run_text_runs
from indivaid_core.train.stage2 import param_groups


def _timed(step, n: int, device: torch.device) -> float:
    """Median seconds of `step` over n calls, after 2 warm-up calls."""
    times = []
    for i in range(n + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def stage1_rate(ckpt: Path, device: torch.device, steps: int, batch: int = 64) -> float:
    clip = build_clip("ViT-B-16", f"openai:{ckpt}", (256, 128), 16).to(device)
    clip.requires_grad_(False)
    gen = DescriptionGenerator(clip, 100, "stoat", 4, True).to(device)
    opt = torch.optim.Adam([p for p in gen.parameters() if p.requires_grad], lr=5e-4)
    feats = torch.randn(batch, clip.visual.proj.shape[1], device=device)
    y = torch.randint(0, 100, (batch,), device=device)

    def step() -> None:
        with autocast(device, True):
            g, h = gen(y, feats)
        g, h = g.float(), h.float()
        loss = sum(supcon_loss(a, b, y, y, 1.0, False) for a, b in ((feats, g), (g, feats)))
        loss = loss + supcon_loss(feats, h, y, y, 1.0, False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / _timed(step, steps, device)


def stage2_bare_rate(ckpt: Path, device: torch.device, steps: int, batch: int = 64) -> float:
    clip = build_clip("ViT-B-16", f"openai:{ckpt}", (256, 128), 16)
    enc = ReIDEncoder(clip, 100).to(device).train()
    opt = torch.optim.Adam(
        param_groups(enc, lr=5e-6, wd=1e-4, bias_factor=2.0, backbone_factor=1.0)
    )
    x = torch.randn(batch, 3, 256, 128, device=device)
    y = torch.arange(batch, device=device) // 4

    def step() -> None:
        with autocast(device, True):
            out = enc(x)
        loss = 0.25 * id_loss([lg.float() for lg in out["logits"]], y, 0.1)
        loss = loss + sum(triplet_loss(f.float(), y, 0.3) for f in out["triplet"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / _timed(step, steps, device)


def end_to_end(ckpt: Path, root: Path, device: str, epochs: int, workers: int) -> dict:
    """Fake Stoat through prepare, stage 1, stage 2 and evaluate with the paper profile."""
    write_fake_release_trees(root / "data", n_ids=24, per_id=8, image_hw=(256, 128))
    over = {
        "profile": "paper",
        "device": device,
        "data.root": str(root / "data"),
        "data.work": str(root / "work"),
        "data.metrics": str(root / "metrics"),
        "data.reports": str(root / "reports"),
        "data.num_workers": workers,
        "model.pretrained": f"openai:{ckpt}",
        "pipeline.datasets": ["Stoat"],
        "data.datasets.Stoat.overrides.stage1.epochs": 1,
        "data.datasets.Stoat.overrides.stage2.epochs": epochs,
    }
    cfg = config.load("params.yaml", over, check_cells=False)
    times = {}
    t0 = time.perf_counter()
    prepare(cfg, "Stoat")
    run_text_runs(cfg, "Stoat", ["meta-ctx4"])
    times["prepare_stage1_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    s2 = run_stage2(cfg, "Stoat", "indivaid")
    times["stage2_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = evaluate(cfg, "Stoat", "indivaid")
    times["evaluate_s"] = time.perf_counter() - t0
    images = s2.get("n_images", 0) * epochs
    rate = images / s2["wall_time_s"] if s2.get("wall_time_s") else None
    return {**times, "stage2_pipeline_images_per_s": rate, "mAP_random_weights": m.summary["mAP"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="few steps, 1 epoch (a CPU check)")
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    device = resolve_device(args.device)
    steps = 3 if args.quick else 20
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = write_fake_openai_vit_b16(args.out / "weights" / "ViT-B-16.pt")
    row = {"device": str(device)}
    row["stage1_images_per_s"] = stage1_rate(ckpt, device, steps)
    bare = stage2_bare_rate(ckpt, device, steps, 16 if args.quick else 64)
    row["stage2_bare_images_per_s"] = bare
    e2e = end_to_end(ckpt, args.out / "run", args.device, 1 if args.quick else 3, args.workers)
    row.update(e2e)
    if e2e["stage2_pipeline_images_per_s"]:
        row["pipeline_over_bare"] = e2e["stage2_pipeline_images_per_s"] / bare
    print(json.dumps(row, indent=1, default=str))
    (args.out / "paper_gpu.json").write_text(json.dumps(row, indent=1, default=str))


if __name__ == "__main__":
    main()
