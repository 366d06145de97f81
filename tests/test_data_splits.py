"""Protocols: identity-disjoint paper split, leave-one-out, singletons, prepare_table."""

from __future__ import annotations

import pandas as pd
import pytest

from indivaid_core.data import (
    DataError,
    leave_one_out_split,
    paper_split,
    prepare_table,
    train_identities,
    train_rows,
)
from indivaid_core.data.splits import validation_view


def _table(counts: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{k}_{i}", k, f"{k}/{i}.jpg") for k, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["image_id", "identity", "path"])


COUNTS = {f"id{i:02d}": n for i, n in enumerate([1, 2, 3, 4, 5, 6, 1, 2, 8, 3, 4, 2])}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_paper_split_is_identity_disjoint_with_query_and_gallery(seed):
    out = paper_split(_table(COUNTS), test_fraction=0.5, query_per_identity=2, seed=seed)
    train = set(out.loc[out.split == "train", "identity"])
    test = set(out.loc[out.split != "train", "identity"])
    assert not train & test and train | test == set(COUNTS)
    assert len(test) == 6
    for ident in test:
        s = out.loc[out.identity == ident, "split"]
        n = COUNTS[ident]
        assert (s == "query").sum() == min(2, n - 1)  # a singleton goes to gallery only
        assert (s == "gallery").sum() == n - min(2, n - 1)


def test_split_depends_on_seed_and_not_on_row_order():
    df = _table(COUNTS)
    a = paper_split(df, seed=3).set_index("image_id")["split"]
    b = paper_split(df.sample(frac=1, random_state=1), seed=3).set_index("image_id")["split"]
    test_ids = lambda s: set(df.set_index("image_id").loc[s.index[s != "train"], "identity"])  # noqa: E731
    assert test_ids(a) == test_ids(b)
    assert test_ids(a) != test_ids(paper_split(df, seed=4).set_index("image_id")["split"])


def test_leave_one_out_split():
    out = leave_one_out_split(_table(COUNTS), test_fraction=0.25, seed=0)
    assert set(out.split) == {"train", "test"}
    assert out.loc[out.split == "test", "identity"].nunique() == 3
    assert not set(out.loc[out.split == "train", "identity"]) & set(
        out.loc[out.split == "test", "identity"]
    )


def test_bad_split_arguments():
    with pytest.raises(DataError, match="test_fraction"):
        paper_split(_table(COUNTS), test_fraction=1.0)
    with pytest.raises(DataError, match="at least 2 identities"):
        paper_split(_table({"a": 3}))
    with pytest.raises(DataError, match="query_per_identity"):
        paper_split(_table(COUNTS), query_per_identity=0)


def test_single_image_identity_excluded_from_training_with_warning():
    df = _table({"solo": 1, "a": 3, "b": 2}).assign(split="train")
    with pytest.warns(UserWarning, match=r"excluded from training: \['solo'\]"):
        assert train_identities(df) == ["a", "b"]
    with pytest.warns(UserWarning):
        rows = train_rows(df)
    assert set(rows.identity) == {"a", "b"} and len(rows) == 5


def test_prepare_table_protocols(tiny_table):
    df, root = tiny_table
    out = prepare_table(df, "disjoint", 0.4, 1, 0, root)
    assert set(out.split) == {"train", "query", "gallery"}
    assert out.attrs["query_identities_without_match"] == 0
    loo = prepare_table(df, "leave_one_out", 0.4, 1, 0, root, check_images=False)
    assert set(loo.split) == {"train", "test"}
    given = prepare_table(out, "given", root=root, check_images=False)
    assert (given.split.to_numpy() == out.split.to_numpy()).all()


def test_prepare_table_errors(tiny_table):
    df, root = tiny_table
    with pytest.raises(DataError, match="unknown protocol 'disjiont'"):
        prepare_table(df, "disjiont", root=root)
    with pytest.raises(DataError, match="needs a 'split' column"):
        prepare_table(df, "given", root=root)


def test_singleton_in_test_is_counted(tmp_path):
    df = _table({"a": 3, "b": 3, "c": 1, "d": 3})
    for p in df.path:
        (tmp_path / p).parent.mkdir(exist_ok=True)
        (tmp_path / p).write_bytes(b"")
    seeds = [
        s
        for s in range(20)
        if "c" in leave_one_out_split(df, 0.5, s).query("split == 'test'").identity.values
    ]
    with pytest.warns(UserWarning, match=r"no match to find.*\['c'\]"):
        out = prepare_table(df, "leave_one_out", 0.5, 1, seeds[0], tmp_path, check_images=False)
    assert out.attrs["query_identities_without_match"] == 1
    assert "c" in set(out.loc[out.split == "test", "identity"])


def _split_ids(out: pd.DataFrame, *splits: str) -> set[str]:
    return set(out.loc[out["split"].isin(splits), "identity"])


MANY = {f"id{i:02d}": 3 + i % 4 for i in range(40)}


def _prepare(root, **kw) -> pd.DataFrame:
    """prepare_table on 40 individuals whose (empty) files exist under `root`."""
    df = _table(MANY)
    for p in df.path:
        (root / p).parent.mkdir(exist_ok=True)
        (root / p).write_bytes(b"")
    return prepare_table(df, root=root, check_images=False, **{"test_fraction": 0.5, **kw})


@pytest.mark.parametrize("protocol", ["disjoint", "leave_one_out"])
def test_validation_individuals_are_disjoint_from_train_and_test(protocol, tmp_path):
    plain = _prepare(tmp_path, protocol=protocol)
    out = _prepare(tmp_path, protocol=protocol, val_individuals=5, train_individuals=8)
    evals = ("test",) if protocol == "leave_one_out" else ("query", "gallery")
    val = _split_ids(out, *(f"val_{s}" for s in evals))
    train, test = _split_ids(out, "train"), _split_ids(out, *evals)
    assert len(val) == 5 and len(train) == 8 and not (val & train) and not (val & test)
    assert test == _split_ids(plain, *evals)  # the test side is the one without validation
    assert val | train <= _split_ids(plain, "train")


def test_smaller_training_sides_are_nested_and_share_the_validation_set(tmp_path):
    sides = {n: _prepare(tmp_path, val_individuals=4, train_individuals=n) for n in (3, 6, 12)}
    train = {n: _split_ids(t, "train") for n, t in sides.items()}
    assert train[3] < train[6] < train[12] and [len(train[n]) for n in (3, 6, 12)] == [3, 6, 12]
    vals = [_split_ids(t, "val_query", "val_gallery") for t in sides.values()]
    assert vals[0] == vals[1] == vals[2]


def test_validation_view_puts_validation_rows_in_the_evaluation_splits(tmp_path):
    out = _prepare(tmp_path, val_individuals=5)
    view = validation_view(out)
    assert set(view["split"]) == {"train", "query", "gallery"}
    assert _split_ids(view, "query", "gallery") == _split_ids(out, "val_query", "val_gallery")
    assert not _split_ids(view, "query") & _split_ids(out, "query")  # no test row survives
    with pytest.raises(DataError, match="val_individuals"):
        validation_view(_prepare(tmp_path))


def test_too_many_validation_and_training_individuals_is_an_error_naming_both(tmp_path):
    with pytest.raises(DataError, match=r"val_individuals 15 \+ train_individuals 10"):
        _prepare(tmp_path, val_individuals=15, train_individuals=10)
