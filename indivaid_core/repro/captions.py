"""Captions from the synthetic generator's truth: every photo described by what was drawn.

An individual's coat attributes are read off its sampled pattern objects (stripe count and
thickness, spot count and size, the stoat's belly line, ...), binned into three words each at
the terciles of the generator's own sampling distribution, so every value is about equally
common. A photo adds its conditions (which flank, day or infrared night, occlusion, scene).
Captions draw a template and synonyms from their own random stream, so the text tower learns
words rather than one sentence, and rendering (another stream) stays byte-identical.
"""

from __future__ import annotations

import numpy as np

from indivaid_core.repro.patterns import BellyLine, Patches, Pattern, Spots, Stripes

#: Coat attributes and their values, per pattern kind (value order: low -> high).
COAT_ATTRIBUTES: dict[str, dict[str, tuple[str, ...]]] = {
    "stripes": {
        "density": ("few", "some", "many"),
        "thickness": ("thin", "medium", "thick"),
        "waviness": ("straight", "slightly wavy", "wavy"),
    },
    "spots": {
        "density": ("few", "some", "many"),
        "size": ("small", "medium", "large"),
    },
    "rosettes": {
        "density": ("few", "some", "many"),
        "size": ("small", "medium", "large"),
        "rings": ("mostly solid", "mixed", "mostly ringed"),
    },
    "belly": {
        "belly_line": ("high", "middle", "low"),
        "islands": ("few", "some", "many"),
        "waviness": ("smooth", "slightly wavy", "wavy"),
    },
    "patches": {
        "cover": ("mostly pale", "half dark", "mostly dark"),
        "size": ("small", "medium", "large"),
    },
}
#: Photo conditions and their values.
PHOTO_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "daynight": ("day", "night"),
    "occlusion": ("none", "low", "high"),
}
#: What the markings are called, per pattern kind.
_MARKS = {
    "stripes": "stripes",
    "spots": "spots",
    "rosettes": "rosettes",
    "belly": "pale spots",
    "patches": "patches",
}
# Tercile cut points of each statistic under the generator's sampling distribution
# (patterns.py), measured on 3000 draws by `tercile_cuts`; fixed here so a caption never
# depends on which other individuals were drawn.
_CUTS: dict[tuple[str, str], tuple[float, float]] = {
    ("stripes", "density"): (9.5, 14.5),
    ("stripes", "thickness"): (0.799, 1.279),
    ("stripes", "waviness"): (0.0163, 0.0188),
    ("spots", "density"): (17.5, 22.5),
    ("spots", "size"): (0.0872, 0.1143),
    ("rosettes", "density"): (31.5, 38.5),
    ("rosettes", "size"): (0.0392, 0.0525),
    ("rosettes", "rings"): (0.561, 0.636),
    ("belly", "belly_line"): (0.501, 0.598),
    ("belly", "islands"): (3.5, 5.5),
    ("belly", "waviness"): (0.250, 0.290),
    ("patches", "cover"): (-0.171, 0.179),
    ("patches", "size"): (0.457, 0.496),
}


def coat_statistics(kind: str, pattern: Pattern) -> dict[str, float]:
    """The raw numbers behind each coat attribute of one flank's pattern."""
    if isinstance(pattern, Stripes):
        return {
            "density": float(len(pattern.centre)),
            "thickness": float(np.mean(pattern.width) / 0.0315),  # the sampled style factor
            "waviness": float(np.mean(pattern.amp)),
        }
    if isinstance(pattern, Spots):
        size = float(np.exp(np.mean(np.log(np.sqrt(pattern.rx * pattern.ry)))))
        stats = {"density": float(len(pattern.x)), "size": size}
        if kind == "rosettes":
            stats["rings"] = float(np.mean(pattern.ring > 0))
        return stats
    if isinstance(pattern, BellyLine):
        return {
            "belly_line": pattern.base,
            "islands": float(len(pattern.islands.x)),
            "waviness": float(np.sum(pattern.amp)),
        }
    if isinstance(pattern, Patches):
        # A higher level leaves less of the field above it: less dark coat.
        return {"cover": -pattern.level, "size": float(1.0 / np.mean(1.0 / pattern.amp))}
    raise TypeError(f"no coat statistics for pattern {type(pattern).__name__}")


def coat_attributes(kind: str, pattern: Pattern) -> dict[str, str]:
    """One flank's coat in words: attribute -> value (one of COAT_ATTRIBUTES[kind][attr])."""
    out = {}
    for attr, value in coat_statistics(kind, pattern).items():
        low, high = _CUTS[(kind, attr)]
        out[attr] = COAT_ATTRIBUTES[kind][attr][int(value > low) + int(value > high)]
    return out


def tercile_cuts(kind: str, draws: int = 4000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Measure the tercile cut points of each statistic (how `_CUTS` was made)."""
    from indivaid_core.repro.patterns import sample_pattern

    rng = np.random.default_rng(seed)
    stats = [coat_statistics(kind, sample_pattern(kind, rng)) for _ in range(draws)]
    return {
        a: tuple(float(q) for q in np.quantile([s[a] for s in stats], [1 / 3, 2 / 3]))
        for a in stats[0]
    }


# ---------------------------------------------------------------------------------------------
# Words


def coat_phrase(kind: str, attrs: dict[str, str], rng: np.random.Generator | None = None) -> str:
    """`attrs` as a noun phrase, e.g. 'many thin wavy stripes'; synonyms drawn from `rng`."""
    pick = _picker(rng)
    many = _MARKS[kind]
    if kind == "belly":
        line = {"high": "a high", "middle": "a mid-height", "low": "a low"}[attrs["belly_line"]]
        wave = {"smooth": "smooth", "slightly wavy": "slightly wavy", "wavy": "wavy"}[
            attrs["waviness"]
        ]
        return f"{line} {wave} belly line and {_amount(attrs['islands'], pick)} {many}"
    words = [_amount(attrs["density"], pick)] if "density" in attrs else []
    for attr in ("thickness", "size", "waviness", "rings", "cover"):
        if attr in attrs:
            words.append(_adjective(attr, attrs[attr], pick))
    return " ".join(w for w in words if w) + f" {many}"


def _amount(value: str, pick) -> str:
    return pick({"few": ["few", "sparse", "a handful of"], "some": ["some", "several"],
                 "many": ["many", "dense", "lots of"]}[value])  # fmt: skip


def _adjective(attr: str, value: str, pick) -> str:
    table = {
        "thickness": {"thin": ["thin", "narrow"], "medium": ["medium"],
                      "thick": ["thick", "broad"]},
        "size": {"small": ["small", "tiny"], "medium": ["medium"], "large": ["large", "big"]},
        "waviness": {"straight": ["straight"], "slightly wavy": ["slightly wavy"],
                     "wavy": ["wavy", "curvy"]},
        "rings": {"mostly solid": ["solid"], "mixed": ["mixed"], "mostly ringed": ["ringed"]},
        "cover": {"mostly pale": ["pale"], "half dark": ["dark and pale"],
                  "mostly dark": ["dark"]},
    }  # fmt: skip
    return pick(table[attr][value])


def _picker(rng: np.random.Generator | None):
    """First synonym without an rng (the canonical phrase), a random one with it."""
    return (lambda opts: opts[0]) if rng is None else (lambda opts: opts[rng.integers(len(opts))])


_FLANK = {
    "left": ["left flank", "left side"],
    "right": ["right flank", "right side"],
    "top": ["upper side", "top"],
}
_CONDITION = {
    ("daynight", "night"): ["at night", "in infrared", "at night in infrared"],
    ("daynight", "day"): ["by day", "in daylight"],
    ("occlusion", "low"): ["partly behind grass", "with a few grass blades in front"],
    ("occlusion", "high"): ["hidden behind vegetation", "mostly behind leaves and grass"],
}
_TEMPLATES = (
    "a photo of the {flank} of a {species} with {coat}{cond}.",
    "a {species} showing its {flank}: {coat}{cond}.",
    "camera trap image of a {species}, {flank}, {coat}{cond}.",
    "{coat} on the {flank} of a {species}{cond}.",
)


def caption(
    species: str, kind: str, coat: dict[str, str], photo: dict[str, str], rng: np.random.Generator
) -> str:
    """One photo's caption: species, seen flank, its coat and some of the conditions."""
    conds = []
    for attr in ("daynight", "occlusion"):
        options = _CONDITION.get((attr, photo[attr]))
        if options and (photo[attr] != "day" or rng.random() < 0.3):
            conds.append(options[rng.integers(len(options))])
    if photo.get("background") and rng.random() < 0.4:
        conds.append(f"on {photo['background']}")
    template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    text = template.format(
        flank=_FLANK[photo["viewpoint"]][rng.integers(2)],
        species=species,
        coat=coat_phrase(kind, coat, rng),
        cond="".join(f", {c}" for c in conds),
    )
    return text[0].upper() + text[1:]


def value_prompts(species: str, kind: str, attr: str) -> list[str]:
    """One canonical phrase per value of one coat attribute, naming only that attribute.

    Used for zero-shot attribute classification and to score stage-1 descriptions: the
    nearest phrase to an image or description is its predicted value.
    """
    pick = _picker(None)
    out = []
    for value in COAT_ATTRIBUTES[kind][attr]:
        if attr == "belly_line":
            words = {"high": "a high", "middle": "a mid-height", "low": "a low"}[value]
            words += " belly line"
        elif attr == "islands":
            words = f"{_amount(value, pick)} pale spots"
        elif attr == "waviness" and kind == "belly":
            words = f"a {value} belly line"
        elif attr == "density":
            words = f"{_amount(value, pick)} {_MARKS[kind]}"
        else:
            words = f"{_adjective(attr, value, pick)} {_MARKS[kind]}"
        out.append(f"a photo of a {species} with {words}.")
    return out
