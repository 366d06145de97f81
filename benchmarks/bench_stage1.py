"""Stage-1 epoch time: this project's cached + batched loop against a batch-1 loop that
recomputes E_I every step (the released code's way), on the same synthetic data.

Both runs are judged on one yardstick, the *evaluation objective*: the four stage-1 SupCon
terms (i2t/t2i on g and h) over the whole training set in fixed batches of
`stage1.batch_size`, from the cached features, without gradients. The cached run trains for
E epochs (real `train_stage1`); its evaluation objective is the target loss. The batch-1
run then trains until it reaches that loss, or for at most `--baseline-epochs` epochs.

At batch 1 SupCon has no negatives (its softmax has one candidate, so it is identically 0);
the baseline therefore minimises what is left of it, the matched-pair logit
-scale * cos(f, g) - scale * cos(f, h), which is the pull term of the released loss with the
sign it should have had. Usage: python benchmarks/bench_stage1.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from indivaid_core import config as config_mod
from indivaid_core import pipeline
from indivaid_core.config import Config, to_dict
from indivaid_core.data.dataset import ImageTableDataset
from indivaid_core.data.synthetic import generate_suite
from indivaid_core.losses import supcon_loss
from indivaid_core.model import DescriptionGenerator, build_clip_for, preprocess_info
from indivaid_core.train.engine import seed_everything
from indivaid_core.train.schedule import warmup_cosine
from indivaid_core.train.stage1 import cache_key, image_feature_cache, label_map, train_stage1
from indivaid_core.transforms import eval_transform

DEFAULT_DATASET = "synth-stoat"


def load_avg() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


def setup(
    work: Path, data_root: Path | None, dataset: str
) -> tuple[Config, pd.DataFrame, Path, str]:
    """Config (default profile, outputs under `work`) and the dataset's training split."""
    overrides = {"data.work": str(work / "work")}
    if data_root is None:
        data_root = work / "data"
        generate_suite(data_root, [dataset])
    overrides["data.root"] = str(data_root)
    cfg = config_mod.load("params.yaml", overrides)
    pipeline.prepare(cfg, dataset)
    table = pipeline.read_table(cfg, dataset)
    train = pipeline.train_split(table)
    return cfg, train, Path(table["image_root"].iloc[0]), cfg.dataset(dataset).species


def clip_of(cfg: Config) -> torch.nn.Module:
    m = cfg.model
    clip = build_clip_for(m)
    return clip.requires_grad_(False).eval()


def new_generator(cfg: Config, clip, n_ids: int, species: str) -> DescriptionGenerator:
    seed_everything(cfg.seed)
    return DescriptionGenerator(clip, n_ids, species, cfg.model.n_ctx, cfg.model.meta_net)


@torch.no_grad()
def eval_objective(gen, feats: np.ndarray, labels: torch.Tensor, scale, batch: int) -> float:
    """The stage-1 objective over the training set in fixed, ordered batches."""
    gen.eval()
    total, n = 0.0, 0
    for lo in range(0, len(labels), batch):
        f = torch.from_numpy(np.array(feats[lo : lo + batch]))
        y = labels[lo : lo + batch]
        g, h = gen(y, f)
        terms = [supcon_loss(f, g, y, y, scale), supcon_loss(g, f, y, y, scale)]
        terms += [supcon_loss(f, h, y, y, scale), supcon_loss(h, f, y, y, scale)]
        total += float(sum(terms)) * len(y)
        n += len(y)
    gen.train()
    return total / n


def cached_run(cfg, train, root, species, work: Path, epochs: int) -> dict:
    """One cached + batched stage-1 run: time the feature cache, then `train_stage1`."""
    cache_dir = work / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    run_cfg = _with_epochs(cfg, epochs)
    clip = clip_of(run_cfg)
    key = cache_key(to_dict(run_cfg)["model"], train)
    t0 = time.perf_counter()
    feats = image_feature_cache(
        clip,
        train.reset_index(drop=True),
        root,
        tuple(run_cfg.model.image_size),
        cache_dir,
        key,
        run_cfg.stage1.feature_batch_size,
        torch.device("cpu"),
    )
    cache_s = time.perf_counter() - t0
    out = work / "stage1"
    result = train_stage1(run_cfg, train, root, species, out, cache_dir, resume=False)
    gen = new_generator(run_cfg, clip, train["identity"].nunique(), species)
    gen.load_state_dict(load_file(str(out / "text_learner.safetensors")), strict=False)
    return {"cache_s": cache_s, "train_s": result["wall_time_s"], "gen": gen, "feats": feats}


def _with_epochs(cfg: Config, epochs: int) -> Config:
    return dataclasses.replace(cfg, stage1=dataclasses.replace(cfg.stage1, epochs=epochs))


def batch1_run(cfg, train, root, species, clip, feats, labels, target, max_epochs, budget_s):
    """The released way: one image per step, E_I recomputed, an optimiser step per image."""
    info = preprocess_info(clip)
    ds = ImageTableDataset(
        train.reset_index(drop=True),
        root,
        eval_transform(tuple(cfg.model.image_size), info.mean, info.std),
    )
    gen = new_generator(cfg, clip, int(labels.max()) + 1, species)
    s1 = cfg.stage1
    params = [p for p in gen.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=s1.lr, weight_decay=s1.weight_decay)
    sched = warmup_cosine(opt, s1.warmup_epochs, max_epochs)
    scale = clip.logit_scale.exp().detach()
    epoch_s, losses, reached_at = [], [], None
    elapsed = 0.0
    for epoch in range(max_epochs):
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(epoch))
        t0 = time.perf_counter()
        for i in order.tolist():
            x = ds[i]["image"][None]
            with torch.no_grad():
                f = clip.encode_image(x).float()
            y = labels[i : i + 1]
            g, h = gen(y, f)
            fn = F.normalize(f, dim=1)
            cos = (fn * F.normalize(g, dim=1)).sum() + (fn * F.normalize(h, dim=1)).sum()
            loss = -2 * scale * cos  # i2t + t2i of a single pair are equal
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        epoch_s.append(time.perf_counter() - t0)
        elapsed += epoch_s[-1]
        losses.append(eval_objective(gen, feats, labels, scale, s1.batch_size))
        print(f"  batch-1 epoch {epoch}: {epoch_s[-1]:.1f} s, eval objective {losses[-1]:.4f}")
        if losses[-1] <= target:
            reached_at = elapsed
            break
        if elapsed > budget_s:
            break
    return {"epoch_s": epoch_s, "losses": losses, "reached_s": reached_at, "elapsed": elapsed}


def step_time(fn, threads: int, repeats: int = 3) -> float:
    """Median seconds of `fn()` at a given torch thread count."""
    torch.set_num_threads(threads)
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def best_threads(name: str, fn, choices: list[int]) -> int:
    """Each method runs at its own fastest thread count: on a shared machine, OpenMP
    barriers can stall small batch-1 ops far more than large batched ones."""
    times = {n: step_time(fn, n) for n in choices}
    best = min(times, key=times.get)
    shown = ", ".join(f"{n} thr {1e3 * t:.0f} ms" for n, t in times.items())
    print(f"  {name} step: {shown} -> {best} thread(s)")
    torch.set_num_threads(best)
    return best


def probe_steps(cfg, clip, feats, labels, species, root, train):
    """One training step of each method, for the thread-count choice (not timed runs)."""
    scale = clip.logit_scale.exp().detach()
    gen = new_generator(cfg, clip, int(labels.max()) + 1, species)
    bs = min(cfg.stage1.batch_size, len(labels))
    f64, y64 = torch.from_numpy(np.array(feats[:bs])), labels[:bs]
    info = preprocess_info(clip)
    tf = eval_transform(tuple(cfg.model.image_size), info.mean, info.std)
    ds = ImageTableDataset(train.reset_index(drop=True), root, tf)

    def batched():
        g, h = gen(y64, f64)
        sum(
            supcon_loss(a, b, y64, y64, scale) for a, b in [(f64, g), (g, f64), (f64, h), (h, f64)]
        ).backward()

    def single():
        with torch.no_grad():
            f = clip.encode_image(ds[0]["image"][None]).float()
        g, h = gen(labels[:1], f)
        (g.sum() + h.sum()).backward()

    return batched, single


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs and repeats (~1 min)")
    ap.add_argument("--epochs", type=int, default=None, help="cached-run epochs (params: 10)")
    ap.add_argument("--repeats", type=int, default=None, help="cached-run repeats (median)")
    ap.add_argument("--baseline-epochs", type=int, default=None)
    ap.add_argument("--baseline-budget-s", type=float, default=None)
    ap.add_argument("--data", default="data", help="suite root; generated if it lacks the preset")
    ap.add_argument("--dataset", default=DEFAULT_DATASET, help="a synthetic preset in params")
    args = ap.parse_args()
    epochs = args.epochs or (3 if args.quick else None)
    repeats = args.repeats or (1 if args.quick else 3)
    b_epochs = args.baseline_epochs or (5 if args.quick else 30)
    budget = args.baseline_budget_s or (20.0 if args.quick else 90.0)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"load average before: {load_avg()}")
    data_root = Path(args.data).resolve()
    if not (data_root / args.dataset / "metadata.csv").exists():
        data_root = None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg, train, root, species = setup(work, data_root, args.dataset)
        epochs = epochs or cfg.stage1.epochs
        m = cfg.model
        print(
            f"{args.dataset}: {len(train)} training images,"
            f" {train['identity'].nunique()} individuals;"
            f" {m.backbone} {m.image_size[0]}x{m.image_size[1]}, stage-1 batch"
            f" {cfg.stage1.batch_size}, {epochs} epochs\n"
        )
        threads = sorted({1, torch.get_num_threads()})
        clip = clip_of(cfg)
        labels_of = label_map(train["identity"])
        labels = torch.tensor(train["identity"].astype(str).map(labels_of).to_numpy())
        feats = image_feature_cache(
            clip,
            train.reset_index(drop=True),
            root,
            tuple(cfg.model.image_size),
            work / "probe_cache",
            "probe",
            cfg.stage1.feature_batch_size,
            torch.device("cpu"),
        )
        batched, single = probe_steps(cfg, clip, feats, labels, species, root, train)
        print("thread choice (median of 3 steps each):")
        single_threads = best_threads("batch-1", single, threads)
        cached_threads = best_threads(f"batch-{cfg.stage1.batch_size}", batched, threads)
        runs = [cached_run(cfg, train, root, species, work, epochs) for _ in range(repeats)]
        cache_s = statistics.median(r["cache_s"] for r in runs)
        train_s = statistics.median(r["train_s"] for r in runs)
        last = runs[-1]
        scale = clip.logit_scale.exp().detach()
        feats = last["feats"]
        start = eval_objective(
            new_generator(cfg, clip, len(labels_of), species),
            feats,
            labels,
            scale,
            cfg.stage1.batch_size,
        )
        target = eval_objective(last["gen"], feats, labels, scale, cfg.stage1.batch_size)
        print(
            f"eval objective: untrained {start:.4f}, cached run after {epochs} epochs {target:.4f}"
        )
        torch.set_num_threads(single_threads)
        base = batch1_run(cfg, train, root, species, clip, feats, labels, target, b_epochs, budget)
    print(f"load average after: {load_avg()}\n")

    cached_epoch = train_s / epochs
    cached_total = cache_s + train_s
    b_epoch = statistics.median(base["epoch_s"])
    print(f"{'method':34s} {'s/epoch':>8s} {'one-off s':>9s} {'epochs':>6s} {'to loss s':>10s}")
    print(
        f"{f'cached + batch {cfg.stage1.batch_size} ({cached_threads} thr)':34s} "
        f"{cached_epoch:8.2f} {cache_s:9.2f} {epochs:6d} {cached_total:10.2f}"
    )
    reached = base["reached_s"]
    to_loss = f"{reached:10.2f}" if reached else f"{'>' + format(base['elapsed'], '.1f'):>10s}"
    print(
        f"{f'batch 1, E_I every step ({single_threads} thr)':34s} {b_epoch:8.2f} {0.0:9.2f} "
        f"{len(base['epoch_s']):6d} {to_loss}"
    )
    print(f"\nper-epoch ratio (batch-1 / cached, cache excluded): {b_epoch / cached_epoch:.1f}x")
    if reached:
        print(f"time-to-loss ratio (cache included): {reached / cached_total:.1f}x")
    else:
        lower = base["elapsed"] / cached_total
        print(
            f"batch-1 did not reach {target:.4f} (best {min(base['losses']):.4f}); "
            f"time-to-loss ratio (cache included) > {lower:.1f}x"
        )
    print(f"cached timings: median of {repeats}; batch-1: median of {len(base['epoch_s'])} epochs")


if __name__ == "__main__":
    main()
