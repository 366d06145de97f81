"""Import arrows point down: the core never imports the reproduction layer.

Every module of the package is parsed with `ast` (imports inside functions count too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "indivaid_core"

# The method and what a user imports. `__main__.py` files are entry points, not core.
CORE = (
    "indivaid_core.config",
    "indivaid_core.device",
    "indivaid_core.safe_io",
    "indivaid_core.losses",
    "indivaid_core.transforms",
    "indivaid_core.data",
    "indivaid_core.model",
    "indivaid_core.train",
    "indivaid_core.evaluate",
    "indivaid_core.identify",
    "indivaid_core.figures_common",  # the tile frame of the core figures, the figure saver
    "indivaid_core.door",  # the command line's argument checks and how a run ends
    "indivaid_core.photos",  # which files the command line reads as photos, and its warnings
    "indivaid_core.lazy",  # a package's names imported on first use
)
# The machinery that reproduces the paper: stage functions, report, figures, snapshot, the
# synthetic suite.
REPRO = ("indivaid_core.repro",)


def _in(name: str, layer: tuple[str, ...]) -> bool:
    return any(name == m or name.startswith(m + ".") for m in layer)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, as absolute names (`from x import y` gives x and x.y)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (use indivaid_core.x)"
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


CORE_FILES = [
    p
    for p in sorted(PACKAGE.rglob("*.py"))
    if _in(_module_name(p), CORE) and p.name != "__main__.py"
]


def test_layers_cover_the_package():
    """Every module is in one layer, or is an entry point (cli, launch, __main__): a new
    module is placed on purpose."""
    entry = {"indivaid_core", "indivaid_core.cli", "indivaid_core.launch"}
    for p in PACKAGE.rglob("*.py"):
        name = _module_name(p)
        if p.name == "__main__.py" or name in entry:
            continue
        assert _in(name, CORE) != _in(name, REPRO), f"{name}: in neither or both layers"
    assert len(CORE_FILES) > 30


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_never_imports_the_reproduction_layer(path):
    upward = sorted(m for m in _imports(path) if _in(m, REPRO))
    assert not upward, f"{_module_name(path)} imports {upward}"


def test_no_relative_imports_anywhere():
    for p in PACKAGE.rglob("*.py"):
        _imports(p)
