"""A torch Dataset over a table: the image, its class index, row position and camera."""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_tensor

from indivaid_core.data.images import DataError, load_rgb


def label_map_of(identities: pd.Series | list[str]) -> dict[str, int]:
    """Identities -> class indices in sorted order, so every stage agrees on them."""
    return {name: i for i, name in enumerate(sorted(pd.Series(identities).astype(str).unique()))}


def camera_map_of(cameras: pd.Series | list) -> dict[str, int]:
    """Camera values -> 0..n-1 in sorted order (keys as str)."""
    return {c: i for i, c in enumerate(sorted(pd.Series(cameras).astype(str).unique()))}


def camera_ids(cameras: pd.Series, camera_map: Mapping) -> list[int]:
    """`camera_map[str(camera)]` per row; a camera outside the map is an error (an SIE model
    has no embedding for it), named with its first row."""
    keyed = {str(k): int(v) for k, v in camera_map.items()}
    cams = pd.Series(cameras).astype(str).reset_index(drop=True)
    unknown = ~cams.isin(list(keyed))
    if unknown.any():
        first = int(unknown.idxmax())
        raise DataError(
            f"row {first}: camera {cams[first]!r} is not in the camera map "
            f"({int(unknown.sum())} rows, cameras {sorted(set(cams[unknown]))[:5]}); "
            f"the map knows {sorted(keyed)[:10]}"
        )
    return cams.map(keyed).astype(int).tolist()


def parse_bbox(value) -> tuple[float, float, float, float] | None:
    """[x, y, w, h] from a list or its CSV string form; None when absent."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    box = ast.literal_eval(value) if isinstance(value, str) else value
    if len(box) != 4:
        raise DataError(f"bbox must be [x, y, w, h], got {value!r}")
    return tuple(float(v) for v in box)


class ImageTableDataset(Dataset):
    """Rows of a table as dicts {"image", "label", "index", "camera"}.

    - image: `transform(PIL RGB image)`; default `to_tensor` (float in [0, 1]).
    - label: `label_map[identity]`, or -1 for identities outside it (test rows).
    - index: the row's position in `df` (0..len-1), to scatter features back into order.
    - camera: `camera_map[str(camera)]` when a map is given (a camera outside it is an
      error), else the camera column if it holds integers, else -1 (unknown).
    With `crop_bbox`, images are cropped to the row's `bbox` ([x, y, w, h]) when present.
    With `draft` (W, H), JPEGs are decoded at a reduced scale no smaller than that.
    """

    def __init__(
        self,
        df: pd.DataFrame,
        root: str | Path,
        transform: Callable | None = None,
        label_map: Mapping[str, int] | None = None,
        camera_map: Mapping[str, int] | None = None,
        crop_bbox: bool = False,
        draft: tuple[int, int] | None = None,
    ) -> None:
        if "path" not in df or "identity" not in df:
            raise DataError(f"ImageTableDataset needs 'path' and 'identity'; has {list(df)}")
        self.df = df.reset_index(drop=True)
        self.root = Path(root)
        self.transform = transform or to_tensor
        self.draft = draft  # (W, H): decode large JPEGs at a reduced scale (see load_rgb)
        ids = self.df["identity"].astype(str)
        self.labels = ids.map(dict(label_map or {})).fillna(-1).astype(int).tolist()
        self.cameras = self._cameras(camera_map)
        self.paths = self.df["path"].astype(str).tolist()
        self.boxes = (
            [parse_bbox(b) for b in self.df["bbox"]]
            if crop_bbox and "bbox" in self.df
            else [None] * len(self.df)
        )

    def _cameras(self, camera_map: Mapping | None) -> list[int]:
        if "camera" not in self.df:
            return [-1] * len(self.df)
        cams = self.df["camera"]
        if camera_map:
            return camera_ids(cams, camera_map)
        numeric = pd.to_numeric(cams, errors="coerce")
        if numeric.notna().all() and (numeric == numeric.round()).all():
            return numeric.astype(int).tolist()
        return [-1] * len(self.df)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        box = self.boxes[i]
        img = load_rgb(self.root / self.paths[i], None if box is not None else self.draft)
        if box is not None and box[2] > 0 and box[3] > 0:
            x, y, w, h = box
            img = img.crop((int(x), int(y), int(round(x + w)), int(round(y + h))))
        return {
            "image": self.transform(img),
            "label": self.labels[i],
            "index": i,
            "camera": self.cameras[i],
        }
