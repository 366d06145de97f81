"""The report stage: every table, the figures and reports/results.md, written whole.

`build_report` only reads what the other stages wrote; `write_report` writes each table as a
CSV under reports/tables/, the figures under reports/figures/report/, then results.md.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from indivaid_core.config import Config
from indivaid_core.data.table import CONDITIONS
from indivaid_core.figures_common import save_figure
from indivaid_core.repro import significance, tables
from indivaid_core.repro.figures import report as figures
from indivaid_core.repro.results_md import write_results_md
from indivaid_core.repro.tables import Report
from indivaid_core.safe_io import write_csv

# A committed input, not an output: benchmarks/numerical_spread.py writes it.
NUMERICAL_SPREAD_CSV = Path("reports/numerical_spread.csv")
WIDE_METRICS = ("mAP", "R1", "R5", "R10", "mINP")
# The scaling study's paired differences: does the text gain grow where individuals are few?
SCALING_COMPARISONS = [
    ("indivaid", "clipreid"),
    ("indivaid", "image_only"),
    ("clipreid", "image_only"),
]
SCALING_DIFFERENCE_COLUMNS = [
    "dataset",
    "comparison",
    "train_individuals",
    "ΔmAP",
    "CI low",
    "CI high",
    "seeds",
    "verdict",
]


# Tables with row labels keep their index in the CSV; the long tables do not.
INDEXED = {"main", "main_wide", "ablation"}
NOT_WRITTEN = {"metrics", "fit"}


def build_report(cfg: Config, numerical_csv: Path = NUMERICAL_SPREAD_CSV) -> Report:
    """Every table of the report from metrics/ and reports/per_query/."""
    metrics = tables.collect_metrics(cfg.data.metrics)
    datasets, variants = list(cfg.pipeline.datasets), list(cfg.pipeline.variants)
    per_query = Path(cfg.data.reports) / "per_query"
    n, seed = cfg.eval.bootstrap, cfg.seed
    base, study = cfg.pipeline.scaling.dataset, list(cfg.pipeline.scaling.variants)
    sizes = tables.scaling_sizes(cfg, metrics)
    return Report(
        metrics=metrics,
        main=tables.main_table(metrics, datasets, ("mAP", "R1"), variants),
        main_wide=tables.main_table(metrics, datasets, WIDE_METRICS, variants),
        fit=tables.fit_table(metrics, datasets, variants),
        ablation=tables.ablation_table(
            metrics, sorted(cfg.pipeline.ablation_datasets) or datasets[:1], cfg.pipeline.ablations
        ),
        significance=significance.significance_table(per_query, datasets, n, seed),
        intervals=tables.map_intervals(per_query, datasets, variants, n, seed),
        cost=tables.cost_table(metrics),
        conditions=tables.condition_table(per_query, datasets, variants, list(CONDITIONS)),
        spread=tables.spread_table(metrics, numerical_csv, cfg.profile),
        scaling=tables.scaling_table(per_query, base, sizes, study, n, seed),
        scaling_differences=scaling_differences(per_query, base, sizes, n, seed),
    )


def scaling_differences(
    per_query_dir: Path,
    dataset: str,
    sizes: list[tuple[int, str]],
    n_resamples: int,
    seed: int,
    comparisons: list[tuple[str, str]] = SCALING_COMPARISONS,
) -> pd.DataFrame:
    """The paired two-level CI of each comparison at each size, from `significance_table`."""
    size_of = {name: n for n, name in sizes}
    sig = significance.significance_table(
        per_query_dir, list(size_of), n_resamples, seed, comparisons=comparisons
    )
    order = {f"{a} − {b}": k for k, (a, b) in enumerate(comparisons)}
    out = sig.assign(
        train_individuals=sig["dataset"].map(size_of),
        dataset=dataset,
        order=sig["comparison"].map(order),
    )
    out = out.sort_values(["order", "train_individuals"], kind="stable")
    return out[SCALING_DIFFERENCE_COLUMNS].reset_index(drop=True)


def write_report(cfg: Config, rep: Report) -> Path:
    """tables/*.csv, figures/report/*.png and results.md; returns the results.md path."""
    reports = Path(cfg.data.reports)
    for f in fields(rep):
        if f.name not in NOT_WRITTEN:
            table = getattr(rep, f.name)
            write_csv(table, reports / "tables" / f"{f.name}.csv", index=f.name in INDEXED)
    fig_dir = reports / "figures" / "report"
    drawn = {"headline.png": (figures.headline_figure(rep.intervals), 110)}
    if len(rep.scaling):
        drawn["scaling.png"] = (figures.scaling_figure(rep.scaling, rep.scaling_differences), 110)
    cond = rep.conditions
    for ds in cfg.pipeline.datasets:
        if len(cond) and (cond["dataset"] == ds).any():
            drawn[f"conditions_{ds}.png"] = (figures.condition_figure(cond, ds), 100)
    for name, (fig, dpi) in drawn.items():
        save_figure(fig, fig_dir / name, dpi=dpi)
        plt.close(fig)
    return write_results_md(cfg, rep)
