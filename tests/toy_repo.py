"""The toy training repository shared by the training and fault tests: a params.yaml (smoke
profile) and a 6-identity wildlife-format dataset whose identity lives in a stripe pattern."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from indivaid_core import config
from indivaid_core.repro.prepare import prepare

REPO = Path(__file__).resolve().parents[1]
N_IDS, PER_ID = 6, 4


def coat(identity: int, flank: int, rng: np.random.Generator) -> Image.Image:
    """A 32x32 'animal': stripes whose frequency/phase encode the identity, random shift."""
    y, x = np.mgrid[0:32, 0:32] / 32.0
    freq = 2 + identity + 0.5 * flank
    shift = rng.uniform(-0.1, 0.1)
    stripes = (np.sin(2 * np.pi * freq * (x + shift) + identity) > 0).astype(np.float32)
    bg = rng.uniform(0.2, 0.8, size=3)
    img = stripes[..., None] * np.array([0.9, 0.5, 0.1]) + (1 - stripes[..., None]) * bg
    return Image.fromarray((255 * img).astype(np.uint8))


def build(root: Path) -> Path:
    """A params.yaml (smoke profile) + a 6-identity wildlife-format dataset, prepared, in
    `root` (conftest's `tiny_repo` fixture builds one per test module)."""
    rng = np.random.default_rng(0)
    rows = []
    (root / "data" / "toy" / "images").mkdir(parents=True)
    for i in range(N_IDS):
        for j in range(PER_ID):
            name = f"images/{i}_{j}.jpg"
            coat(i, j % 2, rng).save(root / "data" / "toy" / name)
            rows.append(
                {
                    "image_id": f"{i}_{j}",
                    "identity": f"id{i}",
                    "path": name,
                    "viewpoint": "left" if j % 2 else "right",
                    "camera": f"cam{j % 3}",
                }
            )
    pd.DataFrame(rows).to_csv(root / "data" / "toy" / "metadata.csv", index=False)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["profile"] = "smoke"
    raw["device"] = "cpu"
    raw["data"]["datasets"] = {
        "toy": {
            "adapter": "wildlife_csv",
            "path": "toy/metadata.csv",
            "species": "tiger",
            "protocol": "disjoint",
            "test_fraction": 0.34,
            "query_per_identity": 1,
        }
    }
    raw["data"]["max_identities"] = 0
    raw["pipeline"]["datasets"] = ["toy"]
    raw["pipeline"]["scaling"]["dataset"] = ""  # no scaling study
    raw["pipeline"].update(
        variants=["zero_shot", "indivaid"],
        ablation_datasets=[],
        ablations=[],
        robustness_variants=["zero_shot", "indivaid"],
        robustness_datasets=None,  # every dataset: the toy one
        attention_datasets=None,
    )
    raw["pipeline"]["seeds"] = [0]  # one training seed: the tests below pick others by name
    raw["profiles"]["smoke"].pop("data", None)
    raw["profiles"]["smoke"].pop("pipeline", None)
    raw["profiles"]["smoke"]["stage1"] = {"epochs": 6, "batch_size": 8, "warmup_epochs": 1}
    raw["profiles"]["smoke"]["stage2"] = {
        "epochs": 3,
        "p": 2,
        "k": 2,
        "milestones": [2],
        "min_iters_per_epoch": 0,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        prepare(config.load("params.yaml"), "toy")
    finally:
        os.chdir(cwd)
    return root


def toy_cfg(**over) -> config.Config:
    """The settings of the toy repository (run inside it: `in_repo`)."""
    return config.load("params.yaml", over)
