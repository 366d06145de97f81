"""Odd and corrupt files thrown at the loader: RGB out, or a DataError naming the file."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from indivaid_core.data import DataError, load_rgb


def _jpeg_bytes(size=(32, 24)) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_truncated_images_are_not_silently_loaded():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("truncated.jpg", _jpeg_bytes()[: len(_jpeg_bytes()) // 2], "truncated"),
        ("notes.jpg", b"this is a text file, not a photo\n", "not a readable image"),
        ("empty.jpg", b"", "not a readable image"),
    ],
)
def test_bad_files_raise_naming_the_file(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=words) as err:
        load_rgb(path)
    assert name in str(err.value)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="gone.png"):
        load_rgb(tmp_path / "gone.png")


def test_rgb_jpeg_roundtrip(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(_jpeg_bytes())
    img = load_rgb(tmp_path / "ok.jpg")
    assert img.mode == "RGB" and img.size == (32, 24)


def _save(tmp_path, img: Image.Image, name: str, **kw):
    img.save(tmp_path / name, **kw)
    return tmp_path / name


def test_greyscale(tmp_path):
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = np.asarray(load_rgb(_save(tmp_path, Image.fromarray(arr, "L"), "g.png")))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert (out == arr[..., None]).all()


def test_rgba_composited_on_black(tmp_path):
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., 0] = 200  # red everywhere
    arr[:2, :, 3] = 255  # top half opaque, bottom half transparent
    out = np.asarray(load_rgb(_save(tmp_path, Image.fromarray(arr, "RGBA"), "a.png")))
    assert (out[:2] == [200, 0, 0]).all()
    assert (out[2:] == 0).all()


def test_greyscale_with_alpha(tmp_path):
    img = Image.new("LA", (4, 4), (120, 255))
    out = np.asarray(load_rgb(_save(tmp_path, img, "la.png")))
    assert (out == 120).all()


def test_palette_and_palette_transparency(tmp_path):
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    out = np.asarray(load_rgb(_save(tmp_path, img, "p.png")))
    assert (out == [10, 200, 30]).all()
    out_t = np.asarray(load_rgb(_save(tmp_path, img, "pt.png", transparency=1)))
    assert (out_t == 0).all()  # the transparent index composites to black


def test_cmyk(tmp_path):
    img = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = np.asarray(load_rgb(_save(tmp_path, img, "c.jpg", quality=95)))
    assert out.shape == (8, 8, 3)
    r, g, b = out.reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


def test_16bit_png_scaled_by_container_range(tmp_path):
    arr = np.array([[0, 257 * 100], [65535, 257 * 10]], dtype=np.uint16)
    path = _save(tmp_path, Image.fromarray(arr), "d.png")
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_rgb(path))
    assert out.dtype == np.uint8
    assert out[..., 0].tolist() == [[0, 100], [255, 10]]


def test_32bit_int_and_float_images(tmp_path):
    i32 = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), "I")
    assert np.asarray(load_rgb(_save(tmp_path, i32, "i.tif")))[0, :, 0].tolist() == [0, 255]
    f32 = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(load_rgb(_save(tmp_path, f32, "f.tif")))[0, :, 0].tolist() == [0, 128, 255]
