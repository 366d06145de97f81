"""Is identify's confidence honest on a trained model and photos it has never seen?

The pipeline's stage-2 exports are indexed the way `indivaid index build` does it: the gallery
photos of most test individuals (the threshold and the confidence are fitted on that gallery
only). Then the fresh photos are identified: the query photos of those known individuals, and
every photo of the test individuals left out of the gallery (never seen, so their top-1 is
always wrong and they should be flagged new). Prints, per model, top-1 accuracy, how often the
new-individual flag is right, and the confidence's expected calibration error (ECE) and Brier
score on the fresh photos beside the ECE the index reported at build time; draws a reliability
diagram. Run from the repository root after `dvc repro`:

    python benchmarks/bench_confidence.py --table benchmarks/results/confidence.csv \
        --figure docs/images/confidence_reliability.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from indivaid_core.identify import api
from indivaid_core.identify.confidence import expected_calibration_error

MODELS = [
    ("synth-tiger", "indivaid", 0),
    ("synth-tiger", "indivaid", 1),
    ("synth-tiger", "indivaid", 2),
    ("synth-tiger", "clipreid", 0),
    ("synth-tiger", "image_only", 0),
    ("synth-stoat", "indivaid", 0),
    ("synth-seastar", "indivaid", 0),
]


def split_known(table: pd.DataFrame, unseen: float, seed: int) -> tuple[pd.DataFrame, ...]:
    """(gallery of the known individuals, their query photos, every photo of the unseen).
    Leave-one-out sets (synth-stoat: a `test` split) give each known individual's first photo
    as its query and the rest as its gallery."""
    test = table[table["split"].isin(["query", "gallery", "test"])].copy()
    loo = test["split"] == "test"
    first = ~test[loo].duplicated("identity")
    test.loc[loo, "split"] = np.where(first, "query", "gallery")
    ids = np.array(sorted(test["identity"].unique()))
    rng = np.random.default_rng(seed)
    left_out = set(rng.choice(ids, size=round(unseen * len(ids)), replace=False))
    known = test[~test["identity"].isin(left_out)]
    return (
        known[known["split"] == "gallery"],
        known[known["split"] == "query"],
        test[test["identity"].isin(left_out)],
    )


def score_model(dataset: str, variant: str, seed: int, unseen: float, share: float) -> list[dict]:
    """Index the known gallery with one export, identify the fresh photos, score the answers."""
    table = pd.read_csv(f"work/tables/{dataset}.csv")
    root = Path(table["image_root"].iloc[0]).resolve()
    gallery, queries, never = split_known(table, unseen, seed=0)
    model = api.load_model(f"work/stage2/{dataset}/{variant}/seed{seed}", device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "gallery.csv"
        gallery[["identity", "path"]].to_csv(csv, index=False)
        index, report = api.build_index(model, csv, root=root)
    fresh = pd.concat([queries.assign(known=True), never.assign(known=False)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the per-run summary lines; nothing is unreadable here
        res, _ = api.identify(index, model, [str(root / p) for p in fresh["path"]], top_k=5)
    res = res.set_index("query").loc[[str(root / p) for p in fresh["path"]]]
    truth = fresh["identity"].to_numpy()
    known = fresh["known"].to_numpy()
    right = (res["top1_identity"].to_numpy() == truth) & known
    top5 = known & np.any([res[f"top{r}_identity"].to_numpy() == truth for r in range(1, 6)], 0)
    flagged = res["new_individual"].astype(bool).to_numpy()
    conf = res["confidence"].to_numpy(dtype=float)
    head = {
        "dataset": dataset,
        "variant": variant,
        "seed": seed,
        "gallery photos": len(gallery),
        "known ids": gallery["identity"].nunique(),
        "top-1 known": round(100 * right[known].mean(), 1),
        "top-5 known": round(100 * top5[known].mean(), 1),
        "known flagged new": round(100 * flagged[known].mean(), 1),
        "unseen flagged new": round(100 * flagged[~known].mean(), 1),
        "ECE at build": report["confidence_ece"],
    }
    rows = []
    for mix, keep in mixes(known, share):
        c, r = conf[keep], right[keep]
        rows.append(
            head
            | {
                "new-animal photos": mix,
                "fresh photos": int(keep.sum()),
                "mean confidence": round(100 * c.mean(), 1),
                "top-1 right": round(100 * r.mean(), 1),
                "ECE fresh": round(expected_calibration_error(c, r), 3),
                "Brier fresh": round(brier_score_loss(r, c), 3),
                "_conf": c,
                "_right": r,
            }
        )
    return rows


def mixes(known: np.ndarray, share: float) -> list[tuple[str, np.ndarray]]:
    """The fresh photos as the confidence assumes them (`share` of them from new animals, the
    unseen photos subsampled), and with every photo of the unseen individuals."""
    unseen = np.flatnonzero(~known)
    n = min(len(unseen), round(share / (1 - share) * known.sum()))
    keep = known.copy()
    keep[np.random.default_rng(0).choice(unseen, size=n, replace=False)] = True
    natural = f"{100 * (~known).mean():.0f} % (all)"
    return [(f"{100 * n / keep.sum():.0f} %", keep), (natural, np.ones_like(known))]


def reliability(rows: list[dict], out: Path) -> None:
    """One reliability curve per model: stated confidence against how often top-1 was right."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfectly calibrated")
    for r in rows[::2]:  # the assumed mix
        frac, mean = calibration_curve(r["_right"], r["_conf"], n_bins=10, strategy="quantile")
        label = f"{r['dataset']} {r['variant']} s{r['seed']} (ECE {r['ECE fresh']:.2f})"
        ax.plot(mean, frac, marker="o", ms=3, lw=1, label=label)
    ax.set_xlabel("stated confidence (decile bins)")
    ax.set_ylabel("fraction whose top-1 was right")
    ax.set_title("identify's confidence on never-seen photos")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_aspect("equal")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unseen", type=float, default=0.2, help="fraction of test ids left out")
    ap.add_argument(
        "--share", type=float, default=0.2, help="new-animal share the confidence assumes"
    )
    ap.add_argument("--table", type=Path)
    ap.add_argument("--figure", type=Path)
    args = ap.parse_args()
    rows = [r for ds, v, s in MODELS for r in score_model(ds, v, s, args.unseen, args.share)]
    frame = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    print(frame.to_string(index=False))
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(args.table, index=False, lineterminator="\n")
    if args.figure:
        reliability(rows, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
