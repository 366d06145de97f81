"""Stage-1 epoch time, side by side in one run: the batch-1 loop that recomputes E_I every
step (the released code's way), and the cached + batched loop on three text paths: plain
(`stage1.truncate_text: false`), truncated (`truncate_text: true, cache_prefix: false`: slots
after end-of-text dropped) and fast (`cache_prefix: true` as well: the shared prompt prefix
computed once per layer, the last layer at end-of-text only). All three are equal to float
rounding.

The batched runs train with the real `train_stage1`, same seed and batches; each runs
`--repeats` times (alternately with the other and with the batch-1 epochs, so all see the same
machine load) and its seconds per epoch are the median. Every run is judged on one yardstick,
the *evaluation objective*: the four stage-1 SupCon terms (i2t/t2i on g and h) over the whole
training set in fixed batches of `stage1.batch_size`, from the cached features, without
gradients, on the plain text path. The batched runs must agree on it (and on the final
training loss) to float rounding.

At batch 1 SupCon has no negatives (its softmax has one candidate, so it is identically 0);
the baseline therefore minimises what is left of it, the matched-pair logit
-scale * cos(f, g) - scale * cos(f, h), which is the pull term of the released loss with the
sign it should have had. It trains `--baseline-epochs` epochs (median s/epoch), and the line
below the table says whether it reached the batched runs' objective.
Usage: python benchmarks/bench_stage1.py [--quick] [--threads best|N] [--dataset synth-tiger]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
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
from indivaid_core.config import Config
from indivaid_core.data.dataset import ImageTableDataset
from indivaid_core.losses import supcon_loss
from indivaid_core.model import DescriptionGenerator, build_clip_for, preprocess_info
from indivaid_core.repro.prepare import prepare, read_table, train_split
from indivaid_core.repro.synthetic import generate_suite
from indivaid_core.train.engine import seed_everything
from indivaid_core.train.schedule import warmup_cosine
from indivaid_core.train.stage1 import Stage1Run, frozen_features, label_map, train_stage1
from indivaid_core.transforms import eval_transform

DEFAULT_DATASET = "synth-tiger"  # 410 training images: 6 batches of 64 an epoch
# text path -> its stage1 settings
PATHS = {
    "plain": {"truncate_text": False, "cache_prefix": False},
    "truncated": {"truncate_text": True, "cache_prefix": False},
    "fast": {"truncate_text": True, "cache_prefix": True},
}


def load_avg() -> str:
    """The machine's load, printed before and after: the cores may be shared."""
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
    prepare(cfg, dataset)
    table = read_table(cfg, dataset)
    train = train_split(table)
    return cfg, train, Path(table["image_root"].iloc[0]), cfg.dataset(dataset).species


def clip_of(cfg: Config) -> torch.nn.Module:
    """The frozen CLIP model stage 1 builds."""
    return build_clip_for(cfg.model).requires_grad_(False).eval()


def new_generator(cfg: Config, clip, n_ids: int, species: str, path="plain"):
    """A generator initialised as `train_stage1` initialises it, on one text path."""
    seed_everything(cfg.seed)
    m = cfg.model
    return DescriptionGenerator(clip, n_ids, species, m.n_ctx, m.meta_net, **PATHS[path])


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


def with_stage1(cfg: Config, **changes) -> Config:
    """`cfg` with some stage1 settings replaced."""
    return dataclasses.replace(cfg, stage1=dataclasses.replace(cfg.stage1, **changes))


def batched_run(cfg: Config, train, root, species, out: Path, cache_dir: Path) -> dict:
    """One real `train_stage1` run (fresh, the shared feature cache): its time and results."""
    result = train_stage1(
        Stage1Run.of(cfg),
        train_table=train,
        image_root=root,
        species=species,
        out_dir=out,
        cache_dir=cache_dir,
        resume=False,
    )
    return {
        "s_epoch": result["wall_time_s"] / result["epochs"],
        "result": result,
        "w": load_file(str(out / "text_learner.safetensors")),
        "desc": load_file(str(out / "descriptions.safetensors")),
    }


class Batch1:
    """The released way: one image per step, E_I recomputed, an optimiser step per image.
    `epoch()` trains one more epoch, so its epochs can alternate with the batched runs."""

    def __init__(self, cfg, train, root, species, clip, feats, labels, epochs: int):
        info = preprocess_info(clip)
        tf = eval_transform(tuple(cfg.model.image_size), info.mean, info.std)
        self.ds = ImageTableDataset(train.reset_index(drop=True), root, tf)
        self.gen = new_generator(cfg, clip, int(labels.max()) + 1, species)
        s1 = cfg.stage1
        params = [p for p in self.gen.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(params, lr=s1.lr, weight_decay=s1.weight_decay)
        self.sched = warmup_cosine(self.opt, s1.warmup_epochs, epochs)
        self.clip, self.feats, self.labels, self.batch = clip, feats, labels, s1.batch_size
        self.scale = clip.logit_scale.exp().detach()
        self.epoch_s: list[float] = []
        self.losses: list[float] = []

    def step(self, i: int) -> None:
        """One image: E_I, the pull term of the stage-1 loss, an Adam step."""
        with torch.no_grad():
            f = self.clip.encode_image(self.ds[i]["image"][None]).float()
        g, h = self.gen(self.labels[i : i + 1], f)
        fn = F.normalize(f, dim=1)
        cos = (fn * F.normalize(g, dim=1)).sum() + (fn * F.normalize(h, dim=1)).sum()
        loss = -2 * self.scale * cos  # i2t + t2i of a single pair are equal
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def epoch(self) -> None:
        """One timed epoch in a seeded order, then the evaluation objective (not timed)."""
        seed = len(self.epoch_s)
        order = torch.randperm(len(self.ds), generator=torch.Generator().manual_seed(seed))
        t0 = time.perf_counter()
        for i in order.tolist():
            self.step(i)
        self.sched.step()
        self.epoch_s.append(time.perf_counter() - t0)
        self.losses.append(
            eval_objective(self.gen, self.feats, self.labels, self.scale, self.batch)
        )
        took, loss = self.epoch_s[-1], self.losses[-1]
        print(f"  batch-1 epoch {seed}: {took:.1f} s, eval objective {loss:.4f}")


def median_time(fn, repeats: int) -> float:
    """Median seconds of `fn()` after one warm-up call."""
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
    times = {}
    for n in choices:
        torch.set_num_threads(n)
        times[n] = median_time(fn, 3)
    best = min(times, key=times.get)
    shown = ", ".join(f"{n} thr {1e3 * t:.0f} ms" for n, t in times.items())
    print(f"  {name} step: {shown} -> {best} thread(s)")
    return best


def step_fns(cfg, clip, feats, labels, species, root, train) -> dict:
    """One training step of each method (forward + backward), for thread choice and the
    text-path table; the batched steps use one random batch, as `train_stage1` draws them
    (the table is sorted by identity: its first rows would hold few individuals, few h rows)."""
    scale = clip.logit_scale.exp().detach()
    n_ids = int(labels.max()) + 1
    bs = min(cfg.stage1.batch_size, len(labels))
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:bs].sort()
    f64, y64 = torch.from_numpy(np.array(feats[idx.values.numpy()])), labels[idx.values]
    info = preprocess_info(clip)
    tf = eval_transform(tuple(cfg.model.image_size), info.mean, info.std)
    ds = ImageTableDataset(train.reset_index(drop=True), root, tf)

    def batched(gen):
        def step():
            g, h = gen(y64, f64)
            pairs = [(f64, g), (g, f64), (f64, h), (h, f64)]
            sum(supcon_loss(a, b, y64, y64, scale) for a, b in pairs).backward()

        return step

    def single(gen):
        def step():
            with torch.no_grad():
                f = clip.encode_image(ds[0]["image"][None]).float()
            g, h = gen(labels[:1], f)
            (g.sum() + h.sum()).backward()

        return step

    gens = {name: new_generator(cfg, clip, n_ids, species, name) for name in PATHS}
    steps = {name: batched(gen) for name, gen in gens.items()}
    return {"batch-1": single(gens["plain"]), **steps}


def text_path_table(steps: dict, threads: int, repeats: int = 5) -> None:
    """Median batched step per text path at one thread count, alternating the paths."""
    torch.set_num_threads(threads)
    names = list(PATHS)
    times = {n: [] for n in names}
    for name in names:
        steps[name]()  # warm-up
    for _ in range(repeats):
        for name in names:
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"\none batched training step (fwd + bwd), {threads} thread(s), median of {repeats}:")
    for name in names:
        print(f"  {name:14s} {1e3 * med[name]:7.1f} ms  {med['plain'] / med[name]:5.2f}x")


def features(cfg: Config, clip, train, root, cache_dir: Path, threads: int) -> tuple:
    """The training features as `train_stage1` caches them (same key, same thread count)."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    feats = frozen_features(
        Stage1Run.of(cfg),
        clip,
        train_table=train,
        image_root=root,
        cache_dir=cache_dir,
        device=torch.device("cpu"),
    )
    return feats, time.perf_counter() - t0


def parse_args() -> argparse.Namespace:
    """Command-line options; --quick for a smoke run."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs and repeats (~1 min)")
    ap.add_argument("--epochs", type=int, default=None, help="batched-run epochs (params)")
    ap.add_argument("--repeats", type=int, default=None, help="batched-run repeats (median)")
    ap.add_argument("--baseline-epochs", type=int, default=None, help="batch-1 epochs")
    ap.add_argument("--data", default="data", help="suite root; generated if it lacks the preset")
    ap.add_argument("--dataset", default=DEFAULT_DATASET, help="a synthetic preset in params")
    ap.add_argument(
        "--threads",
        default="best",
        help="torch threads for every method, or 'best': each at its fastest of 1 and all "
        "cores (the default, as the 11.1x measurement)",
    )
    return ap.parse_args()


def agreement(a: dict, b: dict, objective: dict, name: str) -> None:
    """How far a run on another text path ended from the plain path's run."""
    w = max((a["w"][k] - b["w"][k]).abs().max().item() for k in a["w"])
    d = max((a["desc"][k].float() - b["desc"][k].float()).abs().max().item() for k in a["desc"])
    dl = abs(a["result"]["final_loss"] - b["result"]["final_loss"])
    print(
        f"plain vs {name} after training: eval objective |diff| "
        f"{abs(objective['plain'] - objective[name]):.2e}, final loss |diff| {dl:.2e}, "
        f"weights max |diff| {w:.2e}, descriptions g/h max |diff| {d:.2e}"
    )


def report(runs: dict, base: Batch1, threads: dict, objective: dict, cache_s: float) -> None:
    """The side-by-side table and how far the batched runs ended from one another."""
    b_epoch = statistics.median(base.epoch_s)
    heads = f"{'s/epoch':>8s} {'vs batch-1':>10s} {'eval obj':>9s} {'train loss':>10s}"
    print(f"\n{'method (batched: cached features)':58s} {heads}")
    label = f"batch 1, E_I every step ({threads['batch-1']} thr)"
    print(f"{label:58s} {b_epoch:8.3f} {1.0:9.1f}x {base.losses[-1]:9.4f} {'-':>10s}")
    for name in PATHS:
        label = ", ".join(f"{k} {str(v).lower()}" for k, v in PATHS[name].items())
        s_epoch = statistics.median(r["s_epoch"] for r in runs[name])
        loss, bs = (runs[name][-1]["result"][k] for k in ("final_loss", "batch_size"))
        print(
            f"{f'batch {bs}, {label} ({threads[name]} thr)':58s} {s_epoch:8.3f} "
            f"{b_epoch / s_epoch:9.1f}x {objective[name]:9.4f} {loss:10.6f}"
        )
    print()
    for name in ("truncated", "fast"):
        agreement(runs["plain"][-1], runs[name][-1], objective, name)
    reached = min(base.losses) <= objective["fast"]
    print(
        f"batch-1 after {len(base.losses)} epochs: best eval objective "
        f"{min(base.losses):.4f} ({'reached' if reached else 'did not reach'} the batched "
        f"runs' {objective['fast']:.4f}); one-off feature cache {cache_s:.2f} s"
    )
    print(
        f"batched: s/epoch median of {len(runs['plain'])} runs each (alternating); "
        f"batch-1: median of {len(base.epoch_s)} epochs"
    )


def main() -> None:
    """Measure the batch-1 loop and the three text paths on one dataset, side by side."""
    args = parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    b_epochs = args.baseline_epochs or (1 if args.quick else 3)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"load average before: {load_avg()}")
    data_root = Path(args.data).resolve()
    if not (data_root / args.dataset / "metadata.csv").exists():
        data_root = None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg, train, root, species = setup(work, data_root, args.dataset)
        epochs = args.epochs or (3 if args.quick else cfg.stage1.epochs)
        cfg = with_stage1(cfg, epochs=epochs)
        m = cfg.model
        print(
            f"{args.dataset}: {len(train)} training images,"
            f" {train['identity'].nunique()} individuals; {m.backbone} {m.image_size[0]}x"
            f"{m.image_size[1]}, meta_net {m.meta_net}, n_ctx {m.n_ctx}, stage-1 batch"
            f" {cfg.stage1.batch_size}, {epochs} epochs\n"
        )
        all_cores = sorted({1, torch.get_num_threads()})
        choices = all_cores if args.threads == "best" else [int(args.threads)]
        clip = clip_of(cfg)
        labels_of = label_map(train["identity"])
        labels = torch.tensor(train["identity"].astype(str).map(labels_of).to_numpy())
        cache_dir = work / "cache"
        feats, cache_s = features(cfg, clip, train, root, cache_dir, cfg.stage1.num_threads)
        steps = step_fns(cfg, clip, feats, labels, species, root, train)
        print("thread choice (median of 3 steps each):")
        threads = {name: best_threads(name, steps[name], choices) for name in ("batch-1", *PATHS)}
        base = Batch1(cfg, train, root, species, clip, feats, labels, b_epochs)
        runs: dict[str, list[dict]] = {name: [] for name in PATHS}
        for r in range(max(repeats, b_epochs)):  # alternate: all see the same machine load
            for name, settings in PATHS.items():
                if r >= repeats:
                    continue
                run_cfg = with_stage1(cfg, **settings, num_threads=threads[name])
                runs[name].append(
                    batched_run(run_cfg, train, root, species, work / f"{name}{r}", cache_dir)
                )
                print(f"  {name} run {r}: {runs[name][-1]['s_epoch']:.3f} s/epoch")
            if r < b_epochs:
                torch.set_num_threads(threads["batch-1"])
                base.epoch()
        text_path_table(steps, threads["fast"])
        scale = clip.logit_scale.exp().detach()
        bs = cfg.stage1.batch_size
        objective = {}
        for name in PATHS:
            gen = new_generator(cfg, clip, len(labels_of), species)
            gen.load_state_dict(runs[name][-1]["w"], strict=False)
            objective[name] = eval_objective(gen, feats, labels, scale, bs)
        untrained = new_generator(cfg, clip, len(labels_of), species)
        print(
            f"\neval objective: untrained {eval_objective(untrained, feats, labels, scale, bs):.4f}"
        )
    print(f"load average after: {load_avg()}")
    report(runs, base, threads, objective, cache_s)


if __name__ == "__main__":
    main()
