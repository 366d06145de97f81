"""`indivaid` as a person feels it: start-up, time to the first answer, photos/s (issue 31, item 7).

Side by side in one run, medians over --repeats:
  start-up        `indivaid --help` against `python -c "import torch"` (and a bare `python`),
                  each a fresh process.
  first answer    `indivaid identify --index IDX one.jpg` against a 100-photo gallery, a fresh
                  process, beside the import of what it needs and the in-process model load, so
                  the share that is start-up and the share that is the model can be read off.
  photos/s        `api.identify` of --queries photos (the model loaded once) against galleries
                  of 100 and 10,000 photos, exact and FAISS, and the search alone (queries/s).
The photos are rendered synthetic tigers; the model is a randomly initialised export of the
packaged settings' backbone (--profile; lite0 by default): the same computation as a trained
one. The 10,000-photo gallery is synthesised, not embedded (embedding 10,000 photos takes
minutes on a 2-core machine and measures the model, not the index): the 100 real gallery
vectors plus 9,900 unit vectors clustered around 990 random identity centres, at the model's
dimension, with the real index's threshold and confidence model.
Run: python benchmarks/bench_cli.py [--repeats 5] [--profile default]
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

PYTHON = sys.executable
INDIVAID = str(Path(sys.executable).with_name("indivaid"))
IDENTITIES, PER_IDENTITY = 25, 4  # 100 gallery photos, one new photo per identity


def median_wall(cmd: list[str], repeats: int, cwd: Path | None = None) -> float:
    """Median wall seconds of a fresh process running `cmd` (each run must succeed)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_photos(root: Path, profile: str) -> tuple[Path, Path, Path]:
    """Gallery folders (100 photos), a folder of new photos, and a model export."""
    generate_preset(root / "suite", tiny_preset("synth-tiger", IDENTITIES, PER_IDENTITY + 1))
    table = pd.read_csv(root / "suite" / "metadata.csv", dtype={"identity": str})
    new = table.groupby("identity").head(1).index
    for i, row in table.iterrows():
        dest = root / ("new" if i in new else f"gallery/{row['identity']}")
        dest.mkdir(parents=True, exist_ok=True)
        (dest / Path(row["path"]).name).write_bytes((root / "suite" / row["path"]).read_bytes())
    cfg = config.load_settings(None, {"profile": profile})
    random_export(root / "model", cfg, sorted(table["identity"].unique()), seed=0)
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


def startup(repeats: int) -> dict[str, float]:
    return {
        "python -c pass": median_wall([PYTHON, "-c", "pass"], repeats),
        "python -c 'import torch'": median_wall([PYTHON, "-c", "import torch"], repeats),
        "indivaid --help": median_wall([INDIVAID, "--help"], repeats),
        "indivaid identify --help": median_wall([INDIVAID, "identify", "--help"], repeats),
    }


def first_answer(root: Path, photo: Path, repeats: int) -> dict[str, float]:
    """A fresh `indivaid identify` of one photo, and its parts measured alone."""
    cmd = [INDIVAID, "identify", "--index", "idx100", str(photo), "--out", "one.csv"]
    cmd += ["--force", "--no-page", "--device", "cpu", "--json"]
    imports = "from indivaid_core.identify import api"
    return {
        "indivaid identify 1 photo (fresh process)": median_wall(cmd, repeats, root),
        "  its imports alone (fresh process)": median_wall([PYTHON, "-c", imports], repeats),
        "  open index + load model (in process)": median_time(
            lambda: api.open_index(root / "idx100", device="cpu"), repeats
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


def print_ratios(start: dict[str, float], first: dict[str, float], rates: pd.DataFrame) -> None:
    torch_s = start["python -c 'import torch'"]
    print("\nratios")
    print(f"  indivaid --help / import torch:           {start['indivaid --help'] / torch_s:.2f}")
    answer = first["indivaid identify 1 photo (fresh process)"]
    print(f"  first answer / import torch:              {answer / torch_s:.2f}")
    load = first["  open index + load model (in process)"]
    print(f"  open index + load model / first answer:   {load / answer:.2f}")
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
    args = p.parse_args()
    print(f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs,")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, repeats {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gallery, new, model_dir = make_photos(root, args.profile)
        model = api.load_model(model_dir, "cpu")
        real, _ = api.build_index(model, gallery, threshold=1.0)
        api.save_index(real, root / "idx100", model)
        start = startup(args.repeats)
        first = first_answer(root, sorted(new.iterdir())[0], args.repeats)
        rates = throughput(model, real, new, args)
    print(f"\nstart-up and first answer (median seconds; {model.identity['backbone']}):")
    for name, seconds in {**start, **first}.items():
        print(f"  {name:<44} {seconds:6.2f} s")
    print(f"\nthroughput ({IDENTITIES} new photos, top-5, one process):")
    print(rates.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    print_ratios(start, first, rates)


if __name__ == "__main__":
    main()
