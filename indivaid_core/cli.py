"""`indivaid` command line: build a gallery index from a trained export, grow it, identify photos.

  indivaid index build --checkpoint MODEL_DIR --images DIR_OR_CSV --out INDEX
  indivaid index add INDEX --images DIR_OR_CSV
  indivaid identify --index INDEX PHOTO_OR_FOLDER... --top-k 5 --out results.csv

Errors a user can fix (bad paths, mismatched model, empty gallery) print one clear message and
exit with status 2; per-file problems are warnings, and the files get an `error` in the CSV.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from indivaid_core.identify import api
from indivaid_core.identify.calibrate import CalibrationError
from indivaid_core.identify.index import BACKENDS, GalleryIndexError
from indivaid_core.identify.inputs import BadInputWarning

USER_ERRORS = (GalleryIndexError, CalibrationError, FileNotFoundError, KeyError, ValueError)


def _backend_params(args: argparse.Namespace) -> dict:
    """Only the options the chosen backend understands (the rest keep their defaults)."""
    chosen = {
        "faiss-ivf": {"nlist": args.nlist, "nprobe": args.nprobe},
        "faiss-hnsw": {"m": args.hnsw_m, "ef_search": args.ef_search},
    }.get(args.backend, {})
    return {k: v for k, v in chosen.items() if v is not None}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch-size", type=int, default=64)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="indivaid", description="Identify individual animals with a trained IndivAID export."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    idx = sub.add_parser("index", help="build or grow a gallery index").add_subparsers(
        dest="index_command", required=True
    )
    b = idx.add_parser("build", help="embed a labelled gallery into a new index")
    b.add_argument("--checkpoint", required=True, help="exported model folder (model.json)")
    b.add_argument(
        "--images",
        required=True,
        help="folder of identity sub-folders, or a metadata CSV (identity, path)",
    )
    b.add_argument("--root", help="image root for a CSV's relative paths (default: its folder)")
    b.add_argument("--out", required=True, help="index folder to write")
    b.add_argument("--backend", choices=BACKENDS, default="exact")
    thr = b.add_mutually_exclusive_group()
    thr.add_argument(
        "--threshold",
        type=float,
        help="new-individual distance threshold set by hand (no calibration)",
    )
    thr.add_argument(
        "--calibrate-split",
        type=float,
        default=0.2,
        metavar="FRACTION",
        help="share of identities held out to calibrate the threshold (default 0.2)",
    )
    b.add_argument("--calibration-repeats", type=int, default=5)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--nlist", type=int, help="faiss-ivf: number of cells (default ~sqrt(N))")
    b.add_argument("--nprobe", type=int, help="faiss-ivf: cells visited per query")
    b.add_argument("--hnsw-m", type=int, help="faiss-hnsw: links per node")
    b.add_argument("--ef-search", type=int, help="faiss-hnsw: search beam width")
    b.add_argument("--flip", action="store_true", help="average with the mirrored image")
    _add_common(b)

    a = idx.add_parser("add", help="add labelled images to an existing index")
    a.add_argument("index", help="index folder")
    a.add_argument("--images", required=True, help="identity folders or a metadata CSV")
    a.add_argument("--root", help="image root for a CSV's relative paths")
    a.add_argument("--checkpoint", help="model folder (default: the one the index remembers)")
    a.add_argument(
        "--recalibrate", action="store_true", help="recalibrate the threshold on the grown gallery"
    )
    _add_common(a)

    q = sub.add_parser("identify", help="identify photos against an index")
    q.add_argument("images", nargs="+", help="photos and/or folders of photos")
    q.add_argument("--index", required=True, help="index folder")
    q.add_argument("--checkpoint", help="model folder (default: the one the index remembers)")
    q.add_argument("--top-k", type=int, default=5)
    q.add_argument("--out", default="results.csv", help="CSV of results (default results.csv)")
    _add_common(q)
    return parser


def _show_warnings(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)


def run(args: argparse.Namespace) -> dict:
    if args.command == "index" and args.index_command == "build":
        model = api.load_model(args.checkpoint, args.device, flip=args.flip)
        index, report = api.build_index(
            model,
            args.images,
            args.root,
            args.backend,
            _backend_params(args),
            threshold=args.threshold,
            heldout_fraction=args.calibrate_split,
            calibration_repeats=args.calibration_repeats,
            seed=args.seed,
            batch_size=args.batch_size,
        )
        api.save_index(index, args.out, model)
        return {
            "index": args.out,
            **{k: v for k, v in report.items() if k != "errors"},
            "n_errors": len(report["errors"]),
        }
    if args.command == "index" and args.index_command == "add":
        index, model = api.open_index(args.index, args.checkpoint, args.device)
        report = api.add_to_index(
            index, model, args.images, args.root, args.recalibrate, args.batch_size
        )
        index.save(args.index)
        return {
            "index": args.index,
            "n_vectors": len(index.gallery),
            "n_added": report["n_added"],
            "n_errors": len(report["errors"]),
            "threshold": report["threshold"],
        }
    index, model = api.open_index(args.index, args.checkpoint, args.device)
    frame, summary = api.identify(index, model, args.images, args.top_k, args.batch_size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    return {"out": str(out), **summary}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BadInputWarning)
        try:
            result = run(args)
        except USER_ERRORS as err:
            _show_warnings(caught)
            msg = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"error: {msg}", file=sys.stderr)
            return 2
    _show_warnings(caught)
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
