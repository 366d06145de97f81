"""Each adapter on a tiny folder tree built here; the registry and load_dataset."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from indivaid_core.data import (
    ADAPTERS,
    DataError,
    from_identity_folders,
    from_reid_folders,
    from_wildlife_class,
    from_wildlife_metadata,
    load_dataset,
    validate_table,
    wildlife_split,
)


def _img(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def _reid_tree(root):
    for name in ["0001_1_a.jpg", "0001_2_b.jpg", "0002_1_c.jpg", "0002_c3_d.jpg"]:
        _img(root / "train" / name)
    for name in ["0007_1_x.jpg", "0008_2_y.jpg"]:
        _img(root / "query" / name)
    for name in ["0007_2_z.jpg", "0008_1_w.jpg", "0008_1_v.png"]:
        _img(root / "gallery" / name)


def test_reid_folders(tmp_path):
    root = tmp_path / "IndivAID" / "Stoat"
    _reid_tree(root)
    (root / "train" / ".DS_Store").write_bytes(b"")  # hidden files are ignored
    df, image_root = from_reid_folders(root)
    assert image_root == root and len(df) == 9
    assert df.groupby("split").size().to_dict() == {"gallery": 3, "query": 2, "train": 4}
    row = df.set_index("image_id").loc["train/0002_c3_d.jpg"]
    assert row.identity == "2" and row.camera == 3 and row.path == "train/0002_c3_d.jpg"
    validate_table(df, image_root)


def test_reid_folders_bad_names_are_listed(tmp_path):
    root = tmp_path / "ds"
    _reid_tree(root)
    _img(root / "query" / "tiger.jpg")
    (root / "gallery" / "0001_1_notes.txt").write_text("x")
    with pytest.raises(DataError, match="2 file") as err:
        from_reid_folders(root)
    assert "query/tiger.jpg" in str(err.value) and "gallery/0001_1_notes.txt" in str(err.value)


def test_reid_folders_layouts(tmp_path):
    with pytest.raises(DataError, match="train/query/gallery"):
        _img(tmp_path / "a" / "train" / "0001_1_a.jpg")
        from_reid_folders(tmp_path / "a")
    _img(tmp_path / "b" / "train" / "0001_1_a.jpg")
    _img(tmp_path / "b" / "test" / "0002_1_a.jpg")
    df, _ = from_reid_folders(tmp_path / "b")
    assert sorted(df.split) == ["test", "train"]


def test_wildlife_metadata_csv_and_frame(tmp_path):
    for i in range(4):
        _img(tmp_path / "imgs" / f"{i}.jpg")
    meta = pd.DataFrame(
        {
            "identity": ["a", "a", "b", "unknown"],
            "path": [f"imgs/{i}.jpg" for i in range(4)],
            "date": ["2020-01-01", "2020-02-01", "2020-01-05", "2020-01-09"],
            "bbox": ["[0, 0, 4, 4]"] * 4,
        }
    )
    meta.to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.warns(UserWarning, match="dropped 1 images of identity 'unknown'"):
        df, root = from_wildlife_metadata(tmp_path / "metadata.csv")
    assert root == tmp_path and list(df.identity) == ["a", "a", "b"]
    assert df.image_id.is_unique and "date" in df and "bbox" in df
    validate_table(df, root)
    with pytest.warns(UserWarning):
        df2, root2 = from_wildlife_metadata(meta, tmp_path)
    assert root2 == tmp_path and list(df2.path) == list(df.path)


def test_wildlife_metadata_errors(tmp_path):
    with pytest.raises(DataError, match="metadata CSV not found"):
        from_wildlife_metadata(tmp_path / "none.csv")
    pd.DataFrame({"name": ["a"], "path": ["x.jpg"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match=r"m.csv: missing required column\(s\) \['identity'\]"):
        from_wildlife_metadata(tmp_path / "m.csv")


def test_identity_folders(tmp_path):
    _img(tmp_path / "Fred" / "1.jpg")
    _img(tmp_path / "Fred" / "day2" / "2.png")
    _img(tmp_path / "Wilma" / "a.jpg")
    (tmp_path / "Wilma" / "notes.txt").write_text("seen near the river")
    with pytest.warns(UserWarning, match="Wilma/notes.txt"):
        df, root = from_identity_folders(tmp_path)
    assert sorted(df.identity) == ["Fred", "Fred", "Wilma"]
    assert "Fred/day2/2.png" in set(df.path)
    validate_table(df, root)
    _img(tmp_path / "stray.jpg")
    with pytest.raises(DataError, match="outside any identity sub-folder.*stray.jpg"):
        from_identity_folders(tmp_path)


def test_identity_folders_empty(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="no images"):
        from_identity_folders(tmp_path)


def test_wildlife_class_names_and_missing_extra(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="did you mean 'ATRW'"):
        from_wildlife_class("ATWR", tmp_path)
    monkeypatch.setitem(sys.modules, "wildlife_datasets", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install indivaid-core\[wildlife\]"):
        from_wildlife_class("MPDD", tmp_path)


def test_wildlife_class_reads_a_tree_when_installed(tmp_path):
    pytest.importorskip("wildlife_datasets")
    base = tmp_path / "MPDD"
    for split in ("train", "test"):
        for name in ("1_a.jpg", "1_b.jpg", "2_a.jpg"):
            _img(base / "Multi-pose dog dataset" / "MPDD" / split / name.replace("_", f"_{split}"))
    df, root = load_dataset("wildlife_class", "MPDD", tmp_path)
    assert root == base and len(df) == 6
    validate_table(df, root)


def _dated():
    rows = []
    for ident in "abcdef":
        for k in range(6):
            rows.append((f"{ident}{k}", ident, f"{ident}/{k}.jpg", f"2021-0{k + 1}-15"))
    return pd.DataFrame(rows, columns=["image_id", "identity", "path", "date"])


def test_wildlife_splits():
    df = _dated()
    closed = wildlife_split(df, "closed-set", test_fraction=0.5, test_split="test")
    assert (closed.groupby("identity").split.apply(lambda s: (s == "test").sum()) == 3).all()
    disjoint = wildlife_split(df, "disjoint_set", test_fraction=0.5)
    tr = set(disjoint.loc[disjoint.split == "train", "identity"])
    te = set(disjoint.loc[disjoint.split != "train", "identity"])
    assert not tr & te and len(te) == 3
    assert set(disjoint.split) == {"train", "query", "gallery"}
    opened = wildlife_split(df, "open_set", test_fraction=0.5, new_identity_fraction=0.34)
    only_test = set(opened.identity) - set(opened.loc[opened.split == "train", "identity"])
    assert len(only_test) == 2
    timed = wildlife_split(df, "time_aware", test_fraction=0.5, test_split="test")
    last = pd.to_datetime(timed.date).dt.month > 3
    assert ((timed.split == "test") == last).all()
    cut = wildlife_split(df, "time_aware", cutoff="2021-05-01", test_split="test")
    assert (cut.loc[cut.split == "test", "date"] > "2021-05-01").all()


def test_wildlife_split_errors():
    with pytest.raises(DataError, match="needs a 'date' column"):
        wildlife_split(_dated().drop(columns="date"), "time_aware")
    with pytest.raises(DataError, match="unknown wildlife split"):
        wildlife_split(_dated(), "random")


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_registry_entries_are_callables(name):
    assert callable(ADAPTERS[name])


def test_load_dataset(tmp_path):
    _reid_tree(tmp_path / "IndivAID" / "Stoat")
    df, root = load_dataset("reid_folders", "IndivAID/Stoat", tmp_path)
    assert root == tmp_path / "IndivAID" / "Stoat" and len(df) == 9
    with pytest.raises(DataError, match="did you mean 'reid_folders'"):
        load_dataset("reid_folder", "IndivAID/Stoat", tmp_path)
