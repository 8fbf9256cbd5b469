"""Retarget a driving pose sequence to a reference's body proportions by bone-length alignment.

The skeleton is a tree over the 133 COCO-WholeBody points plus a virtual neck (the shoulder
midpoint, as OpenPose has it) at the root: neck -> nose -> eyes -> ears; neck -> shoulders ->
elbows -> wrists -> hand wrists -> finger joints; neck -> hips -> knees -> ankles -> toes and
heels; nose -> each of the 68 face points. Every driving bone keeps its direction and gets a new
length; the tree is rebuilt from the root, so a child moves with everything above it.

Two length rules:
- ``"ratio"`` (default; UniAnimate-DiT's ``run_align_pose.py``): each bone is scaled by
  ``reference length / driving length`` measured once (there: on the first driving frame; here: the
  median over the driving frames where the bone is visible, which a single bad frame cannot
  throw off), so per-frame foreshortening of the driving motion survives.
- ``"length"``: every frame's bone gets exactly the reference length.

Bones that cannot be measured (an end point below ``threshold`` in the reference or in every
driving frame) use the global scale, the median ratio of the measured body bones. The root
follows the driving neck's motion scaled by the global scale, starting where the reference's
neck is (UniAnimate also moves the first driving frame onto the reference). A point whose parent
is not visible in a frame is placed by the global similarity transform instead. Confidences are
the driving ones, unchanged.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from common.pose.layout import FACE, FEET, HAND_EDGES, LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND, Body, Foot

NECK = NUM_KEYPOINTS  # index of the virtual neck in the extended (134-point) array
MODES = ("ratio", "length")


def _parents() -> np.ndarray:
    """Parent of every extended point ``(134,)`` (-1 for the neck)."""
    parent = np.full(NUM_KEYPOINTS + 1, -1, dtype=np.int64)
    links = {
        Body.NOSE: NECK, Body.LEFT_EYE: Body.NOSE, Body.RIGHT_EYE: Body.NOSE, Body.LEFT_EAR: Body.LEFT_EYE,
        Body.RIGHT_EAR: Body.RIGHT_EYE, Body.LEFT_SHOULDER: NECK, Body.RIGHT_SHOULDER: NECK,
        Body.LEFT_ELBOW: Body.LEFT_SHOULDER, Body.RIGHT_ELBOW: Body.RIGHT_SHOULDER, Body.LEFT_WRIST: Body.LEFT_ELBOW,
        Body.RIGHT_WRIST: Body.RIGHT_ELBOW, Body.LEFT_HIP: NECK, Body.RIGHT_HIP: NECK, Body.LEFT_KNEE: Body.LEFT_HIP,
        Body.RIGHT_KNEE: Body.RIGHT_HIP, Body.LEFT_ANKLE: Body.LEFT_KNEE, Body.RIGHT_ANKLE: Body.RIGHT_KNEE,
        Foot.LEFT_BIG_TOE: Body.LEFT_ANKLE, Foot.LEFT_SMALL_TOE: Body.LEFT_ANKLE, Foot.LEFT_HEEL: Body.LEFT_ANKLE,
        Foot.RIGHT_BIG_TOE: Body.RIGHT_ANKLE, Foot.RIGHT_SMALL_TOE: Body.RIGHT_ANKLE, Foot.RIGHT_HEEL: Body.RIGHT_ANKLE,
    }
    for child, par in links.items():
        parent[int(child)] = int(par)
    parent[FACE.start : FACE.stop] = Body.NOSE
    for hand, wrist in ((LEFT_HAND, Body.LEFT_WRIST), (RIGHT_HAND, Body.RIGHT_WRIST)):
        parent[hand.start] = wrist
        for a, b in HAND_EDGES:
            parent[hand.start + b] = hand.start + a
    assert (parent[:NUM_KEYPOINTS] >= 0).all() and FEET.stop == FACE.start
    return parent


PARENTS = _parents()
BONES = tuple((int(PARENTS[c]), c) for c in range(NUM_KEYPOINTS))  # (parent, child), extended indices
BODY_BONES = tuple(bone for bone in BONES if bone[1] < Body.RIGHT_ANKLE + 1)


def _order() -> list[int]:
    """Extended points in breadth-first order from the neck (parents before children)."""
    children: dict[int, list[int]] = {}
    for parent, child in BONES:
        children.setdefault(parent, []).append(child)
    order, queue = [], deque([NECK])
    while queue:
        node = queue.popleft()
        order.append(node)
        queue.extend(children.get(node, []))
    return order


ORDER = _order()


def with_neck(keypoints: np.ndarray) -> np.ndarray:
    """``(..., 133, 3)`` -> ``(..., 134, 3)`` with the neck (shoulder midpoint, smaller confidence) appended."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.shape[-2:] != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must have shape (..., {NUM_KEYPOINTS}, 3), got {keypoints.shape}")
    shoulders = keypoints[..., [Body.LEFT_SHOULDER, Body.RIGHT_SHOULDER], :]
    neck = np.concatenate([shoulders[..., :2].mean(-2), shoulders[..., 2].min(-1)[..., None]], axis=-1)
    return np.concatenate([keypoints, neck[..., None, :]], axis=-2)


def bone_lengths(keypoints: np.ndarray, threshold: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Lengths ``(..., 133)`` of the bones ending at each point and whether both ends exceed ``threshold``."""
    ext = with_neck(keypoints)
    parents = PARENTS[:NUM_KEYPOINTS]
    child, parent = ext[..., :NUM_KEYPOINTS, :], ext[..., parents, :]
    lengths = np.linalg.norm(child[..., :2] - parent[..., :2], axis=-1)
    return lengths, (child[..., 2] > threshold) & (parent[..., 2] > threshold)


def bone_ratios(driving: np.ndarray, reference: np.ndarray, threshold: float = 0.3) -> tuple[np.ndarray, float]:
    """Per-bone ``reference / median driving`` length ratios ``(133,)`` and the global scale (NaN-free)."""
    drive_len, drive_ok = bone_lengths(driving, threshold)  # (T, 133)
    ref_len, ref_ok = bone_lengths(reference, threshold)  # (133,)
    typical = np.array([np.median(drive_len[drive_ok[:, b], b]) if drive_ok[:, b].any() else np.nan for b in range(NUM_KEYPOINTS)])
    measured = ref_ok & np.isfinite(typical) & (typical > 1e-6) & (ref_len > 1e-6)
    ratios = np.where(measured, ref_len / np.where(measured, typical, 1.0), np.nan)
    body = [child for _, child in BODY_BONES if measured[child]]
    scale = float(np.median(ratios[body])) if body else 1.0
    shoulders = [Body.LEFT_SHOULDER, Body.RIGHT_SHOULDER]
    if measured[shoulders].all():  # one ratio for both so the neck stays the shoulder midpoint
        ratios[shoulders] = ratios[shoulders].mean()
    return np.where(np.isfinite(ratios), ratios, scale), scale


def retarget(driving: np.ndarray, reference: np.ndarray, mode: str = "ratio", threshold: float = 0.3,
             anchor: int | None = None) -> np.ndarray:
    """Driving keypoints ``(T, 133, 3)`` with the reference's ``(133, 3)`` bone lengths -> ``(T, 133, 3)``.

    ``anchor``: the driving frame whose neck lands on the reference's neck (default: the first
    frame with a visible neck). Raises ValueError when the reference has no visible shoulders.
    """
    if mode not in MODES:
        raise ValueError(f"retarget mode must be one of {MODES}, got {mode!r}")
    drive = with_neck(driving)  # (T, 134, 3)
    ref = with_neck(reference)  # (134, 3)
    if drive.ndim != 3 or ref.ndim != 2:
        raise ValueError(f"expected driving (T, 133, 3) and reference (133, 3), got {np.shape(driving)} and {np.shape(reference)}")
    if ref[NECK, 2] <= threshold:
        raise ValueError("the reference pose has no visible shoulders: cannot place the retargeted skeleton")
    ratios, scale = bone_ratios(driving, reference, threshold)
    ref_len, ref_ok = bone_lengths(reference, threshold)
    visible = drive[..., 2] > threshold  # (T, 134)
    if anchor is None:
        anchor = int(np.argmax(visible[:, NECK])) if visible[:, NECK].any() else 0
    xy = drive[..., :2]
    start = ref[NECK, :2] - xy[anchor, NECK] * scale  # global similarity: x -> scale * x + start
    out = xy * scale + start  # (T, 134, 2) fallback positions
    for child in ORDER[1:]:
        parent = PARENTS[child]
        bone = xy[:, child] - xy[:, parent]  # (T, 2)
        if mode == "length" and ref_ok[child]:
            norm = np.linalg.norm(bone, axis=-1, keepdims=True)
            bone = bone / np.maximum(norm, 1e-9) * ref_len[child]
        else:
            bone = bone * ratios[child]
        linked = visible[:, child] & visible[:, parent]
        out[:, child] = np.where(linked[:, None], out[:, parent] + bone, out[:, child])
    result = np.concatenate([out[:, :NUM_KEYPOINTS], drive[:, :NUM_KEYPOINTS, 2:]], axis=-1)
    return result.astype(np.float32)
