"""papermill, minus about 3.5 s of fixed cost: what every DVC stage runs (dvc.yaml's `nb` var).

    python -m indivaid_core.repro.run_notebook IN.ipynb OUT.ipynb -k python3 -p key value ...

takes papermill's own command line and runs papermill's own CLI, with two differences that
change no cell's work and no output (benchmarks/bench_stage_overhead.py measures both):

1. An import left out of papermill's process. papermill imports nbformat, nbformat imports
   jsonschema, and jsonschema, when the optional `rfc3987-syntax` is installed (jupyterlab
   pulls it in through jupyter-events), builds a lark grammar for its "iri" format checkers
   on import: 1.0 s of a 1.45 s papermill start. nbformat validates notebooks with
   fastjsonschema (its default, NBFORMAT_VALIDATOR), not jsonschema, and the notebook schema
   has no "iri" format, so nothing papermill does uses that checker. A None in sys.modules
   makes the import fail, which jsonschema takes as the package not being installed.

2. The kernel exits without tearing the interpreter down. A kernel that has imported torch
   spends about 2.5 s after papermill's shutdown request freeing its modules one by one. The
   kernel is started with `exit_fast_at_shutdown()` as its first line (IPKernelApp.exec_lines),
   which registers an atexit handler before any cell runs. atexit runs handlers last in, first
   out, so this one runs after every handler that the notebook's code registered
   (multiprocessing's, torch's, ...). It flushes every file still open for writing, as the
   teardown would, then ends the process with os._exit. Files the cells wrote and closed are
   on disk before the last cell's reply reaches papermill, and papermill writes the output
   notebook itself, so the outputs are the same. What is skipped: the module teardown, the
   last garbage collection (so `__del__` of objects still alive at exit), and the handlers
   that ipykernel, IPython, zmq and tornado registered at start-up (their sockets, threads
   and an in-memory history); the `weakref.finalize` callbacks and logging's flush, also
   registered before it, are run by hand.

Only `python -m indivaid_core.repro.run_notebook` does either: plain papermill, JupyterLab and
pytest --nbval-lax run the notebooks as before.
"""

from __future__ import annotations

import sys

# The kernel's first line: run by IPKernelApp before the notebook's first cell.
KERNEL_FIRST_LINE = (
    "from indivaid_core.repro.run_notebook import exit_fast_at_shutdown as _x; _x(); del _x"
)


def _flush_and_exit() -> None:
    """What the teardown would write, then end the process at once: the pending
    `weakref.finalize` callbacks and logging's handlers (both registered with atexit before
    this handler, so they would run after it), and every file still open for writing. If any
    of that fails, the interpreter tears itself down as usual instead."""
    import _io
    import gc
    import logging
    import os
    import warnings
    import weakref

    try:
        exitfunc = getattr(weakref.finalize, "_exitfunc", None)  # what atexit would call
        if exitfunc is not None:
            exitfunc()
        logging.shutdown()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # isinstance on some torch objects warns
            for obj in gc.get_objects():
                # _io._IOBase: the C base of every io class, a quick check. The kernel's own
                # stdout and stderr (ipykernel.iostream) go to papermill, which has stopped
                # listening; they are left alone.
                if isinstance(obj, _io._IOBase) and type(obj).__module__ != "ipykernel.iostream":
                    try:
                        if not obj.closed and obj.writable():
                            obj.flush()
                    except (OSError, ValueError):  # a broken stream must not stop the rest
                        pass
    except Exception:
        return
    os._exit(0)


def exit_fast_at_shutdown() -> None:
    """In a kernel: at exit, after every later-registered atexit handler, skip the teardown."""
    import atexit

    atexit.register(_flush_and_exit)


def _engine():
    """papermill's nbclient engine, starting the kernel with KERNEL_FIRST_LINE."""
    from papermill.engines import NBClientEngine

    class FastExitEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            kwargs.setdefault("extra_arguments", [f"--IPKernelApp.exec_lines={KERNEL_FIRST_LINE}"])
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    return FastExitEngine


def main() -> None:
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    from papermill.cli import papermill
    from papermill.engines import papermill_engines

    papermill_engines.register(None, _engine())  # the default engine, in this process only
    papermill(prog_name="papermill")


if __name__ == "__main__":
    main()
