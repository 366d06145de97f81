"""The robustness stage: a test-time corruption sweep (blur, noise, low light, fog) by strength.

Only the queries are corrupted (the gallery is the clean reference a camera-trap project
would hold); strength 0 is the clean baseline. Corruptions are torchvision ops on tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch
from torchvision.transforms.v2 import functional as TF

from indivaid_core.config import Config
from indivaid_core.device import resolve_device
from indivaid_core.evaluate.features import load_features
from indivaid_core.repro.evaluation import (
    EvalSplit,
    FeatureSettings,
    eval_split,
    features_for,
    folded,
    headline,
    score,
)
from indivaid_core.repro.paths import Paths
from indivaid_core.safe_io import write_csv
from indivaid_core.train.export import WEIGHTS, file_sha256, load_export

# Full-strength parameters (strength 1.0); each scales linearly with the strength.
MAX_BLUR_SIGMA = 3.0
MAX_NOISE_STD = 0.25
MIN_LIGHT = 0.15
MAX_FOG = 0.7


def corruption(name: str, strength: float, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function on a float image tensor in [0, 1] (C, H, W) -> corrupted, clamped."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"corruption strength must lie in [0, 1], got {strength}")
    if name == "blur":
        sigma = max(MAX_BLUR_SIGMA * strength, 1e-3)
        k = 2 * int(3 * sigma) + 1
        return lambda x: TF.gaussian_blur(x, [k, k], [sigma, sigma])
    if name == "noise":
        gen = torch.Generator().manual_seed(seed)
        return lambda x: (x + MAX_NOISE_STD * strength * torch.randn(x.shape, generator=gen)).clamp(
            0, 1
        )
    if name == "low_light":
        factor = 1.0 - (1.0 - MIN_LIGHT) * strength
        return lambda x: TF.adjust_gamma(x, 1.0 + strength) * factor
    if name == "fog":
        a = MAX_FOG * strength
        return lambda x: ((1 - a) * x + a * x.mean() * 0.5 + a * 0.5).clamp(0, 1)
    raise ValueError(f"unknown corruption '{name}'; choose from blur, noise, low_light, fog")


def sweep_frame(rows: list[dict]) -> pd.DataFrame:
    """Tidy frame (variant, corruption, strength, mAP, R1) for plotting."""
    return pd.DataFrame(rows).sort_values(["variant", "corruption", "strength"])


def evaluation_features(paths: Paths, variant: str, seed: int, split: EvalSplit) -> torch.Tensor:
    """The test features the evaluation stage saved for this model, in `split.test` order;
    refused if they were made by other weights (a stage 2 retrained since)."""
    path = paths.features(variant, seed)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no evaluation features for {paths.dataset}/{variant} seed {seed}; "
            "run the evaluation first (dvc repro evaluate)"
        )
    weights = file_sha256(paths.stage2(variant, seed) / WEIGHTS)
    return load_features(path, split.test, weights)[0]


def robustness_sweep(cfg: Config, dataset: str, variants: list[str]) -> pd.DataFrame:
    """mAP/R1 with corrupted queries against the clean gallery, per corruption and strength."""
    paths = Paths(cfg, dataset)
    split = eval_split(cfg, dataset)
    device = resolve_device(cfg.device)
    seed = cfg.pipeline.seeds[0]
    settings = FeatureSettings.of(cfg)
    rows = []
    for variant in variants:
        encoder, spec = load_export(paths.stage2(variant, seed), device)
        encoder = folded(encoder, spec, device)  # once for all its corrupted query sets
        # The evaluation's own features of this model: the gallery, and the clean queries
        # (every corruption is the identity at strength 0, which tests check).
        clean, gf = split.halves(evaluation_features(paths, variant, seed, split))
        for name in cfg.eval.corruptions:
            for level in cfg.eval.corruption_levels:
                if level == 0:
                    qf = clean
                else:
                    corrupt = corruption(name, level, cfg.seed)
                    qf = features_for(
                        encoder, spec, split.query, split.root, settings=settings, corrupt=corrupt
                    )
                _, m = score(cfg.eval, qf, gf, split.query, split.gallery, split.loo)
                rows.append(
                    {"variant": variant, "corruption": name, "strength": level, **headline(m)}
                )
    return sweep_frame(rows)


def run_robustness(cfg: Config, dataset: str, variants: list[str]) -> pd.DataFrame:
    """The stage: the sweep, written whole to reports/robustness/<dataset>.csv and .png."""
    import matplotlib.pyplot as plt

    from indivaid_core.figures_common import save_figure
    from indivaid_core.repro.figures.evaluation import corruption_curves

    sweep = robustness_sweep(cfg, dataset, variants)
    out = Paths(cfg, dataset).reports / "robustness"
    write_csv(sweep, out / f"{dataset}.csv", index=False)
    fig = corruption_curves(sweep)
    save_figure(fig, out / f"{dataset}.png")
    plt.close(fig)
    return sweep
