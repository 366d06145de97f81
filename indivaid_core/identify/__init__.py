"""Identify individuals in new photos against a gallery index (API behind `indivaid`)."""

from indivaid_core.identify.api import (
    LoadedModel,
    add_to_index,
    build_index,
    identify,
    load_model,
    open_index,
    rank_identities,
    result_frame,
    save_index,
    self_recall,
)
from indivaid_core.identify.calibrate import CalibrationError, calibrate_threshold
from indivaid_core.identify.index import (
    BACKENDS,
    EmptyGalleryError,
    GalleryIndex,
    GalleryIndexError,
    ModelMismatchError,
    make_searcher,
    recall_at_1,
)
from indivaid_core.identify.inputs import BadInputWarning, collect_files, read_gallery

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
]
