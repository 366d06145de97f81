"""Keep a longer profile's report beside the default one, and check a rerun against it.

DVC tracks one set of outputs per stage, so the report of a slower profile (`full`: 5 seeds per
cell) cannot sit in `reports/` next to the default run. After `dvc repro` under that profile,
`snapshot` copies the report and every file it was computed from into `reports/<profile>/`,
with a PROVENANCE.md that says which commit, settings and wall time produced it. `compare`
then checks a fresh rerun against that copy, number by number.

  indivaid snapshot --wall-s 2400                  # after `dvc repro` (profile: full)
  indivaid snapshot --check reports/full           # after a rerun: does it match?
  indivaid snapshot --check-rev HEAD               # the same machine: the committed report, exactly
  indivaid snapshot --check-rev HEAD --within-noise reports   # another machine: within noise
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from indivaid_core.config import Config, ConfigError, load

# pandas (and `noise`, which uses it) are imported where tables are compared, so that
# `indivaid snapshot --help` and its option checks answer without them.
if TYPE_CHECKING:
    import pandas as pd

# What a report is computed from and consists of, relative to data.reports (and data.metrics).
REPORT_PARTS = (
    "results.md",
    "tables",
    "per_query",
    "robustness",
    "cmc",
    "figures/report",
    "figures/attention",
    "notebooks/07_report.ipynb",
)
# Columns that describe the machine rather than the method; `compare` leaves them out.
MACHINE_COLUMN = re.compile(r"wall|img/s|peak|device", re.IGNORECASE)
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?", re.IGNORECASE)


class SnapshotError(RuntimeError):
    """The report cannot be kept as it stands (stale stages, missing files)."""


def stale_stages(repo: str | Path = ".") -> list[str]:
    """Stages `dvc status` reports as changed: a snapshot of those would not be reproducible."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SnapshotError(f"`dvc status` failed in {repo}: {done.stderr.strip()}")
    return sorted(json.loads(done.stdout or "{}"))


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def params_drift(repo: Path, params: str | Path = "params.yaml") -> list[str]:
    """Top-level keys of params.yaml that differ from the committed file, `profile` aside."""
    committed = _git(repo, "show", f"HEAD:{params}")
    if not committed:
        return ["(no committed params.yaml to compare with)"]
    now, then = yaml.safe_load((repo / params).read_text()), yaml.safe_load(committed)
    keys = sorted(set(now) | set(then))
    return [k for k in keys if k != "profile" and now.get(k) != then.get(k)]


def snapshot(
    cfg: Config,
    dest: str | Path,
    repo: str | Path = ".",
    wall_s: float | None = None,
    require_clean: bool = True,
    params: str | Path = "params.yaml",
    note: str = "",
) -> Path:
    """Copy the current report and its inputs into `dest` and write PROVENANCE.md there.

    The copy is built beside `dest` and swapped in at the end, so a failure keeps the old one.
    """
    repo = Path(repo)
    reports, metrics, dest = repo / cfg.data.reports, repo / cfg.data.metrics, repo / dest
    inside = [reports / p for p in REPORT_PARTS] + [metrics]
    if any(
        dest.resolve() == p.resolve() or p.resolve().is_relative_to(dest.resolve()) for p in inside
    ):
        raise SnapshotError(f"{dest} would overwrite the report it copies: choose another --dest")
    if require_clean and (stale := stale_stages(repo)):
        raise SnapshotError(
            f"dvc status lists changed stages ({', '.join(stale)}): run `dvc repro` first"
        )
    missing = [str(p) for p in inside if not p.exists()]
    if missing:
        raise SnapshotError(f"missing {', '.join(missing)}: run the pipeline first")
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for part in REPORT_PARTS:
        src, out = reports / part, tmp / part
        out.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, out)
    shutil.copytree(metrics, tmp / "metrics")
    drift = params_drift(repo, params)
    wall = f"{wall_s:.0f} s ({wall_s / 60:.1f} min)" if wall_s else "not given"
    lines = [
        f"# Report snapshot: profile `{cfg.profile}`",
        "",
        f"- Commit: `{_git(repo, 'rev-parse', 'HEAD') or 'unknown'}`, with "
        f"`profile: {cfg.profile}` in params.yaml"
        + (f"; other top-level keys changed: {', '.join(drift)}" if drift else "; nothing else"),
        f"- Seeds per cell: {', '.join(map(str, cfg.pipeline.seeds))}; "
        f"corruption strengths: {', '.join(map(str, cfg.eval.corruption_levels))}",
        f"- `dvc repro` wall time (measured by whoever ran it): {wall}",
        f"- Taken: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        *([f"- Note: {note}"] if note else []),
        "",
        "To regenerate: set `profile:` to this profile in params.yaml, `dvc repro`, then",
        f"`indivaid snapshot --check {os.path.relpath(dest, repo)}` compares every "
        "table number"
        " with this copy (wall time, speed, memory and device columns aside).",
        "",
    ]
    (tmp / "PROVENANCE.md").write_text("\n".join(lines))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _cells_differ(a: object, b: object, tol: float) -> bool:
    import pandas as pd

    sa, sb = ("" if pd.isna(x) else str(x) for x in (a, b))
    if NUMBER.sub("#", sa) != NUMBER.sub("#", sb):
        return True
    na, nb = (list(map(float, NUMBER.findall(s))) for s in (sa, sb))
    return any(abs(x - y) > tol for x, y in zip(na, nb, strict=True))


def _read_table(csv: Path) -> pd.DataFrame:
    """A table as text cells with one-line column names; an empty table (nothing to compare)
    is 0 × 0. Tables with (dataset, metric) columns have two header rows and an index."""
    import pandas as pd

    head = [line for line in csv.read_text().splitlines() if line.strip()][:2]
    if not head:  # pandas writes an empty frame as a bare newline
        return pd.DataFrame()
    two_level = len(head) == 2 and all(line.startswith(",") for line in head)
    if not two_level:
        return pd.read_csv(csv, dtype=str)
    table = pd.read_csv(csv, dtype=str, header=[0, 1], index_col=0)
    table.columns = [" · ".join(c).strip(" ·") for c in table.columns]
    return table.reset_index()


def compare(reference: str | Path, reports: str | Path, tol: float = 0.0) -> list[str]:
    """Cells of reference/tables/*.csv that the rerun in reports/tables/ does not reproduce.

    Numbers inside a cell ("40.2 ± 1.3") must agree within `tol`; the text around them exactly.
    """
    reference, reports = Path(reference), Path(reports)
    problems = []
    extra = {p.name for p in (reports / "tables").glob("*.csv")} - {
        p.name for p in (reference / "tables").glob("*.csv")
    }
    problems += [f"{reports / 'tables' / name}: not in {reference}" for name in sorted(extra)]
    for ref_csv in sorted((reference / "tables").glob("*.csv")):
        new_csv = reports / "tables" / ref_csv.name
        if not new_csv.exists():
            problems.append(f"{new_csv}: missing")
            continue
        ref, new = _read_table(ref_csv), _read_table(new_csv)
        if list(ref.columns) != list(new.columns) or ref.shape != new.shape:
            problems.append(f"{new_csv}: shape/columns {new.shape} vs {ref.shape} in {ref_csv}")
            continue
        for col in (c for c in ref.columns if not MACHINE_COLUMN.search(c)):
            for row, (a, b) in enumerate(zip(ref[col], new[col], strict=True)):
                if _cells_differ(a, b, tol):
                    problems.append(f"{new_csv} row {row} [{col}]: {b!r} vs {a!r}")
    return problems


def tables_at_revision(rev: str, reports: str | Path, out: Path, repo: str | Path = ".") -> Path:
    """Write `<reports>/tables/*.csv` as committed at git revision `rev` into out/tables/."""
    folder = f"{Path(reports).as_posix()}/tables"
    names = _git(Path(repo), "ls-tree", "--name-only", f"{rev}:{folder}").split()
    if not names:
        raise SnapshotError(f"git revision {rev!r} has no {folder}/")
    (out / "tables").mkdir(parents=True, exist_ok=True)
    for name in (n for n in names if n.endswith(".csv")):
        (out / "tables" / name).write_text(
            _git(Path(repo), "show", f"{rev}:{folder}/{name}") + "\n"
        )
    return out


def spread_metrics(folder: str | Path, cfg: Config) -> Path:
    """Where a `--within-noise` report keeps its metrics: a snapshot holds them in
    `<snapshot>/metrics`; the default report's are `data.metrics` (`metrics/`)."""
    folder = Path(folder)
    own = folder / "metrics"
    if not (own / "eval").exists() and folder.resolve() == Path(cfg.data.reports).resolve():
        return Path(cfg.data.metrics)
    return own


def _check(args: argparse.Namespace, cfg: Config) -> int:
    """--check / --check-rev: 0 when the report matches (exactly, or within noise), else 1."""
    from indivaid_core.repro import noise

    with tempfile.TemporaryDirectory() as tmp:
        reference = args.check or tables_at_revision(args.check_rev, cfg.data.reports, Path(tmp))
        if args.within_noise:
            spread = noise.pooled_spread(spread_metrics(args.within_noise, cfg))
            if not spread:
                raise SnapshotError(
                    f"--within-noise {args.within_noise}: no several-seed metrics found "
                    "to take the seed spread from; every band would be the floor"
                )
            table = Path(args.within_noise) / "numerical_spread.csv"
            numerical = noise.numerical_spread(table, cfg.profile) if table.exists() else None
            n = len(cfg.pipeline.seeds)
            bad = noise.within_noise(
                reference, cfg.data.reports, spread, n, args.z, numerical=numerical
            )
            where = args.check or args.check_rev
            if len(bad):
                print(bad.to_string(index=False))
            print(f"outside the noise band of {where} (z={args.z}, {n} seeds): {len(bad)}")
            return 1 if len(bad) else 0
        problems = compare(reference, cfg.data.reports, args.tol)
    for p in problems:
        print(p)
    print(f"differences against {args.check or args.check_rev}: {len(problems)}")
    return 1 if problems else 0


def _check_options(args: argparse.Namespace) -> None:
    """Refuse what would compare against nothing or with a meaningless tolerance: a missing
    snapshot folder read as "every file differs", and `--tol nan` passed every number."""
    if not (math.isfinite(args.tol) and args.tol >= 0):
        raise SnapshotError(f"--tol {args.tol}: expected a finite number, 0 or more")
    if not (math.isfinite(args.z) and args.z > 0):
        raise SnapshotError(f"--z {args.z}: expected a finite number above 0")
    if args.wall_s is not None and not (math.isfinite(args.wall_s) and args.wall_s >= 0):
        raise SnapshotError(f"--wall-s {args.wall_s}: expected seconds, 0 or more")
    for name, folder in (("--check", args.check), ("--within-noise", args.within_noise)):
        if folder is not None and not Path(folder).is_dir():
            raise SnapshotError(f"{name} {folder}: no such snapshot folder")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="indivaid snapshot", description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--dest", help="snapshot folder (default: <data.reports>/<profile>)")
    parser.add_argument("--wall-s", type=float, help="measured `dvc repro` wall time, seconds")
    parser.add_argument("--check", metavar="SNAPSHOT", help="compare the current report with it")
    parser.add_argument(
        "--check-rev", metavar="REV", help="compare the current report with the tables at a commit"
    )
    parser.add_argument("--note", default="", help="a line for PROVENANCE.md (e.g. machine load)")
    parser.add_argument("--tol", type=float, default=0.0, help="allowed difference per number")
    parser.add_argument(
        "--within-noise",
        metavar="SPREAD_SNAPSHOT",
        help="another machine: pass when every mAP/R1 lies within its cell's noise band and "
        "every verdict agrees; the seed spread comes from this several-seed report (e.g. "
        "reports), the numerical spread from its numerical_spread.csv when present. Without "
        "it, --check and --check-rev compare exactly",
    )
    parser.add_argument("--z", type=float, default=3.0, help="--within-noise band, in sds")
    args = parser.parse_args(argv)
    try:
        _check_options(args)
        cfg = load(args.params)
    except (ConfigError, SnapshotError) as err:  # one line and 2, as every indivaid command
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check or args.check_rev:
        try:
            return _check(args, cfg)
        except SnapshotError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if cfg.profile == "default" and not args.dest:
        parser.error("the default report already lives in reports/; pass --dest to copy it")
    dest = args.dest or str(Path(cfg.data.reports) / cfg.profile)
    try:
        print(snapshot(cfg, dest, wall_s=args.wall_s, params=args.params, note=args.note))
    except SnapshotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
