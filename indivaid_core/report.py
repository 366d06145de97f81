"""Results tables from the pipeline's files: main, ablation, significance, cost, conditions.

Everything here reads what the stages wrote (metrics JSONs and per-query CSVs), so the
report can be regenerated, and its confidence intervals recomputed, without any model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from indivaid_core.evaluate import statistics as stats
from indivaid_core.repro import noise
from indivaid_core.safe_io import write_text

MAIN_VARIANTS = ["zero_shot", "image_only", "clipreid", "indivaid"]
ABLATION_ROWS = {
    "indivaid": "full IndivAID (π on, attention fusion, i2t = 1, n_ctx = 4)",
    "abl_no_meta": "π off (no image-specific shift)",
    "abl_mean": "fusion = mean (released code)",
    "abl_individual_only": "fusion = individual_only (z = h)",
    "abl_ctx2": "n_ctx = 2",
    "image_only": "i2t weight = 0 (≡ image_only: stage 1 unused)",
}
# The paper's benchmarks, and the adapter that reads each (README: where to get them).
PAPER_DATASETS = [
    "ATRW",
    "FriesianCattle2017",
    "iPanda50",
    "Lion",
    "MPDD",
    "Nyala",
    "PolarBear",
    "SeaStar",
    "Stoat",
]
# Quoted from the paper (arXiv 2410.22927), never computed here.
PAPER_QUOTE = {
    "Stoat": {
        "IndivAID mAP": 52.54,
        "IndivAID R1": 71.82,
        "gain over CLIP-ReID (mAP / R1)": "≈ +7 / +8",
    }
}
COMPARISONS = [("indivaid", "clipreid"), ("clipreid", "image_only"), ("indivaid", "image_only")]
SIGNIFICANCE_COLUMNS = [
    "dataset",
    "comparison",
    "ΔmAP",
    "CI low",
    "CI high",
    "query-only CI low",
    "query-only CI high",
    "queries",
    "verdict",
    "per-seed ΔmAP",
    "seeds with that sign",
    "seeds",
]


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
    metrics: tuple[str, ...] = ("mAP", "R1"),
    variants: list[str] = MAIN_VARIANTS,
) -> pd.DataFrame:
    """Rows = methods, columns = (dataset, metric), in %; absent data says 'not run'."""
    cols = pd.MultiIndex.from_product([datasets, list(metrics)])
    return pd.DataFrame(
        [[_cell(df, ds, v, m) for ds, m in cols] for v in variants], index=variants, columns=cols
    )


def fit_table(df: pd.DataFrame, datasets: list[str]) -> pd.DataFrame:
    """Training-set against test mAP per method: does fine-tuning fit, and does it transfer?"""
    has = df[df["train_mAP"].notna()] if "train_mAP" in df else df.iloc[:0]
    return main_table(has, datasets, ("train_mAP", "mAP"))


def ablation_table(df: pd.DataFrame, datasets: list[str]) -> pd.DataFrame:
    """Which component does what: each row changes one switch of the full method."""
    t = main_table(df, datasets, ("mAP", "R1"), list(ABLATION_ROWS))
    t.insert(0, ("", "change"), [ABLATION_ROWS[v] for v in t.index])
    return t


def read_per_query(per_query_csv: str | Path) -> pd.DataFrame:
    """One evaluate stage's per-query rows (all seeds), without the skipped queries (no AP)."""
    return pd.read_csv(per_query_csv, dtype={"image_id": str}).dropna(subset=["ap"])


def read_pair(per_query_a: str | Path, per_query_b: str | Path) -> tuple[pd.DataFrame, ...]:
    """Two cells' per-query rows, refused when a seed was evaluated for one of them only."""
    a, b = read_per_query(per_query_a), read_per_query(per_query_b)
    only = set(a["seed"]) ^ set(b["seed"])
    if only:
        raise ValueError(
            f"seeds {sorted(only)} are in only one of {per_query_a} and {per_query_b}: "
            "re-run the evaluate stage"
        )
    return a, b


def per_seed_map_diff(per_query_a: str | Path, per_query_b: str | Path) -> pd.Series:
    """mAP(a) − mAP(b) for each seed, over queries both evaluated: the seed spread the bootstrap
    (on seed-averaged AP) does not see."""
    a, b = read_pair(per_query_a, per_query_b)
    joined = a.merge(b, on=["seed", "image_id"], suffixes=("_a", "_b"))
    if joined.empty:
        raise ValueError(f"no common (seed, query) pairs in {per_query_a} and {per_query_b}")
    return (joined["ap_a"] - joined["ap_b"]).groupby(joined["seed"]).mean()


def significance_table(
    per_query_dir: str | Path,
    datasets: list[str],
    n_resamples: int = 10000,
    seed: int = 0,
    comparisons: list[tuple[str, str]] = COMPARISONS,
) -> pd.DataFrame:
    """CIs (in mAP points) for each comparison and dataset that has data.

    The verdict comes from the two-level bootstrap over seeds and queries
    (evaluate/statistics.py); the query-only interval is shown beside it for reference.
    """
    rows = []
    for ds in datasets:
        for a, b in comparisons:
            pa = Path(per_query_dir) / ds / f"{a}.csv"
            pb = Path(per_query_dir) / ds / f"{b}.csv"
            if not (pa.exists() and pb.exists()):
                continue
            diff, seeds, _ = stats.paired_matrix(*read_pair(pa, pb))
            r = stats.two_level_bootstrap(diff, n_resamples, seed)
            q = stats.query_only_bootstrap(diff, n_resamples, seed)
            # signs at the 0.1 points shown, so rounding noise is a tie, not a flip
            by_seed = pd.Series((100 * diff.mean(axis=1)).round(1), index=seeds)
            agree = int((np.sign(by_seed) == np.sign(round(100 * r["diff"], 1))).sum())
            rows.append(
                {
                    "dataset": ds,
                    "comparison": f"{a} − {b}",
                    "ΔmAP": 100 * r["diff"],
                    "CI low": 100 * r["lo"],
                    "CI high": 100 * r["hi"],
                    "query-only CI low": 100 * q["lo"],
                    "query-only CI high": 100 * q["hi"],
                    "queries": r["n_queries"],
                    "verdict": stats.verdict(r),
                    "per-seed ΔmAP": " / ".join(f"s{k} {d:+.1f}" for k, d in by_seed.items()),
                    "seeds with that sign": agree,
                    "seeds": len(by_seed),
                }
            )
    return pd.DataFrame(rows, columns=SIGNIFICANCE_COLUMNS)  # a header even with no pair


def significance_sentences(sig: pd.DataFrame) -> list[str]:
    """The significance table in words, flattering or not, with each seed's own difference."""
    lines = []
    for _, r in sig.iterrows():
        line = (
            f"- **{r.dataset}**, {r.comparison}: {r['ΔmAP']:+.1f} mAP points "
            f"(95 % CI over seeds and queries {r['CI low']:+.1f} … {r['CI high']:+.1f}; "
            f"over queries only {r['query-only CI low']:+.1f} … {r['query-only CI high']:+.1f}; "
            f"{r.queries} queries, {r.seeds} seed{'s' if r.seeds != 1 else ''}) — {r.verdict}"
        )
        agree, n = r["seeds with that sign"], r["seeds"]
        if n > 1 and round(r["ΔmAP"], 1) != 0:
            line += f"; per seed {r['per-seed ΔmAP']}, " + (
                "the same sign in every seed" if agree == n else f"that sign in {agree} of {n}"
            )
        lines.append(line + ".")
    return lines


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
        wide = num.pivot_table(index=["dataset", "variant"], columns="setting", values="delta")
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
    rows = []
    for ds, v, pq in per_query_cells(per_query_dir, datasets, variants):
        ap = pq.pivot(index="seed", columns="image_id", values="ap").dropna(axis=1)
        ci = stats.two_level_bootstrap(ap.to_numpy(), n_resamples, seed)
        rows.append(
            {
                "dataset": ds,
                "variant": v,
                "mAP": 100 * ci["diff"],
                "CI low": 100 * ci["lo"],
                "CI high": 100 * ci["hi"],
                "seeds": ci["n_seeds"],
                "queries": ci["n_queries"],
            }
        )
    return pd.DataFrame(rows)


def headline_figure(intervals: pd.DataFrame) -> plt.Figure:
    """mAP with 95 % CI per variant and dataset: the one picture of the results."""
    datasets = list(dict.fromkeys(intervals["dataset"]))
    variants = list(dict.fromkeys(intervals["variant"]))
    fig, ax = plt.subplots(figsize=(1.2 + 1.9 * len(datasets), 3.4))
    width = 0.8 / max(1, len(variants))
    for k, v in enumerate(variants):
        rows = intervals[intervals["variant"] == v].set_index("dataset").reindex(datasets)
        x = np.arange(len(datasets)) + (k - (len(variants) - 1) / 2) * width
        err = [rows["mAP"] - rows["CI low"], rows["CI high"] - rows["mAP"]]
        ax.bar(x, rows["mAP"], width, label=v, alpha=0.85)
        ax.errorbar(x, rows["mAP"], yerr=err, fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_xticks(np.arange(len(datasets)), datasets)
    ax.set_ylabel("mAP (%)")
    seeds = "/".join(map(str, sorted(set(intervals["seeds"]))))
    plural = "" if seeds == "1" else "s"
    ax.set_title(
        f"mAP with 95 % CI over seeds and queries ({seeds} seed{plural} per cell)", fontsize=10
    )
    ax.legend(fontsize=8, ncol=len(variants), loc="upper left", bbox_to_anchor=(0, -0.12))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def condition_figure(cond: pd.DataFrame, dataset: str) -> plt.Figure:
    """Grouped bars: per-condition mAP for each variant on one dataset."""
    import seaborn as sns

    part = cond[cond["dataset"] == dataset]
    cols = list(dict.fromkeys(part["column"]))
    fig, axes = plt.subplots(
        1, max(1, len(cols)), figsize=(4 * max(1, len(cols)), 3.2), squeeze=False
    )
    for ax, col in zip(axes[0], cols, strict=False):
        sns.barplot(part[part["column"] == col], x="value", y="mAP", hue="variant", ax=ax)
        ax.set(title=f"{dataset}: by {col}", xlabel="", ylabel="mAP (%)")
        ax.legend(fontsize=7)
    return fig


def to_markdown(df: pd.DataFrame) -> str:
    """Markdown without the tabulate dependency (pandas needs it for to_markdown)."""
    if isinstance(df.columns, pd.MultiIndex):
        headers = [" · ".join(str(x) for x in c if str(x)) for c in df.columns]
    else:
        headers = [str(c) for c in df.columns]
    show_index = not isinstance(df.index, pd.RangeIndex)
    head = ([""] if show_index else []) + headers
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in df.iterrows():
        cells = [
            ("—" if np.isnan(v) else f"{v:.2f}") if isinstance(v, float) else str(v) for v in row
        ]
        lines.append("| " + " | ".join(([str(idx)] if show_index else []) + cells) + " |")
    return "\n".join(lines)


def _robustness_md(reports: Path) -> list[str]:
    out = []
    for csv in sorted((reports / "robustness").glob("*.csv")):
        sweep = pd.read_csv(csv)
        pivot = (
            sweep.pivot_table(index=["corruption", "strength"], columns="variant", values="mAP")
            .mul(100)
            .round(1)
        )
        out += [
            f"### {csv.stem}",
            "",
            to_markdown(pivot.reset_index()),
            "",
            f"![corruption sweep](robustness/{csv.stem}.png)",
            "",
        ]
    return out or ["Not run in this profile."]


def _spread_md(spread: pd.DataFrame | None) -> list[str]:
    """The reproducibility section: what a rerun elsewhere may move, per cell."""
    if spread is None or not len(spread):
        return []
    measured = [c for c in spread if c.startswith("Δ ")]
    lines = [
        "## Reproducibility: seed spread and numerical spread (mAP points)",
        "",
        "A rerun on the same CPU kernel path gives the same bytes. Elsewhere the last bits of the "
        "kernels differ and training grows them: `seed sd` is the spread over this report's "
        "seeds; each `Δ` column is the same seed-0 cell retrained with one setting changed "
        "(`avx2`: kernels capped at AVX2; `stage2_threads2`: stage 2 on 2 threads instead of "
        "1), minus this report's seed-0 value (`benchmarks/numerical_spread.py`, "
        "`reports/numerical_spread.csv`). "
        "`indivaid snapshot --check-rev HEAD --within-noise reports` checks a rerun against "
        "bands built from both.",
        "",
        to_markdown(spread),
        "",
    ]
    if measured:
        d = spread[measured].abs().stack()
        lines += [
            f"Measured on {d.count()} (cell, setting) pairs: median |Δ| {d.median():.1f}, "
            f"max {d.max():.1f} points, against a median seed sd of "
            f"{spread['seed sd'].median():.1f}.",
            "",
        ]
    else:
        lines += ["The numerical spread has not been measured for this report.", ""]
    return lines


def write_results_md(
    cfg,
    metrics: pd.DataFrame,
    main: pd.DataFrame,
    wide: pd.DataFrame,
    abl: pd.DataFrame,
    sig: pd.DataFrame,
    cost: pd.DataFrame,
    cond: pd.DataFrame,
    spread: pd.DataFrame | None = None,
) -> Path:
    """reports/results.md: every table of the report, from the files the pipeline wrote."""
    reports = Path(cfg.data.reports)
    seeds = ", ".join(str(s) for s in cfg.pipeline.seeds)
    devices = ", ".join(sorted(set(metrics["device"]))) if len(metrics) else "—"
    quote = pd.DataFrame(PAPER_QUOTE).T
    first_seed_only = (
        f"One trained model per variant: seed {cfg.pipeline.seeds[0]}, the first of "
        "`pipeline.seeds` (the tables above average every seed)."
    )
    lines = [
        "# IndivAID — results",
        "",
        f"Profile `{cfg.profile}` · backbone `{cfg.model.backbone}` ({cfg.model.pretrained}) · "
        f"input {cfg.model.image_size[0]}×{cfg.model.image_size[1]} · seeds {seeds} · "
        f"measured on {devices}.",
        "Regenerate with `dvc repro`; every number below is read from `metrics/` and "
        "`reports/per_query/`. Cells say *not run* where a dataset is absent — never a number "
        "taken from the paper.",
        "",
        "![mAP with 95 % CI per variant and dataset](figures/report/headline.png)",
        "",
        "## Main table (mAP / R1, %)",
        "",
        to_markdown(main),
        "",
        "Quoted from the paper (not computed here):",
        "",
        to_markdown(quote),
        "",
        "### Wide (mAP, R1, R5, R10, mINP, %)",
        "",
        to_markdown(wide),
        "",
        "## Does training fit? (mAP %, training images vs held-out test individuals)",
        "",
        "`train_mAP` ranks each training image against the other training images "
        "(leave-one-out) with the exported encoder; `mAP` is the test protocol above.",
        "",
        to_markdown(fit_table(metrics, cfg.pipeline.datasets)),
        "",
        "## Ablation (mAP / R1, %)",
        "",
        to_markdown(abl),
        "",
        "## Significance: two-level bootstrap over seeds and queries",
        "",
        f"{cfg.eval.bootstrap} resamples; 95 % percentile CI of the mAP difference in points. "
        "Each resample draws training seeds with replacement, then queries with replacement "
        "(the same queries for both variants), and averages the per-seed differences; "
        "`indivaid_core/evaluate/statistics.py` says why. A comparison is *significant* only "
        f"if that interval excludes 0 and the cell has at least {stats.MIN_SEEDS} seeds; with "
        "fewer it is *not decidable*, because training variance (seeds, and the last bits of "
        "the CPU kernels on another machine) moves a cell by several points. The query-only "
        "interval, blind to training variance, is shown beside it. To recompute: "
        "`reports/per_query/<dataset>/<variant>.csv` holds `ap` per `seed` and `image_id`. "
        f"Seeds per cell: {len(cfg.pipeline.seeds)}.",
        "",
        *significance_sentences(sig),
        "",
        *_spread_md(spread),
        "## Computational cost",
        "",
        to_markdown(cost) if len(cost) else "No runs.",
        "",
        "FLOPs are the forward pass of the image encoder per image (training ≈ 3×)."
        + (
            f" Stage-1 wall is one text run's training; up to {cfg.stage1.processes} runs train "
            "side by side (`stage1.processes`), so it overstates a run alone on the machine."
            if cfg.stage1.processes > 1
            else ""
        ),
        "",
        "## Robustness by condition (mean per-query AP, %)",
        "",
        to_markdown(
            cond.pivot_table(index=["dataset", "column", "value"], columns="variant", values="mAP")
            .round(1)
            .reset_index()
        )
        if len(cond)
        else "No condition columns.",
        "",
        *[
            f"![conditions {ds}](figures/report/conditions_{ds}.png)"
            for ds in cfg.pipeline.datasets
            if len(cond) and (cond["dataset"] == ds).any()
        ],
        "",
        "## Robustness to test-time corruption (mAP, %)",
        "",
        first_seed_only,
        "",
        *_robustness_md(reports),
        "",
        "## Attention and saliency",
        "",
        first_seed_only,
        "",
        *[
            f"![{p.stem}]({p.relative_to(reports).as_posix()})"
            for p in sorted((reports / "figures" / "attention").glob("*/*.png"))
        ],
        "",
    ]
    lines += _index_md(reports)
    path = reports / "results.md"
    write_text(path, "\n".join(lines))
    return path


INDEX = [
    ("notebooks/01_prepare_data.ipynb", "the data table, splits, long tail, example images"),
    ("notebooks/02_stage1_text/", "per dataset: stage-1 loss, similarity of the descriptions"),
    ("notebooks/03_stage2_finetune/", "per cell: stage-2 losses and cost"),
    ("notebooks/04_evaluate/", "per dataset: metrics, retrieval grid, distances, t-SNE"),
    ("notebooks/05_robustness/", "per dataset: the corruption sweep"),
    ("notebooks/06_attention/", "per dataset: fusion attention and Grad-CAM"),
    ("notebooks/07_report.ipynb", "every table of this page"),
    ("figures/report/headline.png", "mAP with 95 % CI per variant and dataset"),
    ("figures/data/", "examples and identity counts per dataset"),
    ("figures/evaluate/", "retrieval grids, distance distributions, embedding maps"),
    ("figures/attention/", "training images ranked by attention; Grad-CAM pairs"),
    ("robustness/", "mAP under blur, noise, low light and fog"),
    ("train_curves/", "loss curves (`dvc plots show`)"),
    ("cmc/", "CMC curves per cell"),
    ("tables/", "every table above as CSV; per_query/ holds the AP of every query"),
]


def _index_md(reports: Path) -> list[str]:
    """An index of the figures and notebooks that exist, one line on what each shows."""
    out = ["## Index of figures and notebooks", ""]
    out += [f"- [`{rel}`]({rel}): {what}" for rel, what in INDEX if (reports / rel).exists()]
    return [*out, ""]
