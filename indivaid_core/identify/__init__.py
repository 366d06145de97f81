"""Identify individuals in new photos against a gallery index (API behind `indivaid`)."""

from __future__ import annotations

import importlib
from typing import Any

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
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` when it is first asked for."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "BACKENDS",
    "BadInputWarning",
    "CalibrationError",
    "EmptyGalleryError",
    "GalleryIndex",
    "GalleryIndexError",
    "LoadedModel",
    "ModelMismatchError",
    "add_to_index",
    "build_index",
    "calibrate_threshold",
    "collect_files",
    "identify",
    "load_model",
    "make_searcher",
    "open_index",
    "rank_identities",
    "read_gallery",
    "recall_at_1",
    "result_frame",
    "save_index",
    "self_recall",
    "set_threshold",
]


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
