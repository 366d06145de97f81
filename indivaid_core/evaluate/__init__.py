"""Evaluation: features, exact re-ID metrics, re-ranking, open-set identification, figures."""

from indivaid_core.evaluate.features import (
    FEATURE_KEYS,
    extract_features,
    load_features,
    save_features,
)
from indivaid_core.evaluate.metrics import (
    encode_labels,
    pairwise_distance,
    rank_metrics,
    rank_metrics_from_features,
)
from indivaid_core.evaluate.openset import (
    apply_threshold,
    baks,
    baus,
    choose_threshold,
    knn_identity,
    new_individual_auroc,
    open_set_metrics,
)
from indivaid_core.evaluate.rerank import rerank, rerank_loo
from indivaid_core.evaluate.results import (
    CONDITION_COLUMNS,
    cmc_curve_frame,
    per_query_frame,
    summarise,
    write_metrics_json,
)
from indivaid_core.lazy import lazy_names

# The figures load matplotlib (~0.5 s), which identifying a photo never needs: they are
# imported on first use (PEP 562).
__getattr__, _, _ = lazy_names(
    __name__,
    {
        "figures": (
            "condition_bars",
            "distance_distributions",
            "embedding_map",
            "pair_distances",
            "retrieval_grid",
        )
    },
)


__all__ = [
    "CONDITION_COLUMNS",
    "FEATURE_KEYS",
    "apply_threshold",
    "baks",
    "baus",
    "choose_threshold",
    "cmc_curve_frame",
    "condition_bars",
    "distance_distributions",
    "embedding_map",
    "encode_labels",
    "extract_features",
    "knn_identity",
    "load_features",
    "new_individual_auroc",
    "open_set_metrics",
    "pair_distances",
    "pairwise_distance",
    "per_query_frame",
    "rank_metrics",
    "rank_metrics_from_features",
    "rerank",
    "rerank_loo",
    "retrieval_grid",
    "save_features",
    "summarise",
    "write_metrics_json",
]
