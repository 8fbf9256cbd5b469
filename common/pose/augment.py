"""One-to-All's training augmentations on keypoints: face-centred outpainting masks and face region enhancement.

- :func:`outpainting_mask`: keep a random box around the head, mask the rest of the reference,
  so training sees references that show less of the person than the target, as the inference
  translation (:mod:`common.pose.translate`) produces them. Sizes are in head-box sides.
- :func:`enhance_face`: give the driving poses another person's facial structure (the donor's
  head points relative to the nose, rescaled to the driving head's size) while keeping each
  frame's motion, so the model must take the face's identity from the reference, not from the
  skeleton. Only the eyes, ears and the 68 face points move; the nose anchors them.
"""

from __future__ import annotations

import numpy as np

from common.pose.layout import FACE, HEAD_BODY_POINTS, Body, head_box

HEAD_POINTS = np.array([int(i) for i in HEAD_BODY_POINTS if i != Body.NOSE] + list(range(FACE.start, FACE.stop)))  # what enhancement moves


def head_seen(keypoints: np.ndarray, threshold: float) -> np.ndarray:
    """Whether any head point (nose, eyes, ears, 68 face points) is above ``threshold``: ``(...)`` of ``(..., 133, 3)``."""
    head = np.concatenate([keypoints[..., list(HEAD_BODY_POINTS), 2], keypoints[..., FACE, 2]], axis=-1)
    return (head > threshold).any(axis=-1)


def outpainting_mask(
    keypoints: np.ndarray,
    height: int,
    width: int,
    rng: np.random.Generator,
    height_range: tuple[float, float] = (2.0, 8.0),
    width_range: tuple[float, float] = (2.0, 6.0),
    threshold: float = 0.3,
) -> np.ndarray | None:
    """Bool ``(H, W)``, True = masked, of a reference with ``(133, 3)`` keypoints; None when no head point is confident.

    The kept box is centred on the head horizontally, starts a quarter head above it, and spans
    ``width_range`` x ``height_range`` head sides (drawn uniformly).
    """
    if not head_seen(keypoints, threshold):
        return None
    x0, y0, x1, y1 = head_box(keypoints, threshold)[0]
    side = max(x1 - x0, y1 - y0, 1.0)
    kept_w, kept_h = side * rng.uniform(*width_range), side * rng.uniform(*height_range)
    left, top = (x0 + x1) / 2 - kept_w / 2, y0 - side / 4
    ys, xs = np.arange(height)[:, None], np.arange(width)[None, :]
    kept = (xs >= left) & (xs <= left + kept_w) & (ys >= top) & (ys <= top + kept_h)
    return ~kept


def _head_side(keypoints: np.ndarray, threshold: float) -> float:
    """Median side of the head box over frames ``(T, 133, 3)`` whose head points are confident."""
    seen = head_seen(keypoints, threshold)  # (T,)
    if not seen.any():
        return 0.0
    boxes = head_box(keypoints[seen], threshold)[0]
    return float(np.median(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])))


def enhance_face(driving: np.ndarray, donor: np.ndarray, threshold: float = 0.3) -> tuple[np.ndarray, bool]:
    """Driving ``(T, 133, 3)`` with the donor's ``(133, 3)`` facial structure, and whether anything changed.

    Each head point's offset from the nose is shifted by ``donor offset x s - typical driving
    offset``, with ``s`` = driving head size / donor head size and the typical offset the median
    over the frames; points not confident in the donor, and frames without a nose, stay.
    """
    driving = np.asarray(driving, dtype=np.float64)
    donor = np.asarray(donor, dtype=np.float64)
    nose = int(Body.NOSE)
    driving_side, donor_side = _head_side(driving, threshold), _head_side(donor[None], threshold)
    if donor[nose, 2] <= threshold or driving_side <= 0 or donor_side <= 0:
        return driving, False
    offsets = driving[:, HEAD_POINTS, :2] - driving[:, nose : nose + 1, :2]  # (T, K, 2)
    visible = (driving[:, HEAD_POINTS, 2] > threshold) & (driving[:, nose : nose + 1, 2] > threshold)  # (T, K)
    seen = visible.any(0)  # (K,): points visible in some frame (a median over none is nan, without numpy's warning)
    typical = np.full((len(HEAD_POINTS), 2), np.nan)
    typical[seen] = np.nanmedian(np.where(visible[:, seen, None], offsets[:, seen], np.nan), axis=0)  # (K, 2), nan where never seen
    donor_offsets = (donor[HEAD_POINTS, :2] - donor[nose, :2]) * (driving_side / donor_side)  # (K, 2)
    shift = donor_offsets - typical
    movable = visible & (donor[HEAD_POINTS, 2] > threshold)[None] & np.isfinite(shift).all(-1)[None]  # (T, K)
    if not movable.any():
        return driving, False
    enhanced = driving.copy()
    enhanced[:, HEAD_POINTS, :2] += np.where(movable[..., None], np.nan_to_num(shift), 0.0)
    return enhanced, True
