"""The stage functions the notebooks call, under their old names (see `indivaid_core.repro`).

paths      Paths, load_config, TINY_OVERRIDES   where each stage reads and writes
prepare    prepare, read_table, train_split     the prepare stage
training   run_text_runs, run_stage1, run_stage2
evaluation eval_split, features_for, score, headline, evaluate
robustness robustness_sweep;  saliency  saliency_pairs

Only `repro.paths` is imported with this module; every other name is imported from its module
on first use (module `__getattr__`), so a stage's kernel pays only for the stage functions it
calls: the report stage never imports open_clip, the prepare stage never the evaluation stack.
`benchmarks/bench_stage_overhead.py` measures what that saves per stage.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from indivaid_core.repro.paths import TINY_OVERRIDES, Paths, load_config, variants_of

if TYPE_CHECKING:  # the lazy names below, for type checkers and editors
    from indivaid_core.evaluate.results import mean_std
    from indivaid_core.repro.evaluation import (
        METRIC_KEYS,
        EvalSplit,
        Evaluation,
        eval_rows,
        eval_split,
        evaluate,
        features_for,
        headline,
        score,
    )
    from indivaid_core.repro.prepare import prepare, read_table, train_split
    from indivaid_core.repro.robustness import robustness_sweep
    from indivaid_core.repro.saliency import saliency_pairs
    from indivaid_core.repro.training import (
        publish_curves,
        run_stage1,
        run_stage2,
        run_text_runs,
        stage1_wall_s,
    )

_LAZY = {
    "mean_std": "indivaid_core.evaluate.results",
    **dict.fromkeys(
        [
            "METRIC_KEYS",
            "EvalSplit",
            "Evaluation",
            "eval_rows",
            "eval_split",
            "evaluate",
            "features_for",
            "headline",
            "score",
        ],
        "indivaid_core.repro.evaluation",
    ),
    **dict.fromkeys(["prepare", "read_table", "train_split"], "indivaid_core.repro.prepare"),
    "robustness_sweep": "indivaid_core.repro.robustness",
    "saliency_pairs": "indivaid_core.repro.saliency",
    **dict.fromkeys(
        ["publish_curves", "run_stage1", "run_stage2", "run_text_runs", "stage1_wall_s"],
        "indivaid_core.repro.training",
    ),
}


def __getattr__(name: str) -> Any:
    """Import a stage function's module on first use, then keep the name here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "METRIC_KEYS",
    "TINY_OVERRIDES",
    "EvalSplit",
    "Evaluation",
    "Paths",
    "eval_rows",
    "eval_split",
    "evaluate",
    "features_for",
    "headline",
    "load_config",
    "mean_std",
    "prepare",
    "publish_curves",
    "read_table",
    "robustness_sweep",
    "run_stage1",
    "run_stage2",
    "run_text_runs",
    "saliency_pairs",
    "score",
    "stage1_wall_s",
    "train_split",
    "variants_of",
]
