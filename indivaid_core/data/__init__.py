"""Data: the table contract, robust loading, adapters and splits.

The embedded synthetic suite's generator is reproduction machinery:
`indivaid_core.repro.synthetic`.
"""

from __future__ import annotations

from indivaid_core.lazy import lazy_names

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
__getattr__, __dir__, __all__ = lazy_names(__name__, _WHERE)
