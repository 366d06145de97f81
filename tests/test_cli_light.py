"""`indivaid --help` answers in a second (issue 31, item 7): building the parser, and printing
any command's help, imports none of the heavy libraries; each command imports what it uses,
when it comes to use it. Checked by what is imported, in a fresh interpreter, never by a clock.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from indivaid_core import cli

HEAVY = ("torch", "pandas", "scipy", "open_clip", "faiss", "sklearn", "matplotlib")
# What only a model needs: a refusal that comes before the model is loaded imports none of it.
MODEL_STACK = ("open_clip", "timm", "torchvision", "matplotlib", "sklearn", "scipy", "faiss")


def every_command() -> list[list[str]]:
    """`indivaid` and each of its commands and sub-commands, as the parser knows them: a
    command added later is checked without being listed here."""
    found: list[list[str]] = [[]]

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(cli.build_parser(), [])
    return found


COMMANDS = every_command()


def loaded(code: str, modules: tuple[str, ...] = HEAVY) -> list[str]:
    """Which of `modules` a fresh interpreter has imported after running `code`."""
    report = f"print(json.dumps([m for m in {modules!r} if m in sys.modules]))"
    probe = f"{code}\nimport json, sys\n{report}"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def refused(args: list[str], cwd: str = ".") -> str:
    """Code that runs `indivaid ARGS` in-process and checks it ends as a one-line refusal."""
    return (
        "import contextlib, io, os\nfrom indivaid_core import cli\n"
        f"os.chdir({cwd!r})\n"
        "with contextlib.redirect_stderr(io.StringIO()) as err:\n"
        f"    rc = cli.main({args!r})\n"
        "lines = err.getvalue().splitlines()\n"
        "assert rc == 2 and len(lines) == 1 and lines[0].startswith('error:'), (rc, lines)"
    )


def test_the_parser_lists_every_command_including_the_delegated_ones():
    names = {" ".join(c) for c in COMMANDS}
    assert {"train", "index build", "index add", "index set-threshold", "identify"} <= names
    assert {"profile", "snapshot", "synth"} <= names  # snapshot and synth keep their own help


def test_building_the_parser_imports_nothing_heavy():
    code = "import indivaid_core.cli as cli\ncli.build_parser()"
    assert loaded(code) == []


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "indivaid")
def test_help_imports_nothing_heavy(command):
    code = (
        "import contextlib, io\nfrom indivaid_core import cli\n"
        f"with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    cli.main({[*command, '--help']!r})\n"
        f"assert 'usage: indivaid {' '.join(command)}'.strip() in out.getvalue()"
    )
    assert loaded(code) == []


def test_a_bad_option_is_refused_before_anything_heavy_is_imported(tmp_path):
    """Options are checked before the photo-reading commands import their libraries."""
    for args in (
        ["identify", "--index", "idx", "a.jpg", "--top-k", "0"],
        ["identify", "--index", "idx", "a.jpg", "--threshold", "nan"],
        ["index", "add", "idx", "--images", "photos", "--batch-size", "0"],
        ["index", "set-threshold", "idx", "abc"],
        ["train", "--images", "photos", "--out", "run", "--set", "device=tpu"],
    ):
        assert loaded(refused(args, str(tmp_path))) == [], args


def test_identify_refuses_an_existing_output_before_anything_heavy(tmp_path):
    (tmp_path / "results.csv").write_text("an earlier run's results")
    args = ["identify", "--index", "idx", "a.jpg", "--out", "results.csv"]
    assert loaded(refused(args, str(tmp_path))) == []


def test_identify_refuses_a_missing_index_before_loading_the_model_stack(tmp_path):
    """Opening an index needs torch and pandas, not the model's open_clip, timm, torchvision."""
    args = ["identify", "--index", "no-such.index", "a.jpg"]
    assert loaded(refused(args, str(tmp_path)), MODEL_STACK) == []


def test_user_errors_are_classified_without_importing_them():
    """An error class whose module was never imported cannot have been raised: leaving it out
    keeps a failing light command light, and the full tuple still has every class."""
    code = "from indivaid_core import cli\nassert cli.door.UsageError in cli.user_errors()"
    assert loaded(code) == []
    from indivaid_core.data.images import DataError
    from indivaid_core.identify.index import GalleryIndexError

    assert {DataError, GalleryIndexError, FileNotFoundError} <= set(cli.USER_ERRORS)
    assert GalleryIndexError in cli.user_errors()  # imported now, so it counts


def test_identify_package_loads_its_names_on_first_use():
    assert loaded("import indivaid_core.identify\nimport indivaid_core.identify.backends") == []
    from indivaid_core.identify import BACKENDS, GalleryIndex, index

    assert GalleryIndex is index.GalleryIndex and BACKENDS is index.BACKENDS


def test_data_package_loads_its_names_on_first_use():
    """Reading photos (data.images) needs Pillow, not the torch Dataset's torchvision."""
    code = "import indivaid_core.data.images\nfrom indivaid_core.data import DataError, load_rgb"
    assert loaded(code, ("torch", "torchvision", "pandas")) == []
    import indivaid_core.data as data
    from indivaid_core.data import dataset

    assert data.ImageTableDataset is dataset.ImageTableDataset
    assert set(data.__all__) <= set(dir(data))
