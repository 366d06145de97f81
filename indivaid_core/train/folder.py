"""Train IndivAID on a folder of one's own animals: stage 1, stage 2, or both.

The folder holds one sub-folder per individual (or a metadata CSV with `identity` and `path`).
Every image trains; there is no test split, because the point is a model to identify with:
`indivaid index build --checkpoint <out>/model ...` then `indivaid identify ...`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indivaid_core.config import Config, ConfigError, VariantCfg, deep_merge, nested
from indivaid_core.data.adapters import load_dataset
from indivaid_core.data.images import DataError, set_pixel_limit
from indivaid_core.data.table import check_inside_root
from indivaid_core.photos import readable, tidy_gallery, warn_empty_folders
from indivaid_core.safe_io import folder_lock
from indivaid_core.train.stage1 import Stage1Run, train_stage1
from indivaid_core.train.stage2 import Stage2Run, train_stage2


def read_folder(images: str | Path) -> tuple[Any, Path]:
    """A folder of identity sub-folders, or a metadata CSV -> (table, image root)."""
    images = Path(images)
    if images.is_file() and images.suffix.lower() == ".csv":
        return load_dataset("wildlife_csv", images.name, images.parent)
    if images.is_dir():
        return load_dataset("identity_folders", images.name, images.parent)
    raise DataError(f"{images}: neither a folder of identity sub-folders nor a metadata CSV")


def usable_photos(table: Any, root: Path, images: str | Path) -> Any:
    """The rows to train on under the rule every command follows (indivaid_core.photos):
    hidden files, unaccepted types, duplicate rows and unreadable photos are skipped, each
    kind counted in one warning; nothing left is an error."""
    kept = readable(tidy_gallery(table, root, images), root, images)
    if Path(images).is_dir():
        warn_empty_folders(images, kept)
    if kept.empty:
        raise DataError(f"{images}: none of the {len(table)} listed photos is usable")
    return kept


def run_configs(cfg: Config, variant: str, overrides: dict[str, Any]) -> tuple[Config, Config]:
    """(stage-1, stage-2) settings: the variant's text run and its own settings, then the
    explicit `overrides`, which win (with none, exactly `cfg.for_run` and `cfg.variant`)."""
    v = cfg.variants[variant]
    mine = nested(overrides)
    own = deep_merge({"model": v.model, "stage2": v.stage2}, mine)
    return cfg.for_run(None, v.text, mine), cfg.for_run(None, v.text, own)


def check_prompt_fits(cfg: Config, species: str) -> None:
    """The stage-1 prompt (`A photo of a X..X <species>.`) must fit the text tower's context,
    checked before any work: `--set model.n_ctx=100` or a long --species would fail in the
    model. The same rule as `model.prompts.PromptLearner`, with the setting's name."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    from indivaid_core.model.prompts import CTX_PLACEHOLDER

    text_cfg = (open_clip.get_model_config(cfg.model.backbone) or {}).get("text_cfg", {})
    length = text_cfg.get("context_length", 77)
    prompt = f"A photo of a {' '.join([CTX_PLACEHOLDER] * cfg.model.n_ctx)} {species}."
    used = len(SimpleTokenizer(context_length=length).encode(prompt)) + 2  # + SOT, EOT
    if used > length:
        raise ConfigError(
            f"model.n_ctx: {cfg.model.n_ctx} with --species {species!r} makes a {used}-token "
            f"prompt; the {cfg.model.backbone} text tower holds {length}: lower model.n_ctx "
            "or shorten the species name"
        )


def train_on_folder(
    cfg: Config,
    images: str | Path,
    out: str | Path,
    species: str = "animal",
    variant: str = "indivaid",
    stages: str = "both",
    resume: bool = True,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `variant` on every image under `images`; writes <out>/stage1 and <out>/model.

    `overrides` (the command line's dotted `--set` values) win over the variant's own settings
    and its text run: `--set model.n_ctx=8` trains with 8 context tokens, not the text run's 4.
    """
    if stages not in ("both", "stage1", "stage2"):
        raise ConfigError(f"stages must be both, stage1 or stage2, got {stages!r}")
    if variant not in cfg.variants:
        raise ConfigError(f"unknown variant {variant!r}; valid: {sorted(cfg.variants)}")
    table, root = training_photos(cfg, images)
    run = _FolderRun(table, root, Path(out), resume)
    text = cfg.variants[variant].text
    stage1_cfg, stage2_cfg = run_configs(cfg, variant, overrides or {})
    first = text != "none" and stages in ("both", "stage1")
    if first:
        check_prompt_fits(stage1_cfg, species)
    result: dict[str, Any] = {"images": len(table), "individuals": int(table.identity.nunique())}
    run.out.mkdir(parents=True, exist_ok=True)
    # The whole run folder for the whole run: a second `train` to this --out (other settings
    # or not) is refused at once, instead of rewriting stage1 while the first is in stage 2.
    with folder_lock(run.out, f"training run folder {run.out}"):
        if first:
            result["stage1"] = run.stage1(stage1_cfg, species)
        if stages in ("both", "stage2"):
            result["stage2"] = run.stage2(stage2_cfg, cfg.variants[variant])
            result["model"] = str(run.out / "model")
    return result


def training_photos(cfg: Config, images: str | Path) -> tuple[Any, Path]:
    """(table, image root) of the usable photos under `images`, refused unless they show at
    least two individuals (nothing to tell apart otherwise) and, unless the settings allow
    it, lie inside the root (a CSV sent by someone may point at any file)."""
    set_pixel_limit(cfg.data.max_pixels)
    table, root = read_folder(images)
    if not cfg.data.allow_outside_root:
        fix = "--set data.allow_outside_root=true reads them anyway"
        check_inside_root(table, root, str(images), fix)
    table = usable_photos(table, root, images)
    if table["identity"].nunique() < 2:
        raise DataError(
            f"{images}: needs at least 2 individuals with usable photos, "
            f"found {table.identity.nunique()}"
        )
    return table, root


@dataclass(frozen=True)
class _FolderRun:
    """What both stages train on and where they write: <out>/stage1, <out>/model and the
    shared <out>/cache."""

    table: Any
    root: Path
    out: Path
    resume: bool

    def stage1(self, cfg: Config, species: str) -> dict[str, Any]:
        """Train the description generator; its epochs and final loss."""
        s1 = train_stage1(
            Stage1Run.of(cfg),
            train_table=self.table,
            image_root=self.root,
            species=species,
            out_dir=self.out / "stage1",
            cache_dir=self.out / "cache",
            resume=self.resume,
        )
        return {k: s1[k] for k in ("epochs", "final_loss") if k in s1}

    def stage2(self, cfg: Config, variant: VariantCfg) -> dict[str, Any]:
        """Train (or export) the model, on this folder's stage 1 when the variant has text;
        its epochs and final loss."""
        stage1_dir = self.out / "stage1"
        if variant.text != "none" and not (stage1_dir / "descriptions.safetensors").exists():
            raise DataError(f"{stage1_dir}: no stage-1 run; train with --stage both first")
        s2 = train_stage2(
            Stage2Run.of(cfg),
            train_table=self.table,
            image_root=self.root,
            out_dir=self.out / "model",
            stage1_dir=stage1_dir if variant.text != "none" else None,
            train=variant.train,
            resume=self.resume,
            cache_dir=self.out / "cache",
        )
        return {k: s2[k] for k in ("epochs", "final_loss") if k in s2}
