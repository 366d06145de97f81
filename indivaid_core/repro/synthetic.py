"""Embedded synthetic re-ID suite: identity lives only in a per-individual coat pattern.

Each individual gets two flank patterns (left and right differ, as on real tigers) or one top
pattern (sea star) from a seeded generator; each photo then draws everything else at random
and independently of identity: pose, viewpoint, camera (which fixes the camera-trap scene),
rotation, scale, perspective, partial crop, background, illumination and colour cast, day or
night infrared, vegetation occlusion, blur, noise and capture date. Everything is seeded from
(seed, preset, individual, photo), so the same seed gives byte-identical JPEGs and metadata,
and a larger `scale` adds individuals without changing the existing ones.

CLI: ``indivaid synth --out data --seed 0 [--scale 1] [--presets ...]``
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from indivaid_core.repro.bodies import BodyShape, Palette, render_body, sample_pose
from indivaid_core.repro.captions import caption, coat_attributes
from indivaid_core.repro.patterns import Pattern, sample_pattern

# pandas and scipy are imported by the functions that use them, so that `indivaid synth
# --help` (which builds its parser from this module's presets) answers without them.
if TYPE_CHECKING:
    import pandas as pd

SUPERSAMPLE = 2  # render at 2x and box-downsample: cheap anti-aliasing


@dataclass(frozen=True)
class Nuisance:
    """Per-photo nuisance strengths: the difficulty knobs used for calibration."""

    rotation: float = 5.0  # max |in-plane rotation| in degrees
    scale: tuple[float, float] = (1.0, 1.3)  # body length / image width (tight crops)
    perspective: float = 0.08  # max projective tilt
    crop_prob: float = 0.1  # chance the animal is pushed partly out of frame
    crop_shift: float = 0.25  # max centre shift (fraction of the frame) when cropped
    pose: float = 0.25  # pose variation strength (0 = rigid)
    night_prob: float = 0.0  # chance of a greyscale infrared night shot
    occlusion: tuple[float, float, float] = (0.85, 0.12, 0.03)  # P(none), P(low), P(high)
    blur: float = 0.4  # max Gaussian blur sigma in output pixels
    noise: float = 0.015  # max Gaussian noise std (image in [0, 1])
    illumination: tuple[float, float] = (0.85, 1.1)  # global gain range
    gradient: float = 0.2  # max illumination gradient across the frame
    colour_cast: float = 0.05  # max per-channel gain deviation
    underwater: float = 0.0  # max haze toward the water colour (sea star)
    contrast: tuple[float, float] = (0.9, 1.0)  # coat-pattern contrast range
    procedural_bg: float = 0.4  # share of scenes that are procedural instead of photos
    bg_blur: tuple[float, float] = (2.0, 3.5)  # depth of field: background blur sigma (px)
    bg_contrast: float = 0.15  # background contrast around its mean (< 1 = duller)


@dataclass(frozen=True)
class Preset:
    """One synthetic dataset; `protocol` is how the pipeline should split it."""

    name: str
    species: str
    pattern: str
    shape: BodyShape
    palette: Palette
    n_identities: int
    images: tuple[int, int]  # min, max photos per individual
    images_median: float  # long tail: lognormal around this median
    images_sigma: float
    n_cameras: int
    viewpoints: tuple[str, ...] = ("left", "right")
    viewpoint_probs: tuple[float, ...] | None = None  # None = uniform
    fixed_scenes: bool = True  # camera traps: one scene per camera
    backgrounds: tuple[str, ...] = ("grass", "gravel", "rocket")
    vegetation: tuple[float, float, float] = (0.25, 0.45, 0.15)
    protocol: str = "disjoint"
    dates: tuple[str, str] = ("2021-01-01", "2023-12-31")
    nuisance: Nuisance = field(default_factory=Nuisance)
    common_name: str = ""  # the species as captions say it; "" = `species`

    @property
    def noun(self) -> str:
        return self.common_name or self.species


PRESETS: dict[str, Preset] = {
    "synth-stoat": Preset(
        name="synth-stoat",
        species="stoat",
        pattern="belly",
        shape=BodyShape(
            aspect=3.4,
            squareness=2.2,
            leg_length=1.1,
            leg_width=0.028,
            head_size=0.085,
            snout=1.35,
            tail_length=0.38,
            tail_width=0.022,
        ),
        palette=Palette(
            base=(0.93, 0.88, 0.74),
            marking=(0.42, 0.26, 0.13),
            limb=(0.45, 0.29, 0.15),
            tail_tip=(0.05, 0.04, 0.03),
        ),
        n_identities=140,
        images=(2, 8),
        images_median=3.0,
        images_sigma=0.6,
        n_cameras=4,
        viewpoint_probs=(0.1, 0.9),
        protocol="leave_one_out",
        nuisance=Nuisance(night_prob=0.05, pose=0.1, crop_prob=0.05),
    ),
    "synth-tiger": Preset(
        name="synth-tiger",
        species="tiger",
        pattern="stripes",
        shape=BodyShape(
            aspect=2.3,
            squareness=2.6,
            leg_length=1.5,
            leg_width=0.05,
            head_size=0.12,
            snout=1.15,
            tail_length=0.45,
            tail_width=0.02,
        ),
        palette=Palette(
            base=(0.88, 0.52, 0.18),
            marking=(0.06, 0.05, 0.04),
            limb=(0.86, 0.52, 0.2),
            belly=(0.93, 0.9, 0.82),
            belly_start=0.86,
        ),
        n_identities=150,
        images=(2, 30),
        images_median=11.0,
        images_sigma=0.6,
        n_cameras=4,
        viewpoint_probs=(0.15, 0.85),
        nuisance=Nuisance(night_prob=0.08, pose=0.15, occlusion=(0.9, 0.08, 0.02)),
    ),
    "synth-seastar": Preset(
        name="synth-seastar",
        species="seastar",
        common_name="sea star",
        pattern="spots",
        shape=BodyShape(kind="star", core=0.32),
        palette=Palette(base=(0.85, 0.42, 0.3), marking=(0.98, 0.9, 0.75), limb=(0.85, 0.42, 0.3)),
        n_identities=125,
        images=(2, 25),
        images_median=9.0,
        images_sigma=0.6,
        n_cameras=6,
        viewpoints=("top",),
        fixed_scenes=False,
        backgrounds=("gravel", "moon", "coins"),
        vegetation=(0.35, 0.4, 0.15),
        nuisance=Nuisance(rotation=10.0, scale=(0.85, 1.05), perspective=0.1, underwater=0.2),
    ),
    "synth-cattle": Preset(
        name="synth-cattle",
        species="cattle",
        pattern="patches",
        shape=BodyShape(
            aspect=1.9,
            squareness=3.5,
            leg_length=1.7,
            leg_width=0.035,
            head_size=0.1,
            snout=1.5,
            tail_length=0.4,
            tail_width=0.012,
        ),
        palette=Palette(base=(0.95, 0.95, 0.93), marking=(0.05, 0.05, 0.06), limb=(0.9, 0.9, 0.88)),
        n_identities=40,
        images=(2, 20),
        images_median=7.0,
        images_sigma=0.6,
        n_cameras=4,
        viewpoint_probs=(0.2, 0.8),
        nuisance=Nuisance(night_prob=0.15),
    ),
    "synth-zebra": Preset(
        name="synth-zebra",
        species="zebra",
        pattern="stripes",
        shape=BodyShape(
            aspect=2.0,
            squareness=2.8,
            leg_length=1.8,
            leg_width=0.04,
            head_size=0.13,
            snout=1.8,
            tail_length=0.35,
            tail_width=0.012,
        ),
        palette=Palette(base=(0.93, 0.92, 0.88), marking=(0.05, 0.05, 0.05), limb=(0.9, 0.9, 0.86)),
        n_identities=60,
        images=(2, 20),
        images_median=7.0,
        images_sigma=0.6,
        n_cameras=4,
        nuisance=Nuisance(night_prob=0.08),
    ),
    "synth-leopard": Preset(
        name="synth-leopard",
        species="leopard",
        pattern="rosettes",
        shape=BodyShape(
            aspect=2.5,
            squareness=2.4,
            leg_length=1.3,
            leg_width=0.04,
            head_size=0.11,
            snout=1.1,
            tail_length=0.6,
            tail_width=0.02,
        ),
        palette=Palette(
            base=(0.86, 0.68, 0.35),
            marking=(0.08, 0.06, 0.04),
            limb=(0.86, 0.68, 0.35),
            belly=(0.93, 0.9, 0.8),
        ),
        n_identities=60,
        images=(2, 20),
        images_median=7.0,
        images_sigma=0.6,
        n_cameras=4,
        nuisance=Nuisance(night_prob=0.1),
    ),
}
DEFAULT_PRESETS = ("synth-stoat", "synth-tiger", "synth-seastar")
#: The captioned pretraining corpus: the evaluation species and three more patterned ones,
#: drawn at another seed, so no individual is shared with the embedded suite.
PRETRAIN_PRESETS = (
    "synth-stoat",
    "synth-tiger",
    "synth-seastar",
    "synth-zebra",
    "synth-leopard",
    "synth-cattle",
)

# Greyscale photos get a tint, so they read as soil, sand or grass.
_TINTS = {
    "grass": (0.55, 0.75, 0.35),
    "gravel": (0.75, 0.68, 0.55),
    "moon": (0.85, 0.8, 0.65),
    "coins": (0.7, 0.65, 0.5),
    "brick": (0.8, 0.55, 0.45),
}
_PROC_COLOURS = [  # (dark, light) pairs for procedural scenes
    ((0.25, 0.22, 0.12), (0.55, 0.6, 0.3)),
    ((0.3, 0.25, 0.2), (0.7, 0.62, 0.5)),
    ((0.12, 0.2, 0.1), (0.4, 0.55, 0.25)),
    ((0.35, 0.3, 0.25), (0.75, 0.72, 0.65)),
]
_WATER = np.array([0.05, 0.35, 0.42])
_WATER_TRANSMISSION = np.array([0.55, 0.85, 0.95])


def _stable_id(name: str) -> int:
    return zlib.crc32(name.encode())


@cache
def _photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as float RGB in [0, 1] (shipped with the package)."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)(), dtype=np.float64) / 255.0
    if img.ndim == 2:
        img = img[..., None] * np.asarray(_TINTS.get(name, (0.7, 0.7, 0.7)))
    return img[..., :3]


def _photo_patch(rng: np.random.Generator, source: str, size: int) -> np.ndarray:
    img = _photo(source)
    h, w = img.shape[:2]
    c = int(rng.uniform(0.25, 0.6) * min(h, w))
    y0, x0 = rng.integers(0, h - c + 1), rng.integers(0, w - c + 1)
    patch = img[y0 : y0 + c, x0 : x0 + c]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    pil = Image.fromarray((patch * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return np.asarray(pil, dtype=np.float64) / 255.0


def _procedural(rng: np.random.Generator, size: int) -> np.ndarray:
    """Fractal (multi-octave smoothed) noise mapped onto an earthy two-colour ramp."""
    from scipy import ndimage

    field_ = np.zeros((size, size))
    for octave in range(1, 6):
        sigma = size / 2 ** (octave + 1)
        layer = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
        field_ += layer / (layer.std() + 1e-9) / octave
    t = (field_ - field_.min()) / (np.ptp(field_) + 1e-9)
    dark, light = (np.asarray(c) for c in _PROC_COLOURS[rng.integers(len(_PROC_COLOURS))])
    return dark + t[..., None] * (light - dark)


#: The caption's word for each scene source.
SCENE_WORDS = {
    "procedural": "soil",
    "grass": "grass",
    "gravel": "gravel",
    "rocket": "rocky ground",
    "moon": "sand",
    "coins": "pebbles",
    "brick": "bricks",
}


def _scene(rng: np.random.Generator, preset: Preset, size: int) -> tuple[np.ndarray, str]:
    """A background and the name of its source (a SCENE_WORDS key)."""
    if rng.random() < preset.nuisance.procedural_bg:
        return _procedural(rng, size), "procedural"
    source = str(rng.choice(preset.backgrounds))
    return _photo_patch(rng, source, size), source


def _homography(rng: np.random.Generator, nz: Nuisance, n: int, flip: float) -> np.ndarray:
    """Canonical body frame -> pixel coordinates (3x3), from scale, rotation, shift, tilt."""
    length = n * rng.uniform(*nz.scale)
    theta = np.deg2rad(rng.uniform(-nz.rotation, nz.rotation))
    shift = rng.uniform(-0.06, 0.06, 2)
    if rng.random() < nz.crop_prob:
        shift = rng.uniform(-nz.crop_shift, nz.crop_shift, 2)
    c, s = np.cos(theta), np.sin(theta)
    affine = np.array(
        [[length * c * flip, -length * s, 0.0], [length * s * flip, length * c, 0.0], [0, 0, 1]]
    )
    tilt = np.eye(3)
    tilt[2, :2] = rng.uniform(-nz.perspective, nz.perspective, 2)
    to_unit = np.diag([1.0 / n, 1.0 / n, 1.0])
    centre = np.array([[1.0, 0, n * (0.5 + shift[0])], [0, 1.0, n * (0.5 + shift[1])], [0, 0, 1]])
    # Tilt acts in unit image coordinates centred on the animal, then back to pixels.
    return centre @ np.linalg.inv(to_unit) @ tilt @ to_unit @ affine


def _vegetation(rng: np.random.Generator, img: Image.Image, level: str, colour: np.ndarray) -> None:
    """Grass blades from the bottom edge and a few leaves, drawn over the scene in place."""
    if level == "none":
        return
    n = img.size[0]
    draw = ImageDraw.Draw(img)
    blades = rng.integers(3, 8) if level == "low" else rng.integers(14, 26)
    for _ in range(blades):
        x0 = rng.uniform(0, n)
        height = rng.uniform(0.2, 0.75) * n
        lean = rng.uniform(-0.3, 0.3) * height
        width = rng.uniform(0.008, 0.025) * n
        t = np.linspace(0, 1, 12)
        xs = x0 + lean * t**2
        ys = n - height * t
        w = width * (1 - t)
        pts = list(zip(xs - w, ys, strict=True)) + list(
            zip(xs[::-1] + w[::-1], ys[::-1], strict=True)
        )
        shade = colour * rng.uniform(0.5, 1.3)
        draw.polygon(pts, fill=tuple(int(v) for v in np.clip(shade * 255, 0, 255)))
    if level == "high":
        for _ in range(rng.integers(2, 6)):
            cx, cy = rng.uniform(0, n, 2)
            r = rng.uniform(0.04, 0.1) * n
            shade = colour * rng.uniform(0.6, 1.4)
            draw.ellipse(
                (cx - r, cy - r * 0.5, cx + r, cy + r * 0.5),
                fill=tuple(int(v) for v in np.clip(shade * 255, 0, 255)),
            )


def render_photo(
    preset: Preset,
    sides: dict[str, Pattern],
    rng: np.random.Generator,
    scene: np.ndarray | None,
    size: int,
) -> tuple[Image.Image, dict]:
    """One photo of one individual (`sides`: its pattern per viewpoint); image + conditions.

    The steps draw from `rng` in a fixed order (body, backdrop, occlusion, light, camera), so
    one seed gives one photo."""
    n = size * SUPERSAMPLE
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5
    viewpoint, mask, colour = _posed_body(rng, preset, sides, xs=xs, ys=ys)
    bg, background = _backdrop(rng, preset, scene, n)
    img = np.where(mask[..., None], colour, bg)
    img, level = _occlude(rng, preset, img)
    img, night = _light(rng, preset.nuisance, img, xs=xs, ys=ys)
    out = _camera_output(rng, preset.nuisance, img, size=size, night=night)
    meta = {
        "viewpoint": viewpoint,
        "daynight": "night" if night else "day",
        "occlusion": level,
        "bbox": _bbox(mask, size),
    }
    if background is not None:
        meta["background"] = background
    return out, meta


def _posed_body(
    rng: np.random.Generator,
    preset: Preset,
    sides: dict[str, Pattern],
    *,
    xs: np.ndarray,
    ys: np.ndarray,
) -> tuple[str, np.ndarray, np.ndarray]:
    """(viewpoint, mask, colour): the animal seen from a random side, posed and placed on
    the supersampled pixel grid `xs`, `ys`."""
    nz = preset.nuisance
    n = xs.shape[0]
    viewpoint = str(rng.choice(preset.viewpoints, p=preset.viewpoint_probs))
    flip = -1.0 if viewpoint == "left" else 1.0
    pose = sample_pose(rng, nz.pose, preset.shape.arms)
    h = _homography(rng, nz, n, flip)
    canon = np.linalg.inv(h) @ np.stack([xs.ravel(), ys.ravel(), np.ones(n * n)])
    cx, cy = (canon[:2] / canon[2]).reshape(2, n, n)
    if preset.shape.kind != "star":
        cy = cy - 0.12  # centre the body-plus-legs box rather than the trunk
    mask, colour = render_body(
        cx,
        cy,
        shape=preset.shape,
        pose=pose,
        pattern=sides[viewpoint],
        palette=preset.palette,
        contrast=rng.uniform(*nz.contrast),
    )
    return viewpoint, mask, colour


def _backdrop(
    rng: np.random.Generator, preset: Preset, scene: np.ndarray | None, n: int
) -> tuple[np.ndarray, str | None]:
    """An (n, n) background, out of focus and duller than the animal, and its source (None
    when it is a crop of the camera's fixed `scene`, whose source the caller knows)."""
    from scipy import ndimage

    nz = preset.nuisance
    background = None
    if scene is None:
        bg, background = _scene(rng, preset, n)
    else:  # a fixed camera-trap scene, jittered a little per photo
        dy, dx = rng.integers(0, scene.shape[0] - n + 1, 2)
        bg = scene[dy : dy + n, dx : dx + n]
    bg_sigma = rng.uniform(*nz.bg_blur) * SUPERSAMPLE
    if bg_sigma > 0.3:
        bg = ndimage.gaussian_filter(bg, (bg_sigma, bg_sigma, 0))
    mean = bg.mean(axis=(0, 1))
    return mean + nz.bg_contrast * (bg - mean), background


def _occlude(rng: np.random.Generator, preset: Preset, img: np.ndarray) -> tuple[np.ndarray, str]:
    """The image with vegetation drawn over it (at 8 bits, as PIL draws), and the level."""
    level = str(rng.choice(["none", "low", "high"], p=preset.nuisance.occlusion))
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    _vegetation(rng, pil, level, np.asarray(preset.vegetation))
    return np.asarray(pil, dtype=np.float64) / 255.0, level


def _light(
    rng: np.random.Generator, nz: Nuisance, img: np.ndarray, *, xs: np.ndarray, ys: np.ndarray
) -> tuple[np.ndarray, bool]:
    """Illumination (gain, a directional gradient, a colour cast), underwater haze and the
    infrared night flash; returns the image and whether it is a night shot."""
    n = xs.shape[0]
    phi = rng.uniform(0, 2 * np.pi)
    ramp = ((xs - n / 2) * np.cos(phi) + (ys - n / 2) * np.sin(phi)) / n
    img = (
        img * (rng.uniform(*nz.illumination) * (1 + rng.uniform(0, nz.gradient) * ramp))[..., None]
    )
    img = img * (1 + rng.uniform(-nz.colour_cast, nz.colour_cast, 3))
    if nz.underwater > 0:
        haze = rng.uniform(0.2, 1.0) * nz.underwater
        img = (1 - haze) * img * _WATER_TRANSMISSION + haze * _WATER
    night = rng.random() < nz.night_prob
    if night:  # infrared flash: greyscale, bright centre, dark corners
        lum = img @ np.array([0.3, 0.59, 0.11])
        r2 = ((xs - n / 2) ** 2 + (ys - n / 2) ** 2) / (n / 2) ** 2
        lum = np.clip(lum * rng.uniform(1.0, 1.6) * (1 - 0.45 * r2), 0, 1) ** 0.8
        img = np.repeat(lum[..., None], 3, axis=2)
    return img, night


def _camera_output(
    rng: np.random.Generator, nz: Nuisance, img: np.ndarray, *, size: int, night: bool
) -> Image.Image:
    """What the sensor records: blur, box-downsampling to `size`, then noise (stronger and
    grey at night)."""
    from scipy import ndimage

    sigma = rng.uniform(0, nz.blur) * SUPERSAMPLE
    if sigma > 0.3:
        img = ndimage.gaussian_filter(img, (sigma, sigma, 0))
    out = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).resize(
        (size, size), Image.BOX
    )
    arr = np.asarray(out, dtype=np.float64) / 255.0
    arr = arr + rng.normal(0, rng.uniform(0, nz.noise) * (1.5 if night else 1.0), arr.shape)
    if night:
        arr = np.repeat(arr.mean(axis=2, keepdims=True), 3, axis=2)
    return Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8))


def _bbox(mask: np.ndarray, size: int) -> list[int]:
    """[x, y, width, height] of the animal at output `size`; all zero when it is out of frame."""
    small = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
    rows, cols = np.flatnonzero(small.any(axis=1)), np.flatnonzero(small.any(axis=0))
    if not rows.size:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _n_images(rng: np.random.Generator, preset: Preset) -> int:
    n = np.exp(rng.normal(np.log(preset.images_median), preset.images_sigma))
    return int(np.clip(round(n), *preset.images))


#: A camera's fixed scene is this much larger than the frame, so each photo can be a crop of
#: it shifted a little (`_backdrop`).
_SCENE_MARGIN = 1.1


@dataclass(frozen=True)
class _Individual:
    """One individual's identity: its coat per viewpoint, the words for it, its encounters."""

    ident: int
    sides: dict[str, Pattern]
    coats: dict[str, dict]
    encounters: np.ndarray  # the dates it was seen on (datetime.date objects)


def _plan(preset: Preset, seed: int, scale: float) -> list[tuple[_Individual, int]]:
    """(individual, photo number) for every photo of the preset, each individual drawn from
    its own stream, so a larger `scale` leaves the existing ones as they were."""
    key = _stable_id(preset.name)
    start = dt.date.fromisoformat(preset.dates[0])
    span = (dt.date.fromisoformat(preset.dates[1]) - start).days
    plan = []
    for ident in range(max(2, round(preset.n_identities * scale))):
        rng = np.random.default_rng([seed, key, 0, ident])
        sides = {v: sample_pattern(preset.pattern, rng) for v in preset.viewpoints}
        encounters = start + dt.timedelta(days=1) * rng.integers(0, span, rng.integers(1, 4))
        coats = {v: coat_attributes(preset.pattern, p) for v, p in sides.items()}
        individual = _Individual(ident, sides, coats, encounters)
        plan.extend((individual, k) for k in range(_n_images(rng, preset)))
    return plan


@dataclass
class _PresetWriter:
    """What every photo of one preset shares: where it is written, its seed, the scene of each
    camera (drawn once, on the camera's first photo)."""

    out_dir: Path
    preset: Preset
    seed: int
    image_size: int
    jpeg_quality: int
    scenes: dict[int, tuple[np.ndarray, str]] = field(default_factory=dict)

    @property
    def key(self) -> int:
        return _stable_id(self.preset.name)

    def clear(self) -> None:
        """An empty `images/` folder: a smaller regeneration must not leave extra files."""
        images = self.out_dir / "images"
        images.mkdir(parents=True, exist_ok=True)
        for stale in images.glob("*.jpg"):
            stale.unlink()

    def scene(self, camera: int) -> tuple[np.ndarray | None, str]:
        """The camera's fixed scene and its source; (None, "") where scenes are per photo."""
        if not self.preset.fixed_scenes:
            return None, ""
        if camera not in self.scenes:
            srng = np.random.default_rng([self.seed, self.key, 2, camera])
            size = int(self.image_size * SUPERSAMPLE * _SCENE_MARGIN)
            self.scenes[camera] = _scene(srng, self.preset, size)
        return self.scenes[camera]

    def photo(self, individual: _Individual, k: int) -> dict:
        """Render and save photo `k` of `individual`; its metadata row."""
        preset, ident = self.preset, individual.ident
        rng = np.random.default_rng([self.seed, self.key, 1, ident, k])
        camera = int(rng.integers(preset.n_cameras))
        scene, background = self.scene(camera)
        img, meta = render_photo(preset, individual.sides, rng, scene=scene, size=self.image_size)
        meta.setdefault("background", background)
        image_id = f"{preset.species}_{ident:04d}_{k:03d}"
        path = f"images/{image_id}.jpg"
        img.save(self.out_dir / path, format="JPEG", quality=self.jpeg_quality)
        date = individual.encounters[rng.integers(len(individual.encounters))].isoformat()
        coat = individual.coats[meta["viewpoint"]]
        words = {**meta, "background": SCENE_WORDS[meta["background"]]}
        crng = np.random.default_rng([self.seed, self.key, 3, ident, k])  # captions' own stream
        return {
            "image_id": image_id,
            "identity": f"{preset.species}{ident:04d}",
            "path": path,
            "date": date,
            "species": preset.species,
            "camera": camera,
            **meta,
            "pattern": preset.pattern,
            **{f"coat_{a}": v for a, v in coat.items()},
            "caption": caption(preset.noun, preset.pattern, coat=coat, photo=words, rng=crng),
        }


def generate_preset(
    out_dir: str | Path,
    preset: Preset,
    seed: int = 0,
    scale: float = 1.0,
    image_size: int = 128,
    jpeg_quality: int = 85,
) -> pd.DataFrame:
    """Write `<out_dir>/images/*.jpg` and `<out_dir>/metadata.csv`; return the table."""
    import pandas as pd

    writer = _PresetWriter(
        Path(out_dir), preset, seed=seed, image_size=image_size, jpeg_quality=jpeg_quality
    )
    writer.clear()
    plan = _plan(preset, seed, scale)
    rows = [writer.photo(ind, k) for ind, k in tqdm(plan, desc=preset.name, unit="img")]
    df = pd.DataFrame(rows)
    df.to_csv(writer.out_dir / "metadata.csv", index=False, lineterminator="\n")
    return df


def generate_suite(
    out_dir: str | Path,
    presets: Sequence[str] = DEFAULT_PRESETS,
    seed: int = 0,
    scale: float = 1.0,
    image_size: int = 128,
    jpeg_quality: int = 85,
    overrides: dict[str, Preset] | None = None,
) -> dict[str, pd.DataFrame]:
    """Write every preset to `<out_dir>/<preset>/`; `overrides` replaces preset definitions."""
    table = {**PRESETS, **(overrides or {})}
    unknown = [p for p in presets if p not in table]
    if unknown:
        raise KeyError(f"unknown synthetic preset(s) {unknown}; valid: {sorted(table)}")
    return {
        name: generate_preset(
            Path(out_dir) / name,
            table[name],
            seed=seed,
            scale=scale,
            image_size=image_size,
            jpeg_quality=jpeg_quality,
        )
        for name in presets
    }


def tiny_preset(base: str = "synth-tiger", n_identities: int = 4, images: int = 3) -> Preset:
    """A few-individual variant of a preset, for tests and smoke runs."""
    p = PRESETS[base]
    return dataclasses.replace(
        p, n_identities=n_identities, images=(images, images), images_median=images
    )


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="indivaid synth", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data", help="output folder (one sub-folder per preset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the individuals")
    ap.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS), choices=list(PRESETS))
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--jpeg-quality", type=int, default=85)
    args = ap.parse_args(argv)
    tables = generate_suite(
        args.out,
        args.presets,
        seed=args.seed,
        scale=args.scale,
        image_size=args.image_size,
        jpeg_quality=args.jpeg_quality,
    )
    for name, df in tables.items():
        print(f"{name}: {df.identity.nunique()} individuals, {len(df)} images")


if __name__ == "__main__":
    main()
