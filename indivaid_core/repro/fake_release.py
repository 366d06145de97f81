"""Stand-ins for what the paper path needs but a CPU machine lacks: OpenAI's ViT-B-16 file and
the nine released IndivAID datasets.

They let the `paper` profile run end to end (loading, layouts, protocols, training steps)
without a download: the checkpoint has OpenAI's format and shapes with random weights, the
trees the released folder layouts and file names with tiny synthetic images. Nothing here
says anything about accuracy.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

# OpenAI's archive keeps these beside the weights (clip.model.build_model drops them again).
_OPENAI_EXTRAS = {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}
#: Marks a tree written here, so that rewriting one never deletes a folder of real data.
FAKE_MARKER = ".indivaid-fake-release"


@contextmanager
def _quiet_build():
    """Silence open_clip's 'initialized randomly' log and the tracer's deprecation notes:
    random weights and tracing are the point here."""

    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            yield
    finally:
        root.removeFilter(drop)


def write_fake_openai_vit_b16(path: str | Path, seed: int = 0) -> Path:
    """Write a random-weight CLIP ViT-B-16 as OpenAI distributes it: a traced TorchScript
    archive (`encode_image` at 224x224, `encode_text` on (1, 77) tokens), every floating tensor
    in fp16, OpenAI's key layout (open_clip's ViT-B-16 keys) and its `input_resolution` /
    `context_length` / `vocab_size` entries.

    open_clip's text mask is a buffer, while OpenAI's is a plain attribute that tracing turns
    into a graph constant; it is made one here too, so the tensor tree matches OpenAI's file.
    Tracing runs on the CPU in fp16 without the re-run check; the whole write takes 3-10 s on
    two cores and gives a ~300 MB file. Written atomically; the same seed gives the same weights.
    """
    path = Path(path)
    with _quiet_build(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
        model = model.half().eval()
        mask = model._buffers.pop("attn_mask", None)
        if mask is not None:
            model.attn_mask = mask  # a plain attribute now, as in OpenAI's code
        for name, value in _OPENAI_EXTRAS.items():  # open_clip keeps some as plain ints
            model.__dict__.pop(name, None)
            model.register_buffer(name, torch.tensor(value))
        examples = {
            "encode_image": torch.zeros(1, 3, 224, 224, dtype=torch.float16),
            "encode_text": torch.zeros(1, 77, dtype=torch.long),
        }
        with torch.no_grad():
            traced = torch.jit.trace_module(model, examples, check_trace=False)
        # The archive's inner folder is named after the file, so it is saved under its final
        # name in a private folder beside `path`, then moved over it in one step.
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        try:
            torch.jit.save(traced, str(tmp_dir / path.name))
            os.replace(tmp_dir / path.name, path)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


# --------------------------------------------------------------------------------------------
# The nine released layouts (ywu840/IndivAID datasets/*.py naming)


@dataclass(frozen=True)
class ReleasedLayout:
    """How one released dataset names its files and where the paper profile finds it."""

    protocol: str  # as params.yaml's profiles.paper.data.datasets.<name>.protocol
    pid: Callable[[int], str]  # identity number -> the pid token of the file name
    origin: Callable[[int, int], str]  # (pid, image no) -> the `_<origin>` tail ('' for none)
    cameras: tuple[str, ...] = ("-1",)  # camid tokens, cycled over the images
    same_query_gallery: bool = False  # Stoat: query/ and gallery/ hold the same test files


RELEASED_LAYOUTS: dict[str, ReleasedLayout] = {
    "ATRW": ReleasedLayout("given", str, lambda p, n: f"_{3000 + n:06d}"),
    "FriesianCattle2017": ReleasedLayout(
        "given", lambda p: f"{p:03d}", lambda p, n: f"_2017-02-{10 + n % 18:02d}_10-11"
    ),
    "iPanda50": ReleasedLayout("given", str, lambda p, n: f"_{p:02d}_Baxi_{n:04d}"),
    "Lion": ReleasedLayout("given", str, lambda p, n: ""),
    "MPDD": ReleasedLayout(  # id_camid_no_origin.jpg, alphanumeric cameras
        "given", str, lambda p, n: f"_IMG{n:04d}", cameras=("A1", "b2", "7", "C03")
    ),
    "Nyala": ReleasedLayout("given", str, lambda p, n: f"_nyala_{p}{n}"),
    "PolarBear": ReleasedLayout("given", str, lambda p, n: f"_frame{n:05d}"),
    "SeaStar": ReleasedLayout("given", str, lambda p, n: f"_IMG_{1200 + n}"),
    "Stoat": ReleasedLayout(  # 5_CREK_12.jpg; query/ == gallery/
        "leave_one_out",
        str,
        lambda p, n: "",
        cameras=("CREK", "FC01", "FC11", "GC34", "P164", "3"),
        same_query_gallery=True,
    ),
}


def release_path(name: str) -> str:
    """The dataset's folder under the data root (the paper profile's `path:`)."""
    return f"IndivAID/{name}"


def _identity_image(hw: tuple[int, int], dataset: str, pid: int, n: int, seed: int) -> np.ndarray:
    """A coarse colour layout fixed by (dataset, identity) plus per-image noise and shift, so
    images of one identity look alike and training has something to separate."""
    key = zlib.crc32(dataset.encode())
    base = np.random.default_rng([seed, key, pid]).uniform(0, 255, (4, 2, 3))
    rng = np.random.default_rng([seed, key, pid, n])
    h, w = hw
    img = np.kron(base, np.ones((-(-h // 4), -(-w // 2), 1)))[:h, :w]
    img = np.roll(img, int(rng.integers(-h // 8, h // 8 + 1)), axis=0)
    img = img + rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_tree(
    target: Path,
    name: str,
    layout: ReleasedLayout,
    n_ids: int,
    per_id: int,
    hw: tuple[int, int],
    seed: int,
) -> None:
    """train/ holds identities 1..n_ids; query/ the first image of each of the next n_ids,
    gallery/ the rest (Stoat: query/ and gallery/ both hold all test images)."""
    k = 0
    for pid in range(1, 2 * n_ids + 1):
        for n in range(per_id):
            cam = layout.cameras[k % len(layout.cameras)]
            k += 1
            file = f"{layout.pid(pid)}_{cam}_{n}{layout.origin(pid, n)}.jpg"
            if pid <= n_ids:
                folders = ["train"]
            elif layout.same_query_gallery:
                folders = ["query", "gallery"]
            else:
                folders = ["query" if n == 0 else "gallery"]
            img = Image.fromarray(_identity_image(hw, name, pid, n, seed))
            for folder in folders:
                (target / folder).mkdir(parents=True, exist_ok=True)
                img.save(target / folder / file, quality=90)


def write_fake_release_trees(
    root: str | Path,
    n_ids: int = 4,
    per_id: int = 3,
    image_hw: tuple[int, int] = (64, 32),
    seed: int = 0,
) -> dict[str, Path]:
    """Write fake trees of the nine released datasets at `root/IndivAID/<Name>` -> {name: dir}.

    Each has `n_ids` training and `n_ids` test identities of `per_id` images, named as the
    released files are (ATRW-style `-1` cameras, MPDD's and Stoat's named cameras). A tree is
    built in a temporary folder and moved into place; an existing folder is replaced only if
    it is a fake written here (it holds FAKE_MARKER), never real data.
    """
    if n_ids < 2 or per_id < 2:
        raise ValueError("need n_ids >= 2 and per_id >= 2 (P x K batches, a gallery match)")
    root = Path(root)
    out = {}
    for name, layout in RELEASED_LAYOUTS.items():
        target = root / release_path(name)
        if target.exists() and not (target / FAKE_MARKER).is_file():
            raise FileExistsError(f"{target} exists and is not a fake release tree; not touched")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}.", suffix=".tmp"))
        try:
            _write_tree(tmp, name, layout, n_ids, per_id, tuple(image_hw), seed)
            (tmp / FAKE_MARKER).write_text("random images written by indivaid_core.repro\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        out[name] = target
    return out
