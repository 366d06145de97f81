"""params.yaml -> typed, validated settings.

`params.yaml` is the single source of settings. Its top level is the `default` profile; a
`profile:` key selects a named override block from `profiles:` that is deep-merged on top.
Every section is a dataclass, so an unknown or misspelt key is an error that names the key
and its closest valid match (dataclasses + difflib: no schema library gives the suggestion).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A settings problem, with the dotted key path that caused it."""


MAX_LR = 1.0  # no optimiser here trains at a larger step; a larger one ends in NaN weights
MAX_BATCH = 1024  # stage2.p x stage2.k images: 16x the released recipe's batch of 64


def _at_least(section: str, cfg: Any, **lows: float) -> None:
    """Range checks at load time: the error names the key, the value and what is allowed."""
    for key, low in lows.items():
        value = getattr(cfg, key)
        if value < low:
            raise ConfigError(f"{section}.{key}: expected {low} or more, got {value}")


def _positive(section: str, cfg: Any, *keys: str) -> None:
    for key in keys:
        if not getattr(cfg, key) > 0:
            raise ConfigError(f"{section}.{key}: expected a value > 0, got {getattr(cfg, key)}")


def _unit(section: str, cfg: Any, *keys: str) -> None:
    """Probabilities and strengths that only make sense in [0, 1]."""
    for key in keys:
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise ConfigError(f"{section}.{key}: expected 0 <= value <= 1, got {getattr(cfg, key)}")


def _learning_rate(section: str, cfg: Any) -> None:
    """A learning rate above 1 only makes the weights NaN, several minutes later."""
    if not 0.0 < cfg.lr <= MAX_LR:
        raise ConfigError(f"{section}.lr: expected 0 < value <= {MAX_LR}, got {cfg.lr}")


@dataclass
class DatasetCfg:
    """One dataset: which adapter reads it and under which evaluation protocol."""

    adapter: Literal["wildlife_csv", "reid_folders", "identity_folders", "wildlife_class"]
    path: str
    species: str = "animal"
    protocol: Literal["disjoint", "leave_one_out", "given"] = "disjoint"
    test_fraction: float = 0.5
    query_per_identity: int = 1
    val_individuals: int = 0  # training individuals set aside to choose settings on
    train_individuals: int = 0  # of the rest, how many train (0 = all)
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction: expected 0 < value < 1, got {self.test_fraction}")
        _at_least("dataset", self, query_per_identity=1, val_individuals=0, train_individuals=0)


@dataclass
class DataCfg:
    root: str = "data"
    work: str = "work"
    metrics: str = "metrics"
    reports: str = "reports"
    models: str = "models"  # pretrained weights the pipeline makes (the synthetic CLIP)
    num_workers: int = 0
    max_identities: int = 0
    max_pixels: int = 100_000_000  # larger images are refused, naming the file
    allow_outside_root: bool = False  # table paths may leave the dataset folder
    datasets: dict[str, DatasetCfg] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _at_least("data", self, num_workers=0, max_identities=0, max_pixels=1)


@dataclass
class ModelCfg:
    backbone: str = "lite0"
    pretrained: str = "lite0-imagenet"
    image_size: tuple[int, int] = (96, 96)
    stride: int = 0
    sie_coef: float = 0.0
    n_ctx: int = 4
    meta_net: bool = True
    fusion: Literal["attention", "mean", "individual_only"] = "attention"
    fusion_heads: int = 4
    eval_feature: Literal["concat", "global", "proj", "concat_bn"] = "concat"
    flip_tta: bool = False
    channels_last: bool = True

    def __post_init__(self) -> None:
        if len(self.image_size) != 2 or min(self.image_size) < 16:
            raise ConfigError(
                f"model.image_size: expected [H, W], each 16 or more, got {list(self.image_size)}"
            )
        _at_least("model", self, stride=0, sie_coef=0.0, n_ctx=1, fusion_heads=1)


@dataclass
class Stage1Cfg:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3.5e-4
    warmup_epochs: int = 2
    weight_decay: float = 1e-4
    feature_batch_size: int = 64
    num_threads: int = 1  # CPU threads; 0 = torch's default (see engine.cpu_threads)
    processes: int = 1  # CPU: (text run, seed) runs trained side by side; 1 = one after another
    # cosine: L2-normalised features x CLIP's logit scale; raw: CLIP-ReID's plain dot products
    logits: Literal["cosine", "raw"] = "cosine"
    # >0: `epochs` are counted at this batch size (the released configs train at 1), and the
    # run trains for as many updates as that would make (stage1.update_matched_epochs).
    released_batch_size: int = 0
    # Compute only what the pooled end-of-text feature depends on (model.prompts.TextEncoder):
    # the same result to float rounding (~2e-6), 7.7x faster for ViT-B-16's 77 slots.
    truncate_text: bool = True
    # With truncate_text: the shared prefix "<SOT> a photo of a" once per layer, the last layer
    # at end-of-text only; the same to ~1e-5, lite0's text step 2x faster again.
    cache_prefix: bool = True

    def __post_init__(self) -> None:
        if self.num_threads < 0:
            raise ConfigError(
                f"stage1.num_threads: expected 0 (torch's default) or more, got {self.num_threads}"
            )
        if self.processes < 1:
            raise ConfigError(f"stage1.processes: expected 1 or more, got {self.processes}")
        _at_least("stage1", self, epochs=1, batch_size=1, feature_batch_size=1, warmup_epochs=0)
        _at_least("stage1", self, released_batch_size=0)
        _learning_rate("stage1", self)
        _at_least("stage1", self, weight_decay=0.0)


@dataclass
class PretrainCfg:
    """The synthetic CLIP: a captioned corpus drawn at its own seed, and its training run."""

    seed: int = 1000  # corpus seed; the embedded suite's individuals are drawn at seed 0
    backbone: str = "lite0"
    init: str = "lite0-imagenet"  # weights the run starts from (the text tower starts random)
    presets: list[str] = field(default_factory=list)
    scale: float = 1.0  # multiplies each preset's individuals
    image_size: int = 96  # rendered size (pixels, square)
    heldout_fraction: float = 0.1  # individuals kept out of training, for the alignment metrics
    epochs: int = 4
    batch_size: int = 128
    lr: float = 5e-4  # text tower and projections
    image_lr_factor: float = 0.2  # the ImageNet image tower trains at lr x this
    weight_decay: float = 0.1
    warmup_steps: int = 50
    pad: int = 6  # random-translation augmentation (pixels); no flips: they swap the flank
    num_threads: int = 2
    processes: int = 2  # corpus rendering, one preset per process

    def __post_init__(self) -> None:
        _at_least("pretrain", self, epochs=1, batch_size=2, warmup_steps=0, pad=0)
        _at_least("pretrain", self, num_threads=0, processes=1, image_size=32)
        _positive("pretrain", self, "lr", "scale", "image_lr_factor")
        _at_least("pretrain", self, weight_decay=0.0)
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ConfigError(
                f"pretrain.heldout_fraction: expected 0 < value < 1, got {self.heldout_fraction}"
            )


@dataclass
class LossWeights:
    id: float = 0.25
    triplet: float = 1.0
    i2t: float = 1.0

    def __post_init__(self) -> None:
        _at_least("stage2.loss_weights", self, id=0.0, triplet=0.0, i2t=0.0)


@dataclass
class AugmentCfg:
    hflip: bool = False
    pad: int = 8
    random_erasing: float = 0.5
    color_jitter: float = 0.2

    def __post_init__(self) -> None:
        _at_least("stage2.augment", self, pad=0)
        _unit("stage2.augment", self, "random_erasing", "color_jitter")


@dataclass
class Stage2Cfg:
    epochs: int = 8
    # pk: P identities drawn uniformly per batch; clipreid: CLIP-ReID's RandomIdentitySampler
    # (each image about once per epoch, identities in proportion to their images)
    sampler: Literal["pk", "clipreid"] = "pk"
    iters_per_epoch: int = 0
    min_iters_per_epoch: int = 0
    p: int = 8
    k: int = 4
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    bias_lr_factor: float = 2.0
    backbone_lr_factor: float = 1.0
    freeze_bn: bool = False
    frozen_groups: int = 0  # the image tower's first layer groups do not train
    warmup_epochs: int = 1
    milestones: list[int] = field(default_factory=lambda: [6])
    gamma: float = 0.1
    label_smoothing: float = 0.1
    margin: float = 0.3
    loss_weights: LossWeights = field(default_factory=LossWeights)
    # i2t logits: cosine x CLIP's logit scale, or CLIP-ReID's raw `image_proj @ text.T`
    i2t_logits: Literal["cosine", "raw"] = "cosine"
    i2t_label_smoothing: float = 0.0
    augment: AugmentCfg = field(default_factory=AugmentCfg)
    amp: bool = True
    num_threads: int = 0  # CPU threads; 0 = torch's default (see engine.cpu_threads)
    processes: int = 1  # CPU: the seeds of a cell trained side by side; 1 = one after another

    def __post_init__(self) -> None:
        _at_least("stage2", self, num_threads=0, processes=1, frozen_groups=0)
        _at_least("stage2", self, epochs=1, iters_per_epoch=0, min_iters_per_epoch=0, p=2, k=1)
        _at_least("stage2", self, warmup_epochs=0, weight_decay=0.0, margin=0.0)
        _positive("stage2", self, "bias_lr_factor", "gamma")
        _learning_rate("stage2", self)
        if self.p * self.k > MAX_BATCH:
            raise ConfigError(
                f"stage2.p x stage2.k: a batch of {self.p} x {self.k} images is more than "
                f"{MAX_BATCH}; lower stage2.p (identities per batch) or stage2.k"
            )
        _at_least("stage2", self, backbone_lr_factor=0.0)
        for key in ("label_smoothing", "i2t_label_smoothing"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(
                    f"stage2.{key}: expected 0 <= value < 1, got {getattr(self, key)}"
                )
        if sorted(self.milestones) != list(self.milestones) or any(m < 1 for m in self.milestones):
            raise ConfigError(
                f"stage2.milestones: expected increasing epochs >= 1, got {self.milestones}"
            )
        if self.sampler == "clipreid" and (self.iters_per_epoch or self.min_iters_per_epoch):
            raise ConfigError(
                "stage2.sampler: 'clipreid' sets the epoch length itself (each image about once); "
                "set stage2.iters_per_epoch and stage2.min_iters_per_epoch to 0"
            )


@dataclass
class EvalCfg:
    batch_size: int = 64
    max_rank: int = 10
    same_camera_filter: bool = False
    rerank: bool = False
    rerank_k1: int = 20
    rerank_k2: int = 6
    rerank_lambda: float = 0.3
    bootstrap: int = 10000
    tsne_perplexity: float = 15.0
    corruption_levels: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    corruptions: list[str] = field(default_factory=lambda: ["blur", "noise", "low_light", "fog"])

    def __post_init__(self) -> None:
        _at_least("eval", self, batch_size=1, max_rank=1, bootstrap=0, rerank_k1=1, rerank_k2=1)
        if not 0.0 <= self.rerank_lambda <= 1.0:
            raise ConfigError(f"eval.rerank_lambda: expected 0..1, got {self.rerank_lambda}")
        if any(not 0.0 <= v <= 1.0 for v in self.corruption_levels):
            raise ConfigError(
                f"eval.corruption_levels: expected values in 0..1, got {self.corruption_levels}"
            )


@dataclass
class VariantCfg:
    """A row of the results tables: which stages run and which switches differ."""

    train: bool = True
    text: str = "none"
    model: dict[str, Any] = field(default_factory=dict)
    stage2: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScalingCfg:
    """The data-scaling study: `variants` of `dataset` trained again on nested smaller training
    sides, each cell a dataset of its own named `<dataset>-n<N>` (`scaled_name`)."""

    dataset: str = ""  # "" = no study
    train_individuals: list[int] = field(default_factory=list)
    variants: list[str] = field(default_factory=list)
    # `<dataset>-n<N>` -> settings merged over the dataset's overrides: a side may need its
    # own (its steps an epoch). Every side run needs an entry ({} for none), so each side's
    # stages can list their own in dvc.yaml.
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if any(n < 2 for n in self.train_individuals):
            raise ConfigError(
                f"pipeline.scaling.train_individuals: expected 2 or more, got "
                f"{self.train_individuals}"
            )


def scaled_name(dataset: str, train_individuals: int) -> str:
    """The name of `dataset` cut to its first `train_individuals` training individuals."""
    return f"{dataset}-n{train_individuals}"


@dataclass
class PipelineCfg:
    """Which cells run: every dataset x every variant, plus the ablation datasets x ablations."""

    datasets: list[str] = field(default_factory=list)
    variants: list[str] = field(default_factory=lambda: ["zero_shot", "indivaid"])
    ablation_datasets: list[str] = field(default_factory=list)
    ablations: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    robustness_variants: list[str] = field(default_factory=lambda: ["zero_shot", "indivaid"])
    robustness_datasets: list[str] | None = None  # None: every one of `datasets`
    attention_variant: str = "indivaid"
    attention_datasets: list[str] | None = None
    text_runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    scaling: ScalingCfg = field(default_factory=ScalingCfg)

    def datasets_for(self, key: Literal["robustness_datasets", "attention_datasets"]) -> list[str]:
        """`robustness_datasets` or `attention_datasets` as a list (None: every dataset)."""
        chosen = getattr(self, key)
        return list(self.datasets if chosen is None else chosen)


@dataclass
class Config:
    profile: str = "default"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    stage1: Stage1Cfg = field(default_factory=Stage1Cfg)
    stage2: Stage2Cfg = field(default_factory=Stage2Cfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    pretrain: PretrainCfg = field(default_factory=PretrainCfg)
    variants: dict[str, VariantCfg] = field(default_factory=dict)
    pipeline: PipelineCfg = field(default_factory=PipelineCfg)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)

    def cells(self) -> list[tuple[str, str]]:
        """(dataset, variant) of every trained/evaluated cell, in table order."""
        p = self.pipeline
        main = [(d, v) for d in p.datasets for v in p.variants]
        ablation = [(d, v) for d in p.ablation_datasets for v in p.ablations]
        scaling = [(d, v) for d in self.scaling_datasets() for v in p.scaling.variants]
        return main + ablation + scaling

    def scaling_datasets(self) -> list[str]:
        """The data-scaling study's smaller training sides, as dataset names."""
        s = self.pipeline.scaling
        return [scaled_name(s.dataset, n) for n in s.train_individuals] if s.dataset else []

    def text_runs_of(self, dataset: str) -> list[str]:
        """The stage-1 runs a dataset trains: all of `pipeline.text_runs` (the controls among
        them) on a named dataset, only its variants' runs on the scaling study's."""
        if dataset in self.data.datasets:
            return list(self.pipeline.text_runs)
        return list(dict.fromkeys(self.variants[v].text for v in self.variants_of(dataset)))

    def variants_of(self, dataset: str) -> list[str]:
        if dataset not in self.data.datasets:  # the scaling study's: its own list
            self.dataset(dataset)  # a misspelt name fails here
            return list(self.pipeline.scaling.variants)
        p = self.pipeline
        main = [v for v in p.variants if dataset in p.datasets]
        return main + [v for v in p.ablations if dataset in p.ablation_datasets]

    def variant(self, name: str, dataset: str | None = None) -> Config:
        """The effective settings for one variant (and dataset overrides), as a new Config."""
        if name not in self.variants:
            raise ConfigError(_unknown("variants", name, list(self.variants)))
        v = self.variants[name]
        return self.for_run(dataset, v.text, {"model": v.model, "stage2": v.stage2})

    def for_run(
        self, dataset: str | None, text: str = "none", patch: dict[str, Any] | None = None
    ) -> Config:
        """Base <- dataset overrides <- stage-1 text run <- `patch` (later wins)."""
        merged = to_dict(self)
        if dataset is not None:
            merged = deep_merge(merged, self.overrides_of(dataset))
        if text != "none":
            if text not in self.pipeline.text_runs:
                raise ConfigError(
                    _unknown("pipeline.text_runs", text, list(self.pipeline.text_runs))
                )
            merged = deep_merge(merged, self.pipeline.text_runs[text])
        return from_dict(deep_merge(merged, patch or {}), "params")

    def overrides_of(self, dataset: str) -> dict[str, Any]:
        """The dataset's overrides; a scaling side's own merged over its dataset's."""
        base = self.dataset(dataset).overrides
        if dataset in self.data.datasets:
            return base
        return deep_merge(base, self.side_overrides(dataset))

    def side_overrides(self, name: str) -> dict[str, Any]:
        """A scaling side's own overrides (`pipeline.scaling.overrides`)."""
        sides = self.pipeline.scaling.overrides
        if name not in sides:
            raise ConfigError(
                f"pipeline.scaling.overrides: no entry for '{name}' (every side of "
                "pipeline.scaling.train_individuals needs one; {} for none)"
            )
        return sides[name]

    def dataset(self, name: str) -> DatasetCfg:
        if name in self.data.datasets:
            return self.data.datasets[name]
        s = self.pipeline.scaling
        for n in s.train_individuals:
            if name == scaled_name(s.dataset, n):
                return dataclasses.replace(self.data.datasets[s.dataset], train_individuals=n)
        raise ConfigError(_unknown("data.datasets", name, list(self.data.datasets)))


def _unknown(where: str, key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {sorted(valid)}"
    return f"unknown key '{where}.{key}'{hint}".replace("'.", "'")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; values in `over` win, nested dicts merge."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(value, path, tp)
    if origin is Literal:
        if value not in args:
            near = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ConfigError(f"{path}: '{value}' is not one of {list(args)}{hint}")
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return {k: _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        inner = [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(inner) if origin is tuple else inner
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float | str) and not isinstance(value, bool):
        return _finite(value, path)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
    return value


def _finite(value: int | float | str, path: str) -> float:
    """A float setting as a finite number: nan or inf would pass every range check after it."""
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{path}: expected float, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{path}: expected a finite number, got {value!r}")
    return number


def from_dict(raw: dict[str, Any], path: str = "params", cls: type = Config) -> Any:
    """Build dataclass `cls` from `raw`, refusing unknown keys with a did-you-mean hint."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(_unknown(path, key, list(fields)))
    kwargs = {k: _convert(hints[k], v, f"{path}.{k}") for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{path}: {exc}") from exc


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict view (tuples become lists) for JSON, hashing and merging."""

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [plain(v) for v in x]
        return x

    return plain(dataclasses.asdict(cfg))


# dvc.yaml builds its stages from CELLS_FILE, which `indivaid profile NAME` writes from the
# selected profile; params.yaml stays the only place these lists are set.
CELLS_FILE = "cells.yaml"
CELL_KEYS = ("datasets", "variants", "ablation_datasets", "ablations")
# the datasets whose corruption sweep and attention figures run (None in params: every one)
FIGURE_KEYS = ("robustness_datasets", "attention_datasets")


# The stage-2 cells, one DVC foreach item each; a stale file listing other cells is refused.
TRAINED_KEYS = ("stage2_cells", "ablation_cells")


def trained_cells(cfg: Config, datasets: list[str], variants: list[str]) -> dict[str, Any]:
    """Stage-2 cells keyed `dataset-variant`, as a DVC matrix would name them. Each names the
    params key of its stage-1 text run, which dvc.yaml cannot spell (no nested `${}`); a cell
    without one names its variant's block again, which dvc.yaml already lists."""
    cells = {}
    for d in datasets:
        for v in variants:
            text = cfg.variants[v].text
            run = f"pipeline.text_runs.{text}" if text != "none" else f"variants.{v}"
            cells[f"{d}-{v}"] = {"dataset": d, "variant": v, "text_run": run}
    return cells


def cells_of(cfg: Config) -> dict[str, Any]:
    """The content of CELLS_FILE for this (profile-merged) configuration."""
    p = cfg.pipeline
    cells = {k: list(getattr(p, k)) for k in CELL_KEYS}
    cells |= {k: p.datasets_for(k) for k in FIGURE_KEYS}
    trained = {
        "stage2_cells": trained_cells(cfg, p.datasets, p.variants),
        "ablation_cells": trained_cells(cfg, p.ablation_datasets, p.ablations),
    }
    scaling = {
        "scaling_dataset": p.scaling.dataset or "none",
        "scaling_datasets": cfg.scaling_datasets(),
        "scaling_cells": trained_cells(cfg, cfg.scaling_datasets(), p.scaling.variants),
    }
    return {"cells": {"profile": cfg.profile, **cells, **trained, **scaling}}


def _check_references(cfg: Config) -> Config:
    """Cross-key checks: every name a list or override refers to must exist and be valid."""
    p = cfg.pipeline
    if cfg.stage2.augment.pad * 2 > min(cfg.model.image_size):
        raise ConfigError(
            f"stage2.augment.pad: {cfg.stage2.augment.pad} pixels is more than half of "
            f"model.image_size {list(cfg.model.image_size)}"
        )
    # the datasets this profile runs: another profile's dataset may hold overrides that only
    # make sense with that profile's settings (synth-stoat's steps, the paper's sampler)
    runs = [*p.datasets, *p.ablation_datasets, *([p.scaling.dataset] if p.scaling.dataset else [])]
    for ds in dict.fromkeys(runs):
        try:
            cfg.for_run(ds)  # validates the dataset's overrides, with their ranges
        except ConfigError as exc:
            raise ConfigError(f"data.datasets.{ds}.overrides: {exc}") from exc
    for name, v in cfg.variants.items():
        if v.text not in cfg.pipeline.text_runs:
            raise ConfigError(
                _unknown(f"variants.{name}.text", v.text, list(cfg.pipeline.text_runs))
            )
        try:
            cfg.variant(name)
        except ConfigError as exc:
            raise ConfigError(f"variants.{name}: {exc}") from exc
    for key in ("variants", "ablations"):
        for name in getattr(p, key):
            if name not in cfg.variants:
                raise ConfigError(_unknown(f"pipeline.{key}", name, list(cfg.variants)))
    for name in p.robustness_variants:
        if name not in p.variants:
            raise ConfigError(_unknown("pipeline.robustness_variants", name, p.variants))
    for key in FIGURE_KEYS:
        for name in p.datasets_for(key):
            if name not in p.datasets:
                raise ConfigError(_unknown(f"pipeline.{key}", name, p.datasets))
    if p.attention_variant not in p.variants:
        raise ConfigError(_unknown("pipeline.attention_variant", p.attention_variant, p.variants))
    if extra := [d for d in p.ablation_datasets if d not in p.datasets]:
        raise ConfigError(f"pipeline.ablation_datasets: {extra} are not in pipeline.datasets")
    _check_scaling(cfg)
    if not p.seeds or len(set(p.seeds)) != len(p.seeds):
        raise ConfigError(f"pipeline.seeds: expected distinct seeds, got {p.seeds}")
    return cfg


def _check_scaling(cfg: Config) -> None:
    s = cfg.pipeline.scaling
    if not s.dataset:
        return
    if s.dataset not in cfg.pipeline.datasets:
        raise ConfigError(
            f"pipeline.scaling.dataset: '{s.dataset}' is not in pipeline.datasets (its own "
            "cells are the study's largest training side)"
        )
    for name in s.variants:
        if name not in cfg.pipeline.variants:
            raise ConfigError(_unknown("pipeline.scaling.variants", name, cfg.pipeline.variants))
    largest = cfg.data.datasets[s.dataset].train_individuals
    if largest and any(n >= largest for n in s.train_individuals):
        raise ConfigError(
            f"pipeline.scaling.train_individuals: {s.train_individuals} must stay below "
            f"data.datasets.{s.dataset}.train_individuals ({largest})"
        )
    sides = cfg.scaling_datasets()
    for key in s.overrides:  # another profile's sides may keep their entries, unvalidated
        base, _, n = key.rpartition("-n")
        if base not in cfg.data.datasets or not n.isdigit() or int(n) < 2:
            raise ConfigError(_unknown("pipeline.scaling.overrides", key, sides))
    for side in sides:
        cfg.side_overrides(side)  # every side run has an entry
        try:
            cfg.for_run(side)
        except ConfigError as exc:
            raise ConfigError(f"pipeline.scaling.overrides.{side}: {exc}") from exc


def nested(overrides: dict[str, Any]) -> dict[str, Any]:
    """Dotted overrides (`--set`) as the nested patch that `Config.for_run` merges last."""
    return _set_dotted({}, overrides)


def _set_dotted(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for i, p in enumerate(parents):
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                where = ".".join(parents[: i + 1])
                raise ConfigError(
                    f"{dotted}: cannot set it, {where} is {node!r}, not a section of settings"
                )
        node[leaf] = value
    return raw


def add_settings_arguments(parser: Any, default: str = "params.yaml") -> None:
    """`--params FILE` and repeatable `--set KEY=VALUE`, for every command that reads settings.

    ``default=None``: without --params the settings shipped with the package are used
    (:func:`load_settings`), so the command works from any folder.
    """
    shipped = "the settings shipped with indivaid, profile default"
    parser.add_argument(
        "--params", default=default, help=f"settings file (default: {default or shipped})"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted settings override with a YAML value, e.g. stage2.epochs=20 (repeatable)",
    )


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (command-line `--set`) -> dotted overrides with YAML values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. stage2.epochs=20")
        out[key] = parse_yaml(value, f"--set {item!r}")
    return out


def resolve(raw: dict[str, Any], overrides: dict[str, Any] | None = None) -> Config:
    """Validate; merge the selected profile; dotted `overrides` win over both.

    The top level is validated on its own first (so its errors name top-level keys), then
    the profile block is merged and the overrides applied, so an override may reach a
    dataset that only the profile defines.
    """
    overrides = overrides or {}
    profile = overrides.get("profile", raw.get("profile", "default"))
    if profile == "default":
        cfg = _check_references(from_dict(_set_dotted(raw, overrides)))
    else:
        base = from_dict({**raw, "profile": profile})
        if profile not in base.profiles:
            valid = list(dict.fromkeys(["default", *base.profiles]))
            raise ConfigError(_unknown("profiles", profile, valid))
        merged = deep_merge({**raw, "profile": profile}, base.profiles[profile])
        cfg = _check_references(from_dict(_set_dotted(merged, overrides), f"profiles.{profile}"))
    _check_side_entries(cfg, _set_dotted(raw, overrides))
    return cfg


def _check_side_entries(cfg: Config, top: dict[str, Any]) -> None:
    """Each scaling side run has its entry at the top level of the settings: dvc.yaml lists
    `pipeline.scaling.overrides.<side>`, and DVC reads params.yaml without the profiles."""
    entries = top.get("pipeline", {}).get("scaling", {}).get("overrides", {})
    for side in cfg.scaling_datasets():
        if side not in entries:
            raise ConfigError(
                f"pipeline.scaling.overrides: no top-level entry for '{side}' (dvc.yaml lists "
                f"each side's own, and DVC does not read the profiles); add `{side}: {{}}`"
            )


class _StrictLoader(yaml.SafeLoader):
    """yaml's safe loader (no tag builds an object) that also refuses a key given twice,
    which plain YAML settles silently by keeping the last value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # the base class reports an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, where: str) -> Any:
    """YAML data only, or one ConfigError naming `where`: object tags, bad syntax, duplicates."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        detail = " ".join(str(err).split())
        raise ConfigError(f"{where}: not valid settings YAML ({detail[:240]})") from err


def read_settings(path: Path) -> dict[str, Any]:
    """The mapping a settings file holds, or one ConfigError naming the file and the fix."""
    fix = "give a YAML mapping of settings like params.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: settings file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a settings file; {fix}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (binary, or not UTF-8); {fix}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the settings file ({err.strerror})") from None
    raw = parse_yaml(text, str(path))
    if raw is None:
        raise ConfigError(f"{path}: the settings file is empty; {fix}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: holds a YAML {type(raw).__name__}, not a mapping; {fix}")
    return raw


def _blame_override(message: str, overrides: dict[str, Any] | None) -> str:
    """Say when the bad value came from an override (`--set`), not from the file named."""
    keys = [k for k in overrides or {} if re.search(rf"(^|[ .]){re.escape(k)}\b", message)]
    return f" (the value of the override {keys[0]}={overrides[keys[0]]!r})" if keys else ""


def load(
    path: str | Path = "params.yaml",
    overrides: dict[str, Any] | None = None,
    check_cells: bool = True,
) -> Config:
    """Read, merge the profile, apply dotted `overrides` (papermill/tests), validate.

    With `check_cells`, a CELLS_FILE beside `path` that lists other cells is an error: the
    DVC stages would not be the ones this profile asks for.
    """
    path = Path(path)
    raw = read_settings(path)
    try:
        cfg = resolve(raw, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}{_blame_override(str(exc), overrides)}") from exc
    cells_path = path.with_name(CELLS_FILE)
    if check_cells and cells_path.exists():
        found = (yaml.safe_load(cells_path.read_text()) or {}).get("cells", {})
        want = cells_of(cfg)["cells"]
        if any(found.get(k) != want[k] for k in CELL_KEYS + FIGURE_KEYS + TRAINED_KEYS):
            raise ConfigError(
                f"{cells_path} does not list the cells of profile '{cfg.profile}' in {path} "
                f"(dvc.yaml builds its stages from it); run `indivaid profile {cfg.profile}`"
            )
    return cfg


def default_params_path() -> Path:
    """The settings that ship with the package, so `indivaid train` needs no params.yaml where
    it runs. In a source checkout or an editable install (`pip install -e .`) that is the
    repository's params.yaml itself, the single source of settings, so nothing can drift; an
    installed wheel carries it as indivaid_core/default_params.yaml (a link to ../params.yaml
    in the repository, copied into the wheel as package data)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "params.yaml", here / "default_params.yaml"):
        if candidate.is_file() and (candidate.name != "params.yaml" or _is_checkout(here.parent)):
            return candidate
    raise ConfigError(f"{here}: the package's default settings are missing; reinstall indivaid")


def _is_checkout(root: Path) -> bool:
    """A folder holding this project's pyproject.toml (not some unrelated params.yaml)."""
    project = root / "pyproject.toml"
    return project.is_file() and 'name = "indivaid-core"' in project.read_text()


def load_settings(params: str | Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """`--params FILE` when given, else the packaged defaults under their `default` profile
    (`--set profile=NAME` picks another); `overrides` win over both."""
    overrides = overrides or {}
    if params is not None:
        return load(params, overrides, check_cells=False)
    return load(default_params_path(), {"profile": "default", **overrides}, check_cells=False)


def write_cells(params: str | Path = "params.yaml", profile: str | None = None) -> Path:
    """Select `profile` in params.yaml (its one `profile:` line) and write CELLS_FILE."""
    from indivaid_core.safe_io import write_text

    params = Path(params)
    text = params.read_text()
    if profile is not None:
        text, n = re.subn(r"^profile:[^\n#]*", f"profile: {profile}", text, count=1, flags=re.M)
        if n != 1:
            raise ConfigError(f"{params}: no top-level `profile:` line to set")
    cfg = resolve(yaml.safe_load(text) or {})  # validate before writing anything
    if text != params.read_text():
        write_text(params, text)
    out = params.with_name(CELLS_FILE)
    header = "# Written by `indivaid profile`; dvc.yaml's matrices read it. Do not edit.\n"
    write_text(out, header + yaml.safe_dump(cells_of(cfg), sort_keys=False))
    return out
