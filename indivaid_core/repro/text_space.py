"""The tables of the report's text-space section: the synthetic CLIP, the scored descriptions.

Reads `metrics/pretrain.json` (the pretrain stage) and `metrics/descriptions/<dataset>.json`
(the stage-1 stages); an absent file gives an empty table.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def pretrain_table(path: Path) -> pd.DataFrame:
    """synthclip against the untrained text tower and chance, on held-out individuals."""
    if not path.exists():
        return pd.DataFrame()
    m = json.loads(path.read_text())
    keys = {
        "own caption beats another photo's": ("own_caption_accuracy", "own_caption_accuracy"),
        "image->text R@1": ("i2t_R@1", "R@1"),
        "text->image R@1": ("t2i_R@1", "R@1"),
        "zero-shot attributes (mean)": ("attribute_mean_accuracy", "attribute_mean_accuracy"),
    }
    return pd.DataFrame(
        {
            "synthclip": {k: m["synthclip"][a] for k, (a, _) in keys.items()},
            "untrained text tower": {k: m["untrained_text"][a] for k, (a, _) in keys.items()},
            "chance": {k: m["chance"][c] for k, (_, c) in keys.items()},
        }
    )


TARGET_ORDER = ("g (image)", "h (individual)", "g within", "g between")


def description_table(metrics: Path, datasets: list[str]) -> pd.DataFrame:
    """One row per (dataset, attribute, target); a column per text run, plus chance."""
    rows = []
    for ds in datasets:
        path = metrics / "descriptions" / f"{ds}.json"
        if not path.exists():
            continue
        for text, attrs in json.loads(path.read_text()).items():
            for attr, targets in attrs.items():
                for target, entry in targets.items():
                    rows.append(
                        {"dataset": ds, "attribute": attr, "target": target, "text": text, **entry}
                    )
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    wide = df.pivot_table(
        index=["dataset", "attribute", "target"], columns="text", values="value", sort=False
    )
    chance = df.groupby(["dataset", "attribute", "target"], sort=False)["chance"].first()
    out = wide.assign(chance=chance).reset_index()
    # datasets in pipeline order, then attributes with consistency last, g before h
    out["_ds"] = out["dataset"].map(datasets.index)
    out["_last"] = out["attribute"] == "consistency"
    out["_t"] = out["target"].map(TARGET_ORDER.index)
    out = out.sort_values(["_ds", "_last", "attribute", "_t"], kind="stable")
    return out.drop(columns=["_ds", "_last", "_t"]).reset_index(drop=True)
