"""One function per pipeline stage, so that the notebooks stay thin.

Paths follow one convention (all relative to the repo, roots from params):
  {work}/tables/{dataset}.csv               prepared table with a `split` column
  {work}/stage1/{dataset}/{text}/seed{s}/   text learner, descriptions, checkpoint per seed
  {work}/stage2/{dataset}/{variant}/        exported encoder, attention, checkpoint
  {work}/stage2/{dataset}/{variant}/seed{s}/ one exported encoder per seed
  {work}/features/{dataset}/{variant}/seed{s}.npz  evaluation features with their image ids
  {metrics}/eval/{dataset}/{variant}.json     evaluation metrics (dvc metrics)
  {metrics}/train/{dataset}/{variant}.json    training cost (dvc metrics)
  {reports}/per_query/{dataset}/{variant}.csv per-query AP / rank (bootstrap input)
  {reports}/cmc/{dataset}/{variant}.csv       CMC curve (dvc plots)
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import config as config_mod
from .config import Config
from .data import camera_ids, camera_map_of, load_dataset, prepare_table, train_rows
from .data.dataset import ImageTableDataset
from .evaluate import (
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
from .safe_io import atomic_path, write_csv, write_json
from .train.engine import device_name, dist_info, peak_memory_mb, resolve_device
from .train.export import load_export
from .transforms import eval_transform


@dataclass(frozen=True)
class Paths:
    """Where each stage reads and writes, derived from params (never hard-coded)."""

    cfg: Config
    dataset: str

    @property
    def work(self) -> Path:
        return Path(self.cfg.data.work)

    @property
    def table(self) -> Path:
        return self.work / "tables" / f"{self.dataset}.csv"

    @property
    def image_root(self) -> Path:
        return (Path(self.cfg.data.root) / self.cfg.dataset(self.dataset).path).parent

    def stage1(self, text: str, seed: int | None = None) -> Path:
        out = self.work / "stage1" / self.dataset / text
        return out if seed is None else out / f"seed{seed}"

    def stage2(self, variant: str, seed: int | None = None) -> Path:
        out = self.work / "stage2" / self.dataset / variant
        return out if seed is None else out / f"seed{seed}"

    def features(self, variant: str, seed: int) -> Path:
        return self.work / "features" / self.dataset / variant / f"seed{seed}.npz"

    @property
    def reports(self) -> Path:
        return Path(self.cfg.data.reports)

    def metrics(self, variant: str, kind: str = "eval") -> Path:
        """`metrics/eval/<dataset>/<variant>.json` or `metrics/train/...` (dvc metrics)."""
        return Path(self.cfg.data.metrics) / kind / self.dataset / f"{variant}.json"

    def per_query(self, variant: str) -> Path:
        return self.reports / "per_query" / self.dataset / f"{variant}.csv"

    def curves(self, name: str) -> Path:
        return self.reports / "train_curves" / self.dataset / name

    def cmc(self, variant: str) -> Path:
        return self.reports / "cmc" / self.dataset / f"{variant}.csv"


# What a notebook runs on when executed as-is (pytest --nbval-lax): the smoke profile,
# writing under work/nbval so that it never touches the pipeline's own outputs.
TINY_OVERRIDES = {
    "profile": "smoke",
    "data.work": "work/nbval",
    "data.metrics": "work/nbval/metrics",
    "data.reports": "work/nbval/reports",
}


def load_config(params_file: str = "params.yaml", tiny: bool = False) -> Config:
    """Settings for a notebook: params.yaml as is, or its tiny smoke variant."""
    return config_mod.load(params_file, TINY_OVERRIDES if tiny else None)


def prepare(cfg: Config, dataset: str) -> pd.DataFrame:
    """Read a dataset through its adapter, validate it, split it, write the table."""
    ds = cfg.dataset(dataset)
    paths = Paths(cfg, dataset)
    df, root = load_dataset(ds.adapter, ds.path, Path(cfg.data.root))
    if cfg.data.max_identities:
        keep = sorted(df["identity"].astype(str).unique())[: cfg.data.max_identities]
        df = df[df["identity"].astype(str).isin(keep)].reset_index(drop=True)
    df = prepare_table(df, ds.protocol, ds.test_fraction, ds.query_per_identity, cfg.seed, root)
    df["image_root"] = str(Path(root))
    write_csv(df, paths.table, index=False)
    return df


def read_table(cfg: Config, dataset: str) -> pd.DataFrame:
    path = Paths(cfg, dataset).table
    if not path.exists():
        raise FileNotFoundError(f"{path}: run the prepare stage first (dvc repro prepare)")
    return pd.read_csv(path, dtype={"identity": str, "image_id": str})


def train_split(table: pd.DataFrame) -> pd.DataFrame:
    """Training rows, minus identities with a single image (warned about): nothing to contrast."""
    return train_rows(table)


def run_stage1(cfg: Config, dataset: str, text: str, **kw: Any) -> dict[str, Any]:
    """One stage-1 text run, once per seed in `pipeline.seeds` (see `run_text_runs`)."""
    return run_text_runs(cfg, dataset, [text], **kw)[text]


def run_text_runs(
    cfg: Config, dataset: str, texts: list[str] | None = None, **kw: Any
) -> dict[str, dict[str, Any]]:
    """Train stage-1 text runs (default: all of `pipeline.text_runs`) once per seed.

    Stage-2 seed s reads stage-1 seed s, so the seeds sample both stages: a 4e-6 change in the
    stage-1 features once moved a stage-2 mAP by 4 points, more than the stage-2 seeds' spread.
    """
    paths = Paths(cfg, dataset)
    texts = list(cfg.pipeline.text_runs) if texts is None else texts
    results: dict[str, dict[str, Any]] = {}
    jobs: dict[tuple[str, int], Config] = {}
    for text in texts:
        if text == "none":
            out = paths.stage1(text)
            out.mkdir(parents=True, exist_ok=True)
            results[text] = {"stage": "stage1", "text": "none", "trained": False}
            write_json(out / "metrics.json", results[text], indent=2)
            publish_curves(out, paths.curves("stage1") / text)  # an empty plot folder
            continue
        run_cfg = cfg.for_run(dataset, text)
        for seed in cfg.pipeline.seeds:
            jobs[text, seed] = dataclasses.replace(run_cfg, seed=seed)
    if not jobs:
        return results
    table = read_table(cfg, dataset)
    train, root = train_split(table), Path(table["image_root"].iloc[0])  # the same for every run
    args = (train, root, cfg.dataset(dataset).species)
    done = _train_stage1_runs(cfg, jobs, args, paths, Path(cfg.data.work) / "cache", kw)
    for text in dict.fromkeys(t for t, _ in jobs):
        per_seed = {seed: done[text, seed] for seed in cfg.pipeline.seeds}
        if dist_info().is_main:
            publish_curves(paths.stage1(text, cfg.pipeline.seeds[0]), paths.curves("stage1") / text)
        first = per_seed[cfg.pipeline.seeds[0]]
        results[text] = {**first, "seeds": list(per_seed), "wall_time_s": stage1_wall_s(per_seed)}
    return {t: results[t] for t in texts}


def _train_stage1_runs(
    cfg: Config,
    jobs: dict[tuple[str, int], Config],
    args: tuple[pd.DataFrame, Path, str],
    paths: Paths,
    cache: Path,
    kw: dict[str, Any],
) -> dict[tuple[str, int], dict[str, Any]]:
    """Each (text, seed) run, one after another or, on CPU, `stage1.processes` side by side.

    Stage 1 runs on `stage1.num_threads` (1) threads, which leaves the other cores idle; on one
    thread a run's bytes do not depend on the process it ran in (tests check this), so running
    them side by side changes nothing but the wall time.
    """
    from .train.stage1 import train_stage1, warm_feature_cache

    n = min(cfg.stage1.processes, len(jobs))
    serial = n <= 1 or resolve_device(cfg.device).type != "cpu" or dist_info().world_size > 1
    if serial:
        return {
            (text, seed): train_stage1(c, *args, paths.stage1(text, seed), cache, **kw)
            for (text, seed), c in jobs.items()
        }
    for c in jobs.values():  # computes each distinct feature file once, skips the rest
        warm_feature_cache(c, args[0], args[1], cache)
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch state
    with ProcessPoolExecutor(n, mp_context=ctx) as pool:
        futures = {
            pool.submit(train_stage1, c, *args, paths.stage1(*key), cache, **kw): key
            for key, c in jobs.items()
        }
        done = {}
        for f in tqdm(as_completed(futures), total=len(futures), desc="stage1 runs", unit="run"):
            done[futures[f]] = f.result()  # re-raises a run's error; finished runs are on disk
    return {key: done[key] for key in jobs}


def stage1_wall_s(per_seed: dict[int, dict[str, Any]]) -> float:
    """Mean stage-1 training time over seeds (what one stage-2 seed's text run cost)."""
    return mean_std([r.get("wall_time_s", 0.0) for r in per_seed.values()])["mean"]


def publish_curves(src: Path, dst: Path) -> None:
    """Copy a run's per-epoch loss TSVs out of the (DVC-cached) work dir for `dvc plots`."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in (src / "plots").glob("*.tsv"):
        with atomic_path(dst / f.name) as tmp:
            shutil.copyfile(f, tmp)


def mean_std(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


def run_stage2(cfg: Config, dataset: str, variant: str, **kw: Any) -> dict[str, Any]:
    """Train one variant once per seed in `pipeline.seeds`, seed s on stage-1 seed s."""
    from .train.stage2 import train_stage2

    v = cfg.variants[variant]
    paths = Paths(cfg, dataset)
    table = read_table(cfg, dataset)
    use_text = v.text != "none"
    variant_cfg = cfg.variant(variant, dataset)
    camera_map = None
    if variant_cfg.model.sie_coef > 0:
        if "camera" not in table:
            raise ValueError(f"{paths.table}: model.sie_coef > 0 needs a 'camera' column")
        camera_map = camera_map_of(table["camera"])  # all splits: test cameras need an id too
    train, root = train_split(table), Path(table["image_root"].iloc[0])  # the same for every seed
    per_seed = {}
    for seed in cfg.pipeline.seeds:
        run_cfg = dataclasses.replace(variant_cfg, seed=seed)
        per_seed[seed] = train_stage2(
            run_cfg,
            train,
            root,
            paths.stage2(variant, seed),
            paths.stage1(v.text, seed) if use_text else None,
            train=v.train,
            camera_map=camera_map,
            **kw,
        )
    first = per_seed[cfg.pipeline.seeds[0]]
    if not dist_info().is_main:  # DDP: only rank 0 writes
        return {"dataset": dataset, "variant": variant, "per_seed": per_seed}
    publish_curves(paths.stage2(variant, cfg.pipeline.seeds[0]), paths.curves(variant))
    result = {"dataset": dataset, "variant": variant, "seeds": list(per_seed), **first}
    if use_text:
        s1 = {
            s: json.loads((paths.stage1(v.text, s) / "metrics.json").read_text()) for s in per_seed
        }
        result["stage1_wall_time_s"] = stage1_wall_s(s1)
    if v.train:
        result["wall_time_s"] = mean_std([r["wall_time_s"] for r in per_seed.values()])["mean"]
        result["final_loss"] = mean_std([r["final_loss"] for r in per_seed.values()])
    write_metrics_json(paths.metrics(variant, "train"), result)
    return result


def variants_of(cfg: Config, dataset: str) -> list[str]:
    return cfg.variants_of(dataset)


def eval_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """(query, gallery, leave_one_out) for the table's protocol."""
    if (table["split"] == "test").any():
        test = table[table["split"] == "test"].reset_index(drop=True)
        return test, test, True
    q = table[table["split"] == "query"].reset_index(drop=True)
    g = table[table["split"] == "gallery"].reset_index(drop=True)
    return q, g, False


def features_for(
    cfg: Config,
    encoder: torch.nn.Module,
    spec: dict,
    rows: pd.DataFrame,
    root: Path,
    transform=None,
) -> torch.Tensor:
    """Evaluation features of `rows` with the exported model's own preprocessing."""
    tf = transform or eval_transform(
        spec["image_size"], spec["mean"], spec["std"], spec.get("resize_backend", "tensor")
    )
    camera_map = spec.get("camera_map")
    loader = DataLoader(
        ImageTableDataset(rows, root, tf, camera_map=camera_map),
        batch_size=cfg.eval.batch_size,
        num_workers=cfg.data.num_workers,
    )
    device = resolve_device(cfg.device)
    if cfg.model.channels_last:  # here, not under extract_features' inference mode
        encoder.to(memory_format=torch.channels_last)
    return extract_features(
        encoder.encode,
        loader,
        device=device,
        amp=cfg.stage2.amp,
        flip=cfg.model.flip_tta,
        feature=cfg.model.eval_feature,
        cameras=bool(camera_map),
        channels_last=cfg.model.channels_last,
    )


def score(
    cfg: Config,
    qf: torch.Tensor,
    gf: torch.Tensor,
    query: pd.DataFrame,
    gallery: pd.DataFrame,
    loo: bool,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Euclidean distances (optionally k-reciprocal re-ranked) and the rank metrics."""
    dist = torch.cdist(qf, gf)
    e = cfg.eval
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


METRIC_KEYS = ("mAP", "R1", "R5", "R10", "mINP")


def headline(m: dict[str, Any]) -> dict[str, float]:
    """The table metrics of a `rank_metrics` result (via `evaluate.summarise`)."""
    s = summarise(m)
    return {k: float(s[k]) for k in METRIC_KEYS}


def evaluate(cfg: Config, dataset: str, variant: str) -> dict[str, Any]:
    """Per seed: features -> distances -> metrics; writes mean/std JSON, per-query CSV, CMC."""
    paths = Paths(cfg, dataset)
    table = read_table(cfg, dataset)
    root = Path(table["image_root"].iloc[0])
    device = resolve_device(cfg.device)
    query, gallery, loo = eval_rows(table)
    test = query if loo else pd.concat([query, gallery], ignore_index=True)
    train = train_split(table).reset_index(drop=True)
    per_seed, frames, cmcs, first = {}, [], [], None
    for seed in cfg.pipeline.seeds:
        encoder, spec = load_export(paths.stage2(variant, seed), device)
        start = time.perf_counter()
        feats = features_for(cfg, encoder, spec, test, root)
        seconds = time.perf_counter() - start
        save_features(paths.features(variant, seed), feats, test)
        qf, gf = (feats, feats) if loo else (feats[: len(query)], feats[len(query) :])
        dist, m = score(cfg, qf, gf, query, gallery, loo)
        # Does training fit the individuals it saw? Leave-one-out mAP over the training images.
        train_feats = features_for(cfg, encoder, spec, train, root)
        train_map = headline(score(cfg, train_feats, train_feats, train, train, True)[1])["mAP"]
        per_seed[seed] = {
            **headline(m),
            "train_mAP": train_map,
            "inference_images_per_s": len(test) / seconds,
        }
        frames.append(per_query_frame(m, query).assign(seed=seed))
        cmcs.append(np.asarray(m["cmc"], dtype=float))
        if first is None:
            first = {"dist": dist, "metrics": m, "features": feats}
    keys = (*METRIC_KEYS, "train_mAP")
    stats = {k: mean_std([r[k] for r in per_seed.values()]) for k in keys}
    result = {
        "dataset": dataset,
        "variant": variant,
        "protocol": "leave_one_out" if loo else "disjoint",
        **{k: stats[k]["mean"] for k in keys},
        "std": {k: stats[k]["std"] for k in keys},
        "per_seed": {str(s): {k: r[k] for k in keys} for s, r in per_seed.items()},
        "n_seeds": len(per_seed),
        "n_query": len(query),
        "n_gallery": len(gallery),
        "n_valid_queries": int(first["metrics"]["n_valid_queries"]),
        "n_skipped_queries": int(first["metrics"]["n_skipped_queries"]),
        "inference_images_per_s": round(
            float(np.median([r["inference_images_per_s"] for r in per_seed.values()])), 1
        ),
        "inference_peak_memory_mb": round(peak_memory_mb(device), 1),
        "device": device_name(device),
    }
    write_metrics_json(paths.metrics(variant), result)
    pq = pd.concat(frames, ignore_index=True)
    paths.per_query(variant).parent.mkdir(parents=True, exist_ok=True)
    write_csv(pq, paths.per_query(variant), index=False)
    paths.cmc(variant).parent.mkdir(parents=True, exist_ok=True)
    write_csv(cmc_curve_frame(np.mean(cmcs, axis=0)), paths.cmc(variant), index=False)
    return {
        **result,
        **first,
        "query": query,
        "gallery": gallery,
        "loo": loo,
        "rows": test,
        "image_root": root,
        "per_query": pq,
    }


def robustness_sweep(cfg: Config, dataset: str, variants: list[str]) -> pd.DataFrame:
    """mAP/R1 with corrupted queries against the clean gallery, per corruption and strength."""
    from .robustness import corrupted_transform, sweep_frame

    paths = Paths(cfg, dataset)
    table = read_table(cfg, dataset)
    root = Path(table["image_root"].iloc[0])
    device = resolve_device(cfg.device)
    query, gallery, loo = eval_rows(table)
    seed = cfg.pipeline.seeds[0]
    rows = []
    for variant in variants:
        encoder, spec = load_export(paths.stage2(variant, seed), device)
        gf = features_for(cfg, encoder, spec, gallery, root)
        # Every corruption is the identity at strength 0 (tests check it), so the clean query
        # features serve all of them; leave-one-out queries are the gallery itself.
        clean = gf if loo else None
        for name in cfg.eval.corruptions:
            for level in cfg.eval.corruption_levels:
                if level == 0:
                    if clean is None:
                        clean = features_for(cfg, encoder, spec, query, root)
                    qf = clean
                else:
                    tf = corrupted_transform(
                        name, level, spec["image_size"], spec["mean"], spec["std"], cfg.seed
                    )
                    qf = features_for(cfg, encoder, spec, query, root, transform=tf)
                _, m = score(cfg, qf, gf, query, gallery, loo)
                rows.append(
                    {"variant": variant, "corruption": name, "strength": level, **headline(m)}
                )
    return sweep_frame(rows)


def saliency_pairs(cfg: Config, dataset: str, variant: str, n_queries: int = 4) -> list[tuple]:
    """Grad-CAM of the first queries and their top gallery match (seed 0 model)."""
    from PIL import Image

    from .data.images import load_rgb
    from .saliency import gradcam

    paths = Paths(cfg, dataset)
    table = read_table(cfg, dataset)
    root = Path(table["image_root"].iloc[0])
    seed = cfg.pipeline.seeds[0]
    encoder, spec = load_export(paths.stage2(variant, seed), "cpu")
    query, gallery, loo = eval_rows(table)
    test = query if loo else pd.concat([query, gallery], ignore_index=True)
    feats = features_for(dataclasses.replace(cfg, device="cpu"), encoder, spec, test, root)
    qf, gf = (feats, feats) if loo else (feats[: len(query)], feats[len(query) :])
    dist = torch.cdist(qf[:n_queries], gf)
    if loo:
        dist[torch.arange(len(dist)), torch.arange(len(dist))] = float("inf")
    tf = eval_transform(
        spec["image_size"], spec["mean"], spec["std"], spec.get("resize_backend", "tensor")
    )
    size = tuple(reversed(spec["image_size"]))
    cam_of = spec.get("camera_map")
    q_cams, g_cams = (
        (camera_ids(query["camera"], cam_of), camera_ids(gallery["camera"], cam_of))
        if cam_of
        else ([None] * len(query), [None] * len(gallery))
    )
    out = []
    for i, j in enumerate(dist.argmin(1).tolist()):
        q_img, g_img = load_rgb(root / query["path"][i]), load_rgb(root / gallery["path"][j])
        q_cam = gradcam(encoder, tf(q_img), gf[j], spec["eval_feature"], q_cams[i])
        g_cam = gradcam(encoder, tf(g_img), qf[i], spec["eval_feature"], g_cams[j])
        same = query["identity"][i] == gallery["identity"][j]
        out.append(
            (
                np.asarray(q_img.resize(size, Image.BILINEAR)),
                q_cam.numpy(),
                np.asarray(g_img.resize(size, Image.BILINEAR)),
                g_cam.numpy(),
                f"{'✓' if same else '✗'} {gallery['identity'][j]}",
            )
        )
    return out
