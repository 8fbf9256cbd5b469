"""Characters, one per sample: seeded proportions, skin, hair, clothes (colours, pattern) and motion style.

Who a character is (proportions, skin, hair, garments, their colours, motion style) is drawn the
same way in both styles; only how the clothes are patterned depends on the style. Clothing colours
carry the split: the hue circle is cut into :data:`HUE_BANDS` bands, and the (top band, bottom
band) cells in :data:`HELD_OUT_CELLS` are worn by val/test identities only, every other cell by
training identities only. Every band still appears in training for tops and for bottoms, so a
held-out identity is a new combination of colours each seen before.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

from data.synthetic.config import IDENTITY, PATTERN, SyntheticConfig, sample_rng

SKIN_TONES = ((255, 224, 196), (241, 194, 155), (224, 172, 128), (198, 134, 94), (160, 102, 66), (112, 70, 45), (250, 210, 170))
HAIR_COLORS = ((30, 22, 18), (70, 45, 25), (120, 80, 40), (200, 160, 90), (150, 40, 30), (230, 230, 225), (60, 60, 160), (200, 80, 160))
HUE_BANDS = 6  # 60-degree bands of the hue circle, band 0 starting at red
HELD_OUT_CELLS = ((0, 3), (1, 5), (2, 4), (3, 0), (4, 2), (5, 1))  # (top band, bottom band): one cell per band of each part
TEXTURES = ("stripes", "dots", "checks")  # the textured style's cloth patterns (drawn by the canvas)
FLAT_PATTERNS = ("plain", "band", "split")  # the flat style's: a wide horizontal band (tops) or lower legs (long bottoms), a two-tone split
_SUBSET_TAGS = {"video": "c", "images": "p", "long": "l"}


@dataclass
class Identity:
    """A character: proportions (fractions of body height), colours, clothes, hair, motion style, level of detail."""

    name: str
    head_ry: float
    head_rx: float
    neck: float
    torso: float
    shoulder_half: float
    hip_half: float
    upper_arm: float
    forearm: float
    hand: float
    thigh: float
    shin: float
    foot: float
    arm_width: float
    leg_width: float
    skin: tuple
    hair_color: tuple
    hair_style: str
    eye_color: tuple
    lip_color: tuple
    shirt: dict
    pants: dict
    shoe_color: tuple
    sleeves: str
    long_pants: bool
    smile: float
    style: dict
    detailed: bool  # the textured style: outlined parts and a face with eyes, brows, nose and lips


def _hsv(hue: float, saturation: float, value: float) -> tuple:
    """An RGB uint8 colour from HSV in [0, 1]."""
    return tuple(int(round(v * 255)) for v in colorsys.hsv_to_rgb(hue, saturation, value))


def random_color(rng: np.random.Generator, low: int = 30, high: int = 230) -> tuple:
    """A random saturated-ish RGB colour."""
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.4, 0.95), rng.uniform(0.45, 0.95)
    rgb = np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255
    return tuple(int(v) for v in np.clip(rgb, low, high))


def hue_band(color: tuple) -> int:
    """The hue band of an RGB colour."""
    hue = colorsys.rgb_to_hsv(*(c / 255 for c in color))[0]
    return int(hue * HUE_BANDS) % HUE_BANDS


def colour_cells(held_out: bool) -> list[tuple[int, int]]:
    """The (top band, bottom band) cells of training identities (``held_out`` False) or of val/test ones (True)."""
    cells = [(top, bottom) for top in range(HUE_BANDS) for bottom in range(HUE_BANDS)]
    return [cell for cell in cells if (cell in HELD_OUT_CELLS) == held_out]


def band_color(rng: np.random.Generator, band: int) -> tuple:
    """A clothing colour whose hue lies inside ``band``, clear of its edges."""
    return _hsv((band + rng.uniform(0.1, 0.9)) / HUE_BANDS, rng.uniform(0.45, 0.9), rng.uniform(0.4, 0.92))


def shade(rng: np.random.Generator, color: tuple) -> tuple:
    """A clearly lighter or darker colour of the same hue (a pattern's second colour stays in the part's band)."""
    hue, saturation, value = colorsys.rgb_to_hsv(*(c / 255 for c in color))
    step = rng.uniform(0.25, 0.4)
    value = value - step if value > 0.62 else min(1.0, value + step)
    return _hsv(hue, float(np.clip(saturation + rng.uniform(-0.2, 0.1), 0.3, 1.0)), value)


def _cloth(rng: np.random.Generator, look: np.random.Generator, band: int, flat: bool) -> dict:
    """A garment's fill: colour in ``band``, a shade of it, and the style's pattern (drawn from ``look``)."""
    color = band_color(rng, band)
    cloth = {"color": color, "color2": shade(rng, color)}
    if flat:
        center, half = look.uniform(0.35, 0.7), look.uniform(0.12, 0.2)  # of the torso's height, above the pelvis
        return {**cloth, "pattern": str(look.choice(FLAT_PATTERNS, p=[0.5, 0.25, 0.25])), "band": (center - half, center + half)}
    return {
        **cloth,
        "pattern": str(look.choice(["plain", *TEXTURES], p=[0.25, 0.3, 0.2, 0.25])),
        "period": float(look.uniform(0.035, 0.07)),
        "angle": float(look.choice([0.0, 0.0, math.pi / 2, math.pi / 4])),
    }


def identity_split() -> dict:
    """How identities are split, for the manifest: the scheme in words, the hue bands and the held-out cells."""
    return {
        "scheme": "held-out colour combinations",
        "description": (f"Every sample has its own identity. The hue circle is cut into {HUE_BANDS} bands of {360 // HUE_BANDS} degrees "
                        "(band 0 from red); a cell is (the band of the top's colour, the band of the bottom's colour), and a clothing "
                        "pattern's second colour is a shade of the same hue. Train identities wear cells outside held_out; val and test "
                        "identities wear cells in held_out only. Each band appears in training for tops and for bottoms: only the "
                        "combination is new."),
        "hue_bands": HUE_BANDS,
        "held_out": [list(cell) for cell in HELD_OUT_CELLS],
    }


def identity_name(seed: int, split: str, subset: str, index: int) -> str:
    """Name of the identity of sample ``index`` of a split's subset under ``seed`` (unique, key-safe)."""
    return f"puppet-s{seed}-{split}-{_SUBSET_TAGS[subset]}{index:05d}"


def crown_height(idt: Identity) -> float:
    """Height of the top of the head above the soles of a standing identity, in body units."""
    return 0.72 * idt.foot + idt.thigh + idt.shin + idt.torso + idt.neck + 2.0 * idt.head_ry


def make_identity(config: SyntheticConfig, split: str, subset: str, index: int) -> Identity:
    """The character of sample ``index`` of a split's subset: training colour cells in train, held-out ones in val/test."""
    rng, look = sample_rng(config, split, subset, index, IDENTITY), sample_rng(config, split, subset, index, PATTERN)
    cells = colour_cells(held_out=split != "train")
    top_band, bottom_band = cells[rng.integers(len(cells))]
    flat = config.style == "flat"
    head_ry = rng.uniform(0.085, 0.1)
    return Identity(
        name=identity_name(config.seed, split, subset, index),
        head_ry=head_ry,
        head_rx=head_ry * rng.uniform(0.8, 0.92),
        neck=rng.uniform(0.03, 0.045),
        torso=rng.uniform(0.27, 0.31),
        shoulder_half=rng.uniform(0.09, 0.125),
        hip_half=rng.uniform(0.055, 0.08),
        upper_arm=rng.uniform(0.15, 0.18),
        forearm=rng.uniform(0.13, 0.16),
        hand=rng.uniform(0.08, 0.095),
        thigh=rng.uniform(0.2, 0.24),
        shin=rng.uniform(0.19, 0.23),
        foot=rng.uniform(0.065, 0.08),
        arm_width=rng.uniform(0.035, 0.05),
        leg_width=rng.uniform(0.06, 0.08),
        skin=SKIN_TONES[rng.integers(len(SKIN_TONES))],
        hair_color=HAIR_COLORS[rng.integers(len(HAIR_COLORS))],
        hair_style=str(rng.choice(["short", "long", "spiky", "bun", "afro", "bald"], p=[0.3, 0.25, 0.15, 0.12, 0.1, 0.08])),
        eye_color=random_color(rng, 20, 160),
        lip_color=tuple(int(c) for c in rng.uniform([150, 40, 50], [220, 90, 110])),
        shirt=_cloth(rng, look, top_band, flat),
        pants=_cloth(rng, look, bottom_band, flat),
        shoe_color=random_color(rng, 10, 120),
        sleeves=str(rng.choice(["none", "short", "long"], p=[0.2, 0.45, 0.35])),
        long_pants=bool(rng.uniform() < 0.7),
        smile=float(rng.uniform(-0.02, 0.08)),
        style={
            "arm_raise": rng.uniform(0.2, 0.7),
            "arm_amplitude": rng.uniform(0.45, 1.1),
            "elbow": rng.uniform(-0.2, 0.9),
            "elbow_amplitude": rng.uniform(0.3, 0.9),
            "knee_amplitude": rng.uniform(0.1, 0.4),
            "lift_amplitude": rng.uniform(0.0, 0.7),
            "tilt_amplitude": rng.uniform(0.03, 0.12),
            "yaw_amplitude": rng.uniform(0.2, 0.7),
            "energy": rng.uniform(0.8, 1.2),
        },
        detailed=not flat,
    )
