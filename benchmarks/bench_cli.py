"""`indivaid` as a person feels it: start-up, time to the first answer, photos/s (issue 31, item 7).

Side by side in one run, medians over --repeats:
  start-up        yardsticks: `python -c pass`, `import torch`, `import open_clip, pandas` (the
                  libraries an answer runs on: torch, torchvision, timm, open_clip); then, in
                  turn with each source tree, the same import with the garbage collector paused
                  as `indivaid` pauses it (the floor of a first answer), `import
                  indivaid_core.cli`, `indivaid --help` and the help of identify, snapshot and
                  synth, each a fresh process.
  first answer    per source tree, `indivaid identify --index IDX one.jpg` against a 160-photo
                  gallery in a fresh process; the seconds of it spent importing (`-X importtime`,
                  the top-level imports summed, in a second run); how soon it refuses an
                  existing --out and a missing --index; and, in process, opening the index and
                  loading the model (and, within it, `load_export`), so the share that is
                  start-up can be read off.
  photos/s        `api.identify` of the new photos (the model loaded once) against galleries of
                  160 and 10,000 photos, exact and FAISS, and the search alone (queries/s).
`--compare DIR` times a second source tree (a folder holding another version's `indivaid_core`,
e.g. `git archive HEAD indivaid_core | tar -x -C DIR`) beside this one, each measurement taken
in turn for both so that the load of a shared machine falls on both alike; both read the same
index. `--tree DIR` times another tree in this one's place (e.g. one change alone). The photos
are rendered synthetic tigers; the model is a randomly initialised export of the packaged
settings' backbone (--profile; lite0 by default): the same computation as a trained one. The
10,000-photo gallery is synthesised, not embedded (embedding 10,000 photos takes minutes on a
2-core machine and measures the model, not the index): the 160 real gallery vectors plus 9,840
unit vectors clustered around 984 random identity centres, at the model's dimension, with the
real index's threshold and confidence model.
Run: python benchmarks/bench_cli.py [--repeats 5] [--profile default] [--compare DIR]
     [--tree DIR] [--skip-throughput]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from bench_model import median_time  # the median of timed calls after a warm-up

from indivaid_core import config
from indivaid_core.identify import api
from indivaid_core.identify.demo import random_export
from indivaid_core.identify.index import GalleryIndex
from indivaid_core.repro.synthetic import generate_preset, tiny_preset
from indivaid_core.train.export import load_export

PYTHON = sys.executable
REPO = Path(__file__).resolve().parents[1]
IDENTITIES, PER_IDENTITY = 40, 4  # 160 gallery photos, one new photo per identity
ANSWER = "identify 1 photo: first answer"
FLOOR = "import open_clip, pandas, collector paused"
IMPORTS = "  of which importing (-X importtime)"


def run_in(tree: Path, cmd: list[str], cwd: Path, expect: int) -> subprocess.CompletedProcess:
    """`cmd` in a fresh process importing `indivaid_core` from `tree`; it must exit `expect`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != expect:
        raise RuntimeError(f"{cmd}: exit {done.returncode}, not {expect}\n{done.stderr[-2000:]}")
    return done


def wall(tree: Path, cmd: list[str], cwd: Path, expect: int = 0) -> float:
    start = time.perf_counter()
    run_in(tree, cmd, cwd, expect)
    return time.perf_counter() - start


def import_seconds(tree: Path, cmd: list[str], cwd: Path) -> float:
    """Seconds a run of `cmd` spent importing: its top-level `-X importtime` entries summed
    (an import that a function makes at run time is top-level too)."""
    done = run_in(tree, [PYTHON, "-X", "importtime", *cmd[1:]], cwd, 0)
    total = 0
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if line.startswith("import time:") and len(parts) == 3 and parts[1].strip().isdigit():
            total += int(parts[1]) if not parts[2].startswith("  ") else 0
    return total / 1e6


def median_wall(cmd: list[str], repeats: int, cwd: Path | None = None) -> float:
    """Median wall seconds of a fresh process running `cmd` (each run must succeed)."""
    return statistics.median(wall(REPO, cmd, cwd or REPO) for _ in range(repeats))


def make_photos(root: Path, profile: str) -> tuple[Path, Path, Path]:
    """Gallery folders (160 photos), a folder of new photos, and a model export."""
    generate_preset(root / "suite", tiny_preset("synth-tiger", IDENTITIES, PER_IDENTITY + 1))
    table = pd.read_csv(root / "suite" / "metadata.csv", dtype={"identity": str})
    new = table.groupby("identity").head(1).index
    for i, row in table.iterrows():
        dest = root / ("new" if i in new else f"gallery/{row['identity']}")
        dest.mkdir(parents=True, exist_ok=True)
        (dest / Path(row["path"]).name).write_bytes((root / "suite" / row["path"]).read_bytes())
    cfg = config.load_settings(None, {"profile": profile})
    random_export(root / "model", cfg.model, sorted(table["identity"].unique()), seed=0)
    return root / "gallery", root / "new", root / "model"


def synthetic_gallery(real: GalleryIndex, size: int, seed: int = 0) -> GalleryIndex:
    """`real` grown to `size` vectors: its own plus unit vectors clustered around new centres."""
    gen = torch.Generator().manual_seed(seed)
    extra = size - len(real.gallery)
    centres = torch.nn.functional.normalize(torch.randn(extra // 10, real.dim, generator=gen))
    ids = torch.arange(extra) % len(centres)
    noise = torch.randn(extra, real.dim, generator=gen) * (0.5 / real.dim**0.5)
    vectors = torch.nn.functional.normalize(centres[ids] + noise)
    rows = pd.DataFrame(
        {"identity": [f"synthetic-{i}" for i in ids.tolist()]}
        | {"path": [f"/synthetic/{i}.jpg" for i in range(extra)]}
    )
    gallery = pd.concat([real.gallery[["identity", "path"]], rows], ignore_index=True)
    return GalleryIndex(
        torch.cat([real.vectors, vectors]),
        gallery,
        real.model,
        threshold=real.threshold,
        calibration=real.calibration,
    )


def with_backend(index: GalleryIndex, backend: str) -> GalleryIndex:
    """The same gallery searched by another backend."""
    return GalleryIndex(
        index.vectors, index.gallery, index.model, backend, {}, index.threshold, index.calibration
    )


LIBRARIES = "import open_clip, pandas"  # what identify runs on (torch, torchvision, timm too)
PAUSED = "import gc; gc.disable(); import open_clip, pandas; gc.freeze()"  # as cli._loading


def yardsticks(repeats: int) -> dict[str, float]:
    return {
        "python -c pass": median_wall([PYTHON, "-c", "pass"], repeats),
        "python -c 'import torch'": median_wall([PYTHON, "-c", "import torch"], repeats),
        f"python -c '{LIBRARIES}'": median_wall([PYTHON, "-c", LIBRARIES], repeats),
    }


def side_by_side(root: Path, photo: Path, trees: dict[str, Path], repeats: int) -> pd.DataFrame:
    """Median seconds of each start-up measurement (rows) for each source tree (columns), the
    trees taking turns within every repeat, in alternating order."""
    launch = [PYTHON, "-m", "indivaid_core.launch"]
    (root / "exists.csv").write_text("an earlier run's results")

    def identify(index: str, *out: str) -> list[str]:
        flags = ["--no-page", "--device", "cpu", *out]
        return [*launch, "identify", "--index", index, str(photo), *flags]

    answer = identify("idx", "--out", "one.csv", "--force", "--json")
    runs = {  # name: (command, exit status it must end with)
        FLOOR: ([PYTHON, "-c", PAUSED], 0),  # the same in every tree: the load both trees meet
        "import indivaid_core.cli": ([PYTHON, "-c", "import indivaid_core.cli"], 0),
        "indivaid --help": ([*launch, "--help"], 0),
        "indivaid identify --help": ([*launch, "identify", "--help"], 0),
        "indivaid snapshot --help": ([*launch, "snapshot", "--help"], 0),
        "indivaid synth --help": ([*launch, "synth", "--help"], 0),
        "identify refuses an existing --out": (identify("idx", "--out", "exists.csv"), 2),
        "identify refuses a missing --index": (identify("no.index", "--out", "two.csv"), 2),
        ANSWER: (answer, 0),
    }
    times: dict[tuple[str, str], list[float]] = {}
    for repeat in range(repeats):
        turns = list(trees.items())[:: 1 if repeat % 2 == 0 else -1]  # neither always first
        for name, (cmd, expect) in runs.items():
            for label, tree in turns:
                times.setdefault((name, label), []).append(wall(tree, cmd, root, expect))
        for label, tree in turns:
            times.setdefault((IMPORTS, label), []).append(import_seconds(tree, answer, root))
    rows = [*runs, IMPORTS]
    return pd.DataFrame(
        {label: [statistics.median(times[(r, label)]) for r in rows] for label in trees},
        index=rows,
    )


def model_load(root: Path, repeats: int) -> dict[str, float]:
    """Opening the index and loading its model, in process (this tree), and `load_export` of
    the same model alone (the image tower, without the index and the hash check)."""
    return {
        "open index + load model (in process)": median_time(
            lambda: api.open_index(root / "idx", device="cpu"), repeats
        ),
        "  of which load_export (in process)": median_time(
            lambda: load_export(root / "model", "cpu"), repeats
        ),
    }


def throughput(
    model: api.LoadedModel, real: GalleryIndex, new: Path, args: argparse.Namespace
) -> pd.DataFrame:
    """photos/s of api.identify and queries/s of the search alone, per gallery and backend."""
    n_new = len(list(new.iterdir()))
    queries, _, _ = model.embed(sorted(new.iterdir()))
    rows = []
    for size in (len(real.gallery), args.large):
        gallery = real if size == len(real.gallery) else synthetic_gallery(real, size)
        for backend in args.backends:
            index = with_backend(gallery, backend)
            ident = median_time(lambda i=index: api.identify(i, model, [new], 5), args.repeats)
            search = median_time(lambda i=index: i.search(queries, 5), args.repeats)
            rows.append(
                {
                    "gallery": size,
                    "backend": backend,
                    "identify photos/s": n_new / ident,
                    "search queries/s": n_new / search,
                }
            )
    return pd.DataFrame(rows)


def print_ratios(start: dict[str, float], table: pd.DataFrame, load: float) -> None:
    torch_s = start["python -c 'import torch'"]
    mine = table.iloc[:, 0]
    floor = mine[FLOOR]
    print("\nratios (this tree)")
    print(f"  indivaid --help / import torch:           {mine['indivaid --help'] / torch_s:.2f}")
    print(f"  first answer / import torch:              {mine[ANSWER] / torch_s:.2f}")
    print(f"  first answer / the libraries' floor:      {mine[ANSWER] / floor:.2f}")
    print(f"  importing / first answer:                 {mine[IMPORTS] / mine[ANSWER]:.2f}")
    print(f"  open index + load model / first answer:   {load / mine[ANSWER]:.2f}")


def print_throughput_ratios(rates: pd.DataFrame) -> None:
    by = rates.set_index(["gallery", "backend"])["identify photos/s"]
    small, large = sorted(rates["gallery"].unique())
    for backend in rates["backend"].unique():
        ratio = by[(large, backend)] / by[(small, backend)]
        print(f"  photos/s {large:,} / {small:,} gallery, {backend}: {ratio:.2f}")
    for backend in rates["backend"].unique():
        if backend != "exact":
            ratio = by[(large, backend)] / by[(large, "exact")]
            print(f"  photos/s {backend} / exact, {large:,} gallery: {ratio:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile", default="default", help="settings profile giving the backbone")
    p.add_argument("--large", type=int, default=10_000, help="synthesised gallery size")
    p.add_argument("--backends", nargs="+", default=["exact", "faiss-flat"])
    p.add_argument("--compare", type=Path, help="another source tree to time beside this one")
    p.add_argument("--tree", type=Path, default=REPO, help="the source tree timed as this one")
    p.add_argument("--skip-throughput", action="store_true", help="start-up measurements only")
    args = p.parse_args()
    trees = {str(args.tree): args.tree.resolve()}
    if args.compare is not None:
        trees[str(args.compare)] = args.compare.resolve()
    for tree in trees.values():
        if not (tree / "indivaid_core" / "launch.py").is_file():
            p.error(f"{tree}: holds no indivaid_core/launch.py")
    print(f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs,")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, repeats {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gallery, new, model_dir = make_photos(root, args.profile)
        model = api.load_model(model_dir, "cpu")
        real, _ = api.build_index(model, gallery, threshold=1.0)
        api.save_index(real, root / "idx", model)
        start = yardsticks(args.repeats)
        table = side_by_side(root, sorted(new.iterdir())[0], trees, args.repeats)
        load = model_load(root, args.repeats)
        rates = None if args.skip_throughput else throughput(model, real, new, args)
    print(f"\nstart-up and first answer (median seconds; {model.identity['backbone']}):")
    for name, seconds in start.items():
        print(f"  {name:<44} {seconds:6.2f} s")
    shown = table.copy()
    if len(trees) > 1:
        shown["this / other"] = table.iloc[:, 0] / table.iloc[:, 1]
    print(shown.to_string(float_format=lambda v: f"{v:6.2f}"))
    for name, seconds in load.items():
        print(f"  {name:<44} {seconds:6.2f} s")
    print_ratios(start, table, load["open index + load model (in process)"])
    if rates is not None:
        print(f"\nthroughput ({IDENTITIES} new photos, top-5, one process):")
        print(rates.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
        print_throughput_ratios(rates)


if __name__ == "__main__":
    main()
