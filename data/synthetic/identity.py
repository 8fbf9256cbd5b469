"""Characters: seeded proportions, skin, hair, clothes (colour, pattern) and motion style."""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

from data.synthetic.config import seeded_rng

SKIN_TONES = ((255, 224, 196), (241, 194, 155), (224, 172, 128), (198, 134, 94), (160, 102, 66), (112, 70, 45), (250, 210, 170))
HAIR_COLORS = ((30, 22, 18), (70, 45, 25), (120, 80, 40), (200, 160, 90), (150, 40, 30), (230, 230, 225), (60, 60, 160), (200, 80, 160))


@dataclass
class Identity:
    """A character: proportions (fractions of body height), colours, clothes, hair, motion style."""

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


def random_color(rng: np.random.Generator, low: int = 30, high: int = 230) -> tuple:
    """A random saturated-ish RGB colour."""
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.4, 0.95), rng.uniform(0.45, 0.95)
    rgb = np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255
    return tuple(int(v) for v in np.clip(rgb, low, high))


def _cloth(rng: np.random.Generator) -> dict:
    """A clothing fill: base colour, pattern (plain, stripes, dots, checks), second colour, period."""
    return {
        "color": random_color(rng),
        "pattern": str(rng.choice(["plain", "stripes", "dots", "checks"], p=[0.25, 0.3, 0.2, 0.25])),
        "color2": random_color(rng),
        "period": float(rng.uniform(0.035, 0.07)),
        "angle": float(rng.choice([0.0, 0.0, math.pi / 2, math.pi / 4])),
    }


def identity_name(seed: int, index: int) -> str:
    """Name of global identity ``index`` under ``seed`` (unique across seeds, key-safe)."""
    return f"puppet-s{seed}-{index:05d}"


def make_identity(seed: int, index: int) -> Identity:
    """The character of global identity ``index`` under ``seed``."""
    rng = seeded_rng(seed, index, 0)
    head_ry = rng.uniform(0.085, 0.1)
    return Identity(
        name=identity_name(seed, index),
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
        shirt=_cloth(rng),
        pants=_cloth(rng),
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
    )
