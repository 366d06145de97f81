"""Robust image loading: every odd file becomes 8-bit RGB or a DataError naming the file.

Pillow's `ImageFile.LOAD_TRUNCATED_IMAGES` is never switched on here: a truncated JPEG must
fail loudly at validation time, not train on half a grey image.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from indivaid_core.photos import SUFFIXES


class DataError(ValueError):
    """Bad input data; the message names the file, row or column at fault."""


IMAGE_EXTENSIONS = SUFFIXES  # one list for the pipeline and the command line


def _to_8bit(img: Image.Image) -> Image.Image:
    """High-bit-depth greyscale ('I;16*', 'I', 'F') -> 'L'.

    Integer images are scaled by their container range (16-bit: /257, i.e. 65535 -> 255), not
    stretched per image, so two photos of the same scene keep the same brightness; 32-bit
    integers holding only 8- or 16-bit values use that smaller range. Floats in [0, 1] are
    scaled by 255, other floats clipped to [0, 255].
    """
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
        return Image.fromarray(
            np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
        )
    arr = arr.astype(np.int64)
    top = int(arr.max()) if arr.size else 0
    if img.mode.startswith("I;16") or 255 < top <= 65535:
        arr = arr / 257.0
    elif top > 65535:
        arr = arr / (2**32 - 1) * 255.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit 'RGB'.

    Transparency (RGBA, LA, PA, palette with a transparent index) is composited on black: the
    padding of cut-out animals then looks like the zero padding the model sees elsewhere,
    instead of whatever colour hid under the alpha channel.
    """
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        img = _to_8bit(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


# Images above this many pixels are refused (data.max_pixels sets it for the pipeline):
# camera traps write 10-20 MP, a 196 MP PNG is a mistake or a decompression bomb.
MAX_PIXELS = 100_000_000
LIMIT_SETTING = "data.max_pixels"  # what the refusal tells the user to raise
JPEG_START = b"\xff\xd8\xff"


def draft_for(image_size: tuple[int, int] | list[int]) -> tuple[int, int]:
    """The (W, H) to decode a JPEG at for a model input of (H, W): twice the input, so the
    resize and the augmentation crops still start from more pixels than they keep."""
    return 2 * int(image_size[1]), 2 * int(image_size[0])


def set_pixel_limit(max_pixels: int, setting: str = "data.max_pixels") -> None:
    """The pixel limit `load_rgb` enforces, and the setting its refusal names (the command
    line's identify and index take `--max-pixels`); Pillow's own bomb check is lifted to match."""
    global MAX_PIXELS, LIMIT_SETTING
    MAX_PIXELS, LIMIT_SETTING = int(max_pixels), setting
    Image.MAX_IMAGE_PIXELS = max(MAX_PIXELS, 1)


@contextmanager
def named_warnings(path: str | Path) -> Iterator[None]:
    """Pillow's warnings ("Corrupt EXIF data.") name no file: each is issued again, once,
    prefixed with `path`, when the block ends without error (an error names the file itself).
    Pillow's bomb warning is dropped: the pixel limit `load_rgb` checks is the policy, and a
    reduced JPEG never decodes at full size."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    seen = dict.fromkeys(
        (str(w.message), w.category)
        for w in caught
        if not issubclass(w.category, Image.DecompressionBombWarning)
    )
    for text, category in seen:
        warnings.warn(f"{path}: {text}", category, stacklevel=4)


@contextmanager
def opened(path: str | Path, reduce_large: bool = False) -> Iterator[Image.Image]:
    """`Image.open(path)`, not yet decoded. With `reduce_large`, a JPEG is opened by Pillow's
    JPEG reader without the bomb check `Image.open` applies to its full size: that size is
    never decoded (`load_rgb` decodes it reduced; EXIF readers decode nothing)."""
    with ExitStack() as stack:
        jpeg = False
        if reduce_large:
            with open(path, "rb") as f:
                jpeg = f.read(len(JPEG_START)) == JPEG_START
        if jpeg:
            fp = stack.enter_context(open(path, "rb"))
            yield stack.enter_context(JpegImagePlugin.jpeg_factory(fp, str(path)))
        else:
            yield stack.enter_context(Image.open(path))


def _over_limit(path: Path, size: tuple[int, int], reduce: bool, jpeg: bool) -> DataError:
    """The refusal, with the fix that applies: the pipeline's, or the command line's."""
    w, h = size
    what = f"{path}: {w}x{h} = {w * h / 1e6:.2f} MP is over the limit of {MAX_PIXELS / 1e6:.2f} MP"
    if not reduce:
        return DataError(f"{what} ({LIMIT_SETTING}); resize the image or raise the limit")
    if jpeg:
        return DataError(f"{what} even decoded reduced; resize it or raise {LIMIT_SETTING}")
    return DataError(
        f"{what} ({LIMIT_SETTING}); only JPEGs are decoded reduced: save it as JPEG, resize "
        f"it, or raise {LIMIT_SETTING}"
    )


def _limit_and_draft(
    path: Path, img: Image.Image, draft: tuple[int, int] | None, reduce: bool
) -> None:
    """Refuse an image over the pixel limit and set JPEGs to decode reduced to `draft`.

    Without `reduce` the full size is checked (the pipeline's rule, unchanged); with it, a
    JPEG is checked at the size it will be decoded at, which a 105 MP photo fits. An MPO
    (a phone's JPEG with a second frame) is reduced only then, so what fits decodes as before.
    """
    full = img.size
    over = full[0] * full[1] > MAX_PIXELS
    if over and not reduce:
        raise _over_limit(path, full, reduce, False)
    jpeg = img.format == "JPEG" or (reduce and over and img.format == "MPO")
    if draft is not None and jpeg:
        img.draft("RGB", draft)
    if img.size[0] * img.size[1] > MAX_PIXELS:
        raise _over_limit(path, full, reduce, jpeg)


def load_rgb(
    path: str | Path, draft: tuple[int, int] | None = None, reduce_large: bool = False
) -> Image.Image:
    """Open, fully decode and convert one image to 8-bit RGB (EXIF orientation applied).

    `draft` (W, H): JPEGs are decoded at the smallest 1/2, 1/4 or 1/8 scale that is still at
    least that size (Pillow's `draft`), so a 144 MP photo for a 256x128 model never sits in
    memory at full size. `reduce_large` (the command line's identify and index): a JPEG over
    the pixel limit is accepted when its reduced decode is within it, as it is never decoded
    whole. Raises DataError naming the file if it is missing, not an image, empty, truncated
    or over the pixel limit. Pillow's warnings come out naming the file.
    """
    path = Path(path)
    try:
        with named_warnings(path), opened(path, reduce_large) as img:
            _limit_and_draft(path, img, draft, reduce_large)
            img.load()  # decode now: truncation only shows up here
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except DataError:
        raise
    except FileNotFoundError as e:
        raise DataError(f"image file not found: {path}") from e
    except UnidentifiedImageError as e:
        raise DataError(f"not a readable image (unknown format or empty): {path}") from e
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: {e}; resize the image or raise {LIMIT_SETTING}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"corrupt or truncated image {path}: {e}") from e
