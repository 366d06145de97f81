"""The report's tables, built from the files the stages wrote (metrics JSONs, per-query CSVs).

Nothing here loads a model, so every table and its confidence intervals can be recomputed from
`metrics/` and `reports/per_query/` alone. Significance lives in `repro/significance.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from indivaid_core.config import Config, scaled_name
from indivaid_core.evaluate import statistics as stats
from indivaid_core.repro import noise

# What each ablation row changes; a variant missing here is labelled with its own name.
ABLATION_ROWS = {
    "indivaid": "full IndivAID (π on, attention fusion, i2t = 1, n_ctx = 4)",
    "abl_no_meta": "π off (no image-specific shift)",
    "abl_mean": "fusion = mean (released code)",
    "abl_individual_only": "fusion = individual_only (z = h)",
    "abl_ctx2": "n_ctx = 2",
    "image_only": "i2t weight = 0 (≡ image_only: stage 1 unused)",
}


def collect_metrics(metrics_dir: str | Path) -> pd.DataFrame:
    """One row per (dataset, variant) evaluation JSON, with its training-cost JSON."""
    rows = []
    root = Path(metrics_dir)
    for path in sorted((root / "eval").glob("*/*.json")):
        m = json.loads(path.read_text())
        train_path = root / "train" / path.parent.name / path.name
        train = json.loads(train_path.read_text()) if train_path.exists() else {}
        rows.append({**m, "train": train})
    return pd.DataFrame(rows)


def _cell(df: pd.DataFrame, ds: str, variant: str, metric: str) -> str:
    hit = df[(df["dataset"] == ds) & (df["variant"] == variant)] if len(df) else df
    if hit.empty:
        return "not run"
    row = hit.iloc[0]
    value = 100 * row[metric]
    std = 100 * row["std"][metric] if isinstance(row.get("std"), dict) else 0.0
    return f"{value:.1f} ± {std:.1f}" if row.get("n_seeds", 1) > 1 else f"{value:.1f}"


def main_table(
    df: pd.DataFrame,
    datasets: list[str],
    metrics: tuple[str, ...],
    variants: list[str],
) -> pd.DataFrame:
    """Rows = methods, columns = (dataset, metric), in %; absent data says 'not run'."""
    cols = pd.MultiIndex.from_product([datasets, list(metrics)])
    return pd.DataFrame(
        [[_cell(df, ds, v, m) for ds, m in cols] for v in variants], index=variants, columns=cols
    )


def fit_table(df: pd.DataFrame, datasets: list[str], variants: list[str]) -> pd.DataFrame:
    """Training-set, validation and test mAP per method: does fine-tuning fit, and does it
    transfer to individuals it never saw (validation: the ones settings are chosen on)?"""
    has = df[df["train_mAP"].notna()] if "train_mAP" in df else df.iloc[:0]
    val = ("val_mAP",) if "val_mAP" in has and has["val_mAP"].notna().any() else ()
    return main_table(has, datasets, ("train_mAP", *val, "mAP"), variants)


def ablation_table(df: pd.DataFrame, datasets: list[str], ablations: list[str]) -> pd.DataFrame:
    """Which component does what: each row changes one switch of the full method."""
    rows = list(dict.fromkeys(["indivaid", *ablations, "image_only"]))
    t = main_table(df, datasets, ("mAP", "R1"), rows)
    t.insert(0, ("", "change"), [ABLATION_ROWS.get(v, v) for v in t.index])
    return t


def read_per_query(per_query_csv: str | Path) -> pd.DataFrame:
    """One evaluate stage's per-query rows (all seeds), without the skipped queries (no AP)."""
    return pd.read_csv(per_query_csv, dtype={"image_id": str}).dropna(subset=["ap"])


def cost_table(df: pd.DataFrame) -> pd.DataFrame:
    """Parameters, FLOPs, training time, inference speed and memory per variant and dataset."""
    rows = []
    for _, r in df.iterrows():
        t = r["train"] or {}
        rows.append(
            {
                "dataset": r["dataset"],
                "variant": r["variant"],
                "params total (M)": t.get("params_total", np.nan) / 1e6,
                "params trainable (M)": t.get("params_trainable", np.nan) / 1e6,
                "GFLOPs / image (fwd)": t.get("flops_per_image", np.nan) / 1e9,
                "stage-2 wall (s)": t.get("wall_time_s", 0.0) if t.get("trained") else 0.0,
                "stage-1 wall (s)": t.get("stage1_wall_time_s", 0.0),
                "train img/s": t.get("images_per_s", np.nan),
                "infer img/s": r.get("inference_images_per_s", np.nan),
                "train peak MB": t.get("peak_memory_mb", np.nan),
                "device": r.get("device", ""),
            }
        )
    return pd.DataFrame(rows).round(3)


def spread_table(
    metrics: pd.DataFrame, numerical_csv: str | Path, profile: str = "default"
) -> pd.DataFrame:
    """Per trained cell: the seed spread (sd of mAP over seeds) beside the numerical spread
    (the same seed retrained on another kernel path or thread count), in points.

    The numerical columns are read from `numerical_spread.csv` (benchmarks/numerical_spread.py),
    its rows of this `profile`; cells it did not measure stay empty.
    """
    if metrics.empty:  # nothing evaluated yet
        return pd.DataFrame(columns=["dataset", "variant", "seeds", "seed sd"])
    trained = metrics[metrics["variant"] != "zero_shot"]
    out = pd.DataFrame(
        {
            "dataset": trained["dataset"],
            "variant": trained["variant"],
            "seeds": trained["n_seeds"],
            "seed sd": [
                100 * s.get("mAP", 0.0) if isinstance(s, dict) else 0.0 for s in trained["std"]
            ],
        }
    )
    if Path(numerical_csv).exists():
        num = noise.read_numerical_spread(numerical_csv, profile)
        wide = num.pivot_table(  # over the seeds retrained: the shift of their mean
            index=["dataset", "variant"], columns="setting", values="delta", aggfunc="mean"
        )
        wide.columns = [f"Δ {c}" for c in wide.columns]
        if len(wide):
            out = out.merge(wide.reset_index(), on=["dataset", "variant"], how="left")
    return out.sort_values(["dataset", "variant"]).round(2).reset_index(drop=True)


def per_query_cells(
    per_query_dir: str | Path, datasets: list[str], variants: list[str]
) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """(dataset, variant, per-query rows) of every cell that has a per-query CSV."""
    for ds in datasets:
        for v in variants:
            path = Path(per_query_dir) / ds / f"{v}.csv"
            if path.exists():
                yield ds, v, read_per_query(path)


def condition_table(
    per_query_dir: str | Path, datasets: list[str], variants: list[str], columns: list[str]
) -> pd.DataFrame:
    """Mean per-query AP split by a metadata column (day/night, viewpoint, occlusion, camera)."""
    rows = []
    for ds, v, pq in per_query_cells(per_query_dir, datasets, variants):
        for col in (c for c in columns if c in pq):
            for value, part in pq.groupby(col):
                rows.append(
                    {
                        "dataset": ds,
                        "variant": v,
                        "column": col,
                        "value": str(value),
                        "mAP": 100 * part["ap"].mean(),
                        "queries": part["image_id"].nunique(),
                    }
                )
    return pd.DataFrame(rows)


def map_intervals(
    per_query_dir: str | Path,
    datasets: list[str],
    variants: list[str],
    n_resamples: int = 10000,
    seed: int = 0,
) -> pd.DataFrame:
    """mAP (%) of each cell with its 95 % CI over seeds and queries (two-level bootstrap)."""
    rows = [
        {"dataset": ds, "variant": v, **map_interval(pq, n_resamples, seed)}
        for ds, v, pq in per_query_cells(per_query_dir, datasets, variants)
    ]
    return pd.DataFrame(rows)


def map_interval(per_query: pd.DataFrame, n_resamples: int, seed: int) -> dict[str, float]:
    """One cell's mAP (%) and 95 % CI, resampling seeds then the queries every seed has."""
    ap = per_query.pivot(index="seed", columns="image_id", values="ap").dropna(axis=1)
    ci = stats.two_level_bootstrap(ap.to_numpy(), n_resamples, seed)
    return {
        "mAP": 100 * ci["diff"],
        "CI low": 100 * ci["lo"],
        "CI high": 100 * ci["hi"],
        "seeds": ci["n_seeds"],
        "queries": ci["n_queries"],
    }


SCALING_COLUMNS = ["dataset", "variant", "train_individuals", "mAP", "CI low", "CI high", "seeds"]


def scaling_sizes(cfg: Config, metrics: pd.DataFrame) -> list[tuple[int, str]]:
    """(training individuals, dataset) of each point of the scaling study, largest last.

    The largest point is the base dataset's main cells, at the number of individuals its
    training runs counted (metrics/train); without one it is left out, never guessed.
    """
    s = cfg.pipeline.scaling
    if not s.dataset:
        return []
    sizes = [(n, scaled_name(s.dataset, n)) for n in s.train_individuals]
    full = _trained_individuals(metrics, s.dataset)
    return sorted(sizes + ([(full, s.dataset)] if full else []))


def _trained_individuals(metrics: pd.DataFrame, dataset: str) -> int:
    """Training individuals the dataset's trained cells report (0 when none reports it)."""
    if not len(metrics):
        return 0
    train = metrics.loc[metrics["dataset"] == dataset, "train"]
    return max((t.get("n_identities", 0) for t in train if isinstance(t, dict)), default=0)


def scaling_table(
    per_query_dir: str | Path,
    dataset: str,
    sizes: list[tuple[int, str]],
    variants: list[str],
    n_resamples: int = 10000,
    seed: int = 0,
) -> pd.DataFrame:
    """mAP (%) with its two-level CI per variant and training-side size: the scaling curve.

    `sizes` pairs each number of training individuals with the dataset evaluated at it (the
    base `dataset` itself at its own size). The test set is the base's at every size, so the
    untrained zero_shot cell is the base's own, repeated at each size rather than re-run.
    Cells without a per-query file are left out.
    """
    if not sizes:
        return pd.DataFrame(columns=SCALING_COLUMNS)  # a header even with no study
    zero = _cell_interval(per_query_dir, dataset, "zero_shot", n_resamples, seed)
    rows = []
    for v in ["zero_shot", *(v for v in variants if v != "zero_shot")]:
        for n, name in sorted(sizes):
            if v == "zero_shot":
                ci = zero  # one untrained model: the same numbers at every size
            else:
                ci = _cell_interval(per_query_dir, name, v, n_resamples, seed)
            if ci is not None:
                rows.append({"dataset": dataset, "variant": v, "train_individuals": n, **ci})
    return pd.DataFrame(rows, columns=SCALING_COLUMNS)  # a header even with no cell


def _cell_interval(
    per_query_dir: str | Path, dataset: str, variant: str, n_resamples: int, seed: int
) -> dict[str, float] | None:
    path = Path(per_query_dir) / dataset / f"{variant}.csv"
    return map_interval(read_per_query(path), n_resamples, seed) if path.exists() else None


@dataclass(frozen=True)
class Report:
    """The report's tables; each field but `metrics` and `fit` is written as tables/<name>.csv."""

    metrics: pd.DataFrame  # one row per evaluated cell (collect_metrics)
    main: pd.DataFrame
    main_wide: pd.DataFrame
    fit: pd.DataFrame
    ablation: pd.DataFrame
    significance: pd.DataFrame
    intervals: pd.DataFrame
    cost: pd.DataFrame
    conditions: pd.DataFrame
    spread: pd.DataFrame
    scaling: pd.DataFrame  # scaling_table
    scaling_differences: pd.DataFrame  # paired differences per training-side size
