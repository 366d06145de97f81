"""The paper path on the CPU: OpenAI's ViT-B-16 file format and the nine released layouts.

The checkpoint is a fake (indivaid_core.repro.fake_release): OpenAI's TorchScript format,
key layout and fp16 tensors with random weights, so it checks loading, not accuracy. It is
written once per module (about 300 MB, a few seconds) and read without running its code.
One real stage-2 step of ViT-B-16 at 256x128 then runs on the Stoat and MPDD trees, whose
file names are the ones the released readers parse (named cameras, query == gallery).
"""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import yaml

from indivaid_core.config import AugmentCfg
from indivaid_core.data import (
    camera_map_of,
    label_map_of,
    load_dataset,
    load_rgb,
    prepare_table,
    train_rows,
)
from indivaid_core.data.dataset import camera_ids
from indivaid_core.data.decoded import decoded_images
from indivaid_core.losses import i2t_ce_loss, id_loss, triplet_loss
from indivaid_core.model import AttentionFusion, ReIDEncoder, build_clip, preprocess_info
from indivaid_core.model.checkpoints import read_checkpoint
from indivaid_core.repro.fake_release import (
    FAKE_MARKER,
    RELEASED_LAYOUTS,
    release_path,
    write_fake_openai_vit_b16,
    write_fake_release_trees,
)
from indivaid_core.train.augment import BatchAugment
from indivaid_core.train.stage2 import Stage2Model, param_groups

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
SIZE, STRIDE = (256, 128), 16
# The paper profile's stage-2 recipe (params.yaml profiles.paper; Stoat and MPDD overrides).
PAPER_AUG = AugmentCfg(hflip=True, pad=10, random_erasing=0.5, color_jitter=0.0)
LR, WD, BIAS_LR_FACTOR = 8e-6, 1e-4, 2.0


def _no_torchscript_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every way of deserialising TorchScript code fail: reading must not need it."""

    def refuse(*args, **kwargs):
        raise AssertionError("TorchScript code was deserialised")

    monkeypatch.setattr(torch.jit, "load", refuse)
    monkeypatch.setattr(torch._C, "import_ir_module", refuse)


@pytest.fixture(scope="module")
def fake_b16(tmp_path_factory) -> tuple[Path, float]:
    path = tmp_path_factory.mktemp("weights") / "ViT-B-16.pt"
    start = time.perf_counter()
    write_fake_openai_vit_b16(path, seed=0)
    return path, time.perf_counter() - start


@pytest.fixture(scope="module")
def clip_b16(fake_b16) -> open_clip.CLIP:
    """The fake file through the project's own builder, with TorchScript loading disabled."""
    with pytest.MonkeyPatch.context() as mp:
        _no_torchscript_loading(mp)
        return build_clip("ViT-B-16", str(fake_b16[0]), SIZE, STRIDE)


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("data")
    return root, write_fake_release_trees(root, n_ids=3, per_id=3, image_hw=(64, 32))


def _paper_datasets() -> dict:
    """The datasets the paper profile selects, as params.yaml defines them."""
    raw = yaml.safe_load(PARAMS.read_text())
    names = raw["profiles"]["paper"]["pipeline"]["datasets"]
    return {name: raw["data"]["datasets"][name] for name in names}


def _table(root: Path, name: str) -> tuple[pd.DataFrame, Path]:
    """The dataset as the paper profile reads it: its adapter, path and protocol."""
    spec = _paper_datasets()[name]
    df, image_root = load_dataset(spec["adapter"], spec["path"], root)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a fake tree must need no excuses
        table = prepare_table(df, spec["protocol"], 0.5, 1, 0, image_root)
    return table, image_root


def test_fake_checkpoint_is_openai_torchscript_read_without_running_code(fake_b16, monkeypatch):
    path, seconds = fake_b16
    size_mb = path.stat().st_size / 2**20
    print(f"fake ViT-B-16 TorchScript: written in {seconds:.1f} s, {size_mb:.0f} MiB")
    assert 250 < size_mb < 400  # fp16, as OpenAI's 335 MB ViT-B-16.pt
    _no_torchscript_loading(monkeypatch)
    ckpt = read_checkpoint(path)
    assert ckpt.format == "torchscript" and ckpt.openai
    with torch.device("meta"):  # shapes only, no 150M random numbers
        ref = open_clip.create_model("ViT-B-16", pretrained=None, device="meta").state_dict()
    assert set(ckpt.state_dict) == set(ref)  # attn_mask and OpenAI's extras are not weights
    assert {k: tuple(v.shape) for k, v in ckpt.state_dict.items()} == {
        k: tuple(v.shape) for k, v in ref.items()
    }
    assert all(v.dtype == torch.float16 for v in ckpt.state_dict.values())


def test_fake_checkpoint_builds_the_paper_vit_b16(fake_b16, clip_b16):
    gelus = {type(b.mlp.gelu) for b in clip_b16.visual.transformer.resblocks}
    assert gelus == {open_clip.transformer.QuickGELU}
    info = preprocess_info(clip_b16)
    assert info.mean == info.std == (0.5, 0.5, 0.5)  # CLIP-ReID's, not CLIP's statistics
    assert info.image_size == SIZE and info.resize_backend == "pil"
    assert clip_b16.visual.grid_size == (16, 8)
    assert clip_b16.visual.positional_embedding.shape == (16 * 8 + 1, 768)
    sd = read_checkpoint(fake_b16[0]).state_dict
    assert torch.equal(clip_b16.visual.conv1.weight, sd["visual.conv1.weight"].float())
    assert torch.equal(clip_b16.visual.proj, sd["visual.proj"].float())


def test_trees_match_the_paper_profile():
    """The fake trees sit where params.yaml's paper profile looks, under its protocols."""
    paper = _paper_datasets()
    assert set(paper) == set(RELEASED_LAYOUTS)
    for name, spec in paper.items():
        assert spec["adapter"] == "reid_folders"
        assert spec["path"] == release_path(name)
        assert spec["protocol"] == RELEASED_LAYOUTS[name].protocol


@pytest.mark.parametrize("name", sorted(RELEASED_LAYOUTS))
def test_fake_tree_loads_under_its_paper_protocol(trees, name):
    root, dirs = trees
    assert dirs[name] == root / "IndivAID" / name
    table, _ = _table(root, name)
    counts = table.split.value_counts().to_dict()
    assert counts["train"] == 9 and table.attrs["query_identities_without_match"] == 0
    cams = set(table.camera)
    if RELEASED_LAYOUTS[name].same_query_gallery:  # Stoat: query/ == gallery/, read once
        on_disk = {
            s: sorted(p.name for p in (dirs[name] / s).iterdir()) for s in ("query", "gallery")
        }
        assert on_disk["query"] == on_disk["gallery"] and counts == {"train": 9, "test": 9}
        assert cams == set(range(6))  # CREK, FC01, ... and "3" ranked 0..5
    else:
        assert counts["query"] == 3 and counts["gallery"] == 6
        assert cams == ({-1} if name != "MPDD" else set(range(4)))  # MPDD: A1, b2, 7, C03


def test_fake_images_look_alike_within_an_identity(trees):
    """Identity-dependent images, so a training step sees a signal to separate."""
    root, dirs = trees
    table, image_root = _table(root, "Lion")
    rows = table[table.split == "train"].sort_values(["identity", "path"])
    imgs = {p: np.asarray(load_rgb(image_root / p), np.float32) for p in rows.path}
    first = rows.groupby("identity").path.apply(list)
    same = np.abs(imgs[first.iloc[0][0]] - imgs[first.iloc[0][1]]).mean()
    other = np.abs(imgs[first.iloc[0][0]] - imgs[first.iloc[1][0]]).mean()
    assert imgs[first.iloc[0][0]].shape == (64, 32, 3) and same < other / 2


def test_rewriting_trees_replaces_a_fake_but_never_real_data(tmp_path):
    write_fake_release_trees(tmp_path, n_ids=2, per_id=2, image_hw=(16, 8))
    out = write_fake_release_trees(tmp_path, n_ids=3, per_id=2, image_hw=(16, 8))
    assert len(list((out["Lion"] / "train").iterdir())) == 6  # the old tree is gone
    assert (out["Lion"] / FAKE_MARKER).is_file()
    real = tmp_path / "real"
    (real / "IndivAID" / "ATRW" / "train").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a fake"):
        write_fake_release_trees(real)
    assert (real / "IndivAID" / "ATRW" / "train").is_dir()


@pytest.mark.parametrize(("name", "sie_coef"), [("Stoat", 0.0), ("MPDD", 1.0)])
def test_one_stage2_step_of_vit_b16_on_a_released_layout(trees, clip_b16, name, sie_coef):
    """One step as stage 2 takes it (Stage2Model, param_groups, Adam, the three losses) on
    images read from the tree with the paper's transform; MPDD adds SIE camera embeddings."""
    root, _ = trees
    start = time.perf_counter()
    table, image_root = _table(root, name)
    rows = train_rows(table)
    labels = label_map_of(rows.identity)
    camera_map = camera_map_of(table.camera) if sie_coef else None  # every split's cameras
    info = preprocess_info(clip_b16)
    pixels = decoded_images(rows, image_root, SIZE, info.resize_backend, None)
    pick = [i for y in sorted(labels)[:2] for i in rows.index[rows.identity == y][:2]]  # P2 K2
    images = BatchAugment(PAPER_AUG, info.mean, info.std)(torch.from_numpy(pixels[pick]), pick)
    y = torch.tensor(rows.identity.iloc[pick].map(labels).to_numpy())
    assert images.shape == (4, 3, *SIZE) and y.tolist() == [0, 0, 1, 1]
    cams = torch.tensor(camera_ids(rows.camera.iloc[pick], camera_map)) if camera_map else None

    torch.manual_seed(0)
    enc = ReIDEncoder(
        copy.deepcopy(clip_b16), len(labels), len(camera_map or {}), sie_coef=sie_coef
    )
    assert (enc.sie is not None) == bool(sie_coef)
    dim = enc.feature_dims["proj"]
    h = torch.randn(len(labels), dim)  # stage-1 descriptions: one h, two g per identity
    g, g_labels = torch.randn(2 * len(labels), dim), torch.arange(len(labels)).repeat(2)
    net = Stage2Model(enc, AttentionFusion(dim, heads=8)).train()
    opt = torch.optim.Adam(
        param_groups(net, lr=LR, wd=WD, bias_factor=BIAS_LR_FACTOR, backbone_factor=1.0)
    )
    watched = {
        "conv1": enc.visual.conv1.weight,
        "last block": enc.visual.transformer.resblocks[-1].mlp.c_fc.weight,
        "proj": enc.visual.proj,
        "id head": enc.head_global.weight,
        "fusion": net.fusion.attn.in_proj_weight,
        **({"sie": enc.sie} if enc.sie is not None else {}),
    }
    before = {k: p.detach().clone() for k, p in watched.items()}

    out = net(images, h, g, g_labels, cams)
    loss = (
        id_loss(out["logits"], y, 0.1)
        + sum(triplet_loss(f, y, 0.3) for f in out["triplet"])
        + i2t_ce_loss(out["proj"], out["z"], y, 1.0, label_smoothing=0.1, normalize=False)
    )
    opt.zero_grad()
    loss.backward()
    opt.step()

    assert torch.isfinite(loss)
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    no_grad = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad
    unchanged = [k for k, p in watched.items() if torch.equal(p.detach(), before[k])]
    assert not unchanged
    print(f"{name}: one ViT-B-16 stage-2 step in {time.perf_counter() - start:.1f} s")
