"""Kinematics: a character in a pose -> its exact 133 COCO-WholeBody keypoints in pixels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.pose import layout
from data.synthetic.identity import Identity
from data.synthetic.motion import Motion, PoseParams

VISIBLE, TURNED_AWAY, IN_FIST, BEHIND_TORSO = 1.0, 0.5, 0.6, 0.3


def direction(angle: float) -> np.ndarray:
    """Unit vector at ``angle`` from straight down, positive toward image right."""
    return np.array([math.sin(angle), math.cos(angle)])


def rotate(points: np.ndarray, angle: float) -> np.ndarray:
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
    along = direction(angle)
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
        knee = hip_offset + direction(thigh_angle) * idt.thigh * unit * np.array([1.0, math.cos(lift)])
        ankle = knee + direction(shin_angle) * idt.shin * unit
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
        elbow = shoulder + direction(upper_angle) * idt.upper_arm * unit
        fore_angle = upper_angle + side * pose.elbow[i]
        wrist = elbow + direction(fore_angle) * idt.forearm * unit
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
    face = head_center + rotate(np.stack([turned_x * rx, template[:, 1] * ry], axis=1), head_angle)
    kp[layout.FACE, :2] = face
    kp[layout.FACE, 2] = np.where(face_depth > 0, VISIBLE, TURNED_AWAY)
    ears_x = np.array([1.0, -1.0])  # left ear (image right), right ear
    ear_depth = -ears_x * sin_yaw
    ears = head_center + rotate(np.stack([ears_x * cos_yaw * rx, np.full(2, 0.1 * ry)], axis=1), head_angle)
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
