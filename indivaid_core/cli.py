"""`indivaid` command line, one entry point for everything a user runs outside `dvc repro`.

  indivaid train --images DIR_OR_CSV --out RUN_DIR [--species tiger] [--stage both]
  indivaid index build --checkpoint RUN_DIR/model --images DIR_OR_CSV --out INDEX
  indivaid index add INDEX --images DIR_OR_CSV
  indivaid index set-threshold INDEX 0.9   # keep a new-individual threshold chosen by hand
  indivaid identify --index INDEX PHOTO_OR_FOLDER... --top-k 5 --out results.csv
  indivaid profile paper            # select a params.yaml profile (writes cells.yaml for DVC)
  indivaid snapshot ...             # keep or check a report (indivaid_core/repro/snapshot.py)
  indivaid synth ...                # regenerate the synthetic suite

Errors a user can fix (bad paths, bad settings, mismatched model, empty gallery, a corrupt or
foreign file, an index or run folder another process is writing) print one clear message and
exit with status 2; per-file problems are warnings, and the files get an `error` in the CSV.
Index writes are whole or not at all, and one writer at a time.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import shlex
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from indivaid_core import config, door
from indivaid_core.identify.backends import BACKENDS
from indivaid_core.photos import POLICY as PHOTO_POLICY
from indivaid_core.photos import BadInputWarning

# Building the parser imports nothing heavy (torch, pandas, open_clip, faiss, sklearn): each
# command imports what it uses, so `indivaid --help` answers in well under a second.
USER_ERROR_CLASSES = (  # (module, class): named, not imported, for the same reason
    ("indivaid_core.config", "ConfigError"),
    ("indivaid_core.data.images", "DataError"),
    ("indivaid_core.identify.index", "GalleryIndexError"),
    ("indivaid_core.identify.calibrate", "CalibrationError"),
    ("indivaid_core.safe_io", "UnreadableFileError"),
    ("indivaid_core.safe_io", "LockedError"),
    ("indivaid_core.door", "UsageError"),
    ("indivaid_core.train.engine", "TrainingDiverged"),  # the fix is the user's: a lower lr
)
STANDARD_USER_ERRORS = (  # the standard errors a user's own paths raise
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def user_errors(loaded_only: bool = True) -> tuple[type[BaseException], ...]:
    """The errors a user can fix. By default only the classes of modules already imported: one
    never imported cannot have been raised, so classifying an error imports nothing."""
    found = []
    for module, name in USER_ERROR_CLASSES:
        mod = sys.modules.get(module) if loaded_only else importlib.import_module(module)
        if getattr(mod, name, None) is not None:
            found.append(getattr(mod, name))
    return (*found, *STANDARD_USER_ERRORS)


def __getattr__(name: str) -> Any:
    """``USER_ERRORS``, every class imported, for callers that want the whole tuple."""
    if name == "USER_ERRORS":
        return user_errors(loaded_only=False)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _backend_params(args: argparse.Namespace) -> dict:
    """Only the options the chosen backend understands (the rest keep their defaults)."""
    chosen = {
        "faiss-ivf": {"nlist": args.nlist, "nprobe": args.nprobe},
        "faiss-hnsw": {"m": args.hnsw_m, "ef_search": args.ef_search},
    }.get(args.backend, {})
    return {k: v for k, v in chosen.items() if v is not None}


@contextmanager
def _loading() -> Iterator[None]:
    """Import the model's libraries and load the model with the cyclic garbage collector
    paused, then freeze what is alive (`gc.freeze`). Importing torch, torchvision, timm and
    open_clip makes ~750,000 long-lived objects and little garbage (~10 MB), yet would set off
    ~1,000 collections, each walking the growing heap, and one more at exit: ~1 s of CPU each
    on a 2-core machine. Frozen, those objects are skipped by every later collection; the
    command's own garbage is collected as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


DELEGATED = {
    "snapshot": "keep the current report as reports/<profile>/, or check it (--check, --check-rev)",
    "synth": "regenerate the embedded synthetic suite",
}


def _delegate(command: str, argv: list[str]) -> int:
    if command == "snapshot":
        from indivaid_core.repro import snapshot

        return snapshot.main(argv)
    door.check_synth_argv(argv)
    from indivaid_core.repro import synthetic

    synthetic.main(argv)
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    """The options of the commands that embed photos (index build, index add, identify)."""
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--max-pixels",
        type=int,
        default=100_000_000,
        help="photos larger than this are skipped (default 100000000, as data.max_pixels); "
        "JPEGs are decoded reduced to the model's input, so only that reduced size counts",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="indivaid",
        description="Train IndivAID on your animals, index a gallery, identify new photos.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_profile(sub)
    idx = sub.add_parser("index", help="build or grow a gallery index").add_subparsers(
        dest="index_command", required=True
    )
    _add_index_build(idx)
    _add_index_add(idx)
    _add_set_threshold(idx)
    _add_identify(sub)
    return parser


def _add_train(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="train stage 1, stage 2 or both on a folder of your own animals",
        description="Train on every image of a folder with one sub-folder per individual (or "
        "a CSV with identity and path columns). Settings: those shipped with indivaid, or "
        "--params FILE; "
        "changed with --set. Writes RUN_DIR/stage1 (descriptions) and RUN_DIR/model (the "
        "export that `indivaid index build --checkpoint RUN_DIR/model` reads). A rerun with "
        "the same settings resumes; with other settings it trains afresh. A --set value wins "
        "over the variant's own settings and its text run (e.g. --set model.n_ctx=8 --set "
        "model.meta_net=false trains with those, not the text run's 4 and true). " + PHOTO_POLICY,
    )
    t.add_argument("--images", required=True, help="folder of identity sub-folders, or a CSV")
    t.add_argument("--out", required=True, help="run folder to write (RUN_DIR)")
    t.add_argument("--species", default="animal", help="the word after the X tokens in the prompt")
    t.add_argument("--variant", default="indivaid", help="a variant of params.yaml (default)")
    t.add_argument("--stage", choices=["both", "stage1", "stage2"], default="both")
    config.add_settings_arguments(t, default=None)
    t.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")


def _add_profile(sub: argparse._SubParsersAction) -> None:
    """`profile`, and the commands handed on to their own modules (snapshot, synth, ...)."""
    pr = sub.add_parser("profile", help="select a params.yaml profile for dvc repro")
    pr.add_argument("name", help="default | full | paper | smoke | any block of `profiles:`")
    pr.add_argument("--params", default="params.yaml")
    for name, what in DELEGATED.items():
        sub.add_parser(name, help=what, add_help=False)


def _add_index_build(idx: argparse._SubParsersAction) -> None:
    b = idx.add_parser(
        "build", help="embed a labelled gallery into a new index", description=PHOTO_POLICY
    )
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
    door.add_outside_root_argument(b)
    _add_common(b)


def _add_index_add(idx: argparse._SubParsersAction) -> None:
    a = idx.add_parser(
        "add", help="add labelled images to an existing index", description=PHOTO_POLICY
    )
    a.add_argument("index", help="index folder")
    a.add_argument(
        "--images",
        required=True,
        help="identity folders, a metadata CSV, or the review page's exported CSV; photos "
        "already indexed (same file content) are skipped",
    )
    a.add_argument("--root", help="image root for a CSV's relative paths")
    a.add_argument("--checkpoint", help="model folder (default: the one the index remembers)")
    a.add_argument(
        "--recalibrate", action="store_true", help="recalibrate the threshold on the grown gallery"
    )
    door.add_outside_root_argument(a)
    _add_common(a)


def _add_set_threshold(idx: argparse._SubParsersAction) -> None:
    st = idx.add_parser(
        "set-threshold",
        help="save a new-individual threshold chosen by hand in an existing index",
        description="Keep a new-individual distance threshold in the index for every later "
        "identify (which flags a photo as a new individual when its nearest known one is "
        "farther): the value a person settles on with `identify --threshold`, without "
        "rebuilding the index. Only index.json changes. The threshold then counts as set by "
        "hand, like `index build --threshold`: `index add --recalibrate` refuses to replace it.",
    )
    st.add_argument("index", help="index folder")
    st.add_argument(
        "new_threshold",
        metavar="THRESHOLD",
        help="distance between unit feature vectors, 0 or more (they run from 0 to 2)",
    )


def _add_identify(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser(
        "identify", help="identify photos against an index", description=PHOTO_POLICY
    )
    q.add_argument("images", nargs="+", help="photos and/or folders of photos")
    q.add_argument("--index", required=True, help="index folder")
    q.add_argument("--checkpoint", help="model folder (default: the one the index remembers)")
    q.add_argument("--top-k", type=int, default=5)
    q.add_argument("--out", default="results.csv", help="CSV of results (default results.csv)")
    q.add_argument(
        "--threshold",
        type=float,
        help="new-individual distance for this run (default: the index's own); "
        "`indivaid index set-threshold INDEX THRESHOLD` keeps one in the index",
    )
    q.add_argument("--force", action="store_true", help="replace an existing CSV and page")
    q.add_argument("--no-page", action="store_true", help="skip the HTML match-review page")
    q.add_argument(
        "--sightings",
        action="store_true",
        help="also write sightings.csv beside the CSV: identity, photo, date and camera (EXIF, "
        "else the file's time) per identified photo, a capture history",
    )
    q.add_argument("--json", action="store_true", help="print the summary as JSON, no table")
    _add_common(q)


def _show_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Each distinct warning once: a photo read twice (checked, then decoded) warns once."""
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"warning: {message}", file=sys.stderr)


def _show_every_skipped_file(command: str) -> None:
    """Show every skip line, not only the first issued from each line of code (the default
    filter's rule); each kind of skip is one line with a count (indivaid_core.photos, which
    imports nothing heavy: a bad option is refused before torch is loaded)."""
    if command in ("train", "index", "identify"):
        warnings.simplefilter("always", BadInputWarning)


def run(args: argparse.Namespace) -> dict | None:
    """Carry out one parsed command; its result is printed as JSON (identify prints its own)."""
    if args.command == "train":
        return _train(args)
    if args.command == "profile":
        cells = config.write_cells(args.params, args.name)
        cfg = config.load(args.params)
        return {"profile": cfg.profile, "cells": len(cfg.cells()), "written": str(cells)}
    if args.command == "index" and args.index_command == "set-threshold":
        from indivaid_core.identify.index import set_threshold

        saved = set_threshold(args.index, float(args.new_threshold))
        return {"index": args.index, **saved}
    from indivaid_core.data.images import set_pixel_limit

    set_pixel_limit(args.max_pixels, "--max-pixels")
    if args.command == "identify":
        return _identify(args)
    if args.command == "index" and args.index_command == "build":
        return _index_build(args)
    if args.command == "index" and args.index_command == "add":
        return _index_add(args)
    raise AssertionError(f"unhandled command {args.command} {args.index_command}")


def _train(args: argparse.Namespace) -> dict:
    """Settings first (a bad one is refused before torch loads), then train on the folder."""
    overrides = config.parse_overrides(args.set)
    door.check_overridden_device(overrides)
    cfg = config.load_settings(args.params, overrides)
    door.check_device(cfg.device, f"device: {cfg.device} in {args.params or 'params.yaml'}")
    with _loading():
        from indivaid_core.train.folder import train_on_folder  # torch: after the settings

    result = train_on_folder(
        cfg,
        args.images,
        args.out,
        species=args.species,
        variant=args.variant,
        stages=args.stage,
        resume=not args.no_resume,
        overrides=overrides,
    )
    if "model" in result:
        result["next"] = f"indivaid index build --checkpoint {result['model']} --images ..."
    return result


def _index_build(args: argparse.Namespace) -> dict:
    """Embed the gallery into a new index, under a lock held from the start (a second build
    to the same folder is refused at once)."""
    from indivaid_core.identify import api
    from indivaid_core.identify.index import check_index_target, index_lock

    with index_lock(args.out):
        check_index_target(args.out)
        with _loading():
            model = api.load_model(args.checkpoint, args.device, flip=args.flip)
        index, report = api.build_index(
            model,
            args.images,
            root=args.root,
            backend=args.backend,
            backend_params=_backend_params(args),
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
        "errors": report["errors"],  # every skipped photo; the warning shows the first few
    }


def _index_add(args: argparse.Namespace) -> dict:
    """Read, grow and write back the index as one step under its lock."""
    from indivaid_core.identify import api
    from indivaid_core.identify.index import index_lock, read_meta

    read_meta(Path(args.index))  # a mistyped index: refused before its lock makes folders
    with index_lock(args.index):
        with _loading():
            index, model = api.open_index(args.index, args.checkpoint, args.device)
        if args.recalibrate:  # refused before any photo is embedded, naming the index
            api.recalibration_settings(index, args.index)
        report = api.add_to_index(
            index,
            model,
            args.images,
            root=args.root,
            recalibrate=args.recalibrate,
            batch_size=args.batch_size,
        )
        index.save(args.index)
    return {
        "index": args.index,
        "n_vectors": len(index.gallery),
        "n_added": report["n_added"],
        "n_skipped_already_indexed": report["n_skipped"],
        "n_errors": len(report["errors"]),
        "errors": report["errors"],
        "threshold": report["threshold"],
    }


def _identify(args: argparse.Namespace) -> dict | None:
    """Identify, write the rounded CSV and the review page beside it (neither replaced without
    --force), and print one answer per photo (or the JSON summary with --json). Each step
    imports what it needs when it comes to it: existing outputs are refused first, with no
    heavy import; a missing index then needs only torch and pandas; the model's stack last."""
    from indivaid_core.identify import present

    out = Path(args.out)
    page, sightings = out.with_suffix(".html"), out.with_name("sightings.csv")
    present.refuse_existing(_outputs(args, out, page, sightings), args.force)
    with _loading():
        from indivaid_core.identify import api, review_page
        from indivaid_core.safe_io import write_csv, write_text

        index, model = api.open_index(args.index, args.checkpoint, args.device)
    top_k = door.clip_top_k(args.top_k, index.gallery["identity"].nunique())
    frame, summary = api.identify(
        index, model, args.images, top_k, args.batch_size, threshold=args.threshold
    )
    write_csv(present.people_frame(frame), out, index=False)
    result = {"out": str(out), **summary}
    if not args.no_page:
        html = review_page.render(
            frame, index.gallery, summary["threshold"], f"Review: {out.name}", args.index
        )
        write_text(page, html)
        result["page"] = str(page)
    if args.sightings:
        from indivaid_core.identify.sightings import sightings_frame

        write_csv(sightings_frame(frame), sightings, index=False)
        result["sightings"] = str(sightings)
    if args.json:
        return result
    print(present.answers_table(frame, csv=str(out)))
    print(
        f"\n{summary['n_queries']} photos, {summary['n_new_individual']} flagged new, "
        f"{summary['n_errors']} errors -> {out}"
        + (f", review page {page}" if "page" in result else "")
        + (f", sightings {sightings}" if "sightings" in result else "")
    )
    if args.threshold is not None:
        print(
            f"threshold {args.threshold} was used for this run only; to keep it: "
            f"indivaid index set-threshold {shlex.quote(args.index)} {args.threshold}"
        )
    return None


def _outputs(args: argparse.Namespace, out: Path, page: Path, sightings: Path) -> list[Path]:
    """The files this identify run writes, checked before any work so none is half-made."""
    if args.sightings and out.resolve() == sightings.resolve():
        raise door.UsageError(f"--out {out}: --sightings writes that file; choose another name")
    wanted = ((out, True), (page, not args.no_page), (sightings, args.sightings))
    return [path for path, written in wanted if written]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. As the console script (`argv` None) the process ends with it, and what
    `_loading` froze stays frozen, so the collection at exit skips it; called with `argv` (a
    test, a program), the caller's process goes on and everything is unfrozen again."""
    if argv is None or gc.get_freeze_count():
        return _main(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    finally:
        gc.unfreeze()


def _main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if argv and argv[0] in DELEGATED:  # these keep their own options and --help
        try:
            return _delegate(argv[0], argv[1:])
        except (Exception, KeyboardInterrupt) as err:  # the same contract as every command
            return door.exit_status(err, user_errors())
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught, door.sigterm_as_interrupt():
        try:
            _show_every_skipped_file(args.command)
            door.check_args(args)
            result = run(args)
        except (Exception, KeyboardInterrupt) as err:  # door.exit_status: user error or bug
            _show_warnings(caught)
            return door.exit_status(err, user_errors())
    _show_warnings(caught)
    if result is not None:
        print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
