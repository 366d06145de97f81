"""The table contract: every violation is a DataError naming the row or file."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from indivaid_core.data import DataError, validate_table


def test_valid_suite_passes(tiny_table):
    df, root = tiny_table
    out = validate_table(df, root)
    assert len(out) == len(df) and list(out.index) == list(range(len(df)))
    assert out["identity"].map(type).eq(str).all()


def test_missing_required_column(tiny_table):
    df, root = tiny_table
    with pytest.raises(DataError, match=r"missing required column.*identity"):
        validate_table(df.drop(columns="identity"), root)


def test_duplicate_image_id_names_the_rows(tiny_table):
    df, root = tiny_table
    df.loc[4, "image_id"] = df.loc[1, "image_id"]
    with pytest.raises(DataError, match="duplicate image_id") as err:
        validate_table(df, root, check_images=False)
    assert "row 1" in str(err.value) and "row 4" in str(err.value)


def test_empty_identity_names_the_row(tiny_table):
    df, root = tiny_table
    df.loc[2, "identity"] = None
    with pytest.raises(DataError, match=r"empty 'identity'.*\[2\]"):
        validate_table(df, root, check_images=False)


def test_missing_file_names_it(tiny_table):
    df, root = tiny_table
    df.loc[3, "path"] = "images/nowhere.jpg"
    with pytest.raises(DataError, match="missing file") as err:
        validate_table(df, root, check_images=False)
    assert "images/nowhere.jpg" in str(err.value) and "row 3" in str(err.value)


def test_truncated_image_in_table_names_row_and_file(tiny_table, tmp_path):
    df, root = tiny_table
    data = (root / df.loc[0, "path"]).read_bytes()
    (tmp_path / "images").mkdir()
    for p in df["path"]:
        (tmp_path / p).write_bytes((root / p).read_bytes())
    (tmp_path / df.loc[0, "path"]).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated") as err:
        validate_table(df, tmp_path)
    assert df.loc[0, "image_id"] in str(err.value) and df.loc[0, "path"] in str(err.value)
    validate_table(df, tmp_path, check_images=False)  # existence alone does not decode


def test_empty_split_is_an_error(tiny_table):
    df, root = tiny_table
    df["split"] = ["train"] * (len(df) - 3) + ["query"] * 3  # no gallery
    with pytest.raises(DataError, match="split 'gallery' is empty"):
        validate_table(df, root, check_images=False)
    df["split"] = "test"  # leave-one-out without training rows
    with pytest.raises(DataError, match="split 'train' is empty"):
        validate_table(df, root, check_images=False)
    validate_table(df, root, check_images=False, require_train=False)


def test_unknown_split_value(tiny_table):
    df, root = tiny_table
    df["split"] = "train"
    df.loc[5, "split"] = "valid"
    with pytest.raises(DataError, match=r"unknown split.*row 5"):
        validate_table(df, root, check_images=False)


def test_query_identity_absent_from_gallery_is_counted_not_fatal(tiny_table):
    df, root = tiny_table
    ids = sorted(df["identity"].unique())
    df["split"] = "train"
    df.loc[df.identity == ids[0], "split"] = ["query", "gallery", "gallery"]
    df.loc[df.identity == ids[1], "split"] = "query"  # no gallery image for this one
    with pytest.warns(UserWarning, match="1 query identities have no match"):
        out = validate_table(df, root, check_images=False)
    assert out.attrs["query_identities_without_match"] == 1


def test_no_warning_when_every_query_has_a_match(tiny_table):
    df, root = tiny_table
    ids = sorted(df["identity"].unique())
    df["split"] = "train"
    df.loc[df.identity == ids[0], "split"] = ["query", "gallery", "gallery"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = validate_table(df, root, check_images=False)
    assert out.attrs["query_identities_without_match"] == 0


def test_input_frame_is_not_modified(tiny_table):
    df, root = tiny_table
    df.index = df.index + 100
    before = df.copy()
    validate_table(df, root, check_images=False)
    pd.testing.assert_frame_equal(df, before)


def test_a_photo_replaced_under_its_name_changes_the_prepared_table(tmp_path, monkeypatch):
    """DVC sees a dataset's photos through its prepared table (the stages downstream depend on
    `work/tables/<dataset>.csv`): a photo swapped in under the same name must change it."""
    import toy_repo

    from indivaid_core import config
    from indivaid_core.repro.paths import Paths
    from indivaid_core.repro.prepare import prepare

    monkeypatch.chdir(toy_repo.build(tmp_path))
    cfg = config.load("params.yaml")
    before = pd.read_csv(Paths(cfg, "toy").table)
    first, other = (before["image_root"][0] + "/" + before["path"][i] for i in (0, 1))
    with open(first, "wb") as f, open(other, "rb") as g:
        f.write(g.read())
    after = prepare(cfg, "toy")
    changed = [c for c in before if not before[c].astype(str).equals(after[c].astype(str))]
    assert changed == ["file_sha256"]
    assert after["file_sha256"][0] == after["file_sha256"][1] != before["file_sha256"][0]
