"""Per-individual coat patterns for the synthetic suite.

A pattern is sampled once per individual and flank from a seeded generator and is then a pure
function of body coordinates: `u` runs tail -> head and `v` back -> belly (both in [0, 1]) on
a flank; for a top-view body (sea star) `u`, `v` are the centred plane coordinates in [-1, 1].
It returns the marking strength in [0, 1]. Because the function only sees body coordinates,
the marking moves with the body under any pose, crop or camera transform: the pattern is the
only thing that carries identity. Everything is vectorised over pixel arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

#: Half-width, in body units, of the anti-aliasing ramp at the edge of a marking.
EDGE = 0.006


class Pattern(Protocol):
    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray: ...


def _ramp(signed_dist: np.ndarray, edge: float = EDGE) -> np.ndarray:
    """1 inside (negative distance), 0 outside, linear over 2*edge."""
    return np.clip(0.5 - signed_dist / (2 * edge), 0.0, 1.0)


@dataclass(frozen=True)
class Stripes:
    """Tiger/zebra stripes: tapered, tilted, wavy bands hanging from the back."""

    centre: np.ndarray  # (n,) u position where the stripe meets v = start
    start: np.ndarray  # (n,) v where it begins
    stop: np.ndarray  # (n,) v where it ends
    width: np.ndarray  # (n,) maximum width in u
    tilt: np.ndarray  # (n,) du/dv
    amp: np.ndarray  # (n,) wave amplitude in u
    freq: np.ndarray  # (n,) wave frequency along v (radians per unit v)
    phase: np.ndarray  # (n,)

    @classmethod
    def sample(cls, rng: np.random.Generator, n_range: tuple[int, int] = (4, 20)) -> Stripes:
        n = int(rng.integers(*n_range, endpoint=True))
        thickness = np.exp(
            rng.uniform(np.log(0.5), np.log(2.0))
        )  # individuals differ in style, not just layout
        centre = np.sort(np.linspace(0.04, 0.96, n) + rng.uniform(-0.35, 0.35, n) / n)
        from_back = rng.random(n) < 0.75
        start = np.where(from_back, -0.05, rng.uniform(0.15, 0.55, n))
        stop = np.minimum(start + rng.uniform(0.3, 0.9, n), 1.05)
        return cls(
            centre=centre,
            start=start,
            stop=stop,
            width=thickness * rng.uniform(0.018, 0.045, n),
            tilt=rng.uniform(-0.15, 0.15) + rng.uniform(-0.15, 0.15, n),
            amp=rng.uniform(0.0, 0.035, n),
            freq=rng.uniform(4.0, 11.0, n),
            phase=rng.uniform(0, 2 * np.pi, n),
        )

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        uu, vv = u[None], v[None]
        c = lambda a: a[:, None]  # noqa: E731 - broadcast stripe params over pixels
        t = (vv - c(self.start)) / (c(self.stop) - c(self.start))  # 0..1 along the stripe
        taper = np.sqrt(np.clip(1.0 - (2.0 * t - 1.0) ** 2, 0.0, 1.0))
        mid = (
            c(self.centre)
            + c(self.tilt) * vv
            + c(self.amp) * np.sin(c(self.freq) * vv + c(self.phase))
        )
        dist = np.abs(uu - mid) - 0.5 * c(self.width) * taper
        return _ramp(dist).max(axis=0)


@dataclass(frozen=True)
class Spots:
    """Leopard/sea-star spots: random ellipses, some as rings (rosettes)."""

    x: np.ndarray
    y: np.ndarray
    rx: np.ndarray
    ry: np.ndarray
    ring: np.ndarray  # (n,) inner radius fraction; 0 = filled spot

    @classmethod
    def sample(
        cls,
        rng: np.random.Generator,
        n_range: tuple[int, int] = (25, 45),
        extent: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0),
        radius: float = 0.045,
        ring_prob: float = 0.0,
    ) -> Spots:
        n = int(rng.integers(*n_range, endpoint=True))
        r = radius * rng.lognormal(0.0, 0.3) * rng.lognormal(0.0, 0.35, n)
        aspect = rng.uniform(0.7, 1.4, n)
        return cls(
            x=rng.uniform(extent[0], extent[1], n),
            y=rng.uniform(extent[2], extent[3], n),
            rx=r * aspect,
            ry=r / aspect,
            ring=np.where(rng.random(n) < ring_prob, rng.uniform(0.45, 0.65, n), 0.0),
        )

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        dx = (u[None] - self.x[:, None]) / self.rx[:, None]
        dy = (v[None] - self.y[:, None]) / self.ry[:, None]
        d = np.sqrt(dx**2 + dy**2)  # 1 on the spot edge
        scale = np.minimum(self.rx, self.ry)[:, None]
        outer = _ramp((d - 1.0) * scale)
        inner = np.where(self.ring[:, None] > 0, _ramp((self.ring[:, None] - d) * scale), 1.0)
        return (outer * inner).max(axis=0)


@dataclass(frozen=True)
class Patches:
    """Friesian patches: the level set of a smooth random field (a few low-frequency waves)."""

    kx: np.ndarray
    ky: np.ndarray
    phase: np.ndarray
    amp: np.ndarray
    level: float

    @classmethod
    def sample(cls, rng: np.random.Generator, n_waves: int = 10, aspect: float = 2.0) -> Patches:
        k = rng.uniform(1.0, 3.2, n_waves)
        theta = rng.uniform(0, np.pi, n_waves)
        return cls(
            kx=2 * np.pi * k * np.cos(theta) * aspect,
            ky=2 * np.pi * k * np.sin(theta),
            phase=rng.uniform(0, 2 * np.pi, n_waves),
            amp=1.0 / k,
            level=float(rng.uniform(-0.5, 0.5)),
        )

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        arg = self.kx[:, None] * u[None] + self.ky[:, None] * v[None] + self.phase[:, None]
        field = (self.amp[:, None] * np.cos(arg)).sum(axis=0) / np.sqrt((self.amp**2).sum() / 2)
        return np.clip(0.5 + (field - self.level) * 4.0, 0.0, 1.0)


@dataclass(frozen=True)
class BellyLine:
    """Stoat: dark back, pale belly; the wavy boundary and a few islands carry identity."""

    base: float
    amp: np.ndarray  # (h,) harmonic amplitudes
    freq: np.ndarray  # (h,) cycles along the body
    phase: np.ndarray
    islands: Spots

    @classmethod
    def sample(cls, rng: np.random.Generator, harmonics: int = 5) -> BellyLine:
        j = np.arange(1, harmonics + 1)
        base = float(rng.uniform(0.4, 0.7))
        islands = Spots.sample(
            rng, n_range=(2, 7), extent=(0.05, 0.95, base - 0.05, base + 0.3), radius=0.06
        )
        return cls(
            base=base,
            amp=rng.uniform(0.3, 1.0, harmonics) * 0.16 / j**0.8,
            freq=j + rng.uniform(-0.3, 0.3, harmonics),
            phase=rng.uniform(0, 2 * np.pi, harmonics),
            islands=islands,
        )

    def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        arg = 2 * np.pi * self.freq[:, None] * u[None] + self.phase[:, None]
        line = self.base + (self.amp[:, None] * np.sin(arg)).sum(axis=0)
        back = _ramp(v - line, edge=2 * EDGE)
        return np.maximum(back, self.islands(u, v))


def sample_pattern(kind: str, rng: np.random.Generator) -> Pattern:
    """One individual's pattern for one flank (or the top side of a sea star)."""
    if kind == "stripes":
        return Stripes.sample(rng)
    if kind == "spots":  # top view: plane coordinates in [-1, 1]
        return Spots.sample(rng, n_range=(12, 28), extent=(-0.9, 0.9, -0.9, 0.9), radius=0.1)
    if kind == "rosettes":
        return Spots.sample(rng, n_range=(25, 45), ring_prob=0.6)
    if kind == "patches":
        return Patches.sample(rng)
    if kind == "belly":
        return BellyLine.sample(rng)
    raise ValueError(f"unknown pattern kind '{kind}'; valid: {sorted(PATTERN_KINDS)}")


PATTERN_KINDS = ("stripes", "spots", "rosettes", "patches", "belly")
