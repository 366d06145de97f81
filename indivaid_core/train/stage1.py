"""Stage 1: learn the per-individual context tokens and the meta-net with E_I, E_T frozen.

Image features are computed once into a memmap cache, so an epoch costs only text-encoder
passes, at any batch size (the released code recomputes E_I at batch size 1).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from indivaid_core.config import Config, ModelCfg, Stage1Cfg, to_dict
from indivaid_core.data.dataset import ImageTableDataset
from indivaid_core.data.digest import files_digest
from indivaid_core.data.images import draft_for
from indivaid_core.device import DistInfo, resolve_device
from indivaid_core.losses import supcon_loss
from indivaid_core.model import DescriptionGenerator, build_clip_for, preprocess_info
from indivaid_core.safe_io import atomic_path, read_npy_cache, save_safetensors, write_json
from indivaid_core.train.engine import (
    TrainingDiverged,
    count_params,
    cpu_threads,
    exclusive_run,
    gather_cat,
    init_distributed,
    main_process_first,
    maybe_ddp,
    seed_everything,
)
from indivaid_core.train.loop import LoopState, rows_digest, run_epochs
from indivaid_core.train.schedule import warmup_cosine
from indivaid_core.transforms import eval_transform


def label_map(identities: pd.Series) -> dict[str, int]:
    """Training identities -> class indices, in sorted order so every stage agrees."""
    return {name: i for i, name in enumerate(sorted(identities.astype(str).unique()))}


@dataclass(frozen=True)
class Stage1Run:
    """The settings a stage-1 run reads: its own section, the model section (the checkpoint
    and the feature cache are keyed on all of it), the seed and the device."""

    model: ModelCfg
    stage1: Stage1Cfg
    seed: int
    device: str = "auto"
    num_workers: int = 0  # processes decoding the photos for the feature cache

    @classmethod
    def of(cls, cfg: Config) -> Stage1Run:
        """The stage-1 settings of a run's whole config."""
        return cls(cfg.model, cfg.stage1, cfg.seed, cfg.device, cfg.data.num_workers)


# What build_clip makes E_I from: the only model settings the frozen features depend on.
FEATURE_SETTINGS = ("backbone", "pretrained", "image_size", "stride")


def cache_key(
    model_cfg: dict[str, Any], table: pd.DataFrame, image_root: Path | None = None
) -> str:
    """Hash of what the frozen features depend on: the image tower, the checkpoint, the rows
    and (given `image_root`) the content of their files, so replaced photos are recomputed.

    Text-side settings (n_ctx, meta_net, fusion) are left out, so the text runs of a dataset
    share one feature file instead of each computing the same features again.
    """
    tower = {k: model_cfg.get(k) for k in FEATURE_SETTINGS}
    h = hashlib.sha256(json.dumps(tower, sort_keys=True).encode())
    pretrained = model_cfg.get("pretrained", "")
    if pretrained and Path(str(pretrained)).is_file():
        h.update(Path(pretrained).read_bytes())
    h.update(table[["image_id", "path"]].to_csv(index=False).encode())
    if image_root is not None:
        h.update(files_digest(table, image_root).encode())
    return h.hexdigest()[:16]


def cache_file(cache_dir: Path, key: str, device: torch.device, batch_size: int) -> Path:
    """Where `image_feature_cache` keeps the features for `key` computed this way."""
    # How the floats are computed is part of the key: features made on 1 and 2 threads differed
    # by up to 4e-6, and reusing the other's cache silently changed stage 1.
    compute = f"{key}/{device}/threads={torch.get_num_threads()}/batch={batch_size}"
    return cache_dir / f"{hashlib.sha256(compute.encode()).hexdigest()[:16]}.npy"


@torch.no_grad()
def image_feature_cache(
    clip_model: torch.nn.Module,
    table: pd.DataFrame,
    *,
    image_root: Path,
    image_size: tuple[int, int],
    cache_dir: Path,
    key: str,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
) -> np.memmap:
    """Projected E_I features of every row, written chunk by chunk into a .npy memmap.

    A rerun with the same key, device, thread count and batch size reuses the file; peak
    memory is one chunk, not the dataset.
    """
    path = cache_file(cache_dir, key, device, batch_size)
    if path.exists() and (cached := _read_cache(path, len(table))) is not None:
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    info = preprocess_info(clip_model)
    tf = eval_transform(image_size, info.mean, info.std, info.resize_backend)
    ds = ImageTableDataset(table, image_root, tf, draft=draft_for(image_size))
    # Its own generator: iterating a DataLoader draws a seed from the global torch RNG, which
    # made stage 1's initialisation depend on whether this cache already existed.
    loader = DataLoader(
        ds, batch_size=batch_size, num_workers=num_workers, generator=torch.Generator()
    )
    clip_model = clip_model.to(device).eval()
    with atomic_path(path) as tmp:  # a unique temporary: side-by-side runs never share one
        out = None
        for batch in tqdm(loader, desc="stage1 image features", unit="batch"):
            f = clip_model.encode_image(batch["image"].to(device)).float().cpu().numpy()
            if out is None:
                out = np.lib.format.open_memmap(tmp, "w+", np.float32, (len(ds), f.shape[1]))
            out[batch["index"].numpy()] = f
        if out is None:
            raise ValueError("stage 1: the training table is empty; no features to compute")
        out.flush()
        del out
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _read_cache(path: Path, n_rows: int) -> np.ndarray | None:
    """The cached features, or None (with a warning) when unreadable or not (n_rows, D) float32."""
    return read_npy_cache(
        path,
        lambda a: a.ndim == 2 and a.shape[0] == n_rows and a.dtype == np.float32,
        f"({n_rows}, D) float32",
        "feature cache",
        "computing it again",
    )


def frozen_features(
    run: Stage1Run,
    clip_model: torch.nn.Module,
    *,
    train_table: pd.DataFrame,
    image_root: Path,
    cache_dir: Path,
    device: torch.device,
    key: str | None = None,
) -> np.memmap:
    """The training rows' E_I features for this run's settings, from the cache when present.

    `key` is `cache_key`'s value when the caller has it: it reads every photo to compute it."""
    return image_feature_cache(
        clip_model,
        train_table.reset_index(drop=True),
        image_root=image_root,
        image_size=tuple(run.model.image_size),
        cache_dir=cache_dir,
        key=key or cache_key(to_dict(run.model), train_table, image_root),
        batch_size=run.stage1.feature_batch_size,
        device=device,
        num_workers=run.num_workers,
    )


def warm_feature_cache(
    run: Stage1Run, train_table: pd.DataFrame, image_root: Path, cache_dir: Path
) -> None:
    """Compute the feature file before runs start side by side, so no two of them write it.

    Returns at once when the file exists: text runs that share an image tower share it.
    """
    with cpu_threads(run.stage1.num_threads):  # the thread count is part of the cache key
        device = resolve_device(run.device)
        key = cache_key(to_dict(run.model), train_table, image_root)
        if cache_file(cache_dir, key, device, run.stage1.feature_batch_size).exists():
            return
        clip_model = build_clip_for(run.model)
        frozen_features(
            run,
            clip_model,
            train_table=train_table,
            image_root=image_root,
            cache_dir=cache_dir,
            device=device,
            key=key,
        )


def run_settings(
    run: Stage1Run, train_table: pd.DataFrame, species: str, image_root: Path | None = None
) -> dict[str, Any]:
    """What defines a stage-1 run: a checkpoint made with other settings, or from other photo
    files under the same names, is not resumed."""
    own = {k: v for k, v in to_dict(run.stage1).items() if k != "processes"}  # wall time only
    return {
        "stage": "stage1",
        "seed": run.seed,
        "species": species,
        "model": to_dict(run.model),
        "stage1": own,
        "rows": rows_digest(train_table, ("image_id", "identity", "path")),
        **({"files": files_digest(train_table, image_root)} if image_root is not None else {}),
    }


def update_matched_epochs(
    epochs: int, warmup: int, *, n: int, batch: int, s1: Stage1Cfg
) -> tuple[int, int]:
    """(epochs, warmup epochs) that give as many updates as `epochs` at the released batch.

    The released configs count stage-1 epochs at batch size 1: n updates an epoch. Here an
    epoch makes n // batch updates (the last partial batch is dropped), so with
    `released_batch_size` b the run trains ceil(epochs * ceil(n / b) / (n // batch)) epochs and
    the warmup is stretched by the same factor. With b = 0 the epochs are taken as given.
    """
    b = s1.released_batch_size
    if not b:
        return epochs, warmup
    per_epoch = max(1, n // batch)
    factor = math.ceil(n / b) / per_epoch
    return math.ceil(epochs * factor), math.ceil(warmup * factor)


@exclusive_run
def train_stage1(
    run: Stage1Run,
    *,
    train_table: pd.DataFrame,
    image_root: Path,
    species: str,
    out_dir: Path,
    cache_dir: Path,
    resume: bool = True,
    interrupt_after_steps: int = 0,
) -> dict[str, Any]:
    """Train the description generator; write its weights, the descriptions and metrics."""
    with cpu_threads(run.stage1.num_threads):  # 1 thread: repeatable across processes
        device = resolve_device(run.device)
        info = init_distributed(device)
        seed_everything(run.seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        clip_model = build_clip_for(run.model)
        clip_model.requires_grad_(False)
        with main_process_first(info):
            data = build_data(
                run,
                clip_model,
                train_table=train_table,
                image_root=image_root,
                cache_dir=cache_dir,
                device=device,
            )
        gen = description_generator(run, clip_model, len(data.labels_of), species).to(device)
        s1, n = run.stage1, len(data.labels)
        bs = min(s1.batch_size, n)
        epochs, warmup = update_matched_epochs(s1.epochs, s1.warmup_epochs, n=n, batch=bs, s1=s1)
        state = _loop_state(gen, s1, epochs, warmup)
        with maybe_ddp(gen, device) as model:
            meter = run_epochs(
                state,
                epochs=epochs,
                batches=epoch_batches(n, bs, info, run.seed),
                step=supcon_step(model, data, logits=s1.logits, clip=clip_model, device=device),
                checkpoint=out_dir / "checkpoint.pt",
                log_dir=out_dir / "plots",
                desc="stage1",
                settings=run_settings(run, train_table, species, image_root),
                resume=resume,
                interrupt_after_steps=interrupt_after_steps,
            )
        result = {
            "stage": "stage1",
            "epochs": epochs,
            "batch_size": bs,
            "n_images": n,
            "n_identities": len(data.labels_of),
            "final_loss": round(state.history[-1]["loss"], 6) if state.history else None,
            **count_params(gen),
            **meter.summary(device),
        }
        if info.is_main:
            write_descriptions(gen, data, out_dir, device, lr=s1.lr)
            write_json(out_dir / "metrics.json", result, indent=2, sort_keys=True)
        return result


@dataclass(frozen=True)
class Stage1Data:
    """The training rows, their identities as class indices and their frozen E_I features."""

    table: pd.DataFrame
    labels_of: dict[str, int]
    labels: torch.Tensor
    feats: np.ndarray


def build_data(
    run: Stage1Run,
    clip_model: torch.nn.Module,
    *,
    train_table: pd.DataFrame,
    image_root: Path,
    cache_dir: Path,
    device: torch.device,
) -> Stage1Data:
    """The labels of the training rows and their features (from the cache when present)."""
    labels_of = label_map(train_table["identity"])
    labels = torch.tensor(train_table["identity"].astype(str).map(labels_of).to_numpy())
    feats = frozen_features(
        run,
        clip_model,
        train_table=train_table,
        image_root=image_root,
        cache_dir=cache_dir,
        device=device,
    )
    return Stage1Data(train_table, labels_of, labels, feats)


def description_generator(
    run: Stage1Run, clip_model: torch.nn.Module, n_identities: int, species: str
) -> DescriptionGenerator:
    """The prompt learner and meta-net of `n_identities` individuals on the frozen CLIP."""
    return DescriptionGenerator(
        clip_model,
        n_identities,
        species=species,
        n_ctx=run.model.n_ctx,
        meta_net=run.model.meta_net,
        truncate_text=run.stage1.truncate_text,
        cache_prefix=run.stage1.cache_prefix,
    )


def _loop_state(gen: torch.nn.Module, s1: Stage1Cfg, epochs: int, warmup: int) -> LoopState:
    """Adam on the generator's trainable parameters, warmup then cosine over `epochs`."""
    trainable = [p for p in gen.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=s1.lr, weight_decay=s1.weight_decay)
    return LoopState({"generator": gen}, opt, warmup_cosine(opt, warmup, epochs))


def epoch_batches(
    n: int, batch: int, info: DistInfo, seed: int
) -> Callable[[int], Iterator[torch.Tensor]]:
    """Each epoch's batches of row indices: a seeded shuffle cut into whole batches (the last
    partial one dropped), each rank taking its own contiguous slice, sorted."""
    per_rank = batch // info.world_size

    def batches(epoch: int) -> Iterator[torch.Tensor]:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for lo in range(0, n - batch + 1, batch):
            idx = order[lo : lo + batch][info.rank * per_rank : (info.rank + 1) * per_rank]
            yield idx.sort().values

    return batches


def supcon_step(
    model: torch.nn.Module,
    data: Stage1Data,
    *,
    logits: str,
    clip: torch.nn.Module,
    device: torch.device,
) -> Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float], int]]:
    """One step's loss: image-to-text and text-to-image SupCon against g and against h.

    `logits` "raw" is CLIP-ReID's: raw dot products at temperature 1; "cosine" scales
    L2-normalised features by CLIP's logit scale.
    """
    raw = logits == "raw"
    scale = 1.0 if raw else clip.logit_scale.exp().detach().to(device)

    def step(idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float], int]:
        f = torch.from_numpy(np.array(data.feats[idx.numpy()])).to(device)
        y = data.labels[idx].to(device)
        g, h = model(y, f)
        f, g, h, y = (gather_cat(t) for t in (f, g, h, y))
        norm = not raw
        parts = {
            "i2t_g": supcon_loss(f, g, y, y, scale, norm),
            "t2i_g": supcon_loss(g, f, y, y, scale, norm),
            "i2t_h": supcon_loss(f, h, y, y, scale, norm),
            "t2i_h": supcon_loss(h, f, y, y, scale, norm),
        }
        loss = sum(parts.values())
        return loss, {k: v.item() for k, v in parts.items()}, len(idx)

    return step


@torch.no_grad()
def write_descriptions(
    gen: torch.nn.Module,
    data: Stage1Data,
    out_dir: Path,
    device: torch.device,
    lr: float | None = None,
    chunk: int = 64,
) -> None:
    """Cache g for every training image and h for every individual, for stage 2; refused when
    not finite (a diverged run), so stage 2 is never the one blamed for stage 1's NaN."""
    gen.eval()
    feats, labels = data.feats, data.labels
    g = []
    for lo in range(0, len(labels), chunk):
        f = torch.from_numpy(np.array(feats[lo : lo + chunk])).to(device)
        g.append(gen(labels[lo : lo + chunk].to(device), f)[0].float().cpu())
    ids = torch.arange(len(data.labels_of), device=device)
    h = torch.cat(
        [gen.individual(ids[lo : lo + chunk]).float().cpu() for lo in range(0, len(ids), chunk)]
    )
    check_descriptions_finite(torch.cat(g), h, out_dir, lr)
    save_safetensors(
        {"g": torch.cat(g).contiguous(), "g_labels": labels.contiguous(), "h": h.contiguous()},
        out_dir / "descriptions.safetensors",
    )
    save_safetensors(
        {
            k: v.detach().cpu().contiguous()
            for k, v in gen.state_dict().items()
            if "ctx" in k or "meta" in k
        },
        out_dir / "text_learner.safetensors",
    )
    write_json(
        out_dir / "labels.json",
        {"labels": data.labels_of, "image_ids": data.table["image_id"].astype(str).tolist()},
    )


def check_descriptions_finite(
    g: torch.Tensor, h: torch.Tensor, out_dir: Path, lr: float | None
) -> None:
    """Refuse NaN or inf descriptions: the loss of the last step can be finite while the update
    after it is not, and stage 2 would then diverge and blame itself."""
    bad = sum(int((~torch.isfinite(t)).sum()) for t in (g, h))
    if bad:
        at = f" at stage1.lr={lr}" if lr is not None else ""
        raise TrainingDiverged(
            f"stage 1 ({out_dir}): {bad} description values are NaN or inf, so stage 1 "
            f"diverged{at}; the descriptions were not saved: lower stage1.lr and rerun stage 1"
        )
