"""COCO-WholeBody 133 keypoint layout (what DWPose predicts), OpenPose-18 conversion, part boxes.

Keypoints are ``(..., 133, 3)`` arrays: x, y in pixels, confidence in [0, 1] (0 = absent).
Indices 0-16 body (COCO-17 order), 17-22 feet, 23-90 face (iBUG 68), 91-111 left hand,
112-132 right hand (21 each, wrist first). "Left" is the person's left, which is the image's
right for a person facing the camera.

DWPose renders OpenPose-18 (COCO body reordered, neck inserted at index 1) and keeps the rest:
its 134-point "candidate" is OpenPose-18 body, then feet, face and hands (``to_dwpose134``).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

NUM_KEYPOINTS = 133

BODY = slice(0, 17)
FEET = slice(17, 23)
FACE = slice(23, 91)
LEFT_HAND = slice(91, 112)
RIGHT_HAND = slice(112, 133)
HANDS = (LEFT_HAND, RIGHT_HAND)


class Body(IntEnum):
    """COCO-17 body joints (indices into the 133 layout)."""

    NOSE = 0
    LEFT_EYE = 1
    RIGHT_EYE = 2
    LEFT_EAR = 3
    RIGHT_EAR = 4
    LEFT_SHOULDER = 5
    RIGHT_SHOULDER = 6
    LEFT_ELBOW = 7
    RIGHT_ELBOW = 8
    LEFT_WRIST = 9
    RIGHT_WRIST = 10
    LEFT_HIP = 11
    RIGHT_HIP = 12
    LEFT_KNEE = 13
    RIGHT_KNEE = 14
    LEFT_ANKLE = 15
    RIGHT_ANKLE = 16


class Foot(IntEnum):
    """Foot points (indices into the 133 layout)."""

    LEFT_BIG_TOE = 17
    LEFT_SMALL_TOE = 18
    LEFT_HEEL = 19
    RIGHT_BIG_TOE = 20
    RIGHT_SMALL_TOE = 21
    RIGHT_HEEL = 22


# Face (iBUG 68, offsets inside FACE): jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67.
FACE_JAW = slice(0, 17)
FACE_RIGHT_BROW = slice(17, 22)
FACE_LEFT_BROW = slice(22, 27)
FACE_NOSE_BRIDGE = slice(27, 31)
FACE_NOSE_BOTTOM = slice(31, 36)
FACE_RIGHT_EYE = slice(36, 42)
FACE_LEFT_EYE = slice(42, 48)
FACE_OUTER_LIPS = slice(48, 60)
FACE_INNER_LIPS = slice(60, 68)
FACE_NOSE_TIP = 30

# Hand (offsets inside a 21-point hand): wrist, then 4 joints per finger, base to tip.
HAND_WRIST = 0
HAND_FINGERS = {"thumb": (1, 2, 3, 4), "index": (5, 6, 7, 8), "middle": (9, 10, 11, 12), "ring": (13, 14, 15, 16), "pinky": (17, 18, 19, 20)}
HAND_EDGES = tuple((0 if j == 0 else base + j - 1, base + j) for base in (1, 5, 9, 13, 17) for j in range(4))

OPENPOSE18_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)
OPENPOSE18_NECK = 1
# COCO index of each OpenPose-18 point; the neck (None) is the mid-shoulder point.
OPENPOSE18_FROM_COCO = (
    Body.NOSE, None, Body.RIGHT_SHOULDER, Body.RIGHT_ELBOW, Body.RIGHT_WRIST, Body.LEFT_SHOULDER,
    Body.LEFT_ELBOW, Body.LEFT_WRIST, Body.RIGHT_HIP, Body.RIGHT_KNEE, Body.RIGHT_ANKLE, Body.LEFT_HIP,
    Body.LEFT_KNEE, Body.LEFT_ANKLE, Body.RIGHT_EYE, Body.LEFT_EYE, Body.RIGHT_EAR, Body.LEFT_EAR,
)
# OpenPose limbs (0-based OpenPose-18 indices) in the order the reference draws them; the
# renderer draws the first 17 (the last two, ear-shoulder, are skipped as in DWPose).
OPENPOSE_LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
    (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17),
)
OPENPOSE_DRAWN_LIMBS = OPENPOSE_LIMBS[:17]

# DWPose 134-point candidate: OpenPose-18 body, then feet, face and hands of the 133 layout.
DWPOSE134_BODY = slice(0, 18)
DWPOSE134_FEET = slice(18, 24)
DWPOSE134_FACE = slice(24, 92)
DWPOSE134_LEFT_HAND = slice(92, 113)
DWPOSE134_RIGHT_HAND = slice(113, 134)

HEAD_BODY_POINTS = (Body.NOSE, Body.LEFT_EYE, Body.RIGHT_EYE, Body.LEFT_EAR, Body.RIGHT_EAR)


def _check(keypoints: np.ndarray) -> np.ndarray:
    """Return ``keypoints`` as a float array, raising if it is not ``(..., 133, 3)``."""
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if keypoints.ndim < 2 or keypoints.shape[-2:] != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must have shape (..., {NUM_KEYPOINTS}, 3), got {keypoints.shape}")
    return keypoints


def to_openpose18(keypoints: np.ndarray) -> np.ndarray:
    """COCO-WholeBody ``(..., 133, 3)`` -> OpenPose-18 body ``(..., 18, 3)``.

    The neck is the midpoint of the shoulders with the smaller of their two confidences.
    """
    keypoints = _check(keypoints)
    coco = [Body.NOSE if index is None else index for index in OPENPOSE18_FROM_COCO]
    body = keypoints[..., coco, :].copy()  # (..., 18, 3)
    shoulders = keypoints[..., [Body.LEFT_SHOULDER, Body.RIGHT_SHOULDER], :]  # (..., 2, 3)
    body[..., OPENPOSE18_NECK, :2] = shoulders[..., :2].mean(axis=-2)
    body[..., OPENPOSE18_NECK, 2] = shoulders[..., 2].min(axis=-1)
    return body


def to_dwpose134(keypoints: np.ndarray) -> np.ndarray:
    """COCO-WholeBody ``(..., 133, 3)`` -> DWPose's 134-point candidate layout ``(..., 134, 3)``."""
    keypoints = _check(keypoints)
    return np.concatenate([to_openpose18(keypoints), keypoints[..., FEET.start :, :]], axis=-2)


def _box(points: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Box ``(..., 4)`` = x0, y0, x1, y1 of the points above ``threshold`` and whether all are."""
    confident = points[..., 2] > threshold  # (..., N)
    x, y = points[..., 0], points[..., 1]
    any_confident = confident.any(axis=-1)
    box = np.stack(
        [
            np.where(confident, x, np.inf).min(axis=-1),
            np.where(confident, y, np.inf).min(axis=-1),
            np.where(confident, x, -np.inf).max(axis=-1),
            np.where(confident, y, -np.inf).max(axis=-1),
        ],
        axis=-1,
    )
    box = np.where(any_confident[..., None], box, 0.0).astype(np.float32)
    return box, confident.all(axis=-1)


def _grow(box: np.ndarray, margin: float, extra_top: float = 0.0) -> np.ndarray:
    """Extend boxes ``(..., 4)`` up by ``extra_top`` x height, then by ``margin`` x size on every side."""
    x0, y0, x1, y1 = np.moveaxis(box, -1, 0)
    y0 = y0 - extra_top * (y1 - y0)
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    return np.stack([x0 - dx, y0 - dy, x1 + dx, y1 + dy], axis=-1).astype(np.float32)


def face_box(keypoints: np.ndarray, threshold: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Tight box of the 68 face points: boxes ``(..., 4)`` x0, y0, x1, y1 and valid ``(...)``.

    The box covers the points above ``threshold`` (zeros when none is); valid = all 68 are.
    Boxes are in pixels and not clipped to the image.
    """
    keypoints = _check(keypoints)
    return _box(keypoints[..., FACE, :], threshold)


def head_box(
    keypoints: np.ndarray, threshold: float = 0.3, margin: float = 0.1, extra_top: float = 0.4
) -> tuple[np.ndarray, np.ndarray]:
    """Head box from the face points plus nose, eyes and ears: boxes ``(..., 4)``, valid ``(...)``.

    The tight box of the confident points is raised by ``extra_top`` x its height (forehead and
    hair, as One-to-All's face masks do) and grown by ``margin`` on every side (zeros when no
    point is confident). Valid = all 73 head points are above ``threshold``. Not clipped.
    """
    keypoints = _check(keypoints)
    points = np.concatenate([keypoints[..., list(HEAD_BODY_POINTS), :], keypoints[..., FACE, :]], axis=-2)
    box, valid = _box(points, threshold)
    return _grow(box, margin, extra_top), valid


def hand_boxes(keypoints: np.ndarray, threshold: float = 0.8, margin: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of both hands: boxes ``(..., 2, 4)`` (left, right) and valid ``(..., 2)``.

    Each box covers the hand's points above ``threshold``, grown by ``margin`` on every side
    (zeros when none is); a hand is valid when all 21 confidences exceed ``threshold`` (the
    One-to-All paper's ROI rule, 0.8; its public code thresholds the mean instead). Not clipped.
    """
    keypoints = _check(keypoints)
    hands = np.stack([keypoints[..., part, :] for part in HANDS], axis=-3)  # (..., 2, 21, 3)
    box, valid = _box(hands, threshold)
    return _grow(box, margin), valid
