"""Stage-1 descriptions scored against the synthetic truth (the paper's first experiment).

Real data has no ground truth for what a description should say; the synthetic suite does.
For each coat attribute, the value phrases ("a photo of a tiger with thick stripes.", ...) are
encoded by the run's own text tower, and a description's nearest phrase is its predicted value:
- image-specific descriptions g_i are scored against the flank the photo shows (balanced
  accuracy, chance 1/values);
- individual descriptions h_y are scored against the values of either flank, with chance
  measured by shuffling the predictions between individuals;
- consistency: the mean cosine similarity of g within an individual against between.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
from sklearn.metrics import balanced_accuracy_score

from indivaid_core.config import Config
from indivaid_core.evaluate.alignment import encode_texts
from indivaid_core.repro.captions import COAT_ATTRIBUTES, value_prompts
from indivaid_core.repro.paths import Paths
from indivaid_core.repro.prepare import read_table, train_split
from indivaid_core.safe_io import load_safetensors, read_json

FIX = "re-run stage 1 (dvc repro stage1)"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def consistency(g: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean cosine of g between two images of one individual, and of two individuals."""
    sim = g @ g.T
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(g), dtype=bool)
    return {"within": float(sim[same & off].mean()), "between": float(sim[~same].mean())}


def _individual_hits(pred: np.ndarray, truth: list[set[int]]) -> float:
    return float(np.mean([p in t for p, t in zip(pred, truth, strict=True)]))


def score_run(
    run_dir: Path, table: pd.DataFrame, model: open_clip.CLIP, noun: str, permutations: int = 200
) -> list[dict] | None:
    """One stage-1 run's rows (attribute, target, accuracy, chance); None without the truth."""
    if "pattern" not in table or table["pattern"].isna().any():
        return None
    kind = str(table["pattern"].iloc[0])
    d = load_safetensors(run_dir / "descriptions.safetensors", FIX, ("g", "g_labels", "h"))
    meta = read_json(run_dir / "labels.json", FIX, ("labels", "image_ids"))
    rows = table.set_index(table["image_id"].astype(str)).loc[meta["image_ids"]]
    g, h = _unit(d["g"].numpy()), _unit(d["h"].numpy())
    labels = d["g_labels"].numpy()
    names = sorted(meta["labels"], key=meta["labels"].get)  # label index -> identity
    rng = np.random.default_rng(0)
    out = []
    for attr, values in COAT_ATTRIBUTES[kind].items():
        phrases = encode_texts(model, value_prompts(noun, kind, attr))
        truth_g = rows[f"coat_{attr}"].map(values.index).to_numpy()
        out.append(
            {
                "attribute": attr,
                "target": "g (image)",
                "accuracy": balanced_accuracy_score(truth_g, (g @ phrases.T).argmax(axis=1)),
                "chance": 1 / len(values),
            }
        )
        by_id = pd.Series(truth_g, index=rows.index).groupby(rows["identity"].to_numpy()).agg(set)
        truth_h = [by_id[n] for n in names]
        pred_h = (h @ phrases.T).argmax(axis=1)
        null = [_individual_hits(rng.permutation(pred_h), truth_h) for _ in range(permutations)]
        out.append(
            {
                "attribute": attr,
                "target": "h (individual)",
                "accuracy": _individual_hits(pred_h, truth_h),
                "chance": float(np.mean(null)),
            }
        )
    c = consistency(g, labels)
    out.append({"attribute": "consistency", "target": "g within", "accuracy": c["within"]})
    out.append({"attribute": "consistency", "target": "g between", "accuracy": c["between"]})
    return out


def score_descriptions(cfg: Config, dataset: str) -> pd.DataFrame:
    """Every stage-1 run x seed of `dataset` scored; empty when the data carry no truth."""
    from indivaid_core.model import build_clip_for

    table = train_split(read_table(cfg, dataset))
    noun = cfg.dataset(dataset).species
    frames = []
    for text in cfg.text_runs_of(dataset):
        if text == "none":
            continue
        model = build_clip_for(cfg.for_run(dataset, text).model)
        for seed in cfg.pipeline.seeds:
            rows = score_run(Paths(cfg, dataset).stage1(text, seed), table, model, noun)
            if rows is None:
                return pd.DataFrame()
            frames.append(pd.DataFrame(rows).assign(text=text, seed=seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def summarise(scores: pd.DataFrame) -> dict:
    """Mean over seeds per text run and (attribute, target), for metrics/descriptions/*.json."""
    if scores.empty:
        return {}
    mean = scores.groupby(["text", "attribute", "target"], sort=False)[["accuracy", "chance"]]
    out: dict = {}
    for (text, attr, target), row in mean.mean().iterrows():
        entry = {"value": round(float(row["accuracy"]), 4)}
        if not np.isnan(row["chance"]):
            entry["chance"] = round(float(row["chance"]), 4)
        out.setdefault(text, {}).setdefault(attr, {})[target] = entry
    return out
