"""Dance-like motion: per-joint sinusoids with identity style and clip tempo, sampled into joint angles per frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.synthetic.identity import Identity, crown_height

HEIGHT_FRACTION = (0.8, 1.0)  # a body unit (about a standing height) in frame heights
HEADROOM = (0.03, 0.08)  # frame heights between the crown and the top edge at the largest zoom


@dataclass
class Motion:
    """Per-channel sinusoids ``base + a1 sin(2 pi f t + p1) + a2 sin(4 pi f t + p2)`` plus framing and blinks."""

    channels: dict  # name -> (base, a1, a2, f, p1, p2)
    height_fraction: float  # a body unit in frame heights (before zoom)
    ground: float  # where the soles stand, in frame heights (above 1: the feet are cut off)
    center: float  # fraction of the frame width
    blinks: np.ndarray  # blink start times in seconds

    def value(self, name: str, t: np.ndarray | float) -> np.ndarray:
        """Channel ``name`` at times ``t`` (seconds)."""
        base, a1, a2, f, p1, p2 = self.channels[name]
        return base + a1 * np.sin(2 * np.pi * f * t + p1) + a2 * np.sin(4 * np.pi * f * t + p2)


def make_motion(identity: Identity, rng: np.random.Generator, duration: float) -> Motion:
    """Clip motion: identity style with clip-specific tempo, phases and framing.

    The camera is close: the body fills most of the frame height and the head keeps a small margin
    under the top edge at the largest zoom, so tall people and big zooms lose their feet.
    """
    s = identity.style
    tempo = rng.uniform(0.25, 0.55) * s["energy"]

    def channel(base: float, a1: float, a2: float = 0.0, ratio: float = 1.0) -> tuple:
        """One sinusoid channel at the clip tempo with random phases."""
        return (base, a1, a2, tempo * ratio, rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi))

    lift_phase = rng.uniform(0, 2 * np.pi)
    lift = s["lift_amplitude"] * rng.uniform(0.5, 1.0)
    wide = rng.uniform() < 0.2
    zoom = rng.uniform(0.0, 0.08)
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
        "x": (0.0, rng.uniform(0.15, 0.25) if wide else rng.uniform(0.03, 0.1), 0.0, rng.uniform(0.06, 0.2), rng.uniform(0, 2 * np.pi), 0.0),
        "zoom": (1.0, zoom, 0.0, rng.uniform(0.05, 0.2), rng.uniform(0, 2 * np.pi), 0.0),
    }
    blink_count = rng.poisson(duration / 3.0)
    height_fraction = rng.uniform(*HEIGHT_FRACTION)
    return Motion(
        channels=channels,
        height_fraction=height_fraction,
        ground=rng.uniform(*HEADROOM) + height_fraction * (1 + zoom) * crown_height(identity),
        center=rng.uniform(0.42, 0.58),
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
