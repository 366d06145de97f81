"""`indivaid --help` answers in a second (issue 31, item 7): building the parser, and printing
any command's help, imports none of the heavy libraries; each command imports what it uses.
Checked by what is imported, in a fresh interpreter, never by a clock."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "pandas", "open_clip", "faiss", "sklearn")
HELPS = ([], ["train"], ["index"], ["index", "build"], ["index", "add"], ["identify"], ["profile"])


def heavy_loaded(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running `code`."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_building_the_parser_imports_nothing_heavy():
    code = "import indivaid_core.cli as cli\ncli.build_parser()"
    assert heavy_loaded(code) == []


@pytest.mark.parametrize("command", HELPS, ids=lambda c: " ".join(c) or "indivaid")
def test_help_imports_nothing_heavy(command):
    code = (
        "import contextlib, io\nfrom indivaid_core import cli\n"
        f"with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    cli.main({[*command, '--help']!r})\n"
        "assert 'usage: indivaid' in out.getvalue()"
    )
    assert heavy_loaded(code) == []


def test_user_errors_are_classified_without_importing_them():
    """An error class whose module was never imported cannot have been raised: leaving it out
    keeps a failing light command light, and the full tuple still has every class."""
    code = "from indivaid_core import cli\nassert cli.door.UsageError in cli.user_errors()"
    assert heavy_loaded(code) == []
    from indivaid_core import cli
    from indivaid_core.data.images import DataError
    from indivaid_core.identify.index import GalleryIndexError

    assert {DataError, GalleryIndexError, FileNotFoundError} <= set(cli.USER_ERRORS)
    assert GalleryIndexError in cli.user_errors()  # imported now, so it counts


def test_identify_package_loads_its_names_on_first_use():
    assert (
        heavy_loaded("import indivaid_core.identify\nimport indivaid_core.identify.backends") == []
    )
    from indivaid_core.identify import BACKENDS, GalleryIndex, index

    assert GalleryIndex is index.GalleryIndex and BACKENDS is index.BACKENDS
