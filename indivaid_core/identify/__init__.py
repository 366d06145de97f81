"""Identify individuals in new photos against a gallery index (API behind `indivaid`)."""

from __future__ import annotations

from indivaid_core.lazy import lazy_names

# Names load on first use (PEP 562), so importing a light submodule such as
# `indivaid_core.identify.backends` does not pull in torch: `indivaid --help` answers at once.
_WHERE = {
    "api": (
        "LoadedModel",
        "add_to_index",
        "build_index",
        "identify",
        "load_model",
        "open_index",
        "rank_identities",
        "result_frame",
        "save_index",
        "self_recall",
    ),
    "calibrate": ("CalibrationError", "calibrate_threshold"),
    "index": (
        "BACKENDS",
        "EmptyGalleryError",
        "GalleryIndex",
        "GalleryIndexError",
        "ModelMismatchError",
        "make_searcher",
        "recall_at_1",
        "set_threshold",
    ),
    "inputs": ("BadInputWarning", "collect_files", "read_gallery"),
}
__getattr__, __dir__, __all__ = lazy_names(__name__, _WHERE)
