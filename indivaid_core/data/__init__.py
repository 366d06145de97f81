"""Data: the table contract, robust loading, adapters and splits.

The embedded synthetic suite's generator is reproduction machinery:
`indivaid_core.repro.synthetic`.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names load on first use (PEP 562), so importing `indivaid_core.data.images` (Pillow) or
# `.adapters` (pandas) does not drag in `.dataset`'s torch and torchvision, which cost seconds
# and which `indivaid identify` and every option check before it do not need at that moment.
_WHERE = {
    "adapters": (
        "ADAPTERS",
        "from_identity_folders",
        "from_reid_folders",
        "from_wildlife_class",
        "from_wildlife_metadata",
        "load_dataset",
        "wildlife_split",
    ),
    "dataset": ("ImageTableDataset", "camera_ids", "camera_map_of", "label_map_of"),
    "images": ("DataError", "load_rgb", "to_rgb"),
    "splits": (
        "leave_one_out_split",
        "paper_split",
        "prepare_table",
        "train_identities",
        "train_rows",
    ),
    "table": ("query_identities_missing_from_gallery", "validate_table"),
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
    "ADAPTERS",
    "DataError",
    "ImageTableDataset",
    "camera_ids",
    "camera_map_of",
    "from_identity_folders",
    "from_reid_folders",
    "from_wildlife_class",
    "from_wildlife_metadata",
    "label_map_of",
    "leave_one_out_split",
    "load_dataset",
    "load_rgb",
    "paper_split",
    "prepare_table",
    "query_identities_missing_from_gallery",
    "to_rgb",
    "train_identities",
    "train_rows",
    "validate_table",
    "wildlife_split",
]


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
