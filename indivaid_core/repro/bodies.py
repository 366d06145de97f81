"""Simple animal silhouettes rendered in a canonical body frame.

The canonical frame has the body centred at the origin, about one unit long, facing +x, with
y pointing down (image convention). `render_body` takes arrays of canonical coordinates (one
per output pixel, already mapped back through the camera transform) and returns the coverage
mask, the colour and the trunk's body coordinates, so pose and camera only move pixels and the
coat pattern stays glued to the body. Shapes are per species, poses per photo: neither carries
identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from indivaid_core.repro.patterns import Pattern


@dataclass(frozen=True)
class BodyShape:
    """Species-level proportions (units: trunk half-length a = 0.5)."""

    kind: str = "quadruped"  # "quadruped" or "star"
    aspect: float = 2.3  # trunk length / height
    squareness: float = 2.5  # superellipse exponent: 2 = ellipse, larger = boxier
    leg_length: float = 1.5  # in trunk half-heights
    leg_width: float = 0.035
    head_size: float = 0.11
    snout: float = 1.3  # head ellipse elongation
    tail_length: float = 0.45
    tail_width: float = 0.018
    arms: int = 5  # star only
    core: float = 0.3  # star only: disc radius / arm length


@dataclass(frozen=True)
class Pose:
    """Per-photo pose; sampled by `sample_pose`."""

    aspect_jitter: float = 1.0
    bend: float = 0.0
    head_angle: float = 0.0
    leg_angles: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    tail_angle: float = 0.3  # 0 = straight back, > 0 droops
    arm_scale: tuple[float, ...] = (1.0,) * 5
    arm_curl: tuple[float, ...] = (0.0,) * 5


@dataclass(frozen=True)
class Palette:
    """Species colours (RGB in [0, 1]); contrast scales how dark markings are."""

    base: tuple[float, float, float]
    marking: tuple[float, float, float]
    limb: tuple[float, float, float]
    belly: tuple[float, float, float] | None = None
    belly_start: float = 0.85  # v beyond which the trunk turns to `belly`
    tail_tip: tuple[float, float, float] | None = None


def sample_pose(rng: np.random.Generator, strength: float = 1.0, arms: int = 5) -> Pose:
    """A random pose; `strength` scales every angle (0 = the canonical pose)."""
    s = strength
    return Pose(
        aspect_jitter=float(1.0 + s * rng.uniform(-0.1, 0.1)),
        bend=float(s * rng.uniform(-0.35, 0.35)),
        head_angle=float(s * rng.uniform(-0.6, 0.5)),
        leg_angles=tuple(float(a) for a in s * rng.uniform(-0.6, 0.6, 4)),
        tail_angle=float(0.3 + s * rng.uniform(-0.6, 0.8)),
        arm_scale=tuple(float(a) for a in 1.0 + s * rng.uniform(-0.15, 0.1, arms)),
        arm_curl=tuple(float(a) for a in s * rng.uniform(-0.6, 0.6, arms)),
    )


def _capsule(x, y, x0, y0, angle, length, width):
    """Pixels within `width` of the segment from (x0, y0) in direction `angle` (0 = down)."""
    dx, dy = np.sin(angle), np.cos(angle)
    t = np.clip((x - x0) * dx + (y - y0) * dy, 0.0, length)
    return (x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2 <= width**2


def _ellipse(x, y, cx, cy, rx, ry, angle=0.0):
    c, s = np.cos(angle), np.sin(angle)
    xr, yr = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
    return (xr / rx) ** 2 + (yr / ry) ** 2 <= 1.0


def render_body(
    x: np.ndarray,
    y: np.ndarray,
    shape: BodyShape,
    pose: Pose,
    pattern: Pattern,
    palette: Palette,
    contrast: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Coverage mask (H, W) bool and colour (H, W, 3) of the animal at canonical coords x, y."""
    if shape.kind == "star":
        return _render_star(x, y, shape, pose, pattern, palette, contrast)
    return _render_quadruped(x, y, shape, pose, pattern, palette, contrast)


def _coat(m: np.ndarray, palette: Palette, contrast: float) -> np.ndarray:
    base, mark = np.asarray(palette.base), np.asarray(palette.marking)
    return base + (contrast * m)[..., None] * (mark - base)


def _render_quadruped(x, y, shape, pose, pattern, palette, contrast):
    a = 0.5
    b = a / (shape.aspect * pose.aspect_jitter)
    p = shape.squareness
    xa = np.clip(np.abs(x) / a, 0.0, 1.0)
    yc = -pose.bend * b * (1.0 - xa**2)  # arched (bend > 0) or sagging back
    hb = b * np.clip(1.0 - xa**p, 0.0, None) ** (1.0 / p)
    trunk = (np.abs(x) < a) & (np.abs(y - yc) <= hb)
    colour = np.zeros(x.shape + (3,))
    limb = np.asarray(palette.limb)

    def at(xq: float) -> float:  # centre line height at a body position
        return -pose.bend * b * (1.0 - (xq / a) ** 2)

    leg_len = shape.leg_length * b
    legs = [(-0.62 * a, 0), (-0.45 * a, 1), (0.55 * a, 2), (0.7 * a, 3)]
    far = np.zeros(x.shape, bool)
    near = np.zeros(x.shape, bool)
    for xl, i in legs:
        m = _capsule(x, y, xl, at(xl) + 0.4 * b, pose.leg_angles[i], leg_len, shape.leg_width)
        (far if i in (1, 3) else near)[...] |= m
    xt = -0.95 * a
    tail_dir = -np.pi / 2 + pose.tail_angle  # 0 would point straight down
    ty = at(xt) - 0.3 * b
    tail = _capsule(x, y, xt, ty, tail_dir, shape.tail_length, shape.tail_width)
    tip = tail & ~_capsule(x, y, xt, ty, tail_dir, 0.7 * shape.tail_length, 1.0)
    # Head hangs off the shoulder and turns with head_angle.
    hs, ha = shape.head_size, pose.head_angle
    sx, sy = 0.85 * a, at(0.85 * a) - 0.35 * b
    hx, hy = sx + 1.1 * hs * np.cos(ha), sy - 1.1 * hs * np.sin(ha) - 0.3 * hs
    head = _ellipse(x, y, hx, hy, shape.snout * hs, hs, -ha)
    neck = _capsule(x, y, sx, sy, np.pi / 2 - ha + 0.3, 1.1 * hs, 0.75 * hs)
    ear = _ellipse(x, y, hx - 0.35 * hs, hy - 0.9 * hs, 0.3 * hs, 0.45 * hs, 0.3)
    eye = _ellipse(x, y, hx + 0.45 * hs * np.cos(ha), hy - 0.25 * hs, 0.12 * hs, 0.12 * hs)

    colour[far] = 0.65 * limb
    for part in (tail, ear, neck, head, near):
        colour[part] = 0.85 * limb
    if palette.tail_tip is not None:
        colour[tip] = palette.tail_tip
    colour[eye & head] = 0.05
    if trunk.any():
        xs, ys = x[trunk], y[trunk]
        u = (xs + a) / (2 * a)
        v = (ys - yc[trunk] + hb[trunk]) / (2 * hb[trunk])
        c = _coat(pattern(u, v), palette, contrast)
        if palette.belly is not None:
            c = np.where((v > palette.belly_start)[:, None], palette.belly, c)
        shade = 0.6 + 0.4 * np.sin(np.pi * np.clip(v, 0, 1)) ** 0.5
        colour[trunk] = c * shade[:, None]
    mask = trunk | far | near | tail | head | neck | ear
    return mask, colour


def _render_star(x, y, shape, pose, pattern, palette, contrast):
    r_arm = 0.5
    rho = np.hypot(x, y)
    theta = np.arctan2(y, x)
    n = shape.arms
    sector = np.round(theta * n / (2 * np.pi)).astype(int) % n
    curl = np.asarray(pose.arm_curl)[sector] * rho / r_arm
    lobe = ((1.0 + np.cos(n * (theta - curl))) / 2.0) ** 2
    limit = r_arm * np.asarray(pose.arm_scale)[sector] * (shape.core + (1 - shape.core) * lobe)
    mask = rho <= limit
    colour = np.zeros(x.shape + (3,))
    if mask.any():
        # Pattern lives on the star's own plane, so it turns with the animal.
        m = pattern(x[mask] / r_arm, y[mask] / r_arm)
        dome = 0.65 + 0.35 * np.sqrt(np.clip(1.0 - rho[mask] / limit[mask], 0.0, 1.0))
        colour[mask] = _coat(m, palette, contrast) * dome[:, None]
    return mask, colour
