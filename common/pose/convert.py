"""Conversions between keypoint layouts: COCO-WholeBody 133 (DWPose), OpenPose-18 (COCO-18), OpenPose BODY_25.

All functions take and return ``(..., N, 3)`` float32 arrays: x, y in pixels, confidence in
[0, 1] (0 = absent). Points a layout lacks are absent (zeros) after conversion.

- 133 -> 18: :func:`dwpose133_to_openpose18` (the neck is the shoulder midpoint, with the smaller
  shoulder confidence, as DWPose inserts it before rendering; see ``common.pose.layout``).
- 18 -> 133: :func:`openpose18_to_dwpose133` fills the 17 COCO body points and drops the neck
  (it is derived from the shoulders); feet, face and hands come from ``rest`` when given.
  133 -> 18 -> 133 keeps the body exactly; 18 -> 133 -> 18 keeps every point whose neck
  equals the shoulder midpoint (true for DWPose output).
- BODY_25 (OpenPose's default model) -> 133: :func:`openpose25_to_dwpose133`, body and the six
  foot points; OpenPose's 70-point face (iBUG 68 + 2 pupils) and 21-point hands map with
  :func:`openpose_face70_to_68` and directly (OpenPose and COCO-WholeBody share the hand order).
"""

from __future__ import annotations

import numpy as np

from common.pose.layout import (
    FACE,
    FEET,
    LEFT_HAND,
    NUM_KEYPOINTS,
    OPENPOSE18_FROM_COCO,
    OPENPOSE18_NECK,
    RIGHT_HAND,
    Body,
    Foot,
    to_openpose18,
)

NUM_OPENPOSE18 = 18
NUM_OPENPOSE25 = 25
NUM_OPENPOSE_FACE = 70
NUM_HAND = 21

# BODY_25 index -> 133 index (None: MidHip and Neck are derived points with no 133 counterpart).
OPENPOSE25_TO_COCO = (
    Body.NOSE, None, Body.RIGHT_SHOULDER, Body.RIGHT_ELBOW, Body.RIGHT_WRIST, Body.LEFT_SHOULDER,
    Body.LEFT_ELBOW, Body.LEFT_WRIST, None, Body.RIGHT_HIP, Body.RIGHT_KNEE, Body.RIGHT_ANKLE,
    Body.LEFT_HIP, Body.LEFT_KNEE, Body.LEFT_ANKLE, Body.RIGHT_EYE, Body.LEFT_EYE, Body.RIGHT_EAR,
    Body.LEFT_EAR, Foot.LEFT_BIG_TOE, Foot.LEFT_SMALL_TOE, Foot.LEFT_HEEL, Foot.RIGHT_BIG_TOE,
    Foot.RIGHT_SMALL_TOE, Foot.RIGHT_HEEL,
)


def _points(array: np.ndarray, count: int, name: str) -> np.ndarray:
    """``array`` as float32 ``(..., count, 3)``; raises ValueError naming the layout otherwise."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim < 2 or array.shape[-2:] != (count, 3):
        raise ValueError(f"{name} keypoints must have shape (..., {count}, 3), got {array.shape}")
    return array


def dwpose133_to_openpose18(keypoints: np.ndarray) -> np.ndarray:
    """COCO-WholeBody ``(..., 133, 3)`` -> OpenPose-18 ``(..., 18, 3)`` (neck = shoulder midpoint)."""
    return to_openpose18(keypoints)


def openpose18_to_dwpose133(body: np.ndarray, rest: np.ndarray | None = None) -> np.ndarray:
    """OpenPose-18 ``(..., 18, 3)`` -> COCO-WholeBody ``(..., 133, 3)``.

    The 17 COCO body points come from ``body`` (the neck is dropped); feet, face and hands are
    copied from ``rest`` (a ``(..., 133, 3)`` array, e.g. the original DWPose output) or left absent.
    """
    body = _points(body, NUM_OPENPOSE18, "OpenPose-18")
    out = np.zeros(body.shape[:-2] + (NUM_KEYPOINTS, 3), dtype=np.float32)
    if rest is not None:
        rest = _points(rest, NUM_KEYPOINTS, "COCO-WholeBody")
        out[..., FEET.start :, :] = rest[..., FEET.start :, :]
    for openpose_index, coco_index in enumerate(OPENPOSE18_FROM_COCO):
        if openpose_index != OPENPOSE18_NECK:
            out[..., coco_index, :] = body[..., openpose_index, :]
    return out


def openpose_face70_to_68(face: np.ndarray) -> np.ndarray:
    """OpenPose face ``(..., 70, 3)`` (iBUG 68 then the two pupils) -> iBUG 68 ``(..., 68, 3)``."""
    return _points(face, NUM_OPENPOSE_FACE, "OpenPose face")[..., :68, :]


def openpose25_to_dwpose133(body: np.ndarray) -> np.ndarray:
    """OpenPose BODY_25 ``(..., 25, 3)`` -> COCO-WholeBody ``(..., 133, 3)`` (body and feet; neck and mid-hip dropped)."""
    body = _points(body, NUM_OPENPOSE25, "OpenPose BODY_25")
    out = np.zeros(body.shape[:-2] + (NUM_KEYPOINTS, 3), dtype=np.float32)
    for openpose_index, coco_index in enumerate(OPENPOSE25_TO_COCO):
        if coco_index is not None:
            out[..., coco_index, :] = body[..., openpose_index, :]
    return out


def assemble_dwpose133(body: np.ndarray, face: np.ndarray | None = None, left_hand: np.ndarray | None = None,
                       right_hand: np.ndarray | None = None) -> np.ndarray:
    """133 layout from parts: ``body`` already in 133 layout (body/feet filled), face ``(..., 68|70, 3)``, hands ``(..., 21, 3)``."""
    out = _points(body, NUM_KEYPOINTS, "COCO-WholeBody").copy()
    if face is not None:
        face = np.asarray(face, dtype=np.float32)
        out[..., FACE, :] = openpose_face70_to_68(face) if face.shape[-2] == NUM_OPENPOSE_FACE else _points(face, 68, "face")
    for part, hand in ((LEFT_HAND, left_hand), (RIGHT_HAND, right_hand)):
        if hand is not None:
            out[..., part, :] = _points(hand, NUM_HAND, "hand")
    return out
