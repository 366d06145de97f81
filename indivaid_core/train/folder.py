"""Train IndivAID on a folder of one's own animals: stage 1, stage 2, or both.

The folder holds one sub-folder per individual (or a metadata CSV with `identity` and `path`).
Every image trains; there is no test split, because the point is a model to identify with:
`indivaid index build --checkpoint <out>/model ...` then `indivaid identify ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from indivaid_core.config import Config, ConfigError
from indivaid_core.data.adapters import load_dataset
from indivaid_core.data.images import DataError, set_pixel_limit
from indivaid_core.data.table import check_inside_root
from indivaid_core.train.stage1 import train_stage1
from indivaid_core.train.stage2 import train_stage2


def read_folder(images: str | Path) -> tuple[Any, Path]:
    """A folder of identity sub-folders, or a metadata CSV -> (table, image root)."""
    images = Path(images)
    if images.is_file() and images.suffix.lower() == ".csv":
        return load_dataset("wildlife_csv", images.name, images.parent)
    if images.is_dir():
        return load_dataset("identity_folders", images.name, images.parent)
    raise DataError(f"{images}: neither a folder of identity sub-folders nor a metadata CSV")


def train_on_folder(
    cfg: Config,
    images: str | Path,
    out: str | Path,
    species: str = "animal",
    variant: str = "indivaid",
    stages: str = "both",
    resume: bool = True,
) -> dict[str, Any]:
    """Train `variant` on every image under `images`; writes <out>/stage1 and <out>/model."""
    if stages not in ("both", "stage1", "stage2"):
        raise ConfigError(f"stages must be both, stage1 or stage2, got {stages!r}")
    if variant not in cfg.variants:
        raise ConfigError(f"unknown variant {variant!r}; valid: {sorted(cfg.variants)}")
    set_pixel_limit(cfg.data.max_pixels)
    table, root = read_folder(images)
    if not cfg.data.allow_outside_root:  # a CSV sent by someone may point at any file
        fix = "--set data.allow_outside_root=true reads them anyway"
        check_inside_root(table, root, str(images), fix)
    if table["identity"].nunique() < 2:
        raise DataError(f"{images}: needs at least 2 individuals, found {table.identity.nunique()}")
    out = Path(out)
    text = cfg.variants[variant].text
    result: dict[str, Any] = {"images": len(table), "individuals": int(table.identity.nunique())}
    if text != "none" and stages in ("both", "stage1"):
        s1 = train_stage1(
            cfg.for_run(None, text), table, root, species, out / "stage1", out / "cache", resume
        )
        result["stage1"] = {k: s1[k] for k in ("epochs", "final_loss") if k in s1}
    if stages in ("both", "stage2"):
        if text != "none" and not (out / "stage1" / "descriptions.safetensors").exists():
            raise DataError(f"{out / 'stage1'}: no stage-1 run; train with --stage both first")
        s2 = train_stage2(
            cfg.variant(variant),
            table,
            root,
            out / "model",
            out / "stage1" if text != "none" else None,
            train=cfg.variants[variant].train,
            resume=resume,
            cache_dir=out / "cache",
        )
        result["stage2"] = {k: s2[k] for k in ("epochs", "final_loss") if k in s2}
        result["model"] = str(out / "model")
    return result
