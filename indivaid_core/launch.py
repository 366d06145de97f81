"""The `indivaid` console script. The command line's own import is inside the contract too: a
Ctrl-C that lands while `indivaid_core.cli` loads ends as one line and exit 130, like one that
lands later (`door.exit_status`), never as Python's traceback. Imports nothing else first."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from indivaid_core import cli
    except KeyboardInterrupt as err:
        from indivaid_core import door  # standard library only: how every run ends

        return door.exit_status(err, ())
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
