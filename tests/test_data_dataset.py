"""ImageTableDataset: images, labels (-1 outside the map), row positions, cameras."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from indivaid_core.data import DataError, ImageTableDataset, camera_map_of, label_map_of


def test_items_and_batches(tiny_table):
    df, root = tiny_table
    df = df.iloc[::-1].set_index(df.index + 50)  # any index: positions are what count
    labels = label_map_of(df.identity.iloc[:6])
    ds = ImageTableDataset(df, root, label_map=labels)
    item = ds[0]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
    assert item["index"] == 0 and item["camera"] == int(df.camera.iloc[0])
    assert item["label"] == labels[df.identity.iloc[0]]
    batch = next(iter(DataLoader(ds, batch_size=len(ds))))
    assert batch["index"].tolist() == list(range(len(df)))
    known = torch.tensor(df.identity.isin(labels).to_numpy())
    assert (batch["label"][~known] == -1).all() and (batch["label"][known] >= 0).all()


def test_camera_map_and_unknown_cameras(tiny_table):
    df, root = tiny_table
    df["camera"] = ["cam" + str(c) for c in df.camera]
    cmap = camera_map_of(df.camera)
    ds = ImageTableDataset(df, root, camera_map=cmap)
    assert [ds[i]["camera"] for i in range(3)] == [cmap[c] for c in df.camera[:3]]
    assert ImageTableDataset(df, root)[0]["camera"] == -1  # strings without a map
    stray = df.assign(camera=["camX"] + list(df.camera[1:]))
    with pytest.raises(DataError, match=r"row 0: camera 'camX' is not in the camera map"):
        ImageTableDataset(stray, root, camera_map=cmap)
    assert ImageTableDataset(df.drop(columns="camera"), root)[0]["camera"] == -1


def test_crop_to_bbox(tiny_table):
    df, root = tiny_table
    df["bbox"] = "[4, 8, 20, 10]"
    item = ImageTableDataset(df, root, crop_bbox=True)[0]
    assert item["image"].shape == (3, 10, 20)


def test_bad_rows_fail_with_the_file_named(tiny_table):
    df, root = tiny_table
    df.loc[0, "path"] = "images/missing.jpg"
    with pytest.raises(DataError, match="missing.jpg"):
        ImageTableDataset(df, root)[0]
    with pytest.raises(DataError, match="needs 'path' and 'identity'"):
        ImageTableDataset(df.drop(columns="identity"), root)
