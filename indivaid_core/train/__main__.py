"""`python -m indivaid_core.train stage1|stage2 ...` — the stages without notebooks.

This is what `torchrun --nproc_per_node N -m indivaid_core.train ...` runs for DDP.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from .. import pipeline
from ..config import load
from ..safe_io import LockedError, UnreadableFileError


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m indivaid_core.train", description=__doc__)
    ap.add_argument("stage", choices=["stage1", "stage2"])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--text", help="stage-1 run name (pipeline.text_runs)")
    ap.add_argument("--variant", help="variant name (variants)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted params override, YAML value (repeatable)",
    )
    ap.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    cfg = load(args.params, overrides)
    resume = not args.no_resume
    if args.stage == "stage1" and not args.text:
        ap.error("stage1 needs --text")
    if args.stage == "stage2" and not args.variant:
        ap.error("stage2 needs --variant")
    try:
        if args.stage == "stage1":
            result = pipeline.run_stage1(cfg, args.dataset, args.text, resume=resume)
        else:
            result = pipeline.run_stage2(cfg, args.dataset, args.variant, resume=resume)
    except (UnreadableFileError, LockedError) as err:  # a bad checkpoint, a busy run folder
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(result, indent=1, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
