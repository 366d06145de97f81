"""The stage launcher (`python -m indivaid_core.repro.run_notebook`, dvc.yaml's `nb` var), and
each stage notebook importing only what its stage needs: the fixed cost of a stage
(benchmarks/bench_stage_overhead.py) without a change to what a stage writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

CELL = """\
import atexit
left_open = open("left_open.txt", "w")
left_open.write("x" * 100)  # buffered, never closed: the teardown would flush it
atexit.register(lambda: open("atexit.txt", "w").write("ran"))
class AtTeardown:
    def __del__(self):  # only the interpreter's teardown calls this
        open("teardown.txt", "w").write("ran")
keep = AtTeardown()
print(greeting, 6 * 7)"""


def _notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell('greeting = ""', metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell(CELL),
        ]
    )
    nb.metadata["kernelspec"] = KERNELSPEC
    nbformat.write(nb, path)


def _nb_var() -> str:
    entries = yaml.safe_load((REPO / "dvc.yaml").read_text())["vars"]
    return next(e["nb"] for e in entries if isinstance(e, dict) and "nb" in e)


def _run(nb_cmd: str, src: Path, out_dir: Path) -> nbformat.NotebookNode:
    out_dir.mkdir()
    out = out_dir / "out.ipynb"
    cmd = f"{nb_cmd} '{src}' '{out}' -p greeting hello"  # in out_dir: the files land there
    done = subprocess.run(
        ["bash", "-c", cmd], cwd=out_dir, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return nbformat.read(out, as_version=4)


def test_stage_command_writes_what_papermill_writes(tmp_path):
    """dvc.yaml's command: the same cells, outputs and execution counts as plain papermill; the
    kernel skips only the teardown (no `__del__` at exit) after flushing the open file and
    running the notebook's own atexit handler."""
    src = tmp_path / "nb.ipynb"
    _notebook(src)
    nb_cmd = _nb_var()
    assert "indivaid_core.repro.run_notebook" in nb_cmd
    new = _run(nb_cmd, src, tmp_path / "new")
    old = _run("papermill -k python3 --log-level WARNING", src, tmp_path / "old")
    for nb in (new, old):
        for cell in nb.cells:  # papermill's timings differ run to run
            cell.metadata.pop("papermill", None)
            cell.metadata.pop("execution", None)
    assert [c.source for c in new.cells] == [c.source for c in old.cells]
    assert [c.get("outputs") for c in new.cells] == [c.get("outputs") for c in old.cells]
    assert [c.get("execution_count") for c in new.cells] == [1, 2, 3]
    assert "hello 42" in new.cells[-1].outputs[0]["text"]
    assert new.metadata.papermill.parameters == old.metadata.papermill.parameters
    for side in ("new", "old"):
        assert (tmp_path / side / "left_open.txt").read_text() == "x" * 100
        assert (tmp_path / side / "atexit.txt").read_text() == "ran"
    assert (tmp_path / "old" / "teardown.txt").exists()
    assert not (tmp_path / "new" / "teardown.txt").exists()  # the fast exit was taken


def test_launcher_leaves_out_the_iri_grammar():
    """papermill's process does not build jsonschema's RFC 3987 grammar (~1 s)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "indivaid_core.repro.run_notebook", "--version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "papermill" in done.stdout.lower()
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()}
    assert "jsonschema" in imported  # nbformat still imports it...
    assert "rfc3987_syntax.syntax_helpers" not in imported  # ...but not the grammar


# What each stage's notebook must not import with its imports: the model stack (open_clip,
# timm) where the stage needs no model, the evaluation where it only trains, seaborn anywhere
# (the one function that draws with it imports it).
NOT_IMPORTED = {
    "01_prepare_data": ["open_clip", "timm", "indivaid_core.model", "indivaid_core.repro.training"],
    "02_stage1_text": ["open_clip", "timm", "indivaid_core.repro.evaluation"],
    "03_stage2_finetune": ["open_clip", "timm", "indivaid_core.repro.evaluation"],
    "07_report": ["open_clip", "timm", "indivaid_core.model", "indivaid_core.repro.training"],
}


@pytest.mark.parametrize("notebook", sorted(NOT_IMPORTED))
def test_a_stage_notebook_imports_only_what_its_stage_needs(notebook):
    """The notebook's own `from indivaid_core...` lines, run in a fresh interpreter."""
    nb = json.loads((REPO / "notebooks" / f"{notebook}.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"][1]  # [0] is the parameters
    lines = [x for x in "".join(code["source"]).splitlines() if x.startswith("from indivaid_core")]
    assert lines, f"{notebook}: no indivaid_core import in its first code cell"
    probe = "\n".join([*lines, "import json, sys", "print(json.dumps(sorted(sys.modules)))"])
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert "indivaid_core.repro.paths" in loaded  # every stage reads its settings through it
    for heavy in [*NOT_IMPORTED[notebook], "seaborn"]:
        assert heavy not in loaded, f"{notebook} imports {heavy} at start-up"
