"""The training stages: stage-1 text runs and stage-2 variants, once per seed in `pipeline.seeds`.

Stage-2 seed s reads stage-1 seed s, so the seeds sample both stages: a 4e-6 change in the
stage-1 features once moved a stage-2 mAP by 4 points, more than the stage-2 seeds' spread.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from indivaid_core.config import Config
from indivaid_core.data import camera_map_of
from indivaid_core.device import dist_info, resolve_device
from indivaid_core.evaluate import write_metrics_json
from indivaid_core.evaluate.results import mean_std
from indivaid_core.repro.paths import Paths
from indivaid_core.repro.prepare import read_table, train_split
from indivaid_core.safe_io import atomic_path, write_json


def run_stage1(cfg: Config, dataset: str, text: str, **kw: Any) -> dict[str, Any]:
    """One stage-1 text run, once per seed in `pipeline.seeds` (see `run_text_runs`)."""
    return run_text_runs(cfg, dataset, [text], **kw)[text]


def run_text_runs(
    cfg: Config, dataset: str, texts: list[str] | None = None, **kw: Any
) -> dict[str, dict[str, Any]]:
    """Train stage-1 text runs (default: those the dataset needs) once per seed."""
    paths = Paths(cfg, dataset)
    texts = cfg.text_runs_of(dataset) if texts is None else texts
    results = {text: _no_text_run(paths) for text in texts if text == "none"}
    jobs: dict[tuple[str, int], Config] = {}
    for text in texts:
        if text != "none":
            run_cfg = cfg.for_run(dataset, text)
            for seed in cfg.pipeline.seeds:
                jobs[text, seed] = dataclasses.replace(run_cfg, seed=seed)
    if not jobs:
        return results
    table = read_table(cfg, dataset)
    data = {  # the same for every run
        "train_table": train_split(table),
        "image_root": Paths.image_root(table),
        "species": cfg.dataset(dataset).species,
        "cache_dir": Path(cfg.data.work) / "cache",
    }
    done = _train_stage1_runs(cfg, jobs, data, paths, kw)
    for text in dict.fromkeys(t for t, _ in jobs):
        per_seed = {seed: done[text, seed] for seed in cfg.pipeline.seeds}
        if dist_info().is_main:
            publish_curves(paths.stage1(text, cfg.pipeline.seeds[0]), paths.curves("stage1") / text)
        first = per_seed[cfg.pipeline.seeds[0]]
        results[text] = {**first, "seeds": list(per_seed), "wall_time_s": stage1_wall_s(per_seed)}
    return {t: results[t] for t in texts}


def _no_text_run(paths: Paths) -> dict[str, Any]:
    """The `none` placeholder: nothing trained, a metrics file and an empty plot folder."""
    out = paths.stage1("none")
    out.mkdir(parents=True, exist_ok=True)
    result = {"stage": "stage1", "text": "none", "trained": False}
    write_json(out / "metrics.json", result, indent=2)
    publish_curves(out, paths.curves("stage1") / "none")
    return result


def _train_stage1_runs(
    cfg: Config,
    jobs: dict[tuple[str, int], Config],
    data: dict[str, Any],
    paths: Paths,
    kw: dict[str, Any],
) -> dict[tuple[str, int], dict[str, Any]]:
    """Each (text, seed) run, one after another or, on CPU, `stage1.processes` side by side.

    Stage 1 runs on `stage1.num_threads` (1) threads, which leaves the other cores idle; on one
    thread a run's bytes do not depend on the process it ran in (tests check this), so running
    them side by side changes nothing but the wall time.
    """
    from indivaid_core.train.stage1 import Stage1Run, train_stage1, warm_feature_cache

    runs = {key: Stage1Run.of(c) for key, c in jobs.items()}
    if _workers(cfg, cfg.stage1.processes, len(jobs)) > 1:
        for run in runs.values():  # computes each distinct feature file once, skips the rest
            warm_feature_cache(run, data["train_table"], data["image_root"], data["cache_dir"])
    calls = {key: {"run": run, **data, "out_dir": paths.stage1(*key)} for key, run in runs.items()}
    return _side_by_side(train_stage1, calls, cfg.stage1.processes, cfg, kw)


def _workers(cfg: Config, processes: int, n_jobs: int) -> int:
    """How many processes to train in: side by side only on the CPU, outside DDP."""
    if resolve_device(cfg.device).type != "cpu" or dist_info().world_size > 1:
        return 1
    return max(1, min(processes, n_jobs))


def _side_by_side(
    fn: Callable[..., dict[str, Any]],
    jobs: dict[Any, dict[str, Any]],
    processes: int,
    cfg: Config,
    kw: dict[str, Any],
) -> dict[Any, dict[str, Any]]:
    """`fn(**job, **kw)` for each job: in this process, or `processes` worker processes on the
    CPU.

    Each result is on disk when its job ends, so an error in one job keeps the others' work.
    """
    n = _workers(cfg, processes, len(jobs))
    if n == 1:
        return {key: fn(**job, **kw) for key, job in jobs.items()}
    with ProcessPoolExecutor(n, mp_context=_start_context(fn.__module__)) as pool:
        futures = {pool.submit(fn, **job, **kw): key for key, job in jobs.items()}
        done = {}
        for f in tqdm(as_completed(futures), total=len(futures), desc=fn.__name__, unit="run"):
            done[futures[f]] = f.result()  # re-raises a run's error
    return {key: done[key] for key in jobs}


def _start_context(preload: str) -> multiprocessing.context.BaseContext:
    """Workers forked from a fresh server process that has imported `preload` (and torch) once,
    instead of each spawned worker importing it again (~3 s a cell on 2 cores); the server
    holds no state of this process. `spawn` where the platform has no forkserver."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([preload])
    return ctx


def stage1_wall_s(per_seed: dict[int, dict[str, Any]]) -> float:
    """Mean stage-1 training time over seeds (what one stage-2 seed's text run cost)."""
    return mean_std([r.get("wall_time_s", 0.0) for r in per_seed.values()])["mean"]


def publish_curves(src: Path, dst: Path) -> None:
    """Copy a run's per-epoch loss TSVs out of the (DVC-cached) work dir for `dvc plots`."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in (src / "plots").glob("*.tsv"):
        with atomic_path(dst / f.name) as tmp:
            shutil.copyfile(f, tmp)


def run_stage2(cfg: Config, dataset: str, variant: str, **extra: Any) -> dict[str, Any]:
    """Train one variant once per seed in `pipeline.seeds`, seed s on stage-1 seed s; on the
    CPU `stage2.processes` seeds side by side (on `stage2.num_threads` threads each)."""
    from indivaid_core.train.stage2 import Stage2Run, train_stage2

    v = cfg.variants[variant]
    paths = Paths(cfg, dataset)
    table = read_table(cfg, dataset)
    variant_cfg = cfg.variant(variant, dataset)
    kw = {  # the same for every seed
        "train_table": train_split(table),
        "image_root": Paths.image_root(table),
        "train": v.train,
        "camera_map": _camera_map(variant_cfg, table, paths),
        "cache_dir": Path(cfg.data.work) / "cache",
    }
    jobs = {
        seed: {
            "run": Stage2Run.of(dataclasses.replace(variant_cfg, seed=seed)),
            "out_dir": paths.stage2(variant, seed),
            "stage1_dir": paths.stage1(v.text, seed) if v.text != "none" else None,
        }
        for seed in cfg.pipeline.seeds
    }
    per_seed = _side_by_side(train_stage2, jobs, cfg.stage2.processes, cfg, {**kw, **extra})
    if not dist_info().is_main:  # DDP: only rank 0 writes
        return {"dataset": dataset, "variant": variant, "per_seed": per_seed}
    publish_curves(paths.stage2(variant, cfg.pipeline.seeds[0]), paths.curves(variant))
    result = _stage2_summary(cfg, paths, variant, per_seed)
    write_metrics_json(paths.metrics(variant, "train"), result)
    return result


def _camera_map(variant_cfg: Config, table: pd.DataFrame, paths: Paths) -> dict | None:
    """Camera ids for SIE (all splits: test cameras need an id too), or None without SIE."""
    if variant_cfg.model.sie_coef <= 0:
        return None
    if "camera" not in table:
        raise ValueError(f"{paths.table}: model.sie_coef > 0 needs a 'camera' column")
    return camera_map_of(table["camera"])


def _stage2_summary(
    cfg: Config, paths: Paths, variant: str, per_seed: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """The training-cost metrics: the first seed's, with wall time and loss over seeds."""
    v = cfg.variants[variant]
    first = per_seed[cfg.pipeline.seeds[0]]
    result = {"dataset": paths.dataset, "variant": variant, "seeds": list(per_seed), **first}
    if v.text != "none":
        s1 = {
            s: json.loads((paths.stage1(v.text, s) / "metrics.json").read_text()) for s in per_seed
        }
        result["stage1_wall_time_s"] = stage1_wall_s(s1)
    if v.train:
        result["wall_time_s"] = mean_std([r["wall_time_s"] for r in per_seed.values()])["mean"]
        result["final_loss"] = mean_std([r["final_loss"] for r in per_seed.values()])
    return result
