"""`python -m indivaid_core.repro.train_cli stage1|stage2 ...` — the stages without notebooks.

This is what `torchrun --nproc_per_node N -m indivaid_core.repro.train_cli ...` runs for DDP.
"""

from __future__ import annotations

import argparse
import json
import sys

from indivaid_core.config import ConfigError, add_settings_arguments, load, parse_overrides
from indivaid_core.data.images import DataError
from indivaid_core.repro.training import run_stage1, run_stage2
from indivaid_core.safe_io import LockedError, UnreadableFileError


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m indivaid_core.repro.train_cli", description=__doc__
    )
    ap.add_argument("stage", choices=["stage1", "stage2"])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--text", help="stage-1 run name (pipeline.text_runs)")
    ap.add_argument("--variant", help="variant name (variants)")
    add_settings_arguments(ap)
    ap.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    args = ap.parse_args(argv)
    if args.stage == "stage1" and not args.text:
        ap.error("stage1 needs --text")
    if args.stage == "stage2" and not args.variant:
        ap.error("stage2 needs --variant")
    try:
        cfg = load(args.params, parse_overrides(args.set))
        cfg.dataset(args.dataset)  # a misspelt name fails here, with a did-you-mean
        if args.stage == "stage1":
            cfg.for_run(args.dataset, args.text)
            result = run_stage1(cfg, args.dataset, args.text, resume=not args.no_resume)
        else:
            cfg.variant(args.variant, args.dataset)
            result = run_stage2(cfg, args.dataset, args.variant, resume=not args.no_resume)
    except (ConfigError, DataError, UnreadableFileError, LockedError) as err:
        print(f"error: {err}", file=sys.stderr)  # bad settings, checkpoint or busy folder
        sys.exit(2)
    print(json.dumps(result, indent=1, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
