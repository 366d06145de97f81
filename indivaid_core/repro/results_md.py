"""reports/results.md: every table of the report in one page, from a built `Report`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from indivaid_core.config import Config
from indivaid_core.evaluate import statistics as stats
from indivaid_core.repro import text_space
from indivaid_core.repro.significance import significance_sentences
from indivaid_core.repro.tables import Report, scaling_sizes
from indivaid_core.safe_io import write_text
from indivaid_core.train.sampler import steps_per_epoch

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


def _robustness_md(cfg: Config, reports: Path) -> list[str]:
    """The sweeps of the datasets this profile runs it on (DVC leaves a dropped one's files)."""
    out = []
    for ds in cfg.pipeline.datasets_for("robustness_datasets"):
        csv = reports / "robustness" / f"{ds}.csv"
        if not csv.exists():
            continue
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
        "seeds; each `Δ` column is a seed's cell retrained with one setting changed "
        "(`avx2`: kernels capped at AVX2; `stage2_threads2`: stage 2 on 2 threads instead of "
        "1) minus this report's value for that seed, averaged over the seeds retrained (seed "
        "0; where all the report's seeds were, it is the shift of the cell's mean) "
        "(`benchmarks/numerical_spread.py`, `reports/numerical_spread.csv`). "
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
    ]


def _scaling_md(cfg: Config, rep: Report) -> list[str]:
    """The data-scaling study first: the question the report is built to answer."""
    scaling = rep.scaling
    if not len(scaling):
        return [
            "## Data scaling: mAP against the number of training individuals",
            "",
            "No scaling study in this report: `pipeline.scaling.dataset` is empty, or none of "
            "its cells has a per-query file yet.",
            "",
        ]
    dataset = scaling["dataset"].iloc[0]
    base = sorted(set(scaling["train_individuals"]) - set(cfg.pipeline.scaling.train_individuals))
    largest = f" The n = {base[0]} column is {dataset}'s main cells." if base else ""
    zero = (
        " zero_shot trains on nothing: its one cell is repeated at every n."
        if (scaling["variant"] == "zero_shot").any()
        else ""
    )
    return [
        f"## Data scaling: mAP against the number of training individuals ({dataset})",
        "",
        "![mAP against training individuals, and the paired differences]"
        "(figures/report/scaling.png)",
        "",
        f"mAP (%) [95 % CI over seeds and queries] when the variants train on the first n of "
        f"{dataset}'s training individuals (nested subsets), tested on the same individuals at "
        f"every n.{largest}{zero} `tables/scaling.csv` and `tables/scaling_differences.csv` "
        "hold the numbers.",
        "",
        to_markdown(scaling_wide(scaling)),
        "",
        *scaling_sentences(scaling, rep.scaling_differences),
        *_steps_sentence(cfg, rep),
        "",
    ]


def _steps_sentence(cfg: Config, rep: Report) -> list[str]:
    """Training steps an epoch at each size, when they differ: a point of the curve measures
    its number of individuals and its number of steps together, and a reader should know."""
    sizes = scaling_sizes(cfg, rep.metrics)  # the report's own points, largest last
    steps = {n: _side_steps(cfg, rep.metrics, name) for n, name in sizes}
    steps = {n: k for n, k in steps.items() if k is not None}
    if len({k for ks in steps.values() for k in ks}) < 2:
        return []
    listing = ", ".join(f"{'/'.join(map(str, sorted(k)))} at n = {n}" for n, k in steps.items())
    return [
        f"Training steps an epoch differ by size ({listing}: a pass over the side's images, at "
        "least `stage2.min_iters_per_epoch`, which a side may set in "
        "`pipeline.scaling.overrides`), so each point measures its number of individuals and "
        "its number of steps together. Whether a side had enough steps is a question for its "
        "validation individuals (`benchmarks/validation_sweep.py`; `docs/results.md`)."
    ]


def _side_steps(cfg: Config, metrics: pd.DataFrame, dataset: str) -> set[int] | None:
    """The steps an epoch of the dataset's trained cells, from what stage 2 recorded and the
    stage-2 epoch settings with the dataset's (and a side's own) overrides; None when none
    recorded it, or when the clipreid sampler sets its own length."""
    epoch = ("sampler", "iters_per_epoch", "min_iters_per_epoch")  # only what it reads
    s2 = {k: getattr(cfg.stage2, k) for k in epoch}
    s2 |= {k: v for k, v in cfg.overrides_of(dataset).get("stage2", {}).items() if k in epoch}
    if s2["sampler"] != "pk":
        return None
    rows = metrics[metrics["dataset"] == dataset] if len(metrics) else metrics
    found = {
        steps_per_epoch(
            t["n_images"], t["global_batch"], s2["iters_per_epoch"], s2["min_iters_per_epoch"]
        )
        for t in rows.get("train", [])
        if isinstance(t, dict) and t.get("trained")
    }
    return found or None


def scaling_wide(scaling: pd.DataFrame) -> pd.DataFrame:
    """The scaling table as variant × size, each cell 'mAP [CI low, CI high]'."""
    cell = [
        f"{r['mAP']:.1f} [{r['CI low']:.1f}, {r['CI high']:.1f}]" for _, r in scaling.iterrows()
    ]
    wide = scaling.assign(cell=cell).pivot(
        index="variant", columns="train_individuals", values="cell"
    )
    wide = wide.reindex(list(dict.fromkeys(scaling["variant"])))
    wide.columns = [f"n = {n}" for n in wide.columns]
    return wide.fillna("not run")


def scaling_sentences(scaling: pd.DataFrame, differences: pd.DataFrame) -> list[str]:
    """What the scaling numbers show, read off the tables: who leads at the fewest and at the
    most training individuals, and how each paired difference and its interval move."""
    lines = [_leaders_sentence(scaling)]
    for comparison, rows in differences.groupby("comparison", sort=False):
        lines.append(_difference_sentence(comparison, rows.sort_values("train_individuals")))
    return lines


def _interval(r: pd.Series, value: str, signed: bool = False) -> str:
    f = "+.1f" if signed else ".1f"
    return f"{r[value]:{f}} [{r['CI low']:{f}}, {r['CI high']:{f}}]"


def _leaders_sentence(scaling: pd.DataFrame) -> str:
    """Who leads at the ends of the curve: only sizes with a trained cell count as its ends
    (zero_shot is listed at every size, and would lead alone where nothing else ran)."""
    trained = scaling.loc[scaling["variant"] != "zero_shot", "train_individuals"]
    sizes = sorted(set(trained))
    if not sizes:
        return "No trained variant has been evaluated at any size yet."
    if len(sizes) == 1:
        return (
            f"Only n = {sizes[0]} has a trained cell so far, so there is no curve yet; there the "
            f"highest mAP is {_leader(scaling, sizes[0])}."
        )
    return (
        f"With the fewest training individuals (n = {sizes[0]}) the highest mAP is "
        f"{_leader(scaling, sizes[0])}; with the most (n = {sizes[-1]}) it is "
        f"{_leader(scaling, sizes[-1])}."
    )


def _leader(scaling: pd.DataFrame, n: int) -> str:
    """The variant with the highest mAP at size n, and those whose interval reaches its own."""
    at = scaling[scaling["train_individuals"] == n].sort_values("mAP", ascending=False)
    top, rest = at.iloc[0], at.iloc[1:]
    close = rest.loc[rest["CI high"] >= top["CI low"], "variant"].tolist()
    overlap = f" (its interval overlaps {_and(close)}'s)" if close else ""
    return f"{top['variant']}'s, {_interval(top, 'mAP')}{overlap}"


def _and(items: list) -> str:
    items = [str(x) for x in items]
    return " and ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)


def _difference_sentence(comparison: str, rows: pd.DataFrame) -> str:
    """One comparison across sizes: its ends, whether it is larger where individuals are few,
    and at which sizes its interval excludes 0 (with the seeds to decide it or not)."""
    first, last = rows.iloc[0], rows.iloc[-1]
    if len(rows) == 1:
        line = (
            f"{comparison}: {_interval(first, 'ΔmAP', True)} points at "
            f"n = {first['train_individuals']}, the only size with both cells"
        )
    else:
        a, b = round(first["ΔmAP"], 1), round(last["ΔmAP"], 1)
        shape = "larger" if a > b else "smaller" if a < b else "the same at 0.1-point resolution"
        overlap = first["CI high"] >= last["CI low"] and last["CI high"] >= first["CI low"]
        line = (
            f"{comparison}: {_interval(first, 'ΔmAP', True)} points at "
            f"n = {first['train_individuals']} and {_interval(last, 'ΔmAP', True)} at "
            f"n = {last['train_individuals']}, {shape} with the fewest individuals (the "
            f"intervals at the two ends {'overlap' if overlap else 'do not overlap'})"
        )
    excludes = rows[(rows["CI low"] > 0) | (rows["CI high"] < 0)]["train_individuals"].tolist()
    where = f"n = {_and(excludes)}" if excludes else "no size"
    where = "every size" if len(excludes) == len(rows) > 1 else where
    line += f"; its interval excludes 0 at {where}"
    seeds = int(rows["seeds"].min())
    if excludes and seeds < stats.MIN_SEEDS:
        line += (
            f", but with {seeds} seed{'s' if seeds != 1 else ''} per cell (fewer than "
            f"{stats.MIN_SEEDS}) that is not decidable"
        )
    return line + "."


def _tables_md(rep: Report) -> list[str]:
    """Main, wide, fit and ablation tables."""
    return [
        "## Main table (mAP / R1, %)",
        "",
        "![mAP with 95 % CI per variant and dataset](figures/report/headline.png)",
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
        "## Does training fit? (mAP %, training images, validation and test individuals)",
        "",
        "`train_mAP` ranks each training image against the other training images "
        "(leave-one-out) with the exported encoder; `val_mAP` is the test protocol on the "
        "validation individuals (where settings are chosen); `mAP` is the test protocol above.",
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
        *_robustness_md(cfg, reports),
        "",
        "## Attention and saliency",
        "",
        first_seed_only,
        "",
        *[
            f"![{p.stem}]({p.relative_to(reports).as_posix()})"
            for ds in cfg.pipeline.datasets_for("attention_datasets")
            for p in sorted((reports / "figures" / "attention" / ds).glob("*.png"))
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
            f"![{ds}](figures/descriptions/{ds}.png)"
            for ds in cfg.pipeline.datasets
            if (reports / "figures" / "descriptions" / f"{ds}.png").exists()
        ],
        "",
    ]
    return out


def write_results_md(cfg: Config, rep: Report) -> Path:
    """reports/results.md: every table of the report, from the files the pipeline wrote."""
    reports = Path(cfg.data.reports)
    lines = [
        *_header_md(cfg, rep),
        *_scaling_md(cfg, rep),
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
