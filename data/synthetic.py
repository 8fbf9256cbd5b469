"""The procedural puppet benchmark: cartoon characters with exact whole-body keypoints -> shards.

Every identity is a seeded random character (proportions, skin, clothes with stripes, dots or
checks, hair, a face drawn where its 68 landmarks are, hands whose 21 points are exact). Clips
animate it with dance-like motion (sums of sinusoids per joint angle, identity-specific style,
clip-specific tempo and phases), global translation and zoom, head turns, blinks, mouth and hand
open/close, in front of a static textured background. Keypoints follow the COCO-WholeBody 133
layout with confidence 1 when visible, 0.5 for head points turned away, 0.6 for fingertips
folded into a fist, 0.3 for points hidden behind the torso and 0 outside the frame. The person
mask is exact: every pixel the rendered person covers at all (2.5D layers, supersampled 2x).

Layout written (``python -m data.synthetic --out DIR``)::

    DIR/manifest.json
    DIR/{split}/shard-NNNNNN.tar    video clips (subset "video")
    DIR/{split}/images-NNNNNN.tar   image pairs for pose transfer (subset "images")
    DIR/{split}/long-NNNNNN.tar     long clips (subset "long", off by default)

``manifest["splits"][split]`` holds ``identities`` and, per subset, ``{"shards": [paths
relative to DIR], "samples": N}``. Splits have disjoint identities. Output is a pure function of
the config (the worker count does not change a byte of keypoints or frames).
"""

from __future__ import annotations

import argparse
import colorsys
import functools
import itertools
import math
import multiprocessing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

from common.pose import layout
from data.shards import Sample, ShardWriter, encode_sample, read_manifest, write_manifest

GENERATOR_NAME = "data.synthetic"
GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")
SUBSET_PREFIXES = {"video": "shard", "images": "images", "long": "long"}
ASPECTS = {"square": (1, 1), "portrait": (3, 4), "landscape": (4, 3)}  # width : height
SUPERSAMPLE = 2
VISIBLE, TURNED_AWAY, IN_FIST, BEHIND_TORSO = 1.0, 0.5, 0.6, 0.3
HEAD_MARGIN = 1.06  # the drawn head is this much larger than the sphere carrying the face landmarks
SKIN_TONES = ((255, 224, 196), (241, 194, 155), (224, 172, 128), (198, 134, 94), (160, 102, 66), (112, 70, 45), (250, 210, 170))
HAIR_COLORS = ((30, 22, 18), (70, 45, 25), (120, 80, 40), (200, 160, 90), (150, 40, 30), (230, 230, 225), (60, 60, 160), (200, 80, 160))
TEXT_WORDS = ("DANCE", "LIVE", "NEW", "puppet", "challenge", "2024", "#fun", "HD", "subscribe", "step", "groove", "tutorial")


@dataclass(frozen=True)
class SyntheticConfig:
    """What the generated dataset depends on (the manifest records it; workers are not part of it)."""

    seed: int = 0
    train_identities: int = 48
    val_identities: int = 8
    test_identities: int = 8
    clips_per_identity: int = 4
    frames: int = 33
    fps: float = 12.0
    size: int = 128
    image_pairs_per_identity: int = 1
    text_fraction: float = 0.25
    long_clips: int = 0
    long_seconds: float = 60.0
    samples_per_shard: int = 64

    def __post_init__(self) -> None:
        """Reject configurations that cannot produce a valid dataset."""
        if self.seed < 0:
            raise ValueError(f"seed must not be negative, got {self.seed}")
        if self.size < 32 or self.size % 16:
            raise ValueError(f"size must be a multiple of 16 and at least 32, got {self.size}")
        if self.frames < 1 or self.fps <= 0 or self.long_seconds <= 0:
            raise ValueError(f"frames, fps and long_seconds must be positive, got {self.frames}, {self.fps}, {self.long_seconds}")
        if min(self.train_identities, self.val_identities, self.test_identities, self.clips_per_identity, self.image_pairs_per_identity, self.long_clips) < 0:
            raise ValueError("identity, clip, pair and long-clip counts must not be negative")
        if not 0.0 <= self.text_fraction <= 1.0:
            raise ValueError(f"text_fraction must be in [0, 1], got {self.text_fraction}")
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be at least 1, got {self.samples_per_shard}")

    def identities(self, split: str) -> range:
        """Global identity indices of a split (disjoint ranges)."""
        counts = {"train": self.train_identities, "val": self.val_identities, "test": self.test_identities}
        start = sum(counts[name] for name in SPLITS[: SPLITS.index(split)])
        return range(start, start + counts[split])


def frame_size(aspect: str, size: int) -> tuple[int, int]:
    """(height, width) of an aspect ratio with short side ``size``; the long side rounds to a multiple of 16."""
    w, h = ASPECTS[aspect]
    long_side = int(round(size * max(w, h) / min(w, h) / 16)) * 16
    return (size, long_side) if w > h else (long_side, size) if h > w else (size, size)


def _rng(seed: int, *path: int) -> np.random.Generator:
    """Independent generator for one (identity, purpose, index) path under ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=tuple(path)))


# ----------------------------------------------------------------------------- identity


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


def _color(rng: np.random.Generator, low: int = 30, high: int = 230) -> tuple:
    """A random saturated-ish RGB colour."""
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0.4, 0.95), rng.uniform(0.45, 0.95)
    rgb = np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255
    return tuple(int(v) for v in np.clip(rgb, low, high))


def _cloth(rng: np.random.Generator) -> dict:
    """A clothing fill: base colour, pattern (plain, stripes, dots, checks), second colour, period."""
    return {
        "color": _color(rng),
        "pattern": str(rng.choice(["plain", "stripes", "dots", "checks"], p=[0.25, 0.3, 0.2, 0.25])),
        "color2": _color(rng),
        "period": float(rng.uniform(0.035, 0.07)),
        "angle": float(rng.choice([0.0, 0.0, math.pi / 2, math.pi / 4])),
    }


def identity_name(seed: int, index: int) -> str:
    """Name of global identity ``index`` under ``seed`` (unique across seeds, key-safe)."""
    return f"puppet-s{seed}-{index:05d}"


def make_identity(seed: int, index: int) -> Identity:
    """The character of global identity ``index`` under ``seed``."""
    rng = _rng(seed, index, 0)
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
        eye_color=_color(rng, 20, 160),
        lip_color=tuple(int(c) for c in rng.uniform([150, 40, 50], [220, 90, 110])),
        shirt=_cloth(rng),
        pants=_cloth(rng),
        shoe_color=_color(rng, 10, 120),
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


# ----------------------------------------------------------------------------- motion


@dataclass
class Motion:
    """Per-channel sinusoids ``base + a1 sin(2 pi f t + p1) + a2 sin(4 pi f t + p2)`` plus framing and blinks."""

    channels: dict  # name -> (base, a1, a2, f, p1, p2)
    height_fraction: float
    ground: float  # fraction of the frame height
    center: float  # fraction of the frame width
    blinks: np.ndarray  # blink start times in seconds

    def value(self, name: str, t: np.ndarray | float) -> np.ndarray:
        """Channel ``name`` at times ``t`` (seconds)."""
        base, a1, a2, f, p1, p2 = self.channels[name]
        return base + a1 * np.sin(2 * np.pi * f * t + p1) + a2 * np.sin(4 * np.pi * f * t + p2)


def make_motion(identity: Identity, rng: np.random.Generator, duration: float) -> Motion:
    """Clip motion: identity style with clip-specific tempo, phases and framing."""
    s = identity.style
    tempo = rng.uniform(0.25, 0.55) * s["energy"]

    def channel(base: float, a1: float, a2: float = 0.0, ratio: float = 1.0) -> tuple:
        """One sinusoid channel at the clip tempo with random phases."""
        return (base, a1, a2, tempo * ratio, rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi))

    lift_phase = rng.uniform(0, 2 * np.pi)
    lift = s["lift_amplitude"] * rng.uniform(0.5, 1.0)
    wide = rng.uniform() < 0.2
    channels = {
        "arm_right": channel(s["arm_raise"] + rng.uniform(-0.1, 0.3), s["arm_amplitude"] * rng.uniform(0.7, 1.2), rng.uniform(0, 0.25)),
        "arm_left": channel(s["arm_raise"] + rng.uniform(-0.1, 0.3), s["arm_amplitude"] * rng.uniform(0.7, 1.2), rng.uniform(0, 0.25)),
        "elbow_right": channel(s["elbow"], s["elbow_amplitude"], rng.uniform(0, 0.2)),
        "elbow_left": channel(s["elbow"], s["elbow_amplitude"], rng.uniform(0, 0.2)),
        "wrist_right": channel(0.0, rng.uniform(0.1, 0.4)),
        "wrist_left": channel(0.0, rng.uniform(0.1, 0.4)),
        "curl_right": channel(rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.8), ratio=rng.uniform(0.5, 1.5)),
        "curl_left": channel(rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.8), ratio=rng.uniform(0.5, 1.5)),
        "spread": channel(0.7, 0.3, ratio=0.5),
        "hip_right": channel(rng.uniform(0.03, 0.12), rng.uniform(0.0, 0.1)),
        "hip_left": channel(rng.uniform(0.03, 0.12), rng.uniform(0.0, 0.1)),
        "knee": channel(rng.uniform(-0.1, 0.1), s["knee_amplitude"], ratio=2.0),
        "lift_right": (0.0, lift, 0.0, tempo, lift_phase, 0.0),
        "lift_left": (0.0, lift, 0.0, tempo, lift_phase + np.pi, 0.0),
        "tilt": channel(0.0, s["tilt_amplitude"], rng.uniform(0, 0.03)),
        "yaw": channel(rng.uniform(-0.15, 0.15), s["yaw_amplitude"] * rng.uniform(0.5, 1.0), ratio=rng.uniform(0.3, 1.0)),
        "roll": channel(0.0, rng.uniform(0.03, 0.15)),
        "mouth": channel(rng.uniform(0.0, 0.4), rng.uniform(0.2, 0.6), ratio=rng.uniform(1.0, 2.0)),
        "x": (0.0, rng.uniform(0.25, 0.35) if wide else rng.uniform(0.04, 0.16), 0.0, rng.uniform(0.06, 0.2), rng.uniform(0, 2 * np.pi), 0.0),
        "zoom": (1.0, rng.uniform(0.0, 0.1), 0.0, rng.uniform(0.05, 0.2), rng.uniform(0, 2 * np.pi), 0.0),
    }
    blink_count = rng.poisson(duration / 3.0)
    return Motion(
        channels=channels,
        height_fraction=rng.uniform(0.7, 0.86),
        ground=rng.uniform(0.9, 0.95),
        center=rng.uniform(0.38, 0.62),
        blinks=np.sort(rng.uniform(0, duration, blink_count)),
    )


@dataclass
class PoseParams:
    """Joint angles and framing of one frame (radians; sides indexed right=0, left=1)."""

    arm: tuple
    elbow: tuple
    wrist: tuple
    curl: tuple
    spread: float
    hip: tuple
    knee: float
    lift: tuple
    tilt: float
    yaw: float
    roll: float
    mouth: float
    eyes_open: float
    x: float
    zoom: float


def pose_at(motion: Motion, t: float) -> PoseParams:
    """Joint angles of the motion at time ``t`` (seconds)."""
    v = motion.value
    blinking = np.any((t >= motion.blinks) & (t < motion.blinks + 0.15))
    return PoseParams(
        arm=(float(np.clip(v("arm_right", t), 0.05, 2.9)), float(np.clip(v("arm_left", t), 0.05, 2.9))),
        elbow=(float(np.clip(v("elbow_right", t), -1.6, 2.2)), float(np.clip(v("elbow_left", t), -1.6, 2.2))),
        wrist=(float(v("wrist_right", t)), float(v("wrist_left", t))),
        curl=(float(np.clip(v("curl_right", t), 0, 1)), float(np.clip(v("curl_left", t), 0, 1))),
        spread=float(np.clip(v("spread", t), 0.2, 1.2)),
        hip=(float(v("hip_right", t)), float(v("hip_left", t))),
        knee=float(max(0.0, v("knee", t))),
        lift=(float(max(0.0, v("lift_right", t))), float(max(0.0, v("lift_left", t)))),
        tilt=float(v("tilt", t)),
        yaw=float(np.clip(v("yaw", t), -0.8, 0.8)),
        roll=float(v("roll", t)),
        mouth=float(np.clip(v("mouth", t), 0, 1)),
        eyes_open=0.1 if blinking else 1.0,
        x=float(v("x", t)),
        zoom=float(v("zoom", t)),
    )


# ----------------------------------------------------------------------------- skeleton


def _direction(angle: float) -> np.ndarray:
    """Unit vector at ``angle`` from straight down, positive toward image right."""
    return np.array([math.sin(angle), math.cos(angle)])


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """Rotate ``(..., 2)`` points by ``angle`` (image coordinates, y down: positive turns up -> right)."""
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


# Face template (iBUG 68) in head-normalised coordinates: x in head half-widths, y in head
# half-heights from the head centre (down positive).
def _face_template(smile: float, mouth: float, eyes_open: float) -> np.ndarray:
    """68 face points ``(68, 2)`` of a frontal cartoon face."""
    jaw_angle = np.linspace(0, np.pi, 17)
    jaw = np.stack([-0.86 * np.cos(jaw_angle), 0.1 + 0.76 * np.sin(jaw_angle)], axis=1)
    brow_x = np.linspace(0.14, 0.62, 5)
    brow_y = -0.27 - 0.07 * np.sin(np.linspace(0.3, np.pi - 0.3, 5))
    right_brow = np.stack([-brow_x[::-1], brow_y[::-1]], axis=1)
    left_brow = np.stack([brow_x, brow_y], axis=1)
    bridge = np.stack([np.zeros(4), np.linspace(-0.08, 0.3, 4)], axis=1)
    nose_bottom = np.stack([np.linspace(-0.15, 0.15, 5), 0.36 + 0.04 * np.cos(np.linspace(-np.pi / 2, np.pi / 2, 5))], axis=1)

    def eye(center_x: float) -> np.ndarray:
        """Six eye points left to right along the top, back along the bottom (iBUG order)."""
        half_w, half_h = 0.2, 0.15 * eyes_open
        xs = np.array([-1.0, -0.4, 0.4, 1.0, 0.4, -0.4]) * half_w
        ys = np.array([0.0, -1.0, -1.0, 0.0, 1.0, 1.0]) * half_h
        return np.stack([center_x + xs, 0.02 + ys], axis=1)

    right_eye, left_eye = eye(-0.38), eye(0.38)
    open_ = 0.14 * mouth
    outer_x = np.array([-1.0, -0.65, -0.3, 0.0, 0.3, 0.65, 1.0, 0.65, 0.3, 0.0, -0.3, -0.65]) * 0.34
    outer_y = 0.6 + np.array([-smile, -0.06, -0.09, -0.07, -0.09, -0.06, -smile, 0.07 + open_, 0.1 + open_, 0.11 + open_, 0.1 + open_, 0.07 + open_])
    inner_x = np.array([-0.8, -0.35, 0.0, 0.35, 0.8, 0.35, 0.0, -0.35]) * 0.34
    inner_y = 0.6 + np.array([-smile * 0.8, -0.02, -0.02, -0.02, -smile * 0.8, 0.02 + open_, 0.02 + open_, 0.02 + open_])
    return np.concatenate([jaw, right_brow, left_brow, bridge, nose_bottom, right_eye, left_eye, np.stack([outer_x, outer_y], 1), np.stack([inner_x, inner_y], 1)])


@dataclass
class Skeleton:
    """Keypoints of one frame in pixels plus what rendering needs (torso and head frames, depths)."""

    keypoints: np.ndarray  # (133, 3), confidences before occlusion / frame tests
    unit: float  # pixels per body height
    pelvis: np.ndarray
    neck: np.ndarray
    tilt: float
    head_center: np.ndarray
    head_angle: float
    yaw: float
    face_depth: np.ndarray  # (68,) > 0 = facing the camera
    ear_depth: np.ndarray  # (2,) left, right


def _hand_points(wrist: np.ndarray, angle: float, length: float, side: int, curl: float, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """21 hand points ``(21, 2)`` and per-point fist occlusion flags for a hand pointing along ``angle``.

    Fingers fold toward the camera-facing palm: each phalanx turns by the curl in the plane
    normal to the image, so its projection shortens and folds back over the palm.
    """
    along = _direction(angle)
    thumb_side = -side * np.array([-along[1], along[0]])  # thumbs point away from the body
    fingers = {  # MCP (u, v) in hand lengths, phalanx lengths, spread angle
        "index": ((0.44, 0.17), (0.23, 0.14, 0.11), 0.12),
        "middle": ((0.46, 0.05), (0.25, 0.16, 0.12), 0.0),
        "ring": ((0.44, -0.07), (0.23, 0.15, 0.11), -0.1),
        "pinky": ((0.4, -0.18), (0.18, 0.11, 0.1), -0.22),
    }
    points = np.zeros((21, 2))
    hidden = np.zeros(21, dtype=bool)
    points[0] = wrist
    u, v, thumb_angle = 0.1, 0.12, 0.75  # thumb CMC; angle from the hand axis toward the thumb side
    points[1] = wrist + length * (u * along + v * thumb_side)
    for j, segment in enumerate((0.2, 0.15, 0.12)):
        thumb_angle -= 0.5 * curl  # the thumb folds across the palm
        u += segment * math.cos(thumb_angle) * (1 - 0.3 * curl)
        v += segment * math.sin(thumb_angle) * (1 - 0.3 * curl)
        points[2 + j] = wrist + length * (u * along + v * thumb_side)
    for f, ((mu, mv), segments, spread_angle) in enumerate(fingers.values()):
        ray = spread_angle * spread
        ray_u, ray_v = math.cos(ray), math.sin(ray)
        u, v, bend = mu, mv, 0.0
        start = 5 + 4 * f
        points[start] = wrist + length * (u * along + v * thumb_side)
        for j, (seg, flex) in enumerate(zip(segments, (1.4, 1.6, 1.0))):
            bend += flex * curl
            projected = seg * math.cos(bend)
            u, v = u + projected * ray_u, v + projected * ray_v
            points[start + 1 + j] = wrist + length * (u * along + v * thumb_side)
        hidden[start + 2 : start + 4] = curl > 0.55
    return points, hidden


def _foot_points(ankle: np.ndarray, length: float, side: int) -> np.ndarray:
    """Big toe, small toe, heel ``(3, 2)`` of a foot seen from the front, toes turned out."""
    return ankle + length * np.array([[side * 0.05, 0.72], [side * 0.5, 0.62], [-side * 0.12, 0.38]])


def build_skeleton(identity: Identity, motion: Motion, pose: PoseParams, height: int, width: int) -> Skeleton:
    """All 133 keypoints (pixels) of the identity in ``pose`` framed in a ``height x width`` image."""
    unit = height * motion.height_fraction * pose.zoom
    idt = identity
    tilt = pose.tilt
    up = np.array([math.sin(tilt), -math.cos(tilt)])
    right = np.array([math.cos(tilt), math.sin(tilt)])
    # Legs hang from the pelvis; the lower foot stands on the ground line.
    legs = []
    for i, side in enumerate((-1, 1)):
        lift = pose.lift[i]
        thigh_angle = side * (pose.hip[i] + 0.5 * pose.knee)
        shin_angle = side * (pose.hip[i] - 0.5 * pose.knee)
        hip_offset = np.array([side * idt.hip_half, 0.0]) * unit
        knee = hip_offset + _direction(thigh_angle) * idt.thigh * unit * np.array([1.0, math.cos(lift)])
        ankle = knee + _direction(shin_angle) * idt.shin * unit
        legs.append((hip_offset, knee, ankle))
    lowest = max(leg[2][1] for leg in legs) + 0.72 * idt.foot * unit
    pelvis = np.array([width * (motion.center + pose.x), height * motion.ground - lowest])
    hips = np.array([pelvis + legs[i][0] for i in range(2)])
    neck = pelvis + up * idt.torso * unit
    shoulders = np.array([neck + right * side * idt.shoulder_half * unit + up * -0.015 * unit for side in (-1, 1)])
    kp = np.zeros((layout.NUM_KEYPOINTS, 3))
    kp[:, 2] = VISIBLE
    for i, (side, (hip, shoulder)) in enumerate(zip((-1, 1), zip(hips, shoulders))):
        knee, ankle = pelvis + legs[i][1], pelvis + legs[i][2]
        upper_angle = side * pose.arm[i] - tilt
        elbow = shoulder + _direction(upper_angle) * idt.upper_arm * unit
        fore_angle = upper_angle + side * pose.elbow[i]
        wrist = elbow + _direction(fore_angle) * idt.forearm * unit
        hand_angle = fore_angle + side * pose.wrist[i]
        hand, in_fist = _hand_points(wrist, hand_angle, idt.hand * unit, side, pose.curl[i], pose.spread)
        names = ("RIGHT", "LEFT")[i]
        for joint, point in (("SHOULDER", shoulder), ("ELBOW", elbow), ("WRIST", wrist), ("HIP", hip), ("KNEE", knee), ("ANKLE", ankle)):
            kp[layout.Body[f"{names}_{joint}"], :2] = point
        part = layout.RIGHT_HAND if side == -1 else layout.LEFT_HAND
        kp[part, :2] = hand
        kp[part, 2] = np.where(in_fist, IN_FIST, VISIBLE)
        foot_start = layout.Foot.RIGHT_BIG_TOE if side == -1 else layout.Foot.LEFT_BIG_TOE
        kp[foot_start : foot_start + 3, :2] = _foot_points(ankle, idt.foot * unit, side)
    # Head: face points on an ellipsoid, turned by yaw, rolled with the neck.
    head_angle = tilt + pose.roll
    head_center = neck + up * (idt.neck + 0.9 * idt.head_ry) * unit
    template = _face_template(idt.smile, pose.mouth, pose.eyes_open)
    depth = np.sqrt(np.clip(1 - template[:, 0] ** 2 - template[:, 1] ** 2, 0, None))
    depth[27:36] += 0.25 * np.array([0.2, 0.5, 0.8, 1.0, 0.4, 0.6, 0.7, 0.6, 0.4])  # the nose sticks out
    cos_yaw, sin_yaw = math.cos(pose.yaw), math.sin(pose.yaw)
    turned_x = template[:, 0] * cos_yaw + depth * sin_yaw
    face_depth = -template[:, 0] * sin_yaw + depth * cos_yaw
    rx, ry = idt.head_rx * unit, idt.head_ry * unit
    face = head_center + _rotate(np.stack([turned_x * rx, template[:, 1] * ry], axis=1), head_angle)
    kp[layout.FACE, :2] = face
    kp[layout.FACE, 2] = np.where(face_depth > 0, VISIBLE, TURNED_AWAY)
    ears_x = np.array([1.0, -1.0])  # left ear (image right), right ear
    ear_depth = -ears_x * sin_yaw
    ears = head_center + _rotate(np.stack([ears_x * cos_yaw * rx, np.full(2, 0.1 * ry)], axis=1), head_angle)
    kp[[layout.Body.LEFT_EAR, layout.Body.RIGHT_EAR], :2] = ears
    kp[[layout.Body.LEFT_EAR, layout.Body.RIGHT_EAR], 2] = np.where(ear_depth > -0.05, VISIBLE, TURNED_AWAY)
    face_kp = kp[layout.FACE]
    for body_index, (start, stop) in ((layout.Body.RIGHT_EYE, (36, 42)), (layout.Body.LEFT_EYE, (42, 48))):
        kp[body_index, :2] = face_kp[start:stop, :2].mean(axis=0)
        kp[body_index, 2] = face_kp[start:stop, 2].min()
    kp[layout.Body.NOSE] = face_kp[layout.FACE_NOSE_TIP]
    return Skeleton(
        keypoints=kp, unit=unit, pelvis=pelvis, neck=neck, tilt=tilt, head_center=head_center, head_angle=head_angle,
        yaw=pose.yaw, face_depth=face_depth, ear_depth=ear_depth,
    )


# ----------------------------------------------------------------------------- rendering


def _capsule(a: np.ndarray, b: np.ndarray, radius_a: float, radius_b: float) -> list:
    """Shapes of a limb segment: a quad between two joint discs and the discs."""
    along = b - a
    normal = np.array([-along[1], along[0]]) / max(np.linalg.norm(along), 1e-6)
    quad = np.array([a + normal * radius_a, b + normal * radius_b, b - normal * radius_b, a - normal * radius_a])
    return [("polygon", quad), ("disc", (a, radius_a)), ("disc", (b, radius_b))]


def _ellipse(center: np.ndarray, rx: float, ry: float, angle: float, vertices: int = 40) -> np.ndarray:
    """Polygon ``(V, 2)`` of an ellipse rotated by ``angle``."""
    theta = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    return center + _rotate(np.stack([rx * np.cos(theta), ry * np.sin(theta)], axis=1), angle)


def _darker(color: tuple, factor: float = 0.55) -> tuple:
    """A darker shade of ``color`` (outlines, shading)."""
    return tuple(int(c * factor) for c in color)


@dataclass
class _Fill:
    """A part's fill: a solid colour, or a cloth pattern laid out in a local frame (origin, angle, unit)."""

    color: tuple
    cloth: dict | None = None
    origin: np.ndarray | None = None
    angle: float = 0.0
    unit: float = 1.0


class _Canvas:
    """Supersampled person layer: colour on black plus coverage; parts are pasted back to front."""

    def __init__(self, height: int, width: int, supersample: int = SUPERSAMPLE):
        """Black, empty canvases ``supersample`` times the output size."""
        self.ss = supersample
        self.size = (width * supersample, height * supersample)
        self.rgb = Image.new("RGB", self.size)
        self.alpha = Image.new("L", self.size)
        self.draw = ImageDraw.Draw(self.rgb)

    def scaled(self, points: np.ndarray) -> list[tuple[float, float]]:
        """Output-pixel points ``(N, 2)`` -> supersampled PIL coordinates."""
        return [tuple(p) for p in (np.asarray(points) * self.ss).tolist()]

    def _mask(self, shapes: list) -> tuple[tuple[int, int, int, int], Image.Image] | None:
        """Rasterise shapes into a mask over their (clipped) bounding box."""
        polygons = [np.asarray(data) * self.ss for kind, data in shapes if kind == "polygon"]
        discs = np.array([(*(data[0] * self.ss), max(data[1] * self.ss, 1.0)) for kind, data in shapes if kind == "disc"]).reshape(-1, 3)
        corners = np.concatenate(polygons + [discs[:, :2] - discs[:, 2:], discs[:, :2] + discs[:, 2:]])
        x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int) - 2, 0)
        x1, y1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 2, self.size)
        if x1 <= x0 or y1 <= y0:
            return None
        mask = Image.new("L", (x1 - x0, y1 - y0))
        draw = ImageDraw.Draw(mask)
        offset = np.array([x0, y0])
        for polygon in polygons:
            draw.polygon((polygon - offset).ravel().tolist(), fill=255)
        for cx, cy, r in (discs - [x0, y0, 0]).tolist():
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        return (int(x0), int(y0), int(x1), int(y1)), mask

    def _pattern(self, fill: _Fill, box: tuple[int, int, int, int]) -> Image.Image:
        """The fill's cloth pattern over ``box`` (supersampled pixels)."""
        x0, y0, x1, y1 = box
        rel_x = (((np.arange(x0, x1, dtype=np.float32) + 0.5) / self.ss - fill.origin[0]) / fill.unit)[None, :]  # (1, w)
        rel_y = (((np.arange(y0, y1, dtype=np.float32) + 0.5) / self.ss - fill.origin[1]) / fill.unit)[:, None]  # (h, 1)
        angle = fill.angle + fill.cloth["angle"]
        period, pattern = fill.cloth["period"], fill.cloth["pattern"]
        a = (rel_x * math.cos(angle) + rel_y * math.sin(angle)) / period  # (h, w)
        b = (rel_y * math.cos(angle) - rel_x * math.sin(angle)) / period
        if pattern == "stripes":
            on = b % 1.0 < 0.45
        elif pattern == "dots":
            on = (a % 1.0 - 0.5) ** 2 + (b % 1.0 - 0.5) ** 2 < 0.09
        else:
            on = (np.floor(a) + np.floor(b)) % 2 == 0
        pixels = np.where(on[..., None], np.array(fill.cloth["color2"], np.uint8), np.array(fill.color, np.uint8))
        return Image.fromarray(pixels)

    def paint(self, shapes: list, fill: _Fill, outline: bool = True) -> tuple | None:
        """Paste one part (union of shapes) over everything so far; returns its (box, mask)."""
        rasterised = self._mask(shapes)
        if rasterised is None:
            return None
        box, mask = rasterised
        if fill.cloth is not None and fill.cloth["pattern"] != "plain":
            self.rgb.paste(self._pattern(fill, box), box[:2], mask)
        else:
            self.rgb.paste(fill.color, box, mask)
        self.alpha.paste(255, box, mask)
        if outline:
            self.rgb.paste(_darker(fill.color), box, mask.filter(ImageFilter.FIND_EDGES))  # the mask's inner rim
        return box, mask

    def covers(self, part: tuple | None, points: np.ndarray) -> np.ndarray:
        """Whether each output-pixel point ``(N, 2)`` falls on a painted part's mask."""
        if part is None:
            return np.zeros(len(points), dtype=bool)
        (x0, y0, x1, y1), mask = part
        pixels = np.floor(points * self.ss).astype(int) - np.array([x0, y0])
        inside = (pixels[:, 0] >= 0) & (pixels[:, 0] < x1 - x0) & (pixels[:, 1] >= 0) & (pixels[:, 1] < y1 - y0)
        hits = np.zeros(len(points), dtype=bool)
        array = np.asarray(mask)
        hits[inside] = array[pixels[inside, 1], pixels[inside, 0]] > 0
        return hits

    def composite(self, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Downsample and lay the person over ``background`` ``(H, W, 3)``: frame uint8 and mask bool."""
        person = np.asarray(self.rgb.reduce(self.ss), dtype=np.float32)
        coverage = np.asarray(self.alpha.reduce(self.ss), dtype=np.float32)[..., None] / 255.0
        frame = background.astype(np.float32) * (1.0 - coverage) + person
        return np.clip(np.rint(frame), 0, 255).astype(np.uint8), coverage[..., 0] > 0


def _cloth_fill(cloth: dict, origin: np.ndarray, angle: float, unit: float) -> _Fill:
    """Fill of a clothing part laid out from ``origin`` along ``angle``."""
    return _Fill(color=cloth["color"], cloth=cloth, origin=origin, angle=angle, unit=unit)


def _limb_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Image-plane angle of the segment a -> b."""
    return math.atan2(b[1] - a[1], b[0] - a[0])


def _paint_arm(canvas: _Canvas, idt: Identity, skel: Skeleton, side_index: int) -> None:
    """Upper arm, forearm and hand of one side (0 = right, 1 = left)."""
    kp, unit = skel.keypoints, skel.unit
    names = ("RIGHT", "LEFT")[side_index]
    shoulder, elbow, wrist = (kp[layout.Body[f"{names}_{j}"], :2] for j in ("SHOULDER", "ELBOW", "WRIST"))
    radius = idt.arm_width * unit / 2
    skin = _Fill(idt.skin)
    sleeve = _cloth_fill(idt.shirt, shoulder, _limb_angle(shoulder, elbow), unit)
    canvas.paint(_capsule(shoulder, elbow, radius * 1.1, radius), sleeve if idt.sleeves != "none" else skin)
    forearm_fill = _cloth_fill(idt.shirt, elbow, _limb_angle(elbow, wrist), unit) if idt.sleeves == "long" else skin
    canvas.paint(_capsule(elbow, wrist, radius, radius * 0.8), forearm_fill)
    hand = kp[layout.RIGHT_HAND if side_index == 0 else layout.LEFT_HAND, :2]
    length = idt.hand * unit
    palm = np.array([hand[0] + (hand[1] - hand[0]) * 0.6, hand[5], hand[9], hand[13], hand[17], hand[0] + (hand[17] - hand[0]) * 0.3])
    canvas.paint([("polygon", palm), ("disc", (hand[0], 0.16 * length))] + [("disc", (hand[i], 0.08 * length)) for i in (5, 9, 13, 17)], skin)
    fingers = []
    for finger in layout.HAND_FINGERS.values():
        for a, b in zip(finger[:-1], finger[1:]):
            fingers += _capsule(hand[a], hand[b], 0.065 * length, 0.055 * length)
    canvas.paint(fingers, skin)


def _paint_leg(canvas: _Canvas, idt: Identity, skel: Skeleton, side_index: int) -> None:
    """Thigh, shin and shoe of one side (0 = right, 1 = left)."""
    kp, unit = skel.keypoints, skel.unit
    names = ("RIGHT", "LEFT")[side_index]
    hip, knee, ankle = (kp[layout.Body[f"{names}_{j}"], :2] for j in ("HIP", "KNEE", "ANKLE"))
    radius = idt.leg_width * unit / 2
    canvas.paint(_capsule(hip, knee, radius * 1.15, radius), _cloth_fill(idt.pants, hip, _limb_angle(hip, knee), unit))
    shin_fill = _cloth_fill(idt.pants, knee, _limb_angle(knee, ankle), unit) if idt.long_pants else _Fill(idt.skin)
    canvas.paint(_capsule(knee, ankle, radius, radius * 0.8), shin_fill)
    start = layout.Foot.RIGHT_BIG_TOE if side_index == 0 else layout.Foot.LEFT_BIG_TOE
    big_toe, small_toe, heel = kp[start : start + 3, :2]
    r = 0.22 * idt.foot * unit
    shoe = np.array([ankle - [radius * 0.9, 0], ankle + [radius * 0.9, 0], small_toe, big_toe])
    canvas.paint([("polygon", shoe), ("disc", (big_toe, r)), ("disc", (small_toe, r)), ("disc", (heel, r * 1.2))], _Fill(idt.shoe_color))


def _torso_shapes(idt: Identity, skel: Skeleton) -> tuple[list, list]:
    """Shirt polygon and the pants' waist band, in pixels."""
    unit, tilt = skel.unit, skel.tilt
    up = np.array([math.sin(tilt), -math.cos(tilt)])
    right = np.array([math.cos(tilt), math.sin(tilt)])
    sh, hh, h = idt.shoulder_half, idt.hip_half, idt.torso
    half = [(hh + 0.025, -0.035), (hh + 0.015, 0.1), (sh * 0.85, h - 0.07), (sh + 0.02, h - 0.02), (sh * 0.6, h + 0.008), (0.05, h + 0.012)]
    outline = [(-x, y) for x, y in half] + [(x, y) for x, y in reversed(half)]
    shirt = np.array([skel.pelvis + (x * right + y * up) * unit for x, y in outline])
    band = np.array([(-hh - 0.03, 0.05), (hh + 0.03, 0.05), (hh + 0.035, -0.05), (-hh - 0.035, -0.05)])
    waist = np.array([skel.pelvis + (x * right + y * up) * unit for x, y in band])
    return [("polygon", shirt)], [("polygon", waist)]


def _head_frame(skel: Skeleton, idt: Identity) -> Callable[[np.ndarray], np.ndarray]:
    """Map head-normalised points ``(N, 2)`` (x in half-widths, y in half-heights) to pixels."""
    rx, ry = idt.head_rx * skel.unit, idt.head_ry * skel.unit

    def to_pixels(points: np.ndarray) -> np.ndarray:
        """Head-normalised -> pixels."""
        return skel.head_center + _rotate(np.asarray(points, dtype=float) * [rx, ry], skel.head_angle)

    return to_pixels


def _hair_shapes(idt: Identity, skel: Skeleton) -> tuple[list, list]:
    """Hair behind the head and the cap in front (pixel shapes) for the identity's style."""
    to_pixels = _head_frame(skel, idt)
    shift = 0.35 * math.sin(skel.yaw)
    theta = np.linspace(np.pi - 0.3, 2 * np.pi + 0.3, 24)
    arc = np.stack([1.08 * np.cos(theta), 1.08 * np.sin(theta)], axis=1)
    hairline = np.array([(0.82, 0.1), (0.7, -0.3), (0.3, -0.42), (-0.1, -0.5), (-0.5, -0.38), (-0.82, 0.1)])
    hairline[1:-1, 0] += shift
    cap = [("polygon", to_pixels(np.concatenate([arc, hairline])))]
    back = []
    style = idt.hair_style
    if style == "bald":
        return [], []
    if style == "long":
        back = [("polygon", to_pixels([(-1.12, -0.4), (-1.25, 1.3), (-0.7, 1.75), (0.7, 1.75), (1.25, 1.3), (1.12, -0.4), (0.0, -1.1)]))]
    elif style == "afro":
        back = [("polygon", to_pixels(_ellipse(np.array([0.0, -0.25]), 1.45, 1.35, 0.0, 32)))]
    elif style == "bun":
        cap.append(("polygon", to_pixels(_ellipse(np.array([0.0, -1.18]), 0.38, 0.34, 0.0, 20))))
    elif style == "spiky":
        for angle in np.linspace(np.pi + 0.5, 2 * np.pi - 0.5, 5):
            base = np.array([math.cos(angle), math.sin(angle)])
            tangent = np.array([-base[1], base[0]])
            cap.append(("polygon", to_pixels([base * 0.95 + tangent * 0.25, base * 1.5, base * 0.95 - tangent * 0.25])))
    return back, cap


def _paint_face(canvas: _Canvas, idt: Identity, skel: Skeleton) -> None:
    """Eyes, brows, nose and mouth drawn where the face landmarks are (hidden ones are skipped)."""
    face, visible = skel.keypoints[layout.FACE, :2], skel.face_depth > 0
    draw, ss, unit = canvas.draw, canvas.ss, skel.unit
    line = max(1, round(0.012 * unit * ss))
    brow_color = _darker(idt.hair_color, 0.8) if idt.hair_style != "bald" else _darker(idt.skin, 0.45)
    for part in (layout.FACE_RIGHT_EYE, layout.FACE_LEFT_EYE):
        if not visible[part].all():
            continue
        eye = face[part]
        center = eye.mean(axis=0)
        height = np.linalg.norm(eye[1] - eye[5])
        if height < 0.2 * np.linalg.norm(eye[3] - eye[0]):  # blinking
            draw.line(canvas.scaled(eye[[0, 3]]), fill=(40, 25, 20), width=line)
            continue
        draw.polygon(canvas.scaled(eye), fill=(250, 250, 250), outline=(40, 30, 30))
        r = 0.3 * height * ss
        cx, cy = center * ss
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=idt.eye_color)
        draw.ellipse((cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2), fill=(15, 10, 10))
    for part in (layout.FACE_RIGHT_BROW, layout.FACE_LEFT_BROW):
        if visible[part].all():
            draw.line(canvas.scaled(face[part]), fill=brow_color, width=max(1, round(0.018 * unit * ss)), joint="curve")
    nose_color = _darker(idt.skin, 0.75)
    if visible[layout.FACE_NOSE_BOTTOM].all():
        draw.line(canvas.scaled(face[[29, 30, 33]]), fill=nose_color, width=line)
        draw.line(canvas.scaled(face[layout.FACE_NOSE_BOTTOM]), fill=nose_color, width=line)
    if visible[layout.FACE_OUTER_LIPS].all():
        draw.polygon(canvas.scaled(face[layout.FACE_OUTER_LIPS]), fill=idt.lip_color, outline=_darker(idt.lip_color))
        inner = face[layout.FACE_INNER_LIPS]
        if np.linalg.norm(inner[6] - inner[2]) > 0.01 * unit:
            draw.polygon(canvas.scaled(inner), fill=(70, 20, 30))


def _paint_head(canvas: _Canvas, idt: Identity, skel: Skeleton, cap: list) -> None:
    """Ears, head, hair cap and face."""
    rx, ry = idt.head_rx * skel.unit, idt.head_ry * skel.unit
    ears = skel.keypoints[[layout.Body.LEFT_EAR, layout.Body.RIGHT_EAR], :2]
    ear_shapes = [("polygon", _ellipse(ear, 0.2 * rx, 0.3 * ry, skel.head_angle, 16)) for ear in ears]
    skin = _Fill(idt.skin)
    for ear, depth in zip(ear_shapes, skel.ear_depth):
        if depth < 0:
            canvas.paint([ear], skin)
    canvas.paint([("polygon", _ellipse(skel.head_center, HEAD_MARGIN * rx, HEAD_MARGIN * ry, skel.head_angle))], skin)
    for ear, depth in zip(ear_shapes, skel.ear_depth):
        if depth >= 0:
            canvas.paint([ear], skin)
    if cap:
        canvas.paint(cap, _Fill(idt.hair_color))
    _paint_face(canvas, idt, skel)


def render_person(canvas: _Canvas, idt: Identity, skel: Skeleton, behind: tuple[bool, bool]) -> np.ndarray:
    """Paint the character back to front; returns final confidences ``(133,)`` (torso occlusion applied)."""
    back_hair, cap = _hair_shapes(idt, skel)
    if back_hair:
        canvas.paint(back_hair, _Fill(idt.hair_color))
    for side_index in (0, 1):
        if behind[side_index]:
            _paint_arm(canvas, idt, skel, side_index)
    for side_index in (0, 1):
        _paint_leg(canvas, idt, skel, side_index)
    neck_radius = 0.32 * idt.head_rx * skel.unit
    canvas.paint(_capsule(skel.neck, skel.head_center, neck_radius, neck_radius), _Fill(idt.skin))
    shirt, waist = _torso_shapes(idt, skel)
    torso = canvas.paint(shirt, _cloth_fill(idt.shirt, skel.pelvis, skel.tilt, skel.unit))
    canvas.paint(waist, _cloth_fill(idt.pants, skel.pelvis, skel.tilt, skel.unit))
    for side_index in (0, 1):
        if not behind[side_index]:
            _paint_arm(canvas, idt, skel, side_index)
    _paint_head(canvas, idt, skel, cap)
    confidence = skel.keypoints[:, 2].copy()
    for side_index, names, hand in ((0, "RIGHT", layout.RIGHT_HAND), (1, "LEFT", layout.LEFT_HAND)):
        if behind[side_index]:
            arm = np.r_[[layout.Body[f"{names}_ELBOW"], layout.Body[f"{names}_WRIST"]], np.arange(hand.start, hand.stop)]
            hidden = canvas.covers(torso, skel.keypoints[arm, :2])
            confidence[arm[hidden]] = np.minimum(confidence[arm[hidden]], BEHIND_TORSO)
    return confidence


def make_background(rng: np.random.Generator, height: int, width: int, ground: float) -> np.ndarray:
    """A static scene ``(H, W, 3)`` uint8: gradient, tiles, blotchy noise or wallpaper stripes, maybe a floor."""
    kind = rng.choice(["gradient", "tiles", "noise", "stripes"])
    top, bottom = np.array(_color(rng, 20, 235), float), np.array(_color(rng, 20, 235), float)
    ys, xs = np.mgrid[0:height, 0:width].astype(float)
    if kind == "gradient":
        mix = (ys / height)[..., None]
        image = top * (1 - mix) + bottom * mix
    elif kind == "tiles":
        tile = rng.integers(8, 24)
        checker = ((ys // tile + xs // tile) % 2)[..., None]
        image = top * (1 - checker) + (0.6 * top + 0.4 * bottom) * checker
        image[(ys % tile < 1) | (xs % tile < 1)] *= 0.8
    elif kind == "noise":
        coarse = rng.uniform(30, 230, (rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=float)
    else:
        period = rng.integers(6, 20)
        stripe = ((xs // period) % 2)[..., None]
        image = top * (1 - stripe) + (top * 0.75 + bottom * 0.25) * stripe
    if rng.uniform() < 0.6:
        horizon = int(height * rng.uniform(0.55, ground - 0.05))
        floor = np.array(_color(rng, 20, 200), float)
        depth = ((ys[horizon:] - horizon) / max(height - horizon, 1))[..., None]
        image[horizon:] = floor * (0.75 + 0.25 * depth)
    image += rng.normal(0, 2.0, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@dataclass
class _Text:
    """A static text overlay: string, position, font size, colour."""

    text: str
    position: tuple[int, int]
    size: int
    color: tuple


def make_text(rng: np.random.Generator, height: int, width: int) -> _Text:
    """A random caption placed somewhere in the frame."""
    words = rng.choice(TEXT_WORDS, size=rng.integers(1, 3), replace=False)
    text = " ".join(str(w) for w in words)
    size = int(rng.integers(max(8, min(height, width) // 14), max(9, min(height, width) // 8)))
    x = int(rng.uniform(0.02, 0.55) * width)
    y = int(rng.choice([rng.uniform(0.02, 0.12), rng.uniform(0.84, 0.9)]) * height)
    y = min(y, height - size - 2)
    return _Text(text=text, position=(x, y), size=size, color=_color(rng, 150, 255))


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """PIL's default (scalable) font at ``size`` pixels."""
    return ImageFont.load_default(size=size)


def _draw_text(frame: np.ndarray, text: _Text) -> list[int]:
    """Draw the overlay on ``frame`` in place; returns its box [x0, y0, x1, y1] clipped to the frame."""
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    font = _font(text.size)
    draw.text(text.position, text.text, font=font, fill=text.color, stroke_width=1, stroke_fill=(0, 0, 0))
    x0, y0, x1, y1 = draw.textbbox(text.position, text.text, font=font, stroke_width=1)
    frame[:] = np.asarray(image)
    height, width = frame.shape[:2]
    return [max(0, x0), max(0, y0), min(width, x1), min(height, y1)]


def _outside(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Whether pixel points ``(N, 2)`` lie outside the frame."""
    return (points[:, 0] < 0) | (points[:, 0] >= width) | (points[:, 1] < 0) | (points[:, 1] >= height)


def render_frame(
    idt: Identity, motion: Motion, t: float, background: np.ndarray, behind: tuple[bool, bool]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame at time ``t``: image uint8 ``(H, W, 3)``, keypoints ``(133, 3)``, person mask bool ``(H, W)``."""
    height, width = background.shape[:2]
    skel = build_skeleton(idt, motion, pose_at(motion, t), height, width)
    canvas = _Canvas(height, width)
    confidence = render_person(canvas, idt, skel, behind)
    frame, mask = canvas.composite(background)
    keypoints = skel.keypoints.copy()
    keypoints[:, 2] = np.where(_outside(keypoints[:, :2], height, width), 0.0, confidence)
    return frame, keypoints.astype(np.float32), mask


# ----------------------------------------------------------------------------- samples

_PURPOSE = {"video": 1, "images": 2, "long": 3}


@dataclass
class _Scene:
    """Everything fixed over one clip or image pair."""

    motion: Motion
    background: np.ndarray
    behind: tuple[bool, bool]
    text: _Text | None
    start: float


def _scene(config: SyntheticConfig, idt: Identity, rng: np.random.Generator, duration: float) -> _Scene:
    """Aspect, framing, motion, background, arm layering and text for one clip."""
    aspect = str(rng.choice(list(ASPECTS)))
    height, width = frame_size(aspect, config.size)
    motion = make_motion(idt, rng, duration + 30.0)
    background = make_background(rng, height, width, motion.ground)
    behind = tuple(bool(b) for b in rng.uniform(size=2) < 0.25)
    text = make_text(rng, height, width)
    with_text = rng.uniform() < config.text_fraction
    return _Scene(motion=motion, background=background, behind=behind, text=text if with_text else None, start=float(rng.uniform(0, 30)))


def _render_times(idt: Identity, scene: _Scene, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Frames ``(T, H, W, 3)``, keypoints ``(T, 133, 3)``, masks ``(T, H, W)`` and text boxes at ``times``."""
    frames, keypoints, masks, boxes = [], [], [], []
    for index, t in enumerate(times):
        frame, kp, mask = render_frame(idt, scene.motion, float(t), scene.background, scene.behind)
        if scene.text is not None:
            boxes.append([index, *_draw_text(frame, scene.text)])
        frames.append(frame)
        keypoints.append(kp)
        masks.append(mask)
    return np.stack(frames), np.stack(keypoints), np.stack(masks), boxes


def _meta(idt: Identity, split: str, kind: str, fps: float, frames: np.ndarray, boxes: list, **extra) -> dict:
    """Sample metadata as the shard format defines it."""
    return {
        "identity": idt.name, "split": split, "kind": kind, "fps": float(fps), "width": int(frames.shape[2]),
        "height": int(frames.shape[1]), "num_frames": int(frames.shape[0]), "text_boxes": boxes, "source": GENERATOR_NAME, **extra,
    }


def make_clip(config: SyntheticConfig, split: str, identity_index: int, clip_index: int, subset: str = "video") -> Sample:
    """One video clip (``subset`` "video": ``config.frames`` frames; "long": ``long_seconds``)."""
    idt = make_identity(config.seed, identity_index)
    count = config.frames if subset == "video" else max(1, int(round(config.long_seconds * config.fps)))
    rng = _rng(config.seed, identity_index, _PURPOSE[subset], clip_index)
    scene = _scene(config, idt, rng, count / config.fps)
    frames, keypoints, masks, boxes = _render_times(idt, scene, scene.start + np.arange(count) / config.fps)
    name = "clip" if subset == "video" else "long"
    key = f"{split}-{idt.name}-{name}{clip_index:02d}"
    return Sample(key=key, frames=frames, keypoints=keypoints, meta=_meta(idt, split, "video", config.fps, frames, boxes), person_mask=masks)


def make_image_pair(config: SyntheticConfig, split: str, identity_index: int, pair_index: int) -> tuple[Sample, Sample]:
    """Two images of one identity in different poses over the same background, each naming the other as ``pair``."""
    idt = make_identity(config.seed, identity_index)
    rng = _rng(config.seed, identity_index, _PURPOSE["images"], pair_index)
    scene = _scene(config, idt, rng, 30.0)
    times = scene.start + np.array([0.0, rng.uniform(2.0, 20.0)])
    keys = [f"{split}-{idt.name}-pair{pair_index:02d}-{tag}" for tag in ("a", "b")]
    samples = []
    for index, t in enumerate(times):
        frames, keypoints, masks, boxes = _render_times(idt, scene, np.array([t]))
        meta = _meta(idt, split, "image", config.fps, frames, boxes, pair=keys[1 - index])
        samples.append(Sample(key=keys[index], frames=frames, keypoints=keypoints, meta=meta, person_mask=masks))
    return samples[0], samples[1]


# ----------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class _Job:
    """One unit of generation work: a clip, an image pair or a long clip."""

    split: str
    subset: str
    identity_index: int
    index: int


def _jobs(config: SyntheticConfig) -> list[_Job]:
    """All jobs in output order: split, then subset, then identity, then index."""
    jobs = []
    for split in SPLITS:
        identities = list(config.identities(split))
        jobs += [_Job(split, "video", i, c) for i in identities for c in range(config.clips_per_identity)]
        jobs += [_Job(split, "images", i, p) for i in identities for p in range(config.image_pairs_per_identity)]
        if identities:
            jobs += [_Job(split, "long", identities[j % len(identities)], j) for j in range(config.long_clips)]
    return jobs


def _run_job(config: SyntheticConfig, job: _Job) -> list[dict]:
    """Render and encode one job -> webdataset dicts ready for a ShardWriter."""
    if job.subset == "images":
        samples = make_image_pair(config, job.split, job.identity_index, job.index)
    else:
        samples = (make_clip(config, job.split, job.identity_index, job.index, job.subset),)
    return [encode_sample(sample) for sample in samples]


def _run_job_star(arguments: tuple[SyntheticConfig, _Job]) -> list[dict]:
    """``_run_job`` for ``Pool.imap``."""
    return _run_job(*arguments)


def _results(config: SyntheticConfig, jobs: list[_Job], workers: int) -> Iterator[list[dict]]:
    """Encoded samples of ``jobs`` in order, rendered by ``workers`` processes."""
    if workers <= 1:
        yield from (_run_job(config, job) for job in jobs)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(_run_job_star, [(config, job) for job in jobs], chunksize=1)


def _remove_old_shards(out: Path) -> None:
    """Delete shards (and temporary files) this generator wrote before, nothing else."""
    for split in SPLITS:
        for prefix in SUBSET_PREFIXES.values():
            for path in (out / split).glob(f"{prefix}-[0-9]*.tar"):
                path.unlink()
            for path in (out / split).glob(f".{prefix}-[0-9]*.tar.tmp"):
                path.unlink()


def generate_dataset(out: str | Path, config: SyntheticConfig = SyntheticConfig(), workers: int = 1, progress: bool = True) -> dict:
    """Render the whole dataset into ``out`` and write its manifest; returns the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    _remove_old_shards(out)
    jobs = _jobs(config)
    splits = {
        split: {"identities": [identity_name(config.seed, i) for i in config.identities(split)], **{subset: {"shards": [], "samples": 0} for subset in SUBSET_PREFIXES}}
        for split in SPLITS
    }
    results = zip(jobs, _results(config, jobs, workers))
    with tqdm(total=len(jobs), desc=f"puppets -> {out}", unit="job", disable=not progress) as bar:
        for (split, subset), group in itertools.groupby(results, key=lambda item: (item[0].split, item[0].subset)):
            with ShardWriter(out / split, prefix=SUBSET_PREFIXES[subset], max_samples=config.samples_per_shard) as writer:
                for _, encoded in group:
                    for raw in encoded:
                        writer.write_encoded(raw)
                    splits[split][subset]["samples"] += len(encoded)
                    bar.update()
            splits[split][subset]["shards"] = [str(path.relative_to(out)) for path in writer.paths]
    manifest = {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "seed": config.seed, "config": asdict(config), "splits": splits}
    write_manifest(out, manifest)
    return manifest


def _manifest_matches(out: Path, manifest: dict, config: SyntheticConfig) -> bool:
    """Whether an existing manifest was made by this generator version with ``config`` and its shards exist."""
    if manifest.get("generator") != GENERATOR_NAME or manifest.get("version") != GENERATOR_VERSION or manifest.get("config") != asdict(config):
        return False
    shards = [path for split in manifest["splits"].values() for subset in SUBSET_PREFIXES for path in split[subset]["shards"]]
    return all((out / path).is_file() for path in shards)


def ensure_dataset(out: str | Path, config: SyntheticConfig = SyntheticConfig(), workers: int = 1, progress: bool = True) -> dict:
    """Reuse ``out`` when its manifest matches ``config`` (same generator version and parameters), else regenerate."""
    out = Path(out)
    try:
        manifest = read_manifest(out)
    except (FileNotFoundError, ValueError):
        manifest = None
    if manifest is not None and _manifest_matches(out, manifest, config):
        return manifest
    return generate_dataset(out, config, workers=workers, progress=progress)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags (defaults from :class:`SyntheticConfig`)."""
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="dataset directory (manifest.json and {split}/*.tar)")
    for item in fields(SyntheticConfig):
        flag = "--" + item.name.replace("_", "-")
        parser.add_argument(flag, type=type(getattr(defaults, item.name)), default=getattr(defaults, item.name), help=f"default {getattr(defaults, item.name)}")
    parser.add_argument("--workers", type=int, default=1, help="render processes (output does not depend on it)")
    parser.add_argument("--force", action="store_true", help="regenerate even when the manifest matches")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point: generate (or reuse) the dataset and print a summary."""
    args = _parse_args(argv)
    config = SyntheticConfig(**{item.name: getattr(args, item.name) for item in fields(SyntheticConfig)})
    build = generate_dataset if args.force else ensure_dataset
    manifest = build(args.out, config, workers=args.workers)
    for split, info in manifest["splits"].items():
        counts = ", ".join(f"{subset} {info[subset]['samples']} in {len(info[subset]['shards'])} shards" for subset in SUBSET_PREFIXES)
        print(f"{split}: {len(info['identities'])} identities; {counts}")
    return manifest


if __name__ == "__main__":
    main()
