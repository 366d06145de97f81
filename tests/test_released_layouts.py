"""The nine released IndivAID layouts, read by `reid_folders` as the released readers read them.

Each tree is built here in its dataset's real naming (ywu840/IndivAID datasets/*.py): seven sets
named `<pid>_-1_<n>_<origin>.jpg` (`\\d+_-?\\d+_\\d+_?.*`), MPDD with alphanumeric cameras
(`\\d+_[0-9a-zA-Z]+_\\d+_?.*`), Stoat with named cameras (`CREK`, `FC01`, ...) and query/ ==
gallery/. Market-1501 names (`0002_c1s1_000451_01.jpg`, pid -1 junk) are covered as well.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from indivaid_core.data import DataError, load_dataset, prepare_table, validate_table
from indivaid_core.data.adapters import camera_numbers


def _jpg(path: Path, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 4, 3), value % 256, np.uint8)).save(path)


@dataclass
class Layout:
    """A released dataset: how it names files, which images each folder holds (pid, camid
    token, n) and the camera number each token must become."""

    folder: str
    name: Callable[[str, str, int], str]
    train: list[tuple[str, str, int]]
    test: list[tuple[str, str, int]]
    cameras: dict[str, int]
    gallery_only: list[tuple[str, str, int]] = field(default_factory=list)
    same_query_gallery: bool = False  # Stoat: query/ and gallery/ hold the same files
    protocol: str = "given"  # as params.yaml's paper profile reads it


def _imgs(pids: list[str], cam: str, per: int) -> list[tuple[str, str, int]]:
    return [(p, cam, n) for p in pids for n in range(per)]


LAYOUTS = {
    "ATRW": Layout(
        "IndivAID/ATRW",
        lambda p, c, n: f"{p}_{c}_{n}_{3000 + n:06d}.jpg",  # id_-1_no_origin.jpg
        _imgs(["0", "2", "15"], "-1", 2),
        _imgs(["1", "4"], "-1", 2),
        {"-1": -1},
        gallery_only=_imgs(["9"], "-1", 1),  # a distractor identity with no query
    ),
    "FriesianCattle2017": Layout(
        "IndivAID/FriesianCattle2017",
        lambda p, c, n: f"{p}_{c}_{n}_2017-02-{10 + n:02d}_10-11.jpg",
        _imgs(["001", "002", "010"], "-1", 2),
        _imgs(["005", "007"], "-1", 2),
        {"-1": -1},
    ),
    "iPanda50": Layout(
        "IndivAID/iPanda50",
        lambda p, c, n: f"{p}_{c}_{n}_{int(p):02d}_Baxi_{n:04d}.jpg",  # origin with '_'
        _imgs(["3", "11", "40"], "-1", 2),
        _imgs(["41", "49"], "-1", 2),
        {"-1": -1},
    ),
    "Lion": Layout(
        "IndivAID/Lion",
        lambda p, c, n: f"{p}_{c}_{n}.jpg",  # no origin part
        _imgs(["1", "2", "3"], "-1", 2),
        _imgs(["76", "80"], "-1", 2),
        {"-1": -1},
    ),
    "MPDD": Layout(
        "IndivAID/MPDD",
        lambda p, c, n: f"{p}_{c}_{n}_IMG{n:04d}.jpg",  # id_camid_no_origin.jpg
        [("1", "A1", 0), ("1", "b2", 1), ("2", "7", 0), ("2", "A1", 1), ("3", "b2", 0)]
        + [("3", "A1", 1)],
        [("1", "7", 2), ("1", "A1", 3), ("4", "b2", 0), ("4", "7", 1)],  # ids seen in train
        {"7": 0, "A1": 1, "b2": 2},  # numbers first by value, then names sorted
    ),
    "Nyala": Layout(
        "IndivAID/Nyala",
        lambda p, c, n: f"{p}_{c}_{n}_nyala_{p}{n}.jpg",
        _imgs(["100", "101", "178"], "-1", 3),
        _imgs(["180", "237"], "-1", 2),
        {"-1": -1},
    ),
    "PolarBear": Layout(
        "IndivAID/PolarBear",
        lambda p, c, n: f"{p}_{c}_{n}_frame{n:05d}.jpg",
        _imgs(["0", "1", "2", "3"], "-1", 2),
        _imgs(["10", "12"], "-1", 3),
        {"-1": -1},
    ),
    "SeaStar": Layout(
        "IndivAID/SeaStar",
        lambda p, c, n: f"{p}_{c}_{n}_IMG_{1200 + n}.jpg",
        _imgs(["5", "6", "7"], "-1", 2),
        _imgs(["90", "94"], "-1", 2),
        {"-1": -1},
    ),
    "Stoat": Layout(
        "IndivAID/Stoat",
        lambda p, c, n: f"{p}_{c}_{n}.jpg",  # 5_CREK_12.jpg
        [("1", "CREK", 0), ("1", "FC01", 1), ("2", "FC11", 0), ("2", "3", 1), ("5", "GC34", 0)]
        + [("5", "P164", 1), ("6", "3", 0)],  # pid 6: one image (kept, dropped in training)
        [("5", "CREK", 12), ("5", "FC01", 3), ("8", "P164", 0), ("8", "3", 4), ("9", "GC34", 1)],
        {"3": 0, "CREK": 1, "FC01": 2, "FC11": 3, "GC34": 4, "P164": 5},
        same_query_gallery=True,
        protocol="leave_one_out",
    ),
}


def _build(layout: Layout, data_root: Path) -> Path:
    """The tree under `data_root`; query/ gets each test identity's first image (Stoat: all)."""
    root = data_root / layout.folder
    for k, (pid, cam, n) in enumerate(layout.train):
        _jpg(root / "train" / layout.name(pid, cam, n), k)
    first = {}
    for pid, cam, n in layout.test:
        first.setdefault(pid, (pid, cam, n))
    for k, img in enumerate(layout.test + layout.gallery_only):
        name = layout.name(*img)
        if layout.same_query_gallery:
            _jpg(root / "query" / name, k)
            _jpg(root / "gallery" / name, k)
        elif img in first.values():
            _jpg(root / "query" / name, k)
        else:
            _jpg(root / "gallery" / name, k)
    return root


def _ids(df: pd.DataFrame, split: str) -> set[str]:
    return set(df.loc[df.split == split, "identity"])


@pytest.mark.parametrize("dataset", sorted(LAYOUTS))
def test_released_layout_is_read_as_released(dataset, tmp_path):
    layout = LAYOUTS[dataset]
    root = _build(layout, tmp_path)
    df, image_root = load_dataset("reid_folders", layout.folder, tmp_path)
    assert image_root == root
    with warnings.catch_warnings(record=True):  # Stoat's pid 9 has a single test image
        warnings.simplefilter("always", UserWarning)
        validate_table(df, image_root)
    train_ids = {str(int(p)) for p, _, _ in layout.train}
    test_ids = {str(int(p)) for p, _, _ in layout.test}
    assert _ids(df, "train") == train_ids  # as given, leading zeros dropped
    assert (df.split == "train").sum() == len(layout.train)
    if layout.same_query_gallery:  # one `test` set, each image once
        assert set(df.split) == {"train", "test"}
        assert (df.split == "test").sum() == len(layout.test)
        assert _ids(df, "test") == test_ids
        assert df.loc[df.split == "test", "path"].str.startswith("query/").all()
    else:
        assert _ids(df, "query") == test_ids and (df.split == "query").sum() == len(test_ids)
        extra = {str(int(p)) for p, _, _ in layout.gallery_only}
        assert _ids(df, "gallery") == test_ids | extra
        n_images = len(layout.train) + len(layout.test) + len(layout.gallery_only)
        assert len(df) == n_images
    # every camid token becomes its integer, the same one in every split
    token = {layout.name(*img): img[1] for img in layout.train + layout.test + layout.gallery_only}
    assert df.camera.tolist() == [layout.cameras[token[Path(p).name]] for p in df.path]
    assert df.camera.dtype.kind == "i"


@pytest.mark.parametrize("dataset", sorted(LAYOUTS))
def test_paper_protocol_keeps_the_released_split(dataset, tmp_path):
    """params.yaml's paper profile: `given` for eight sets, `leave_one_out` for Stoat. Neither
    may re-draw the released split."""
    layout = LAYOUTS[dataset]
    _build(layout, tmp_path)
    df, root = load_dataset("reid_folders", layout.folder, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        out = prepare_table(df, layout.protocol, 0.5, 1, 0, root)
    said = " ".join(str(w.message) for w in caught if issubclass(w.category, UserWarning))
    if dataset == "Stoat":  # pid 6 has one training image, pid 9 one test image
        assert "excluded from training: ['6']" in said and "['9']" in said
    else:
        assert said == ""
    assert out.set_index("image_id").split.to_dict() == df.set_index("image_id").split.to_dict()
    assert _ids(out, "train") == {str(int(p)) for p, _, _ in layout.train}


def test_stoat_leave_one_out_counts_each_test_image_once_and_drops_self_matches(tmp_path):
    """The released Stoat: train identities as given, query == gallery == the test images
    once; evaluation removes each image's own match (the release moved it to the end)."""
    from indivaid_core.evaluate import rank_metrics
    from indivaid_core.repro.evaluation import eval_rows

    layout = LAYOUTS["Stoat"]
    _build(layout, tmp_path)
    df, root = load_dataset("reid_folders", layout.folder, tmp_path)
    with pytest.warns(UserWarning) as caught:
        table = prepare_table(df, "leave_one_out", 0.5, 1, 0, root)
    said = " ".join(str(w.message) for w in caught)
    assert "excluded from training: ['6']" in said and "no match in the gallery" in said
    assert table.split.value_counts().to_dict() == {"train": 7, "test": 5}
    assert not table.path.duplicated().any()
    assert table.attrs["query_identities_without_match"] == 1  # pid 9: one test image
    query, gallery, loo = eval_rows(table)
    assert loo and query.equals(gallery) and len(query) == 5
    ids = query.identity.to_numpy()
    same = ids[:, None] == ids[None, :]
    dist = np.where(same, 1.0, 2.0) - np.eye(len(ids))  # self 0, mates 1, others 2
    m = rank_metrics(dist, ids, ids, leave_one_out=True)
    assert m["n_valid_queries"] == 4 and m["n_skipped_queries"] == 1  # no mate for pid 9
    assert m["mAP"] == pytest.approx(1.0)
    assert rank_metrics(dist, ids, ids)["n_valid_queries"] == 5  # with self-matches: inflated


def test_leave_one_out_without_a_given_split_still_draws_one(tiny_table):
    df, root = tiny_table
    out = prepare_table(df, "leave_one_out", 0.4, 1, 0, root, check_images=False)
    assert set(out.split) == {"train", "test"}
    assert not _ids(out, "train") & _ids(out, "test")


def test_leave_one_out_on_a_given_query_gallery_split_merges_the_test_side(tmp_path):
    layout = LAYOUTS["Lion"]
    _build(layout, tmp_path)
    df, root = load_dataset("reid_folders", layout.folder, tmp_path)
    out = prepare_table(df, "leave_one_out", 0.5, 1, 0, root)
    assert out.split.value_counts().to_dict() == {"train": 6, "test": 4}
    assert _ids(out, "train") == {"1", "2", "3"}


def test_stoat_query_and_gallery_sharing_only_some_files_is_an_error(tmp_path):
    root = _build(LAYOUTS["Stoat"], tmp_path)
    (root / "gallery" / "9_GC34_1.jpg").unlink()
    with pytest.raises(DataError, match=r"share 4 file name.*5 vs 4"):
        load_dataset("reid_folders", "IndivAID/Stoat", tmp_path)


def test_market1501_names_and_junk(tmp_path):
    """CLIP-ReID's Market reader: `([-\\d]+)_c(\\d)`, pid -1 skipped; camera = the digit after c."""
    root = tmp_path / "market"
    for name in ["0002_c1s1_000451_01.jpg", "0002_c3s2_000101_02.jpg", "0000_c2s1_000001_00.jpg"]:
        _jpg(root / "train" / name)
    _jpg(root / "train" / "-1_c1s1_000401_03.jpg")
    _jpg(root / "query" / "0007_c6s1_000076_01.jpg")
    _jpg(root / "gallery" / "0007_c1s1_001051_02.jpg")
    _jpg(root / "gallery" / "-1_c5s3_002031_04.jpg")
    with pytest.warns(UserWarning, match=r"skipped 2 junk image\(s\) with pid -1"):
        df, _ = load_dataset("reid_folders", "market", tmp_path)
    assert len(df) == 5 and "-1" not in set(df.identity)
    assert _ids(df, "train") == {"0", "2"}  # 0000: Market's background, kept as the reader does
    cams = df.set_index("image_id").camera
    assert cams["train/0002_c3s2_000101_02.jpg"] == 3 and cams["query/0007_c6s1_000076_01.jpg"] == 6


@pytest.mark.parametrize(
    "bad",
    [
        "tiger.jpg",  # no pid
        "0001-1-2.jpg",  # wrong separator
        "0001__3.jpg",  # empty camid
        "0001_FC-01_3.jpg",  # camid with a character outside [0-9A-Za-z]
        "-2_1_3.jpg",  # negative pid other than the junk -1
        "x12_-1_3.jpg",
        "0001_-1_3.txt",  # not an image
    ],
)
def test_unparseable_name_is_an_error_naming_the_file(tmp_path, bad):
    layout = LAYOUTS["ATRW"]
    root = _build(layout, tmp_path)
    path = root / "gallery" / bad
    if bad.endswith(".jpg"):
        _jpg(path)
    else:
        path.write_text("notes")
    with pytest.raises(DataError, match="1 file") as err:
        load_dataset("reid_folders", layout.folder, tmp_path)
    assert f"gallery/{bad}" in str(err.value)


def test_camera_numbers():
    assert camera_numbers(["-1", "0", "4"]) == {"-1": -1, "0": 0, "4": 4}
    assert camera_numbers(["c1s1", "c6s3", "c6"]) == {"c1s1": 1, "c6s3": 6, "c6": 6}
    stoat = ["P164", "CREK", "12", "FC01", "3"]
    assert camera_numbers(stoat) == {"3": 0, "12": 1, "CREK": 2, "FC01": 3, "P164": 4}
    assert camera_numbers(reversed(stoat)) == camera_numbers(stoat)  # order-free
