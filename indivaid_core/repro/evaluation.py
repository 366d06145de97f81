"""The evaluation stage: features -> distances -> metrics per seed, aggregated over seeds.

`eval_split` is the one preamble every evaluating stage starts from (the prepared table, its
image root, the query/gallery rows); `evaluate` returns an `Evaluation`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchvision.transforms import v2

from indivaid_core.config import Config, EvalCfg
from indivaid_core.data.dataset import camera_ids
from indivaid_core.data.decoded import decoded_images
from indivaid_core.data.splits import validation_view
from indivaid_core.device import device_name, peak_memory_mb, resolve_device
from indivaid_core.evaluate import (
    cmc_curve_frame,
    extract_features,
    per_query_frame,
    rank_metrics,
    rerank,
    rerank_loo,
    save_features,
    summarise,
    write_metrics_json,
)
from indivaid_core.evaluate.results import mean_std
from indivaid_core.model.fold import fold_batchnorm
from indivaid_core.repro.paths import Paths
from indivaid_core.repro.prepare import read_table, train_split
from indivaid_core.safe_io import write_csv
from indivaid_core.train.export import WEIGHTS, file_sha256, load_export
from indivaid_core.transforms import eval_normalize

METRIC_KEYS = ("mAP", "R1", "R5", "R10", "mINP")


def eval_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """(query, gallery, leave_one_out) for the table's protocol."""
    if (table["split"] == "test").any():
        test = table[table["split"] == "test"].reset_index(drop=True)
        return test, test, True
    q = table[table["split"] == "query"].reset_index(drop=True)
    g = table[table["split"] == "gallery"].reset_index(drop=True)
    return q, g, False


@dataclass(frozen=True)
class EvalSplit:
    """A prepared table cut for evaluation; `test` is what features are computed of."""

    table: pd.DataFrame
    root: Path
    query: pd.DataFrame
    gallery: pd.DataFrame
    loo: bool
    test: pd.DataFrame  # the queries (leave-one-out), else the queries then the gallery

    def halves(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(query, gallery) features out of the features of `test`."""
        n = len(self.query)
        return (feats, feats) if self.loo else (feats[:n], feats[n:])


def eval_split(cfg: Config, dataset: str) -> EvalSplit:
    """Read the prepared table and cut it into query and gallery rows."""
    table = read_table(cfg, dataset)
    return _cut(table, Paths.image_root(table))


def validation_split(table: pd.DataFrame) -> EvalSplit | None:
    """The validation individuals cut as the test side is (None when the table has none)."""
    if not table["split"].astype(str).str.startswith("val_").any():
        return None
    return _cut(validation_view(table), Paths.image_root(table))


def _cut(table: pd.DataFrame, root: Path) -> EvalSplit:
    query, gallery, loo = eval_rows(table)
    test = query if loo else pd.concat([query, gallery], ignore_index=True)
    return EvalSplit(table, root, query, gallery, loo, test)


@dataclass(frozen=True)
class FeatureSettings:
    """How features are computed beyond what the export records (its architecture,
    preprocessing and `eval_feature`, which identify reads from it too): device, precision,
    memory layout, flip TTA, batch size and where decoded images are cached."""

    device: str
    amp: bool  # bf16 autocast, on CUDA only
    channels_last: bool
    flip: bool
    batch_size: int
    cache_dir: Path
    num_workers: int

    @classmethod
    def of(cls, cfg: Config) -> FeatureSettings:
        """The settings of `cfg` that features depend on (the evaluating stages list them)."""
        return cls(
            device=cfg.device,
            amp=cfg.stage2.amp,
            channels_last=cfg.model.channels_last,
            flip=cfg.model.flip_tta,
            batch_size=cfg.eval.batch_size,
            cache_dir=Path(cfg.data.work) / "cache",
            num_workers=cfg.data.num_workers,
        )


def features_for(
    encoder: torch.nn.Module,
    spec: dict,
    rows: pd.DataFrame,
    root: Path,
    *,
    settings: FeatureSettings,
    corrupt: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Evaluation features of `rows` with the exported model's own preprocessing. A model
    with BatchNorm2d runs as a copy with it folded into the convolutions (`model.fold`);
    others (the ViTs) run as given, put in channels_last when `settings.channels_last`.

    The images come from the decoded cache (`data.decoded`: decoded once for every model
    that is scored) and are normalised as `eval_transform` would per image file. `corrupt`
    (robustness) maps each image in [0, 1] before normalisation, in row order.
    """
    batches = decoded_batches(
        spec,
        rows,
        root,
        batch_size=settings.batch_size,
        cache_dir=settings.cache_dir,
        num_workers=settings.num_workers,
        corrupt=corrupt,
    )
    device = resolve_device(settings.device)
    encoder = folded(encoder, spec, device)
    if settings.channels_last:  # here, not under extract_features' inference mode
        encoder.to(memory_format=torch.channels_last)
    return extract_features(
        encoder,
        batches,
        device=device,
        n_rows=len(rows),
        amp=settings.amp,
        flip=settings.flip,
        feature=spec["eval_feature"],  # what stage 2 exported with, as identify reads it
        cameras=batches.cams is not None,
        channels_last=settings.channels_last,
    )


def folded(encoder: torch.nn.Module, spec: dict, device: torch.device) -> torch.nn.Module:
    """`encoder` with its BatchNorm folded (`model.fold`), probed at the export's image size.
    On an encoder folded already it returns at once, so a caller that computes features of
    one model several times folds it once and passes the result."""
    probe = torch.rand(2, 3, *spec["image_size"], generator=torch.Generator().manual_seed(0))
    return fold_batchnorm(encoder, (probe.to(device),))


@dataclass(frozen=True)
class DecodedBatches:
    """Decoded uint8 images as normalised batches, with a length for the progress bar."""

    pixels: np.ndarray  # (N, 3, H, W) uint8
    normalize: v2.Compose  # eval_normalize: ToDtype(scale) then Normalize
    batch_size: int
    cams: torch.Tensor | None
    corrupt: Callable[[torch.Tensor], torch.Tensor] | None

    def __len__(self) -> int:
        return -(-len(self.pixels) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        to_float, standardise = self.normalize.transforms
        for start in range(0, len(self.pixels), self.batch_size):
            index = torch.arange(start, min(start + self.batch_size, len(self.pixels)))
            x = torch.from_numpy(np.array(self.pixels[start : start + self.batch_size]))
            if self.corrupt is None:
                image = self.normalize(x)
            else:  # per image, as a transform would: a corruption may use the image's mean
                image = torch.stack([standardise(self.corrupt(to_float(im))) for im in x])
            batch = {"image": image, "index": index}
            if self.cams is not None:
                batch["camera"] = self.cams[index]
            yield batch


def decoded_batches(
    spec: dict,
    rows: pd.DataFrame,
    root: Path,
    *,
    batch_size: int,
    cache_dir: Path,
    num_workers: int = 0,
    corrupt: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> DecodedBatches:
    """`rows`' images as normalised batches of `batch_size`, from the decoded cache in
    `cache_dir` (decoded there on first use)."""
    size = tuple(spec["image_size"])
    backend = spec.get("resize_backend", "tensor")
    camera_map = spec.get("camera_map")  # checked before anything is decoded
    cams = torch.tensor(camera_ids(rows["camera"], camera_map)) if camera_map else None
    pixels = decoded_images(rows, root, size, backend, cache_dir, num_workers, train=False)
    normalize = eval_normalize(spec["mean"], spec["std"])
    return DecodedBatches(pixels, normalize, batch_size, cams, corrupt)


def score(
    e: EvalCfg,
    qf: torch.Tensor,
    gf: torch.Tensor,
    query: pd.DataFrame,
    gallery: pd.DataFrame,
    loo: bool,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Euclidean distances (optionally k-reciprocal re-ranked) and the rank metrics, with the
    `eval` section's settings."""
    dist = torch.cdist(qf, gf)
    if e.rerank:
        dist = (
            rerank_loo(dist, e.rerank_k1, e.rerank_k2, e.rerank_lambda)
            if loo
            else rerank(
                dist,
                torch.cdist(qf, qf),
                torch.cdist(gf, gf),
                e.rerank_k1,
                e.rerank_k2,
                e.rerank_lambda,
            )
        )
    cams = e.same_camera_filter and "camera" in query
    m = rank_metrics(
        dist,
        query["identity"].to_numpy(),
        gallery["identity"].to_numpy(),
        query["camera"].to_numpy() if cams else None,
        gallery["camera"].to_numpy() if cams else None,
        leave_one_out=loo,
        max_rank=e.max_rank,
    )
    return dist, m


def headline(m: dict[str, Any]) -> dict[str, float]:
    """The table metrics of a `rank_metrics` result (via `evaluate.summarise`)."""
    s = summarise(m)
    return {k: float(s[k]) for k in METRIC_KEYS}


@dataclass(frozen=True)
class SeedEvaluation:
    """One seed's model on the test rows: its scores and what the figures draw from."""

    scores: dict[str, float]  # METRIC_KEYS, train_mAP, inference_images_per_s
    per_query: pd.DataFrame
    dist: torch.Tensor
    rank_metrics: dict[str, Any]
    features: torch.Tensor


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` found: `summary` is the metrics JSON; the rest is the first seed's."""

    summary: dict[str, Any]
    split: EvalSplit
    dist: torch.Tensor
    rank_metrics: dict[str, Any]
    features: torch.Tensor
    per_query: pd.DataFrame  # every seed's per-query AP and rank, with a `seed` column

    @property
    def query(self) -> pd.DataFrame:
        return self.split.query

    @property
    def gallery(self) -> pd.DataFrame:
        return self.split.gallery

    @property
    def loo(self) -> bool:
        return self.split.loo

    @property
    def rows(self) -> pd.DataFrame:
        return self.split.test


def evaluate(cfg: Config, dataset: str, variant: str) -> Evaluation:
    """Per seed: features -> distances -> metrics; writes mean/std JSON, per-query CSV, CMC."""
    paths = Paths(cfg, dataset)
    split = eval_split(cfg, dataset)
    device = resolve_device(cfg.device)
    train = train_split(split.table).reset_index(drop=True)
    val = validation_split(split.table)
    scores, frames, cmcs, first = {}, [], [], None
    for seed in cfg.pipeline.seeds:
        run = evaluate_seed(
            cfg, paths, split, train=train, val=val, variant=variant, seed=seed, device=device
        )
        scores[seed] = run.scores
        frames.append(run.per_query)
        cmcs.append(np.asarray(run.rank_metrics["cmc"], dtype=float))
        first = first or run
    summary = _summary(paths, variant, split, scores, first.rank_metrics, device)
    write_metrics_json(paths.metrics(variant), summary)
    pq = pd.concat(frames, ignore_index=True)
    paths.per_query(variant).parent.mkdir(parents=True, exist_ok=True)
    write_csv(pq, paths.per_query(variant), index=False)
    paths.cmc(variant).parent.mkdir(parents=True, exist_ok=True)
    write_csv(cmc_curve_frame(np.mean(cmcs, axis=0)), paths.cmc(variant), index=False)
    return Evaluation(summary, split, first.dist, first.rank_metrics, first.features, pq)


def evaluate_seed(
    cfg: Config,
    paths: Paths,
    split: EvalSplit,
    *,
    train: pd.DataFrame,
    val: EvalSplit | None,
    variant: str,
    seed: int,
    device: torch.device,
) -> SeedEvaluation:
    """One seed's export: test features (saved), scores, the training-set fit and, where the
    table has validation individuals, their mAP (the number settings are chosen on)."""
    settings = FeatureSettings.of(cfg)
    encoder, spec = load_export(paths.stage2(variant, seed), device)
    encoder = folded(encoder, spec, device)  # once for the test and the training features
    start = time.perf_counter()
    feats = features_for(encoder, spec, split.test, split.root, settings=settings)
    seconds = time.perf_counter() - start
    weights = file_sha256(paths.stage2(variant, seed) / WEIGHTS)
    save_features(paths.features(variant, seed), feats, split.test, weights)
    dist, m = score(cfg.eval, *split.halves(feats), split.query, split.gallery, split.loo)
    # Does training fit the individuals it saw? Leave-one-out mAP over the training images.
    train_feats = features_for(encoder, spec, train, split.root, settings=settings)
    train_map = headline(score(cfg.eval, train_feats, train_feats, train, train, True)[1])["mAP"]
    scores = {
        **headline(m),
        "train_mAP": train_map,
        "inference_images_per_s": len(split.test) / seconds,
    }
    if val is not None:
        val_feats = features_for(encoder, spec, val.test, val.root, settings=settings)
        val_m = score(cfg.eval, *val.halves(val_feats), val.query, val.gallery, val.loo)[1]
        scores["val_mAP"] = headline(val_m)["mAP"]
    frame = per_query_frame(m, split.query).assign(seed=seed)
    return SeedEvaluation(scores, frame, dist, m, feats)


def _summary(
    paths: Paths,
    variant: str,
    split: EvalSplit,
    per_seed: dict[int, dict[str, float]],
    first: dict[str, Any],
    device: torch.device,
) -> dict[str, Any]:
    """The metrics JSON: means over seeds, their std, each seed's scores, sizes and cost."""
    val = ["val_mAP"] if all("val_mAP" in r for r in per_seed.values()) else []
    keys = (*METRIC_KEYS, "train_mAP", *val)
    stats = {k: mean_std([r[k] for r in per_seed.values()]) for k in keys}
    speed = np.median([r["inference_images_per_s"] for r in per_seed.values()])
    return {
        "dataset": paths.dataset,
        "variant": variant,
        "protocol": "leave_one_out" if split.loo else "disjoint",
        **{k: stats[k]["mean"] for k in keys},
        "std": {k: stats[k]["std"] for k in keys},
        "per_seed": {str(s): {k: r[k] for k in keys} for s, r in per_seed.items()},
        "n_seeds": len(per_seed),
        "n_query": len(split.query),
        "n_gallery": len(split.gallery),
        "n_valid_queries": int(first["n_valid_queries"]),
        "n_skipped_queries": int(first["n_skipped_queries"]),
        "inference_images_per_s": round(float(speed), 1),
        "inference_peak_memory_mb": round(peak_memory_mb(device), 1),
        "device": device_name(device),
    }
