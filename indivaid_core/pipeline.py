"""One function per pipeline stage, so that the notebooks stay thin.

Paths follow one convention (all relative to the repo, roots from params):
  {work}/tables/{dataset}.csv               prepared table with a `split` column
  {work}/stage1/{dataset}/{text}/           text learner, descriptions, checkpoint
  {work}/stage2/{dataset}/{variant}/        exported encoder, attention, checkpoint
  {work}/features/{dataset}/{variant}.npz   evaluation features with their image ids
  {metrics}/{dataset}/{variant}.json          evaluation metrics (dvc metrics)
  {metrics}/{dataset}/{variant}.train.json    training cost (dvc metrics)
  {reports}/per_query/{dataset}/{variant}.csv per-query AP / rank (bootstrap input)
  {reports}/cmc/{dataset}/{variant}.csv       CMC curve (dvc plots)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.data import DataLoader

from . import config as config_mod
from .config import Config
from .data import load_dataset, prepare_table
from .data.dataset import ImageTableDataset
from .evaluate import (
    cmc_curve_frame,
    extract_features,
    per_query_frame,
    rank_metrics,
    save_features,
    write_metrics_json,
)
from .train.engine import device_name, peak_memory_mb, resolve_device
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

    def stage1(self, text: str) -> Path:
        return self.work / "stage1" / self.dataset / text

    def stage2(self, variant: str) -> Path:
        return self.work / "stage2" / self.dataset / variant

    def features(self, variant: str) -> Path:
        return self.work / "features" / self.dataset / f"{variant}.npz"

    @property
    def reports(self) -> Path:
        return Path(self.cfg.data.reports)

    def metrics(self, variant: str, suffix: str = "") -> Path:
        return Path(self.cfg.data.metrics) / self.dataset / f"{variant}{suffix}.json"

    def per_query(self, variant: str) -> Path:
        return self.reports / "per_query" / self.dataset / f"{variant}.csv"

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
    df = prepare_table(
        df, ds.protocol, ds.test_fraction, ds.query_per_identity, cfg.seed, root
    )
    df["image_root"] = str(Path(root))
    paths.table.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(paths.table, index=False)
    return df


def read_table(cfg: Config, dataset: str) -> pd.DataFrame:
    path = Paths(cfg, dataset).table
    if not path.exists():
        raise FileNotFoundError(f"{path}: run the prepare stage first (dvc repro prepare)")
    return pd.read_csv(path, dtype={"identity": str, "image_id": str})


def train_split(table: pd.DataFrame) -> pd.DataFrame:
    """Training rows, minus identities with a single image (nothing to contrast them with)."""
    train = table[table["split"] == "train"]
    counts = train["identity"].value_counts()
    return train[train["identity"].isin(counts[counts > 1].index)].reset_index(drop=True)


def run_stage1(cfg: Config, dataset: str, text: str, **kw: Any) -> dict[str, Any]:
    from .train.stage1 import train_stage1

    paths = Paths(cfg, dataset)
    out = paths.stage1(text)
    out.mkdir(parents=True, exist_ok=True)
    if text == "none":
        result = {"stage": "stage1", "text": "none", "trained": False}
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
        return result
    run_cfg = config_mod.from_dict(
        config_mod.deep_merge(config_mod.to_dict(cfg), cfg.pipeline.text_runs[text])
    )
    table = read_table(cfg, dataset)
    return train_stage1(
        run_cfg, train_split(table), Path(table["image_root"].iloc[0]),
        cfg.dataset(dataset).species, out, Path(cfg.data.work) / "cache", **kw,
    )


def run_stage2(cfg: Config, dataset: str, variant: str, **kw: Any) -> dict[str, Any]:
    from .train.stage2 import train_stage2

    v = cfg.variants[variant]
    run_cfg = cfg.variant(variant, dataset)
    paths = Paths(cfg, dataset)
    table = read_table(cfg, dataset)
    stage1_dir = paths.stage1(v.text) if v.text != "none" else None
    result = train_stage2(
        run_cfg, train_split(table), Path(table["image_root"].iloc[0]), paths.stage2(variant),
        stage1_dir, train=v.train, **kw,
    )
    result = {"dataset": dataset, "variant": variant, **result}
    write_metrics_json(paths.metrics(variant, ".train"), result)
    return result


def test_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    """(query, gallery, leave_one_out) for the table's protocol."""
    if (table["split"] == "test").any():
        test = table[table["split"] == "test"].reset_index(drop=True)
        return test, test, True
    q = table[table["split"] == "query"].reset_index(drop=True)
    g = table[table["split"] == "gallery"].reset_index(drop=True)
    return q, g, False


def features_for(
    cfg: Config, encoder: torch.nn.Module, spec: dict, rows: pd.DataFrame, root: Path,
    transform=None,
) -> torch.Tensor:
    """Evaluation features of `rows` with the exported model's own preprocessing."""
    tf = transform or eval_transform(spec["image_size"], spec["mean"], spec["std"])
    loader = DataLoader(
        ImageTableDataset(rows, root, tf), batch_size=cfg.eval.batch_size,
        num_workers=cfg.data.num_workers,
    )
    device = resolve_device(cfg.device)
    return extract_features(
        encoder.encode, loader, device=device, amp=cfg.stage2.amp, flip=cfg.model.flip_tta,
        feature=cfg.model.eval_feature,
    )


def evaluate(cfg: Config, dataset: str, variant: str) -> dict[str, Any]:
    """Features -> distances -> metrics JSON, per-query CSV and CMC curve."""
    paths = Paths(cfg, dataset)
    table = read_table(cfg, dataset)
    root = Path(table["image_root"].iloc[0])
    device = resolve_device(cfg.device)
    encoder, spec = load_export(paths.stage2(variant), device)
    query, gallery, loo = test_rows(table)
    start = time.perf_counter()
    test = query if loo else pd.concat([query, gallery], ignore_index=True)
    feats = features_for(cfg, encoder, spec, test, root)
    seconds = time.perf_counter() - start
    save_features(paths.features(variant), feats, test)
    qf, gf = (feats, feats) if loo else (feats[: len(query)], feats[len(query) :])
    dist = torch.cdist(qf, gf)
    cams = cfg.eval.same_camera_filter and "camera" in table
    m = rank_metrics(
        dist, query["identity"].to_numpy(), gallery["identity"].to_numpy(),
        query["camera"].to_numpy() if cams else None,
        gallery["camera"].to_numpy() if cams else None,
        leave_one_out=loo, max_rank=cfg.eval.max_rank,
    )
    cmc = m["cmc"]
    result = {
        "dataset": dataset,
        "variant": variant,
        "protocol": "leave_one_out" if loo else "disjoint",
        "mAP": float(m["mAP"]),
        "R1": float(cmc[0]),
        "R5": float(cmc[min(4, len(cmc) - 1)]),
        "R10": float(cmc[min(9, len(cmc) - 1)]),
        "mINP": float(m["mINP"]),
        "n_query": len(query),
        "n_gallery": len(gallery),
        "n_valid_queries": int(m["n_valid_queries"]),
        "n_skipped_queries": int(m.get("n_skipped_queries", len(query) - m["n_valid_queries"])),
        "inference_images_per_s": round(len(test) / max(seconds, 1e-9), 2),
        "inference_peak_memory_mb": round(peak_memory_mb(device), 1),
        "device": device_name(device),
    }
    write_metrics_json(paths.metrics(variant), result)
    pq = per_query_frame(m, query)
    paths.per_query(variant).parent.mkdir(parents=True, exist_ok=True)
    pq.to_csv(paths.per_query(variant), index=False)
    paths.cmc(variant).parent.mkdir(parents=True, exist_ok=True)
    cmc_curve_frame(cmc).to_csv(paths.cmc(variant), index=False)
    return {**result, "dist": dist, "query": query, "gallery": gallery, "loo": loo, "rows": test,
            "image_root": root,
            "metrics": m, "per_query": pq, "features": feats}
