"""Peak memory of reading one 12,000 x 12,000 JPEG: full decode against Pillow's `draft` at the
size a 256x128 model needs (data.images.load_rgb). Each reading runs in a fresh process, so its
peak resident set (ru_maxrss) is its own; the baseline is the same process reading nothing.
Usage: python benchmarks/bench_image_decode.py [--side 12000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import resource, sys, time
from indivaid_core.data.images import draft_for, load_rgb, set_pixel_limit
set_pixel_limit(400_000_000)  # 144 MP is over the default 100 MP limit, on purpose
mode, path = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
if mode != "none":
    img = load_rgb(path, draft_for((256, 128)) if mode == "draft" else None)
    size = img.size
else:
    size = (0, 0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - t0, *size)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=12000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.jpg"
        img = Image.linear_gradient("L").resize((args.side, args.side)).convert("RGB")
        img.save(path, quality=85)
        del img
        rows = {}
        for mode in ("none", "full", "draft"):
            runs = [
                subprocess.run(
                    [sys.executable, "-c", CHILD, mode, str(path)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.split()
                for _ in range(args.repeats)
            ]
            rss = statistics.median(float(r[0]) for r in runs)
            secs = statistics.median(float(r[1]) for r in runs)
            rows[mode] = (rss, secs, runs[0][2:])
    base = rows["none"][0]
    for mode in ("full", "draft"):
        rss, secs, size = rows[mode]
        print(
            f"{mode:5}: peak RSS {rss:7.0f} MiB ({rss - base:+6.0f} over imports), "
            f"{secs:5.2f} s, decoded {size[0]}x{size[1]}"
        )
    print(f"draft / full extra memory: {(rows['draft'][0] - base) / (rows['full'][0] - base):.3f}")


if __name__ == "__main__":
    main()
