"""Keeping a profile's report beside the default one, and checking a rerun against it.

The `dvc status` guard and the command line run for real in test_pipeline_e2e."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from indivaid_core.config import load
from indivaid_core.repro import snapshot, tables

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _report_tree(root, mAP: float) -> None:
    """The files a report consists of, with one real two-header-row main table."""
    reports = root / "reports"
    for part in snapshot.REPORT_PARTS:
        path = reports / part
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
        else:
            path.mkdir(parents=True, exist_ok=True)
    (root / "metrics" / "eval" / "a").mkdir(parents=True)
    metrics = pd.DataFrame(
        [{"dataset": "a", "variant": "indivaid", "mAP": mAP, "R1": 0.6, "n_seeds": 1, "std": None}]
    )
    tables.main_table(
        metrics, ["a", "Stoat"], ("mAP", "R1"), ["zero_shot", "image_only", "clipreid", "indivaid"]
    ).to_csv(reports / "tables" / "main.csv")
    (root / "metrics" / "eval" / "a" / "indivaid.json").write_text(json.dumps({"mAP": mAP}))


def test_two_header_row_tables_are_read_with_joined_column_names(tmp_path):
    _report_tree(tmp_path, 0.5)
    table = snapshot._read_table(tmp_path / "reports" / "tables" / "main.csv")
    assert "a · mAP" in table.columns and "Stoat · R1" in table.columns
    assert table.set_index(table.columns[0]).loc["indivaid", "a · mAP"] == "50.0"


def test_an_empty_table_as_pandas_writes_it_reads_as_empty(tmp_path):
    pd.DataFrame().to_csv(tmp_path / "empty.csv", index=False)
    assert snapshot._read_table(tmp_path / "empty.csv").empty


def test_snapshot_copies_then_compare_finds_a_changed_number_within_tolerance(tmp_path):
    _report_tree(tmp_path, 0.5)
    cfg = load(PARAMS, {"profile": "full"})
    kept = snapshot.snapshot(
        cfg, "reports/full", repo=tmp_path, wall_s=120.0, require_clean=False, note="busy"
    )
    assert (kept / "metrics" / "eval" / "a" / "indivaid.json").exists()
    provenance = (kept / "PROVENANCE.md").read_text()
    assert "120 s (2.0 min)" in provenance and "- Note: busy" in provenance
    assert snapshot.compare(kept, tmp_path / "reports") == []
    main = tmp_path / "reports" / "tables" / "main.csv"
    main.write_text(main.read_text().replace("50.0", "50.3"))
    problems = snapshot.compare(kept, tmp_path / "reports")
    assert len(problems) == 1 and "a · mAP" in problems[0] and "'50.3' vs '50.0'" in problems[0]
    assert snapshot.compare(kept, tmp_path / "reports", tol=0.5) == []
    (tmp_path / "reports" / "tables" / "new.csv").write_text("x\n1\n")
    assert any("new.csv: not in" in p for p in snapshot.compare(kept, tmp_path / "reports", 0.5))


@pytest.mark.parametrize("dest", ["reports", "reports/tables", "."])
def test_snapshot_refuses_a_destination_that_holds_what_it_copies(tmp_path, dest):
    _report_tree(tmp_path, 0.5)
    with pytest.raises(snapshot.SnapshotError, match="would overwrite"):
        snapshot.snapshot(load(PARAMS), dest, repo=tmp_path, require_clean=False)
    assert (tmp_path / "reports" / "tables" / "main.csv").exists()


def test_tables_at_a_git_revision_are_extracted_for_comparison(tmp_path):
    out = snapshot.tables_at_revision("HEAD", "reports", tmp_path, repo=PARAMS.parent)
    assert (out / "tables" / "main.csv").read_text().startswith(",")
    assert not snapshot.compare(out, out)
    with pytest.raises(snapshot.SnapshotError, match="has no nowhere/tables"):
        snapshot.tables_at_revision("HEAD", "nowhere", tmp_path, repo=PARAMS.parent)
