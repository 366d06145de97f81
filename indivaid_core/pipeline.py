"""The stage functions the notebooks call, under their old names (see `indivaid_core.repro`).

paths      Paths, load_config, TINY_OVERRIDES   where each stage reads and writes
prepare    prepare, read_table, train_split     the prepare stage
training   run_text_runs, run_stage1, run_stage2
evaluation eval_split, features_for, score, headline, evaluate
robustness robustness_sweep;  saliency  saliency_pairs
"""

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
from indivaid_core.repro.paths import TINY_OVERRIDES, Paths, load_config, variants_of
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
