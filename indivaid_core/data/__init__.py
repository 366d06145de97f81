"""Data: the table contract, robust loading, adapters and splits.

The embedded synthetic suite's generator is reproduction machinery:
`indivaid_core.repro.synthetic`.
"""

from indivaid_core.data.adapters import (
    ADAPTERS,
    from_identity_folders,
    from_reid_folders,
    from_wildlife_class,
    from_wildlife_metadata,
    load_dataset,
    wildlife_split,
)
from indivaid_core.data.dataset import ImageTableDataset, camera_ids, camera_map_of, label_map_of
from indivaid_core.data.images import DataError, load_rgb, to_rgb
from indivaid_core.data.splits import (
    leave_one_out_split,
    paper_split,
    prepare_table,
    train_identities,
    train_rows,
)
from indivaid_core.data.table import query_identities_missing_from_gallery, validate_table

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
