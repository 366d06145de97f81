"""reports/results.md: every table of the report in one page, from a built `Report`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from indivaid_core.config import Config
from indivaid_core.evaluate import statistics as stats
from indivaid_core.repro import text_space
from indivaid_core.repro.significance import significance_sentences
from indivaid_core.repro.tables import Report
from indivaid_core.safe_io import write_text

# Quoted from the paper (arXiv 2410.22927), never computed here.
PAPER_QUOTE = {
    "Stoat": {
        "IndivAID mAP": 52.54,
        "IndivAID R1": 71.82,
        "gain over CLIP-ReID (mAP / R1)": "≈ +7 / +8",
    }
}


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


def _spread_md(spread: pd.DataFrame) -> list[str]:
    """The reproducibility section: what a rerun elsewhere may move, per cell."""
    if not len(spread):
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


def _header_md(cfg: Config, rep: Report) -> list[str]:
    seeds = ", ".join(str(s) for s in cfg.pipeline.seeds)
    devices = ", ".join(sorted(set(rep.metrics["device"]))) if len(rep.metrics) else "—"
    return [
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
    ]


def _tables_md(rep: Report) -> list[str]:
    """Main, wide, fit and ablation tables."""
    return [
        "## Main table (mAP / R1, %)",
        "",
        to_markdown(rep.main),
        "",
        "Quoted from the paper (not computed here):",
        "",
        to_markdown(pd.DataFrame(PAPER_QUOTE).T),
        "",
        "### Wide (mAP, R1, R5, R10, mINP, %)",
        "",
        to_markdown(rep.main_wide),
        "",
        "## Does training fit? (mAP %, training images vs held-out test individuals)",
        "",
        "`train_mAP` ranks each training image against the other training images "
        "(leave-one-out) with the exported encoder; `mAP` is the test protocol above.",
        "",
        to_markdown(rep.fit),
        "",
        "## Ablation (mAP / R1, %)",
        "",
        to_markdown(rep.ablation),
        "",
    ]


def _significance_md(cfg: Config, rep: Report) -> list[str]:
    return [
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
        *significance_sentences(rep.significance),
        "",
    ]


def _cost_md(cfg: Config, rep: Report) -> list[str]:
    side_by_side = (
        f" Stage-1 wall is one text run's training; up to {cfg.stage1.processes} runs train "
        "side by side (`stage1.processes`), so it overstates a run alone on the machine."
        if cfg.stage1.processes > 1
        else ""
    )
    return [
        "## Computational cost",
        "",
        to_markdown(rep.cost) if len(rep.cost) else "No runs.",
        "",
        "FLOPs are the forward pass of the image encoder per image (training ≈ 3×)." + side_by_side,
        "",
    ]


def _conditions_md(cfg: Config, cond: pd.DataFrame) -> list[str]:
    if not len(cond):
        return [
            "## Robustness by condition (mean per-query AP, %)",
            "",
            "No condition columns.",
            "",
            "",
        ]
    pivot = cond.pivot_table(
        index=["dataset", "column", "value"], columns="variant", values="mAP"
    ).round(1)
    return [
        "## Robustness by condition (mean per-query AP, %)",
        "",
        to_markdown(pivot.reset_index()),
        "",
        *[
            f"![conditions {ds}](figures/report/conditions_{ds}.png)"
            for ds in cfg.pipeline.datasets
            if (cond["dataset"] == ds).any()
        ],
        "",
    ]


def _figures_md(cfg: Config, reports: Path) -> list[str]:
    """The corruption sweep and the attention figures, which show the first seed only."""
    first_seed_only = (
        f"One trained model per variant: seed {cfg.pipeline.seeds[0]}, the first of "
        "`pipeline.seeds` (the tables above average every seed)."
    )
    return [
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


def _text_space_md(cfg: Config, reports: Path) -> list[str]:
    """The synthetic CLIP's alignment and the scored descriptions (links relative to reports)."""
    metrics = Path(cfg.data.metrics)
    out = [
        "## The text space: the synthetic CLIP, and the descriptions scored against the truth",
        "",
    ]
    pretrain = text_space.pretrain_table(metrics / "pretrain.json")
    if not pretrain.empty:
        out += [
            "The default backbone's two towers were pretrained together on captioned synthetic "
            "animals (`pretrain` stage, `models/synthclip/MODEL_CARD.md`). On held-out "
            "individuals, against the same model with an untrained text tower:",
            "",
            to_markdown(pretrain.reset_index(names="")),
            "",
            "![zero-shot attributes](figures/pretrain/attributes.png)",
            "![text queries](figures/pretrain/text_queries.png)",
            "",
        ]
    else:
        out += ["*No pretraining metrics: run the `pretrain` stage.*", ""]
    table = text_space.description_table(metrics, list(cfg.pipeline.datasets))
    if table.empty:
        return [*out, "*No description scores: the datasets carry no attribute truth.*", ""]
    out += [
        "Stage-1 descriptions scored against the generator's truth (mean over seeds): the "
        "share of attributes whose nearest value phrase is the true one (`g`: the flank its "
        "photo shows; `h`: either flank of the individual), and the mean cosine of `g` within "
        "and between individuals. `untrained-text` is the control: the same stage 1 on an "
        "untrained text tower.",
        "",
        to_markdown(table),
        "",
        *[
            f"![{p.stem}]({p.relative_to(reports).as_posix()})"
            for p in sorted((reports / "figures" / "descriptions").glob("*.png"))
        ],
        "",
    ]
    return out


def write_results_md(cfg: Config, rep: Report) -> Path:
    """reports/results.md: every table of the report, from the files the pipeline wrote."""
    reports = Path(cfg.data.reports)
    lines = [
        *_header_md(cfg, rep),
        *_tables_md(rep),
        *_text_space_md(cfg, reports),
        *_significance_md(cfg, rep),
        *_spread_md(rep.spread),
        *_cost_md(cfg, rep),
        *_conditions_md(cfg, rep.conditions),
        *_figures_md(cfg, reports),
        *_index_md(reports),
    ]
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
    ("notebooks/00_pretrain_clip.ipynb", "the synthetic CLIP: loss, alignment, text queries"),
    ("figures/pretrain/", "the synthetic CLIP: zero-shot attributes, text queries, loss"),
    ("figures/descriptions/", "per dataset: stage-1 descriptions scored against the truth"),
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
