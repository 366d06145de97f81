"""Fixed cost of one pipeline stage: papermill running a notebook that does a real stage's
preamble and nothing else, with the old settings (BEFORE) against the new (AFTER).

The notebook is made at run time in a temp dir from the first code cell of
notebooks/02_stage1_text.ipynb, cut after its `load_config` line (`%matplotlib inline`,
chdir to the repo, pandas, IPython.display, the stage's `from indivaid_core...` imports, the
config with `tiny`), with timestamps written between the steps. The `+model` variant also
builds the tiny profile's model (`model.build_clip_for`), as the training and evaluation stages
do. Papermill runs from the repo root through bash, as DVC runs a stage's `cmd`.

BEFORE: the old command, `papermill -k python3 --log-level WARNING`, and the old eager imports,
emulated by importing the modules `pipeline` and `viz` used to import (seaborn, the evaluation,
robustness, saliency and training modules, the evaluation figures; the same sys.modules).
AFTER: the `nb` var of dvc.yaml as it is now, and the imports as they are now.
Each lever acts on one step of the breakdown below, so the per-step differences of the medians
are the levers' savings. `--levers` adds two modes that take one lever each: the old command
with today's imports, and today's command with the old imports.

Runs are interleaved, the order rotated each round, after a warm-up run of each command. Printed:
medians (and min) of the wall time per mode, the ratios, and a breakdown from the timestamps:
  papermill start  bash, python, papermill's imports, reading the notebook, spawning the kernel
                   (up to the kernel process's start time, read from /proc)
  kernel start     ipykernel's start and handshake, up to the first cell running
  imports          the preamble's imports, `%matplotlib inline` included
  config           load_config("params.yaml", True)
  model            (+model only) build_clip_for(cfg.model)
  shutdown, write  kernel shutdown, the output notebook written, papermill's exit
Usage: python benchmarks/bench_stage_overhead.py [--repeats 5] [--no-model] [--levers] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import yaml

REPO = Path(__file__).resolve().parents[1]
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
OLD_NB = "papermill -k python3 --log-level WARNING"  # dvc.yaml's `nb` var before issue 20
# What `from indivaid_core import pipeline, viz` imported before the imports were made lazy
# (the notebooks now import the stage modules themselves).
OLD_EAGER = (
    "import seaborn, indivaid_core.evaluate.figures, indivaid_core.evaluate.results, "
    "indivaid_core.repro.evaluation, indivaid_core.repro.prepare, "
    "indivaid_core.repro.robustness, indivaid_core.repro.saliency, indivaid_core.repro.training"
    "  # the old eager imports"
)
STEPS = ["papermill start", "kernel start", "imports", "config", "model", "shutdown, write"]

KERNEL_START = '''import os as _os, time as _time
def _proc_start():
    """This process's start, wall clock, from /proc (10 ms ticks)."""
    fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    started = int(fields[19]) / _os.sysconf("SC_CLK_TCK")
    return _time.time() - (float(open("/proc/uptime").read().split()[0]) - started)
_marks = {"first_cell": _time.time(), "kernel_process": _proc_start()}'''


def stage_preamble() -> list[str]:
    """The real stage preamble: 02_stage1_text's first code cell up to its load_config line."""
    nb = nbformat.read(REPO / "notebooks" / "02_stage1_text.ipynb", as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    lines = cells[1].source.splitlines()  # cells[0] holds the parameters
    end = next(i for i, line in enumerate(lines) if "load_config(" in line and "import" not in line)
    return lines[: end + 1]


def make_notebook(path: Path, eager: bool, model: bool) -> None:
    lines = stage_preamble()
    out: list[str] = []
    for line in lines:
        if line.startswith("cfg = "):
            out.append('_marks["imports"] = _time.time()')
        out.append(line)
        if line.startswith("from pathlib import Path"):
            out.append(f"os.chdir({str(REPO)!r})  # the stage's chdir to the repo")
        if eager and line.startswith("from indivaid_core") and OLD_EAGER not in out:
            out.append(OLD_EAGER)
    out.append('_marks["config"] = _time.time()')
    if model:
        out += [
            "from indivaid_core.model import build_clip_for",
            "model = build_clip_for(cfg.model)",
            '_marks["model"] = _time.time()',
        ]
    params = 'params_file = "params.yaml"\ntiny = True\nmarks_file = ""'
    dump = 'import json\nopen(marks_file, "w").write(json.dumps(_marks))'
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell(KERNEL_START),
            nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell("\n".join(out)),
            nbformat.v4.new_code_cell(dump),
        ]
    )
    nb.metadata["kernelspec"] = KERNELSPEC
    nbformat.write(nb, path)


def new_nb_command() -> str:
    for entry in yaml.safe_load((REPO / "dvc.yaml").read_text())["vars"]:
        if isinstance(entry, dict) and "nb" in entry:
            return entry["nb"]
    raise SystemExit("dvc.yaml has no `nb` var")


def run_once(nb_cmd: str, notebook: Path, tmp: Path) -> dict[str, float]:
    marks_file = tmp / "marks.json"
    marks_file.unlink(missing_ok=True)
    cmd = (
        f"{nb_cmd} {shlex.quote(str(notebook))} {shlex.quote(str(tmp / 'out.ipynb'))}"
        f" -p tiny True -p marks_file {shlex.quote(str(marks_file))}"
    )
    # as the dvc stages run: the venv's scripts first on PATH, from the repo root, through bash
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.time()
    done = subprocess.run(
        ["bash", "-c", cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    t_end = time.time()
    if done.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{done.stderr[-3000:]}")
    m = json.loads(marks_file.read_text())
    last = m.get("model", m["config"])
    return {
        "total": t_end - t0,
        "papermill start": m["kernel_process"] - t0,
        "kernel start": m["first_cell"] - m["kernel_process"],
        "imports": m["imports"] - m["first_cell"],
        "config": m["config"] - m["imports"],
        "model": m["model"] - m["config"] if "model" in m else float("nan"),
        "shutdown, write": t_end - last,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-model", action="store_true", help="leave out the +model variant")
    ap.add_argument("--levers", action="store_true", help="add the one-lever modes")
    ap.add_argument("--out", type=Path, help="also write what is printed to this file")
    args = ap.parse_args()

    new_nb = new_nb_command()
    modes = {  # name: (nb command, old eager imports, build the model)
        "BEFORE": (OLD_NB, True, False),
        "AFTER": (new_nb, False, False),
    }
    if not args.no_model:
        modes |= {"BEFORE +model": (OLD_NB, True, True), "AFTER +model": (new_nb, False, True)}
    if args.levers:
        modes |= {
            "old command, lazy imports": (OLD_NB, False, False),
            "new command, eager imports": (new_nb, True, False),
        }
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        notebooks = {}
        for name, (_, eager, model) in modes.items():
            notebooks[name] = tmp / f"stage_{eager:d}{model:d}.ipynb"
            make_notebook(notebooks[name], eager, model)
        names = list(modes)
        warm = "BEFORE +model" if "BEFORE +model" in modes else "BEFORE"
        for name in (warm, "AFTER"):  # warm-up: page cache, .pyc files, both commands
            run_once(modes[name][0], notebooks[name], tmp)
        runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                runs[name].append(run_once(modes[name][0], notebooks[name], tmp))

    def med(name: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[name])

    lines = [
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f} at the end; {args.repeats} interleaved runs per mode, "
        f"{time.time() - started:.0f} s in all",
        f"BEFORE command: {OLD_NB}",
        f"AFTER command:  {new_nb}   (dvc.yaml's nb var)",
        "",
        f"{'mode':28s} {'median':>7s} {'min':>6s}  " + " ".join(f"{s:>15s}" for s in STEPS),
    ]
    for name in names:
        lines.append(
            f"{name:28s} {med(name, 'total'):6.2f}s {min(x['total'] for x in runs[name]):5.2f}s  "
            + " ".join(f"{med(name, s):14.2f}s" for s in STEPS).replace("nans", "   -")
        )
    lines.append("")
    pairs = [("BEFORE", "AFTER"), ("BEFORE +model", "AFTER +model")]
    for before, after in pairs:
        if before in runs:
            b, a = med(before, "total"), med(after, "total")
            lines.append(
                f"{after} / {before}: {a:.2f} / {b:.2f} s = {a / b:.2f} (saved {b - a:.2f} s)"
            )
    lines.append("")
    lines.append("per step, BEFORE - AFTER medians (empty stage):")
    for step, lever in (
        ("papermill start", "launcher: no RFC 3987 grammar in papermill's process"),
        ("kernel start", "(unchanged)"),
        ("imports", "a stage imports its own modules only"),
        ("config", "(unchanged)"),
        ("shutdown, write", "launcher: the kernel skips the interpreter teardown"),
    ):
        saved = med("BEFORE", step) - med("AFTER", step)
        lines.append(f"  {step:16s} {saved:5.2f} s  {lever}")
    b = med("BEFORE", "total")
    for lever in ("old command, lazy imports", "new command, eager imports"):
        if lever in runs:
            lines.append(f"{lever}: saves {b - med(lever, 'total'):.2f} s of BEFORE's median")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
