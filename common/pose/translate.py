"""Pose-guided translation of a reference image to the driving layout (One-to-All Animation, inference).

The paper's recipe: pick the driving frame whose pose orientation is closest to the reference's
(the anchor), estimate the scale from body parts visible in both (shoulder width, ear distance,
...), resize the reference and zero-pad it to the driving resolution; a mask marks the padded
area. The model then outpaints the masked area (its training masks the reference the same way).

Here orientation = the unit directions of the body bones in :data:`ORIENTATION_BONES` (the
shoulder line flips sign when a person turns around, so front and back differ); the anchor
maximises their mean cosine similarity over bones visible in both. The scale is the median of
``anchor length / reference length`` over :data:`SCALE_PARTS` visible in both. The placement
puts the reference's shoulder midpoint on the anchor's (the centroid of the common visible body
points when a shoulder is missing). Coordinates are pixel centres (pixel ``j`` at ``j``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from common.pose.layout import NUM_KEYPOINTS, Body

ORIENTATION_BONES = (
    (Body.RIGHT_SHOULDER, Body.LEFT_SHOULDER), (Body.RIGHT_HIP, Body.LEFT_HIP), (Body.RIGHT_EYE, Body.LEFT_EYE),
    (Body.RIGHT_EAR, Body.LEFT_EAR), (Body.LEFT_SHOULDER, Body.LEFT_ELBOW), (Body.LEFT_ELBOW, Body.LEFT_WRIST),
    (Body.RIGHT_SHOULDER, Body.RIGHT_ELBOW), (Body.RIGHT_ELBOW, Body.RIGHT_WRIST), (Body.LEFT_HIP, Body.LEFT_KNEE),
    (Body.LEFT_KNEE, Body.LEFT_ANKLE), (Body.RIGHT_HIP, Body.RIGHT_KNEE), (Body.RIGHT_KNEE, Body.RIGHT_ANKLE),
    (Body.LEFT_SHOULDER, Body.LEFT_HIP), (Body.RIGHT_SHOULDER, Body.RIGHT_HIP), (Body.NOSE, Body.LEFT_SHOULDER),
    (Body.NOSE, Body.RIGHT_SHOULDER),
)
SCALE_PARTS = (
    (Body.LEFT_SHOULDER, Body.RIGHT_SHOULDER), (Body.LEFT_EAR, Body.RIGHT_EAR), (Body.LEFT_EYE, Body.RIGHT_EYE),
    (Body.LEFT_HIP, Body.RIGHT_HIP), (Body.LEFT_SHOULDER, Body.LEFT_HIP), (Body.RIGHT_SHOULDER, Body.RIGHT_HIP),
)
SHOULDERS = (Body.LEFT_SHOULDER, Body.RIGHT_SHOULDER)


@dataclass
class Translation:
    """A translated reference: image uint8 ``(H, W, 3)``, pad mask bool ``(H, W)`` (True = padded), keypoints ``(133, 3)``."""

    image: np.ndarray
    mask: np.ndarray
    keypoints: np.ndarray
    anchor: int
    scale: float
    offset: np.ndarray  # (2,): driving = scale * reference + offset


def _check(keypoints: np.ndarray, ndim: int, name: str) -> np.ndarray:
    """Validate a ``(133, 3)`` (ndim 2) or ``(T, 133, 3)`` (ndim 3) array."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.ndim != ndim or keypoints.shape[-2:] != (NUM_KEYPOINTS, 3):
        raise ValueError(f"{name} keypoints must have {ndim} dims ending in ({NUM_KEYPOINTS}, 3), got {keypoints.shape}")
    return keypoints


def _directions(keypoints: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit bone directions ``(..., B, 2)`` of :data:`ORIENTATION_BONES` and their visibility ``(..., B)``."""
    a = keypoints[..., [int(i) for i, _ in ORIENTATION_BONES], :]
    b = keypoints[..., [int(j) for _, j in ORIENTATION_BONES], :]
    vector = b[..., :2] - a[..., :2]
    norm = np.linalg.norm(vector, axis=-1, keepdims=True)
    visible = (a[..., 2] > threshold) & (b[..., 2] > threshold) & (norm[..., 0] > 1e-6)
    return vector / np.maximum(norm, 1e-9), visible


def closest_orientation(reference: np.ndarray, driving: np.ndarray, threshold: float = 0.3) -> int:
    """Index of the driving frame ``(T, 133, 3)`` whose bone directions best match the reference ``(133, 3)``."""
    reference, driving = _check(reference, 2, "reference"), _check(driving, 3, "driving")
    ref_dir, ref_vis = _directions(reference, threshold)  # (B, 2), (B,)
    drv_dir, drv_vis = _directions(driving, threshold)  # (T, B, 2), (T, B)
    both = drv_vis & ref_vis[None]
    cosine = (drv_dir * ref_dir[None]).sum(-1)  # (T, B)
    score = np.where(both.any(-1), (cosine * both).sum(-1) / np.maximum(both.sum(-1), 1), -np.inf)
    return int(np.argmax(score))


def part_scale(reference: np.ndarray, target: np.ndarray, threshold: float = 0.3) -> float:
    """Median ``target / reference`` length over :data:`SCALE_PARTS` visible in both (1.0 when none is)."""
    ratios = []
    for i, j in SCALE_PARTS:
        if min(reference[i, 2], reference[j, 2], target[i, 2], target[j, 2]) > threshold:
            ref_len = np.linalg.norm(reference[i, :2] - reference[j, :2])
            tgt_len = np.linalg.norm(target[i, :2] - target[j, :2])
            if ref_len > 1e-6 and tgt_len > 1e-6:
                ratios.append(tgt_len / ref_len)
    return float(np.median(ratios)) if ratios else 1.0


def _center(reference: np.ndarray, target: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Matching centre points of reference and target: the shoulder midpoints, else common body points' centroid."""
    if min(reference[list(SHOULDERS), 2].min(), target[list(SHOULDERS), 2].min()) > threshold:
        points = list(SHOULDERS)
    else:
        common = (reference[:17, 2] > threshold) & (target[:17, 2] > threshold)
        if not common.any():
            raise ValueError("reference and anchor driving pose share no visible body point: cannot place the reference")
        points = list(np.flatnonzero(common))
    return reference[points, :2].mean(0), target[points, :2].mean(0)


def warp_image(image: np.ndarray, scale: float, offset: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize ``image`` (H, W, 3) by ``scale``, place it at ``offset`` on a black ``size`` (H, W) canvas; returns image and pad mask."""
    height, width = size
    in_h, in_w = image.shape[:2]
    inverse = 1.0 / scale  # output pixel centre u -> input centre (u - offset) / scale; PIL samples at edges (+0.5)
    data = (inverse, 0.0, (-0.5 - offset[0]) * inverse + 0.5, 0.0, inverse, (-0.5 - offset[1]) * inverse + 0.5)
    warped = Image.fromarray(np.ascontiguousarray(image)).transform((width, height), Image.AFFINE, data, resample=Image.BILINEAR, fillcolor=(0, 0, 0))
    xs = (np.arange(width) - offset[0]) * inverse  # input centre coordinates of output pixels
    ys = (np.arange(height) - offset[1]) * inverse
    inside_x = (xs >= -0.5) & (xs <= in_w - 0.5)
    inside_y = (ys >= -0.5) & (ys <= in_h - 0.5)
    mask = ~(inside_y[:, None] & inside_x[None, :])
    out = np.asarray(warped).copy()
    out[mask] = 0
    return out, mask


def translate_reference(image: np.ndarray, reference: np.ndarray, driving: np.ndarray, size: tuple[int, int],
                        threshold: float = 0.3, anchor: int | None = None) -> Translation:
    """Translate the reference image ``(H, W, 3)`` and keypoints ``(133, 3)`` to the driving layout of ``size`` (H, W).

    ``driving`` ``(T, 133, 3)`` is in the pixel coordinates of ``size``; ``anchor`` overrides the
    orientation search.
    """
    reference, driving = _check(reference, 2, "reference"), _check(driving, 3, "driving")
    if anchor is None:
        anchor = closest_orientation(reference, driving, threshold)
    target = driving[anchor]
    scale = part_scale(reference, target, threshold)
    ref_center, target_center = _center(reference, target, threshold)
    offset = target_center - scale * ref_center
    warped, mask = warp_image(image, scale, offset, size)
    keypoints = reference.copy()
    keypoints[:, :2] = reference[:, :2] * scale + offset
    height, width = size
    outside = (keypoints[:, 0] < -0.5) | (keypoints[:, 0] > width - 0.5) | (keypoints[:, 1] < -0.5) | (keypoints[:, 1] > height - 0.5)
    keypoints[outside, 2] = 0.0
    return Translation(image=warped, mask=mask, keypoints=keypoints.astype(np.float32), anchor=anchor, scale=scale, offset=offset)
