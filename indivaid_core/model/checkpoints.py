"""Reading CLIP checkpoints without running code, and finding OpenAI's weights offline.

Three formats are read, each without unpickling anything but tensors and plain data:
- safetensors files;
- `torch.save` files (`torch.load(weights_only=True)`), bare or wrapped in `state_dict` /
  `module.` as open_clip's training scripts write them;
- TorchScript archives, the format OpenAI distributes (`ViT-B-16.pt`). `torch.jit.load`
  would deserialise and compile the archive's code, so it is never called: the archive's
  `data.pkl` and tensor records are copied into a plain `torch.save` zip in memory and read
  with `torch.load(weights_only=True)`, with every TorchScript class name bound to an inert
  placeholder. Only the tensors of that object tree are kept; `code/` is never read.

A file holds *OpenAI weights* (QuickGELU, CLIP-ReID's preprocessing) when it is given as
`openai:<path>`, when it is a TorchScript archive, or when it is a bare state dict in
OpenAI's key layout. `open_clip:<path>` says the opposite (GELU, as the model config says).
"""

from __future__ import annotations

import io
import logging
import os
import pickletools
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Where OpenAI's `clip` package caches its downloads; `clip.load` users already have it here.
OPENAI_CACHE = Path("~/.cache/clip")
WEIGHTS_DIR_ENV = "INDIVAID_WEIGHTS_DIR"
# Non-weight entries OpenAI's CLIP keeps beside its tensors.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_OPENAI_LAYOUT_KEYS = ("visual.class_embedding", "visual.proj", "text_projection")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely or does not fit; the message names the file."""


@dataclass(frozen=True)
class Checkpoint:
    """Tensors of a CLIP checkpoint and whether they are OpenAI's (QuickGELU) weights."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    openai: bool
    format: str  # "torchscript" | "torch" | "safetensors"


class _Inert:
    """Stands in for every TorchScript class while its tensors are read: it has no methods."""


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _torchscript_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The parameter tree of a TorchScript archive, read without loading its code."""
    with zipfile.ZipFile(path) as z:
        prefix = z.namelist()[0].split("/")[0]
        raw = z.read(f"{prefix}/data.pkl")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as out:
            for name in z.namelist():
                rel = name[len(prefix) + 1 :]
                if rel in ("data.pkl", "byteorder", "version") or rel.startswith("data/"):
                    out.writestr(f"archive/{rel}", z.read(name))
    names = {
        arg.replace(" ", ".")
        for op, arg, _ in pickletools.genops(raw)
        if op.name == "GLOBAL" and str(arg).startswith("__torch__")
    }
    buf.seek(0)
    with torch.serialization.safe_globals([(_Inert, n) for n in sorted(names)]):
        root = torch.load(buf, map_location="cpu", weights_only=True)

    def walk(node: object, prefix: str, out: dict[str, torch.Tensor]) -> dict:
        for key, value in vars(node).items():
            if isinstance(value, torch.Tensor):
                out[prefix + key] = value
            elif isinstance(value, _Inert):
                walk(value, f"{prefix}{key}.", out)
        return out

    if not isinstance(root, _Inert):
        raise CheckpointError(f"{path}: TorchScript archive without a module tree")
    return walk(root, "", {})


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Bare state dict, or open_clip's {'state_dict': ...} with optional 'module.' prefixes."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: not a state dict (found {type(obj).__name__})")
    if all(str(k).startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def split_spec(spec: str | Path) -> tuple[Path, bool | None]:
    """`openai:<path>` / `open_clip:<path>` / `<path>` -> (path, declared OpenAI or not)."""
    spec = str(spec)
    for tag, is_openai in (("openai:", True), ("open_clip:", False)):
        if spec.startswith(tag):
            return Path(spec[len(tag) :]).expanduser(), is_openai
    return Path(spec).expanduser(), None


def read_checkpoint(spec: str | Path) -> Checkpoint:
    """Read `spec` (a path, `openai:<path>` or `open_clip:<path>`) without running code."""
    path, declared = split_spec(spec)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        if _is_torchscript(path):
            sd, fmt = _torchscript_tensors(path), "torchscript"
            wrapped = False
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd, fmt, wrapped = load_file(str(path)), "safetensors", False
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            wrapped = isinstance(obj, dict) and "state_dict" in obj
            sd, fmt = _unwrap(obj, path), "torch"
    except CheckpointError:
        raise
    except Exception as exc:  # pickle refusals, truncated zips, safetensors header errors
        raise CheckpointError(
            f"{path}: cannot be read as a CLIP checkpoint without running code "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    sd = {k: v for k, v in sd.items() if k not in _OPENAI_EXTRA_KEYS}
    layout = all(k in sd for k in _OPENAI_LAYOUT_KEYS)
    openai = (
        declared if declared is not None else (fmt == "torchscript" or (layout and not wrapped))
    )
    if declared is None and openai and fmt != "torchscript":
        log.warning(
            "%s: bare state dict in OpenAI's key layout, read as OpenAI weights (QuickGELU); "
            "write open_clip:%s for a GELU checkpoint",
            path,
            path,
        )
    return Checkpoint(path=path, state_dict=sd, openai=bool(openai), format=fmt)


def is_online(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    """One quick connection attempt, so that offline machines fail at once, not after retries."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _openai_url(backbone: str) -> str | None:
    """OpenAI's download address for `backbone`, as open_clip's pretrained table gives it."""
    from open_clip.pretrained import get_pretrained_cfg

    return (get_pretrained_cfg(backbone, "openai") or {}).get("url") or None


def find_openai_file(backbone: str) -> Path | None:
    """A local copy of OpenAI's weights: $INDIVAID_WEIGHTS_DIR first, then ~/.cache/clip."""
    url = _openai_url(backbone)
    if url is None:
        return None
    name = url.rsplit("/", 1)[-1]
    for d in (os.environ.get(WEIGHTS_DIR_ENV), str(OPENAI_CACHE)):
        if d and (Path(d).expanduser() / name).is_file():
            return Path(d).expanduser() / name
    return None


def openai_missing_message(backbone: str) -> str:
    """What file to get and where to put it, for `pretrained: openai` on an offline machine."""
    url = _openai_url(backbone)
    if url is None:
        return (
            f"pretrained='openai' for {backbone!r}: open_clip knows no OpenAI weights for it; "
            "pass a checkpoint as pretrained='openai:path/to/file.pt'"
        )
    name = url.rsplit("/", 1)[-1]
    return (
        f"pretrained='openai' for {backbone!r}: OpenAI's weights are not on this machine and it "
        f"is offline. Download {url} (on a machine with internet) and put it at "
        f"{OPENAI_CACHE / name} or in ${WEIGHTS_DIR_ENV}/{name}, or set "
        f"model.pretrained: openai:path/to/{name}"
    )
