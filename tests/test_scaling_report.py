"""The data-scaling study in the report: its table, figure and results.md section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from indivaid_core import config as config_mod
from indivaid_core.repro import tables
from indivaid_core.repro.report import build_report, write_report
from indivaid_core.repro.results_md import scaling_sentences

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
N_QUERIES = 60
STUDY = ["image_only", "clipreid", "indivaid"]


def _write_per_query(per_query: Path, dataset: str, variant: str, level: float, seed: int = 0):
    """Per-query AP around `level` for every seed, the format the evaluate stage writes."""
    rng = np.random.default_rng(seed)
    rows = [
        {
            "image_id": f"q{i:03d}",
            "seed": s,
            "ap": float(np.clip(level + rng.normal(0, 0.05), 0, 1)),
        }
        for s in SEEDS
        for i in range(N_QUERIES)
    ]
    (per_query / dataset).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(per_query / dataset / f"{variant}.csv", index=False)


def _write_metrics(metrics: Path, dataset: str, variant: str, mAP: float) -> None:
    (metrics / "eval" / dataset).mkdir(parents=True, exist_ok=True)
    m = {
        "dataset": dataset,
        "variant": variant,
        **{k: mAP for k in ("mAP", "R1", "R5", "R10", "mINP")},
        "std": {k: 0.0 for k in ("mAP", "R1", "R5", "R10", "mINP")},
        "n_seeds": len(SEEDS),
        "device": "cpu",
    }
    (metrics / "eval" / dataset / f"{variant}.json").write_text(json.dumps(m))


def test_scaling_table_repeats_zero_shot_and_leaves_out_missing_cells(tmp_path):
    pq = tmp_path / "pq"
    _write_per_query(pq, "t", "zero_shot", 0.2, seed=1)
    _write_per_query(pq, "t-n8", "zero_shot", 0.9, seed=2)  # never read: zero_shot is t's own
    for v, level in zip(STUDY, (0.3, 0.4, 0.5), strict=True):
        _write_per_query(pq, "t", v, level + 0.2, seed=3)
        _write_per_query(pq, "t-n8", v, level, seed=4)
    _write_per_query(pq, "t-n16", "indivaid", 0.6, seed=5)  # n16 has no image_only/clipreid
    sizes = [(64, "t"), (8, "t-n8"), (16, "t-n16")]
    t = tables.scaling_table(pq, "t", sizes, STUDY, n_resamples=500, seed=0)

    assert list(t.columns) == tables.SCALING_COLUMNS
    assert set(t["dataset"]) == {"t"}
    zero = t[t["variant"] == "zero_shot"]
    assert zero["train_individuals"].tolist() == [8, 16, 64]
    numbers = zero[["mAP", "CI low", "CI high", "seeds"]].to_numpy()
    assert (numbers == numbers[0]).all()  # one untrained model, identical at every size
    base_zero = tables.read_per_query(pq / "t" / "zero_shot.csv")
    assert zero["mAP"].iloc[0] == pytest.approx(100 * base_zero["ap"].mean())
    cells = {(r.variant, r.train_individuals) for r in t.itertuples()}
    assert ("clipreid", 16) not in cells and ("image_only", 16) not in cells
    assert {("indivaid", 8), ("indivaid", 16), ("indivaid", 64), ("clipreid", 8)} <= cells
    assert len(t) == 3 + 3 + 1 + 3  # zero_shot at each size, then n8, n16 and n64's cells
    assert ((t["CI low"] <= t["mAP"]) & (t["mAP"] <= t["CI high"])).all()
    assert (t["CI high"] > t["CI low"]).all()
    assert (t["seeds"] == len(SEEDS)).all()
    n8 = tables.read_per_query(pq / "t-n8" / "indivaid.csv")
    row = t[(t["variant"] == "indivaid") & (t["train_individuals"] == 8)].iloc[0]
    assert row["mAP"] == pytest.approx(100 * n8["ap"].mean())


def test_scaling_table_without_a_study_is_a_header():
    t = tables.scaling_table("nowhere", "", [], STUDY, n_resamples=10, seed=0)
    assert t.empty and list(t.columns) == tables.SCALING_COLUMNS


def _config(tmp_path: Path, **overrides) -> config_mod.Config:
    return config_mod.load(
        REPO / "params.yaml",
        {
            "profile": "default",
            "data.reports": str(tmp_path / "reports"),
            "data.metrics": str(tmp_path / "metrics"),
            "data.work": str(tmp_path / "work"),
            "eval.bootstrap": 300,
            **overrides,
        },
        check_cells=False,
    )


def _write_main_cells(cfg: config_mod.Config, levels: dict[str, float]) -> Path:
    per_query = Path(cfg.data.reports) / "per_query"
    for k, ds in enumerate(cfg.pipeline.datasets):
        for j, v in enumerate(cfg.pipeline.variants):
            level = levels.get(v, 0.5)
            _write_per_query(per_query, ds, v, level, seed=10 * k + j)
            _write_metrics(Path(cfg.data.metrics), ds, v, level)
            if v != "zero_shot":  # what training records: the individuals it trained on
                train = Path(cfg.data.metrics) / "train" / ds / f"{v}.json"
                train.parent.mkdir(parents=True, exist_ok=True)
                n = cfg.dataset(ds).train_individuals
                train.write_text(json.dumps({"n_identities": n, "wall_time_s": 1.0}))
    return per_query


def _results_md(cfg: config_mod.Config, tmp_path: Path) -> str:
    rep = build_report(cfg, numerical_csv=tmp_path / "no_numerical_spread.csv")
    return write_report(cfg, rep).read_text()


def test_results_md_opens_with_the_scaling_section_and_reads_its_numbers(tmp_path):
    cfg = _config(tmp_path)
    base = cfg.pipeline.scaling.dataset
    largest = cfg.dataset(base).train_individuals
    # indivaid leads clipreid by 20(1 − n/largest) points: most at the smallest, none at the top
    main = {"zero_shot": 0.2, "image_only": 0.3, "clipreid": 0.4, "indivaid": 0.4}
    per_query = _write_main_cells(cfg, main)
    for n, name in zip(cfg.pipeline.scaling.train_individuals, cfg.scaling_datasets(), strict=True):
        gap = 0.2 * (1 - n / largest)
        levels = {"image_only": 0.2, "clipreid": 0.3, "indivaid": 0.3 + gap}
        for k, v in enumerate(cfg.pipeline.scaling.variants):
            _write_per_query(per_query, name, v, levels[v], seed=100 * n + k)
    md = _results_md(cfg, tmp_path)
    reports = Path(cfg.data.reports)

    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings[0] == (
        f"## Data scaling: mAP against the number of training individuals ({base})"
    )
    assert headings[1].startswith("## Main table")
    assert md.index("scaling.png") < md.index("## Main table") < md.index("headline.png")
    assert (reports / "figures" / "report" / "scaling.png").stat().st_size > 0

    scaling = pd.read_csv(reports / "tables" / "scaling.csv")
    assert list(scaling.columns) == tables.SCALING_COLUMNS
    smallest = min(cfg.pipeline.scaling.train_individuals)
    assert sorted(set(scaling["train_individuals"])) == sorted(
        [*cfg.pipeline.scaling.train_individuals, largest]
    )
    best = scaling[scaling["train_individuals"] == smallest].nlargest(1, "mAP").iloc[0]
    assert best["variant"] == "indivaid"
    leaders = next(line for line in md.splitlines() if "highest mAP" in line)
    assert f"{best['mAP']:.1f} [{best['CI low']:.1f}, {best['CI high']:.1f}]" in leaders
    assert leaders.index(f"n = {smallest}") < leaders.index(f"n = {largest}")

    diffs = pd.read_csv(reports / "tables" / "scaling_differences.csv")
    gap = diffs[diffs["comparison"] == "indivaid − clipreid"].set_index("train_individuals")
    assert gap.loc[smallest, "CI low"] > 0  # the planted gap is seen
    assert gap.loc[largest, "CI low"] < 0 < gap.loc[largest, "CI high"]  # and none at the top
    sentence = next(line for line in md.splitlines() if line.startswith("indivaid − clipreid"))
    assert "larger with the fewest individuals" in sentence
    assert f"excludes 0 at n = {smallest}" in sentence
    assert "not decidable" not in sentence  # three seeds per cell decide it

    main = pd.read_csv(reports / "tables" / "main.csv", header=[0, 1], index_col=0)
    assert set(main.columns.get_level_values(0)) == set(cfg.pipeline.datasets)
    assert set(pd.read_csv(reports / "tables" / "significance.csv")["dataset"]) <= set(
        cfg.pipeline.datasets
    )


@pytest.mark.parametrize("study", ["", "synth-tiger"])
def test_results_md_says_in_one_line_when_there_is_no_scaling_study(tmp_path, study):
    cfg = _config(tmp_path, **{"pipeline.scaling.dataset": study})
    per_query = _write_main_cells(cfg, {})
    if study:  # the study is configured but no cell has a per-query file
        for csv in per_query.glob("*/*.csv"):
            csv.unlink()
    md = _results_md(cfg, tmp_path)
    reports = Path(cfg.data.reports)

    section = md[md.index("## Data scaling") : md.index("## Main table")]
    assert "No scaling study in this report" in section
    assert len([line for line in section.splitlines() if line.strip()]) == 2
    assert not (reports / "figures" / "report" / "scaling.png").exists()
    scaling = pd.read_csv(reports / "tables" / "scaling.csv")
    assert scaling.empty and list(scaling.columns) == tables.SCALING_COLUMNS
    assert "## Significance" in md and (reports / "figures" / "report" / "headline.png").exists()


def test_scaling_sentences_read_a_negative_result_as_such():
    def interval(m, lo, hi, **k):
        return {"mAP": m, "CI low": lo, "CI high": hi, **k}

    scaling = pd.DataFrame(
        [
            {"variant": "clipreid", "train_individuals": 8, **interval(30.0, 28.0, 32.0)},
            {"variant": "indivaid", "train_individuals": 8, **interval(29.0, 27.5, 31.0)},
            {"variant": "clipreid", "train_individuals": 64, **interval(50.0, 48.0, 52.0)},
            {"variant": "indivaid", "train_individuals": 64, **interval(50.4, 49.0, 52.0)},
        ]
    )
    diff = pd.DataFrame(
        [
            {"train_individuals": 8, "ΔmAP": -1.0, "CI low": -2.5, "CI high": 0.5, "seeds": 1},
            {"train_individuals": 64, "ΔmAP": 0.4, "CI low": -0.1, "CI high": 0.9, "seeds": 1},
        ]
    ).assign(comparison="indivaid − clipreid")
    leaders, gap = scaling_sentences(scaling, diff)
    assert "(n = 8) the highest mAP is clipreid's, 30.0 [28.0, 32.0]" in leaders
    assert "its interval overlaps indivaid's" in leaders
    assert "(n = 64) it is indivaid's, 50.4 [49.0, 52.0]" in leaders
    assert gap.startswith("indivaid − clipreid: -1.0 [-2.5, +0.5] points at n = 8")
    assert "smaller with the fewest individuals" in gap and "ends overlap" in gap
    assert gap.endswith("its interval excludes 0 at no size.")
    # an interval that excludes 0 with one seed is reported, and said to be undecidable
    diff.loc[0, ["CI low", "CI high"]] = [-2.5, -0.5]
    gap = scaling_sentences(scaling, diff)[1]
    assert "excludes 0 at n = 8, but with 1 seed per cell" in gap and "not decidable" in gap


def _train_record(
    cfg: config_mod.Config, dataset: str, variant: str, n_ids: int, n_images: int
) -> None:
    """What stage 2 records about a trained cell: its images, identities and batch."""
    path = Path(cfg.data.metrics) / "train" / dataset / f"{variant}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"trained": True, "n_images": n_images, "n_identities": n_ids, "global_batch": 32}
    path.write_text(json.dumps({**record, "wall_time_s": 1.0}))


@pytest.mark.parametrize(
    ("equal", "side_floor"),
    # 8: the sides' own floor set to the base one (params.yaml's 8), so nothing differs;
    # 16: a side's own floor makes it differ
    [(False, None), (True, 8), (True, 16)],
)
def test_results_md_says_when_the_sizes_train_different_steps(tmp_path, equal, side_floor):
    from indivaid_core.train.sampler import PKSampler

    floors = {  # the sides params.yaml gives their own floor
        f"pipeline.scaling.overrides.synth-tiger-n{n}.stage2.min_iters_per_epoch": side_floor
        for n in (16, 32)
    }
    cfg = _config(tmp_path, **(floors if side_floor else {}))
    per_query = _write_main_cells(cfg, {})
    sizes = dict(zip(cfg.pipeline.scaling.train_individuals, cfg.scaling_datasets(), strict=True))
    largest = cfg.dataset(cfg.pipeline.scaling.dataset).train_individuals
    sizes[largest] = cfg.pipeline.scaling.dataset
    images = {n: 320 if equal else 20 * n for n in sizes}  # 32 a batch: 10 steps, or 20n/32
    for n, name in sizes.items():
        for k, v in enumerate(cfg.pipeline.scaling.variants):
            if name != cfg.pipeline.scaling.dataset:
                _write_per_query(per_query, name, v, 0.4, seed=100 * n + k)
                _write_metrics(Path(cfg.data.metrics), name, v, 0.4)
            _train_record(cfg, name, v, n, images[n])
    md = _results_md(cfg, tmp_path)

    lines = [line for line in md.splitlines() if line.startswith("Training steps an epoch")]
    if equal and side_floor == 8:
        assert lines == []  # nothing to warn about
        return
    expected = []
    for n, name in sorted(sizes.items()):  # what the sampler itself runs on such a side
        s2 = cfg.variant(cfg.pipeline.scaling.variants[0], name).stage2
        labels = [i % n for i in range(images[n])]
        sampler = PKSampler(
            labels,
            p=8,
            k=4,
            iters_per_epoch=s2.iters_per_epoch,
            min_iters_per_epoch=s2.min_iters_per_epoch,
        )
        expected.append(f"{len(sampler)} at n = {n}")
    assert lines[0].startswith(f"Training steps an epoch differ by size ({', '.join(expected)}:")
