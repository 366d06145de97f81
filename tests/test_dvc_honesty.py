"""Each DVC stage's `params:` in dvc.yaml equals the settings its code reads (issue 28).

A stage whose list misses a setting it reads is not re-run when that setting changes: `dvc
repro` then reports stale results as current. A listed setting that no code reads re-runs the
stage for nothing. So every stage's notebook runs here, in-process, with the parameters its
dvc.yaml `cmd` passes, on a smoke-sized copy of params.yaml, while a recorder notes each
setting read from the config dataclasses as a dotted key (`stage2.amp`,
`data.datasets.synth-stoat.protocol`). Then, per stage:

- every key a cell reads must fall under one of its resolved `params:` entries (an entry
  `model` covers `model.*`), unless `NOT_OUTPUT_SETTINGS` below says why it cannot change an
  output;
- every entry must be read by at least one of the stage's cells.

What counts as a read: a read of a leaf setting, of a dict setting's key, or of a whole dict
(iterating it, hashing or saving it). Reading a section object (`cfg.stage2`) is not one;
reading its fields is. `config.to_dict(cfg)` is watched the same way, so a section a stage
hashes or saves whole is read whole. Not reads by the stage: loading and validating
params.yaml; `dataclasses.replace` copying a config, and the fields it sets (`seed=s` from
`pipeline.seeds` is the code's value); the merge inside `Config.for_run` (the config it returns
is recorded when read, and so are the dataset overrides, text run and variant it merges in).
Runs that go side by side in worker processes run in this process here, so their reads count.

`profile` and `profiles.${profile}` are the profile mechanism: the selected block is merged
over the top level before any stage code runs, so any setting a stage reads may come from it.
Every stage must list both; they are not matched against reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import pytest
import yaml

from indivaid_core import config
from indivaid_core.repro import training

REPO = Path(__file__).resolve().parents[1]

# Settings a stage reads that cannot change what it writes. Keep this short: each entry needs
# a reason, and anything else a stage reads belongs in its `params:`.
NOT_OUTPUT_SETTINGS = {
    # where outputs go, not what they hold: dvc.yaml's `outs` fix the places DVC tracks
    "data.work": "where a stage writes; dvc.yaml's outs name the place",
    "data.metrics": "where a stage writes; dvc.yaml's outs name the place",
    "data.reports": "where a stage writes; dvc.yaml's outs name the place",
    "data.models": "where the synthetic CLIP is written and read; outs/deps name it",
    # load_config sets it process-wide: a refusal, never a different number
    "data.max_pixels": "a larger image stops the stage with an error; no output changes",
    "data.num_workers": "decoding processes: the same pixels in the same order",
}

# The profile mechanism (module docstring): listed by every stage, never matched to reads.
# Entries that name a whole section although the stage reads only part of it, and why no
# narrower list can be written. Any other section entry must have every setting under it read,
# so a single edit re-runs only the stages whose code reads it.
BROAD_ENTRIES = {
    ("prepare", "data.datasets"): "prepare reads the blocks of the datasets pipeline.datasets "
    "names, less `species` and `overrides`: dvc.yaml cannot list keys another setting chooses",
    ("scaling_stage1", "pipeline.text_runs"): "a size trains the text runs its variants name "
    "(variants.<v>.text for each of pipeline.scaling.variants): a list of any length, which "
    "dvc.yaml's params cannot be",
    ("scaling_stage1", "variants"): "the same: the `text` of each of pipeline.scaling.variants",
    ("report", "pipeline.scaling.overrides"): "the entries of the sides "
    "pipeline.scaling.train_individuals names; another profile's sides may keep theirs",
}

PROFILE_ENTRIES = ("profile", "profiles.${profile}")

PROFILE = "smoke"
DATASET = "synth-stoat"
CONFIG_CLASSES = tuple(
    c for c in vars(config).values() if isinstance(c, type) and dataclasses.is_dataclass(c)
)
FIELDS = {c: {f.name for f in dataclasses.fields(c)} for c in CONFIG_CLASSES}


# --------------------------------------------------------------------------- the recorder


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


class Recorder:
    """Dotted keys read from config objects while `stage` is set."""

    def __init__(self) -> None:
        self.paths: dict[int, str] = {}
        self.set_by_code: dict[int, set[str]] = {}  # fields dataclasses.replace was given
        self.alive: list[Any] = []  # tagged objects stay alive, so no id is reused
        self.reads: dict[str, set[str]] = {}
        self.stage: str | None = None
        self.paused = 0

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        self.paused += 1
        try:
            yield
        finally:
            self.paused -= 1

    def tag(self, obj: Any, path: str) -> None:
        """Name `obj` and every config object inside it by its dotted path."""
        if isinstance(obj, CONFIG_CLASSES):
            if id(obj) in self.paths:
                return
            self.paths[id(obj)] = path
            self.alive.append(obj)
            for name in FIELDS[type(obj)]:
                self.tag(object.__getattribute__(obj, name), _join(path, name))
        elif isinstance(obj, dict):
            for key, value in obj.items():
                self.tag(value, _join(path, key))

    def path_of(self, obj: Any) -> str:
        if id(obj) not in self.paths:
            if type(obj) is not config.Config:
                return f"<untagged {type(obj).__name__}>"
            self.tag(obj, "")  # a Config made by for_run, variant or replace: a new root
        return self.paths[id(obj)]

    def counts(self, frame: Any) -> bool:
        """A read made by stage code, not by loading, validating or merging settings."""
        if self.stage is None or self.paused:
            return False
        while frame.f_code.co_name.startswith("<") and frame.f_back is not None:
            frame = frame.f_back  # a comprehension: judge the function it is in
        if frame.f_code.co_filename == config.__file__:
            return not frame.f_code.co_name.startswith("_")  # Config methods, deep_merge
        return True

    def read(self, key: str) -> None:
        self.reads.setdefault(self.stage, set()).add(key)

    def view(self, value: Any, key: str) -> Any:
        """What a counted read returns: sections as they are, dicts watched, leaves recorded."""
        if isinstance(value, CONFIG_CLASSES):
            self.tag(value, key)
            return value
        if isinstance(value, dict):
            return WatchedDict(value, key, self)
        self.read(key)
        return value


class WatchedDict(dict):
    """A dict setting (or `to_dict`'s result) that records which of its keys are read.

    Item reads record `path.key`; anything that sees the whole dict (iteration, items, len,
    equality, copying) records `path`. `key in d` records nothing: whether an entry exists is
    not a setting's value (a missing one is an error). Overriding `__iter__` also keeps C code
    such as `dict(d)` and `{**d}` on these methods instead of reading the table directly.
    """

    def __init__(self, data: dict, path: str, rec: Recorder) -> None:
        super().__init__(data)
        self._path, self._rec = path, rec

    def _whole(self) -> None:
        if self._rec.counts(sys._getframe(2)):
            if self._path:
                self._rec.read(self._path)
            else:  # to_dict of a whole Config: each section it holds
                for key in dict.keys(self):
                    self._rec.read(key)

    def _item(self, key: Any, value: Any) -> Any:
        if not self._rec.counts(sys._getframe(2)):
            return value
        return self._rec.view(value, _join(self._path, key))

    def __getitem__(self, key: Any) -> Any:
        return self._item(key, dict.__getitem__(self, key))

    def get(self, key: Any, default: Any = None) -> Any:
        return self._item(key, dict.get(self, key, default))

    def __iter__(self) -> Iterator[Any]:
        self._whole()
        return dict.__iter__(self)

    def keys(self) -> Any:
        self._whole()
        return dict.keys(self)

    def items(self) -> Any:
        self._whole()
        return dict.items(self)

    def values(self) -> Any:
        self._whole()
        return dict.values(self)

    def __len__(self) -> int:
        self._whole()
        return dict.__len__(self)

    def __eq__(self, other: object) -> bool:
        self._whole()
        return dict.__eq__(self, other)

    def __repr__(self) -> str:
        self._whole()
        return dict.__repr__(self)

    __hash__ = None  # type: ignore[assignment]

    def copy(self) -> dict:
        self._whole()
        return dict(dict.items(self))

    def __reduce_ex__(self, protocol: Any) -> Any:  # deepcopy, pickle: a plain dict
        self._whole()
        return (dict, (dict(dict.items(self)),))


def _record_reads(rec: Recorder) -> Any:
    def __getattribute__(obj: Any, name: str) -> Any:
        value = object.__getattribute__(obj, name)
        if name not in FIELDS[type(obj)] or not rec.counts(sys._getframe(1)):
            return value
        if name in rec.set_by_code.get(id(obj), ()):
            return value  # `replace(cfg, device="cpu")`: the code's value, not a setting
        return rec.view(value, _join(rec.path_of(obj), name))

    return __getattribute__


def _patch_everywhere(mp: pytest.MonkeyPatch, original: Any, replacement: Any) -> None:
    """Replace a function in its module and in every loaded module that imported it by name;
    modules imported later bind the replacement."""
    owners = ("indivaid_core", original.__module__)
    for module in [m for n, m in list(sys.modules.items()) if n.startswith(owners)]:
        for name, value in list(vars(module).items()):
            if value is original:
                mp.setattr(module, name, replacement)


def _install(mp: pytest.MonkeyPatch, rec: Recorder) -> None:
    getattribute = _record_reads(rec)
    for cls in CONFIG_CLASSES:
        mp.setattr(cls, "__getattribute__", getattribute)

    load, to_dict, replace = config.load, config.to_dict, dataclasses.replace

    def paused_load(*args: Any, **kw: Any) -> Any:
        with rec.pause():
            return load(*args, **kw)

    def watched_to_dict(cfg: Any) -> Any:
        with rec.pause():
            plain = to_dict(cfg)
        caller = sys._getframe(1)
        if caller.f_code.co_filename == config.__file__ or not rec.counts(caller):
            return plain  # for_run's merge: the config it returns is recorded when read
        return WatchedDict(plain, rec.path_of(cfg), rec)

    def paused_replace(obj: Any, /, **changes: Any) -> Any:
        with rec.pause():
            out = replace(obj, **changes)
        if type(obj) is config.Config or id(obj) in rec.paths:
            rec.tag(out, rec.path_of(obj))
            rec.set_by_code[id(out)] = set(changes)
        return out

    _patch_everywhere(mp, load, paused_load)
    _patch_everywhere(mp, to_dict, watched_to_dict)
    _patch_everywhere(mp, replace, paused_replace)

    # side by side on the CPU means worker processes, whose reads this process cannot see
    workers = training._workers
    mp.setattr(training, "_workers", lambda *a: workers(*a) and 1)


# --------------------------------------------------------------------------- the stages


def _resolve(text: str, values: dict[str, Any]) -> str:
    """dvc.yaml's `${name}` interpolation for the names a stage uses."""

    def one(m: re.Match) -> str:
        if m.group(1) not in values:
            raise KeyError(f"dvc.yaml: no value for ${{{m.group(1)}}} in this test")
        return str(values[m.group(1)])

    return re.sub(r"\$\{([^}]+)\}", one, text)


def _papermill_value(text: str) -> Any:
    """papermill's `-p` conversion: True/False/None, numbers, else the string."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


def _notebook_call(cmd: str) -> tuple[Path, dict[str, Any]]:
    """The notebook a stage's `cmd` runs and the parameters it passes it."""
    words = shlex.split(cmd.split("&&")[-1])
    notebook = next(w for w in words if w.endswith(".ipynb"))
    params = {
        words[i + 1]: _papermill_value(words[i + 2]) for i, w in enumerate(words) if w == "-p"
    }
    return REPO / notebook, params


def _run_notebook(notebook: Path, params: dict[str, Any]) -> None:
    """The notebook's code cells in one namespace, its parameters injected as papermill does."""
    import matplotlib.pyplot as plt

    ns: dict[str, Any] = {"__name__": "__main__"}
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    for i, cell in enumerate(cells):
        lines = "".join(cell["source"]).splitlines()
        source = "\n".join(line for line in lines if not line.lstrip().startswith("%"))
        exec(compile(source, f"{notebook.name}[{i}]", "exec"), ns)  # noqa: S102
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            ns.update(params)
        plt.close("all")


@dataclasses.dataclass
class Cell:
    """One DVC stage instance: its template in dvc.yaml and the values `${...}` take."""

    stage: str  # the template's name in dvc.yaml
    name: str  # DVC's name for the instance
    values: dict[str, Any]


def _smoke_params(tmp: Path) -> tuple[Path, dict[str, Any]]:
    """params.yaml under the smoke profile, one dataset, one seed, writing under `tmp`."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = PROFILE
    raw["data"].update({k: str(tmp / k) for k in ("work", "metrics", "reports", "models")})
    p = raw["pipeline"]
    p["text_runs"] = {k: v for k, v in p["text_runs"].items() if k in ("none", "meta-ctx4")}
    raw["variants"] = {
        k: v for k, v in raw["variants"].items() if v.get("text", "none") in p["text_runs"]
    }
    p.update(
        datasets=[DATASET],
        variants=["zero_shot", "indivaid"],
        robustness_variants=["zero_shot", "indivaid"],
        robustness_datasets=[DATASET],
        attention_datasets=[DATASET],
        ablation_datasets=[DATASET],
        ablations=["abl_mean"],
    )
    p["scaling"]["dataset"] = DATASET
    sizes = raw["profiles"][PROFILE]["pipeline"]["scaling"]["train_individuals"]
    p["scaling"]["overrides"] = {config.scaled_name(DATASET, n): {} for n in sizes}
    raw["eval"].update(rerank=True, rerank_k1=2, rerank_k2=1)  # its settings: read when on
    raw["profiles"][PROFILE]["pipeline"]["seeds"] = [0]
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, raw


def _cells(raw: dict[str, Any]) -> list[Cell]:
    """Every stage of dvc.yaml for the smoke copy's cells, in the order DVC runs them."""
    p = raw["pipeline"]
    scaling = {**p["scaling"], **raw["profiles"][PROFILE]["pipeline"].get("scaling", {})}
    scaled = [config.scaled_name(DATASET, n) for n in scaling["train_individuals"]]
    base = {
        "profile": raw["profile"],
        "pipeline.attention_variant": p["attention_variant"],
        "cells.scaling_dataset": scaling["dataset"],
    }
    cells = [Cell("pretrain", "pretrain", base), Cell("prepare", "prepare", base)]
    cells += [Cell("stage1", f"stage1@{d}", {**base, "item": d}) for d in p["datasets"]]
    cells += [Cell("scaling_stage1", f"scaling_stage1@{d}", {**base, "item": d}) for d in scaled]
    cfg = config.resolve(raw)  # the foreach items, as `indivaid profile` writes cells.yaml
    for stage, datasets, variants in (
        ("stage2", p["datasets"], p["variants"]),
        ("ablation", p["ablation_datasets"], p["ablations"]),
        ("scaling", scaled, scaling["variants"]),
    ):
        items = config.trained_cells(cfg, datasets, variants)
        cells += [
            Cell(stage, f"{stage}@{key}", {**base, **{f"item.{k}": v for k, v in item.items()}})
            for key, item in items.items()
        ]
    for stage, key in (
        ("evaluate", "datasets"),
        ("robustness", "robustness_datasets"),
        ("attention", "attention_datasets"),
    ):
        cells += [Cell(stage, f"{stage}@{d}", {**base, "item": d}) for d in p[key]]
    cells += [
        Cell("scaling_evaluate", f"scaling_evaluate@{d}", {**base, "item": d}) for d in scaled
    ]
    return [*cells, Cell("report", "report", base)]


def _template(dvc: dict[str, Any], stage: str) -> dict[str, Any]:
    spec = dvc["stages"][stage]
    return spec.get("do", spec)


def _entries(dvc: dict[str, Any], stage: str) -> list[str]:
    """The stage's `params:` entries as written (keys of params.yaml; no other file here)."""
    entries = _template(dvc, stage).get("params", [])
    assert all(isinstance(e, str) for e in entries), f"{stage}: params from another file"
    return entries


@pytest.fixture(scope="module")
def dvc() -> dict[str, Any]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def record_stages(dvc: dict[str, Any], tmp: Path) -> tuple[list[Cell], dict[str, set[str]]]:
    """Run every stage's notebook on the smoke copy; the keys each cell read.

    A params.yaml key that the stage's `cmd` interpolates (`-p variant
    ${pipeline.attention_variant}`) reaches the notebook as a parameter: it counts as read.
    """
    params_file, raw = _smoke_params(tmp)
    cells = _cells(raw)
    rec = Recorder()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # relative paths as under dvc: data/, reports/numerical_spread.csv
        matplotlib.use("Agg")
        _install(mp, rec)
        for cell in cells:
            template = _template(dvc, cell.stage)["cmd"]
            notebook, params = _notebook_call(_resolve(template, {"nb": "", **cell.values}))
            rec.stage = cell.name
            for name in re.findall(r"\$\{([^}]+)\}", template):
                if name != "nb" and name.split(".")[0] != "item":
                    rec.read(name)
            try:
                _run_notebook(notebook, {**params, "params_file": str(params_file)})
            finally:
                rec.stage = None
    return cells, rec.reads


@pytest.fixture(scope="module")
def recorded(dvc, tmp_path_factory) -> tuple[list[Cell], dict[str, set[str]]]:
    return record_stages(dvc, tmp_path_factory.mktemp("dvc_honesty"))


def _covers(entry: str, key: str) -> bool:
    return key == entry or key.startswith(entry + ".")


def _problems(dvc: dict[str, Any], stage: str, cells: list[Cell], reads: dict) -> list[str]:
    entries = _entries(dvc, stage)
    out = [f"{stage} does not list `{e}` (every stage must)" for e in PROFILE_ENTRIES]
    out = [msg for e, msg in zip(PROFILE_ENTRIES, out, strict=True) if e not in entries]
    used: set[str] = set()
    for cell in cells:
        keys = reads.get(cell.name, set())
        resolved = {
            e: _resolve(e, {"profile": PROFILE, **cell.values})
            for e in entries
            if e not in PROFILE_ENTRIES
        }
        for key in sorted(keys):
            if key == "profile" or key in NOT_OUTPUT_SETTINGS:
                continue
            if not any(_covers(r, key) for r in resolved.values()):
                out.append(f"{cell.name} reads `{key}`, which its params in dvc.yaml do not list")
        used |= {
            e for e, r in resolved.items() if any(_covers(r, k) or _covers(k, r) for k in keys)
        }
    out += _partly_read(stage, cells, reads, entries)
    ran = ", ".join(c.name for c in cells)
    out += [
        f"{stage} lists `{e}` in dvc.yaml, but none of its cells ({ran}) reads it"
        for e in entries
        if e not in PROFILE_ENTRIES and e not in used
    ]
    return out


def _leaves(node: Any, prefix: str) -> Iterator[str]:
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}")
    else:
        yield prefix


def _partly_read(stage: str, cells: list[Cell], reads: dict, entries: list[str]) -> list[str]:
    """A section entry (`eval`) whose settings are not all read by the stage: an edit to an
    unread one would re-run it for nothing. It should list the settings it reads instead."""
    keys = set().union(*(reads.get(c.name, set()) for c in cells))
    out = []
    for e in entries:
        if e in PROFILE_ENTRIES or (stage, e) in BROAD_ENTRIES:
            continue
        unread = _unread(e, keys)
        if unread:
            out.append(f"{stage} lists the section `{e}` but never reads {unread}: list the rest")
    return out


@functools.cache
def _params() -> dict[str, Any]:
    """params.yaml as written, parsed once for every stage's entries."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _unread(entry: str, keys: set[str]) -> list[str]:
    """The settings under a section entry of params.yaml that none of `keys` covers (none for
    a leaf, or a templated entry: those are resolved per cell and matched in _problems)."""
    node: Any = _params()
    for part in entry.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return []
    return [k for k in _leaves(node, entry) if not any(_covers(r, k) for r in keys)]


STAGES = ("pretrain", "prepare", "stage1", "stage2", "ablation", "evaluate", "robustness")
STAGES += ("attention", "report", "scaling_stage1", "scaling", "scaling_evaluate")


def test_every_dvc_stage_is_run_here(dvc):
    """A stage added to dvc.yaml must be added to this test, or its params go unchecked."""
    assert set(dvc["stages"]) == set(STAGES)


def test_each_broad_entry_is_still_listed_and_still_partly_read(dvc, recorded):
    """An exemption outlives its reason when dvc.yaml stops listing the entry or the stage
    comes to read all of it: then it must go, so the narrow check applies again."""
    cells, reads = recorded
    for (stage, entry), why in BROAD_ENTRIES.items():
        assert entry in _entries(dvc, stage), f"{stage} no longer lists `{entry}` ({why})"
        keys = set().union(*(reads.get(c.name, set()) for c in cells if c.stage == stage))
        assert _unread(entry, keys), f"{stage} now reads all of `{entry}`: drop its exemption"


@pytest.mark.parametrize("stage", STAGES)
def test_params_are_what_the_stage_reads(stage, dvc, recorded):
    cells, reads = recorded
    mine = [c for c in cells if c.stage == stage]
    assert mine, f"{stage}: no cell of it ran"
    problems = _problems(dvc, stage, mine, reads)
    assert not problems, "\n".join(problems)


def test_the_recorder_sees_a_read(tmp_path):
    """The recorder itself: a leaf, a dict key, a to_dict section, and what it ignores."""
    params_file, _ = _smoke_params(tmp_path)
    rec = Recorder()
    with pytest.MonkeyPatch.context() as mp:
        _install(mp, rec)
        cfg = config.load(params_file)
        rec.stage = "probe"
        assert cfg.stage2.amp is True
        assert cfg.dataset(DATASET).protocol == "leave_one_out"
        run = cfg.variant("indivaid", DATASET)
        assert run.model.fusion == "attention"
        assert dataclasses.replace(cfg, seed=1).seed == 1  # the code's value, not a setting
        json.dumps(config.to_dict(cfg)["stage1"])  # a section used whole
    assert rec.reads["probe"] == {
        "stage2.amp",
        f"data.datasets.{DATASET}.protocol",
        f"data.datasets.{DATASET}.overrides",
        "variants.indivaid.text",
        "variants.indivaid.model",
        "variants.indivaid.stage2",
        "pipeline.text_runs.meta-ctx4",
        "model.fusion",
        "stage1",
    }
