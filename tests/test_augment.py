"""Batched stage-2 augmentation and the decoded-image cache.

Each batched step is checked against torchvision's own per-image kernel with the same
parameters; the parameters are checked to be each image's own (independent of the batch).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from indivaid_core.config import AugmentCfg
from indivaid_core.data import digest
from indivaid_core.data.dataset import ImageTableDataset
from indivaid_core.data.decoded import decoded_images, decoded_key
from indivaid_core.train import augment as A
from indivaid_core.transforms import train_resize

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _batch(b: int = 6, h: int = 24, w: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


def test_pad_crop_equals_torchvision_pad_then_crop() -> None:
    x = _batch().float() / 255
    top, left = torch.tensor([0, 3, 8, 5, 1, 7]), torch.tensor([8, 0, 2, 4, 6, 1])
    out = A.pad_crop(x, 4, top, left)
    for i in range(len(x)):
        ref = F.crop(F.pad(x[i], [4]), int(top[i]), int(left[i]), 24, 16)
        assert torch.equal(out[i], ref)


@pytest.mark.parametrize(
    "op,kernel", [(0, F.adjust_brightness), (1, F.adjust_contrast), (2, F.adjust_saturation)]
)
def test_jitter_ops_equal_torchvision_kernels(op: int, kernel) -> None:
    x = _batch().float() / 255
    factors = torch.tensor([0.8, 1.0, 1.2, 0.9, 1.1, 0.85])
    out = A.jitter_op(x, op, factors.view(-1, 1, 1, 1))
    for i in range(len(x)):
        torch.testing.assert_close(out[i], kernel(x[i], float(factors[i])), atol=1e-6, rtol=0)


def test_erase_equals_torchvision_erase() -> None:
    x = torch.randn(3, 3, 20, 12)
    boxes = torch.tensor([[2, 3, 5, 4], [0, 0, 0, 0], [10, 1, 9, 11]])
    out = A.erase(x, boxes)
    for i, (t, left, h, w) in enumerate(boxes.tolist()):
        ref = F.erase(x[i], t, left, h, w, torch.tensor(0.0)) if h else x[i]
        assert torch.equal(out[i], ref)


def test_erase_boxes_follow_random_erasing() -> None:
    u = A.uniforms(range(4000))
    h, w = 96, 48
    boxes = A.erase_boxes(u, 0.5, h, w)
    on = boxes[:, 2] > 0
    assert 0.45 < on.float().mean() < 0.55  # p = 0.5 (every image has a try that fits here)
    area = (boxes[on, 2] * boxes[on, 3]).float() / (h * w)
    assert area.min() >= 0.015 and area.max() <= 0.36  # scale (0.02, 0.33), rounded sides
    assert (boxes[on, 0] + boxes[on, 2] <= h).all() and (boxes[on, 1] + boxes[on, 3] <= w).all()
    assert not (A.erase_boxes(u, 0.0, h, w)[:, 2] > 0).any()


def test_each_image_keeps_its_own_parameters() -> None:
    aug = A.BatchAugment(
        AugmentCfg(hflip=True, pad=4, random_erasing=0.5, color_jitter=0.2), MEAN, STD
    )
    x, seeds = _batch(), [11, 22, 33, 44, 55, 66]
    out = aug(x, seeds)
    assert out.dtype == torch.float32 and out.shape == x.shape
    for i in range(len(x)):  # alone, or in another batch, an image is augmented the same way
        assert torch.equal(aug(x[i : i + 1], seeds[i : i + 1])[0], out[i])
    assert torch.equal(aug(x.flip(0), seeds[::-1]), out.flip(0))
    assert not torch.equal(aug(x, [s + 1 for s in seeds]), out)


def test_no_augmentation_is_just_normalisation() -> None:
    aug = A.BatchAugment(
        AugmentCfg(hflip=False, pad=0, random_erasing=0.0, color_jitter=0.0), MEAN, STD
    )
    x = _batch()
    ref = v2.Normalize(MEAN, STD)(v2.ToDtype(torch.float32, scale=True)(x))
    torch.testing.assert_close(aug(x, range(6)), ref, atol=1e-6, rtol=0)


def test_flip_and_crop_rates() -> None:
    seeds = range(2000)
    u = A.uniforms(seeds)
    assert 0.45 < (u[:, A._FLIP] < 0.5).float().mean() < 0.55
    offsets = (u[:, A._CROP] * 9).floor()
    assert set(offsets.long().tolist()) == set(range(9))  # pad 4: tops 0..8, uniform


def test_uint8_input_required() -> None:
    aug = A.BatchAugment(AugmentCfg(), MEAN, STD)
    with pytest.raises(TypeError, match="uint8"):
        aug(torch.zeros(2, 3, 8, 8), [0, 1])


def test_decoded_cache_equals_per_image_resize_and_is_reused(tiny_table, tmp_path) -> None:
    df, root = tiny_table
    size = (32, 24)
    ref = ImageTableDataset(df, root, v2.Compose(train_resize(size)))
    mem = decoded_images(df, root, size, "tensor", None)
    cached = decoded_images(df, root, size, "tensor", tmp_path)
    assert mem.dtype == np.uint8 and mem.shape == (len(df), 3, *size)
    for i in range(len(df)):
        assert np.array_equal(mem[i], ref[i]["image"].numpy())
    assert np.array_equal(np.asarray(cached), mem)
    (file,) = (tmp_path / "decoded").glob("*.npy")
    stamp = file.stat().st_mtime_ns
    decoded_images(df, root, size, "tensor", tmp_path)
    assert file.stat().st_mtime_ns == stamp  # reused, not rewritten


def test_decoded_key_shares_the_tensor_resize_and_splits_pil_by_use(tiny_table) -> None:
    """The `tensor` resize is the same op for training and evaluation (one file serves both);
    PIL resizes bicubic for training and bilinear for evaluation (two files)."""
    df, root = tiny_table
    key = lambda backend, train: decoded_key(df, root, (16, 16), backend, train)  # noqa: E731
    assert key("tensor", True) == key("tensor", False)
    assert key("pil", True) != key("pil", False)


def test_decoded_cache_follows_edited_images_and_rejects_bad_files(tiny_table, tmp_path) -> None:
    df, src = tiny_table
    root = tmp_path / "images"
    shutil.copytree(src, root)
    size = (16, 16)
    first = np.array(decoded_images(df, root, size, "tensor", tmp_path / "c"))  # a copy
    victim = root / df.path.iloc[0]
    other = root / df.path.iloc[-1]
    shutil.copyfile(other, victim)  # an image replaced in place: a new key, decoded again
    second = np.array(decoded_images(df, root, size, "tensor", tmp_path / "c"))
    assert np.array_equal(second[0], second[-1]) and not np.array_equal(first[0], second[0])
    for f in (tmp_path / "c" / "decoded").glob("*.npy"):
        f.write_bytes(b"not an array")
    with pytest.warns(UserWarning, match="decoded-image cache"):
        again = decoded_images(df, root, size, "tensor", tmp_path / "c")
    assert np.array_equal(np.asarray(again), second)


def test_decoded_key_follows_content_even_at_the_same_size_and_time(tiny_table, tmp_path) -> None:
    """A photo replaced by another of the same size, with its timestamp put back (`cp -p`,
    `rsync -t`), still gets a new key: the key hashes content, not size and time."""
    df, src = tiny_table
    root = tmp_path / "images"
    shutil.copytree(src, root)
    victim = root / df.path.iloc[0]
    before = decoded_key(df, root, (16, 16), "tensor")
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF  # same length, other content
    st = victim.stat()
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_size == st.st_size and victim.stat().st_mtime_ns == st.st_mtime_ns
    digest._file_sha256.cache_clear()  # a rerun is a new process: nothing memoised
    assert decoded_key(df, root, (16, 16), "tensor") != before
