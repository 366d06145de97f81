"""Where each stage reads and writes, and the settings a notebook runs on.

Paths follow one convention (all relative to the repo, roots from params):
  {work}/tables/{dataset}.csv               prepared table with a `split` column
  {work}/stage1/{dataset}/{text}/seed{s}/   text learner, descriptions, checkpoint per seed
  {work}/stage2/{dataset}/{variant}/seed{s}/ one exported encoder per seed
  {work}/features/{dataset}/{variant}/seed{s}.npz  evaluation features with their image ids
  {metrics}/eval/{dataset}/{variant}.json     evaluation metrics (dvc metrics)
  {metrics}/train/{dataset}/{variant}.json    training cost (dvc metrics)
  {reports}/per_query/{dataset}/{variant}.csv per-query AP / rank (bootstrap input)
  {reports}/cmc/{dataset}/{variant}.csv       CMC curve (dvc plots)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from indivaid_core import config as config_mod
from indivaid_core.config import Config
from indivaid_core.data.images import set_pixel_limit


@dataclass(frozen=True)
class Paths:
    """Where each stage reads and writes, derived from params (never hard-coded)."""

    cfg: Config
    dataset: str

    @property
    def work(self) -> Path:
        return Path(self.cfg.data.work)

    @property
    def table(self) -> Path:
        return self.work / "tables" / f"{self.dataset}.csv"

    @staticmethod
    def image_root(table: pd.DataFrame) -> Path:
        """The folder a prepared table's image paths are relative to (`prepare` writes it)."""
        return Path(table["image_root"].iloc[0])

    def stage1(self, text: str, seed: int | None = None) -> Path:
        """A text run's seed folder; without a seed, the run's folder (the `none` placeholder)."""
        out = self.work / "stage1" / self.dataset / text
        return out if seed is None else out / f"seed{seed}"

    def stage2(self, variant: str, seed: int) -> Path:
        """The exported encoder of one seed (every variant is trained once per seed)."""
        return self.work / "stage2" / self.dataset / variant / f"seed{seed}"

    def features(self, variant: str, seed: int) -> Path:
        return self.work / "features" / self.dataset / variant / f"seed{seed}.npz"

    @property
    def reports(self) -> Path:
        return Path(self.cfg.data.reports)

    def metrics(self, variant: str, kind: str = "eval") -> Path:
        """`metrics/eval/<dataset>/<variant>.json` or `metrics/train/...` (dvc metrics)."""
        return Path(self.cfg.data.metrics) / kind / self.dataset / f"{variant}.json"

    def per_query(self, variant: str) -> Path:
        return self.reports / "per_query" / self.dataset / f"{variant}.csv"

    def curves(self, name: str) -> Path:
        return self.reports / "train_curves" / self.dataset / name

    def cmc(self, variant: str) -> Path:
        return self.reports / "cmc" / self.dataset / f"{variant}.csv"


# What a notebook runs on when executed as-is (pytest --nbval-lax): the smoke profile,
# writing under work/nbval so that it never touches the pipeline's own outputs.
TINY_OVERRIDES = {
    "profile": "smoke",
    "data.work": "work/nbval",
    "data.metrics": "work/nbval/metrics",
    "data.reports": "work/nbval/reports",
    "data.models": "work/nbval/models",
}


def load_config(params_file: str = "params.yaml", tiny: bool = False) -> Config:
    """Settings for a notebook: params.yaml as is, or its tiny smoke variant.

    Also applies the process-wide image pixel limit (`data.max_pixels`)."""
    cfg = config_mod.load(params_file, TINY_OVERRIDES if tiny else None)
    set_pixel_limit(cfg.data.max_pixels)
    return cfg
