"""The `indivaid` console script. The command line's own import is inside the contract too: a
Ctrl-C that lands while `indivaid_core.cli` loads ends as one line and exit 130, like one that
lands later (`door.exit_status`), never as Python's traceback. Imports nothing else first."""

from __future__ import annotations

import sys

INTERRUPTED = "error: interrupted (Ctrl-C); nothing was half-written, rerun to start again"


def main() -> int:
    try:
        from indivaid_core import cli
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
