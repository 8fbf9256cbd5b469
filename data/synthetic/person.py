"""Painting a character on a canvas where its skeleton says: limbs, torso, hair, head and face, back to front."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from common.pose import layout
from data.synthetic.identity import TEXTURES, Identity
from data.synthetic.raster import Canvas, Fill, darker
from data.synthetic.skeleton import BEHIND_TORSO, Skeleton, rotate

HEAD_MARGIN = 1.06  # the drawn head is this much larger than the sphere carrying the face landmarks


def _capsule(a: np.ndarray, b: np.ndarray, radius_a: float, radius_b: float) -> list:
    """Shapes of a limb segment: a quad between two joint discs and the discs."""
    along = b - a
    normal = np.array([-along[1], along[0]]) / max(np.linalg.norm(along), 1e-6)
    quad = np.array([a + normal * radius_a, b + normal * radius_b, b - normal * radius_b, a - normal * radius_a])
    return [("polygon", quad), ("disc", (a, radius_a)), ("disc", (b, radius_b))]


def _ellipse(center: np.ndarray, rx: float, ry: float, angle: float, vertices: int = 40) -> np.ndarray:
    """Polygon ``(V, 2)`` of an ellipse rotated by ``angle``."""
    theta = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    return center + rotate(np.stack([rx * np.cos(theta), ry * np.sin(theta)], axis=1), angle)


def _cloth_fill(cloth: dict, origin: np.ndarray, angle: float, unit: float, side: int | None = None) -> Fill:
    """Fill of a clothing part laid out from ``origin`` along ``angle``: its texture, or its colour (the left side of a split: the second)."""
    color = cloth["color2"] if cloth["pattern"] == "split" and side == 1 else cloth["color"]
    return Fill(color=color, cloth=cloth if cloth["pattern"] in TEXTURES else None, origin=origin, angle=angle, unit=unit)


def _limb_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Image-plane angle of the segment a -> b."""
    return math.atan2(b[1] - a[1], b[0] - a[0])


def _paint_arm(canvas: Canvas, idt: Identity, skel: Skeleton, side_index: int) -> None:
    """Upper arm, forearm and hand of one side (0 = right, 1 = left)."""
    kp, unit = skel.keypoints, skel.unit
    names = ("RIGHT", "LEFT")[side_index]
    shoulder, elbow, wrist = (kp[layout.Body[f"{names}_{j}"], :2] for j in ("SHOULDER", "ELBOW", "WRIST"))
    radius = idt.arm_width * unit / 2
    skin = Fill(idt.skin)
    sleeve = _cloth_fill(idt.shirt, shoulder, _limb_angle(shoulder, elbow), unit, side_index)
    canvas.paint(_capsule(shoulder, elbow, radius * 1.1, radius), sleeve if idt.sleeves != "none" else skin)
    forearm_fill = _cloth_fill(idt.shirt, elbow, _limb_angle(elbow, wrist), unit, side_index) if idt.sleeves == "long" else skin
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


def _paint_leg(canvas: Canvas, idt: Identity, skel: Skeleton, side_index: int) -> None:
    """Thigh, shin and shoe of one side (0 = right, 1 = left)."""
    kp, unit = skel.keypoints, skel.unit
    names = ("RIGHT", "LEFT")[side_index]
    hip, knee, ankle = (kp[layout.Body[f"{names}_{j}"], :2] for j in ("HIP", "KNEE", "ANKLE"))
    radius = idt.leg_width * unit / 2
    canvas.paint(_capsule(hip, knee, radius * 1.15, radius), _cloth_fill(idt.pants, hip, _limb_angle(hip, knee), unit, side_index))
    shin_fill = _cloth_fill(idt.pants, knee, _limb_angle(knee, ankle), unit, side_index) if idt.long_pants else Fill(idt.skin)
    if idt.long_pants and idt.pants["pattern"] == "band":  # two-tone trousers: the lower legs in the second colour
        shin_fill = Fill(idt.pants["color2"])
    canvas.paint(_capsule(knee, ankle, radius, radius * 0.8), shin_fill)
    start = layout.Foot.RIGHT_BIG_TOE if side_index == 0 else layout.Foot.LEFT_BIG_TOE
    big_toe, small_toe, heel = kp[start : start + 3, :2]
    r = 0.22 * idt.foot * unit
    shoe = np.array([ankle - [radius * 0.9, 0], ankle + [radius * 0.9, 0], small_toe, big_toe])
    canvas.paint([("polygon", shoe), ("disc", (big_toe, r)), ("disc", (small_toe, r)), ("disc", (heel, r * 1.2))], Fill(idt.shoe_color))


def _torso_half(idt: Identity) -> np.ndarray:
    """The shirt's outline on the body's left (image right) ``(6, 2)``: (x, height above the pelvis) in body units, rising."""
    sh, hh, h = idt.shoulder_half, idt.hip_half, idt.torso
    return np.array([(hh + 0.025, -0.035), (hh + 0.015, 0.1), (sh * 0.85, h - 0.07), (sh + 0.02, h - 0.02), (sh * 0.6, h + 0.008), (0.05, h + 0.012)])


def _body_pixels(skel: Skeleton, points: np.ndarray) -> np.ndarray:
    """Torso-frame points ``(N, 2)`` (x right, y up, body units from the pelvis) -> pixels."""
    up = np.array([math.sin(skel.tilt), -math.cos(skel.tilt)])
    right = np.array([math.cos(skel.tilt), math.sin(skel.tilt)])
    return skel.pelvis + (points[:, :1] * right + points[:, 1:] * up) * skel.unit


def _mirrored(half: np.ndarray) -> np.ndarray:
    """A closed outline from its left half (rising): the mirrored right half, then the left half falling."""
    return np.concatenate([half * [-1, 1], half[::-1]])


def _torso_shapes(idt: Identity, skel: Skeleton) -> tuple[list, list]:
    """Shirt polygon and the pants' waist band, in pixels."""
    hh = idt.hip_half
    band = np.array([(-hh - 0.03, 0.05), (hh + 0.03, 0.05), (hh + 0.035, -0.05), (-hh - 0.035, -0.05)])
    return [("polygon", _body_pixels(skel, _mirrored(_torso_half(idt))))], [("polygon", _body_pixels(skel, band))]


def _shirt_accent(idt: Identity, skel: Skeleton) -> list:
    """The flat shirt pattern's second colour: a wide horizontal band, or the left half (two-tone split); none when plain."""
    half = _torso_half(idt)
    if idt.shirt["pattern"] == "split":
        return [("polygon", _body_pixels(skel, np.concatenate([[(0.0, half[0, 1])], half, [(0.0, half[-1, 1])]])))]
    if idt.shirt["pattern"] != "band":
        return []
    low, high = (fraction * idt.torso for fraction in idt.shirt["band"])
    inside = half[(half[:, 1] > low) & (half[:, 1] < high)]
    edges = np.array([(np.interp(y, half[:, 1], half[:, 0]), y) for y in (low, high)])
    return [("polygon", _body_pixels(skel, _mirrored(np.concatenate([edges[:1], inside, edges[1:]]))))]


def _head_frame(skel: Skeleton, idt: Identity) -> Callable[[np.ndarray], np.ndarray]:
    """Map head-normalised points ``(N, 2)`` (x in half-widths, y in half-heights) to pixels."""
    rx, ry = idt.head_rx * skel.unit, idt.head_ry * skel.unit

    def to_pixels(points: np.ndarray) -> np.ndarray:
        """Head-normalised -> pixels."""
        return skel.head_center + rotate(np.asarray(points, dtype=float) * [rx, ry], skel.head_angle)

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


def _paint_simple_face(canvas: Canvas, idt: Identity, skel: Skeleton) -> None:
    """Two dark eye dots (none while blinking) and a filled mouth where the face landmarks are: no lines, so a 4x VAE keeps them."""
    face, visible = skel.keypoints[layout.FACE, :2], skel.face_depth > 0
    radius = 0.2 * idt.head_rx * skel.unit * canvas.ss
    for part in (layout.FACE_RIGHT_EYE, layout.FACE_LEFT_EYE):
        eye = face[part]
        if visible[part].all() and np.linalg.norm(eye[1] - eye[5]) >= 0.2 * np.linalg.norm(eye[3] - eye[0]):
            cx, cy = eye.mean(axis=0) * canvas.ss
            canvas.draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(25, 18, 22))
    if visible[layout.FACE_OUTER_LIPS].all():
        canvas.draw.polygon(canvas.scaled(face[layout.FACE_OUTER_LIPS]), fill=darker(idt.lip_color, 0.7))


def _paint_face(canvas: Canvas, idt: Identity, skel: Skeleton) -> None:
    """Eyes, brows, nose and mouth drawn where the face landmarks are (hidden ones are skipped)."""
    face, visible = skel.keypoints[layout.FACE, :2], skel.face_depth > 0
    draw, ss, unit = canvas.draw, canvas.ss, skel.unit
    line = max(1, round(0.012 * unit * ss))
    brow_color = darker(idt.hair_color, 0.8) if idt.hair_style != "bald" else darker(idt.skin, 0.45)
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
    nose_color = darker(idt.skin, 0.75)
    if visible[layout.FACE_NOSE_BOTTOM].all():
        draw.line(canvas.scaled(face[[29, 30, 33]]), fill=nose_color, width=line)
        draw.line(canvas.scaled(face[layout.FACE_NOSE_BOTTOM]), fill=nose_color, width=line)
    if visible[layout.FACE_OUTER_LIPS].all():
        draw.polygon(canvas.scaled(face[layout.FACE_OUTER_LIPS]), fill=idt.lip_color, outline=darker(idt.lip_color))
        inner = face[layout.FACE_INNER_LIPS]
        if np.linalg.norm(inner[6] - inner[2]) > 0.01 * unit:
            draw.polygon(canvas.scaled(inner), fill=(70, 20, 30))


def _paint_head(canvas: Canvas, idt: Identity, skel: Skeleton, cap: list) -> None:
    """Ears, head, hair cap and face."""
    rx, ry = idt.head_rx * skel.unit, idt.head_ry * skel.unit
    ears = skel.keypoints[[layout.Body.LEFT_EAR, layout.Body.RIGHT_EAR], :2]
    ear_shapes = [("polygon", _ellipse(ear, 0.2 * rx, 0.3 * ry, skel.head_angle, 16)) for ear in ears]
    skin = Fill(idt.skin)
    for ear, depth in zip(ear_shapes, skel.ear_depth):
        if depth < 0:
            canvas.paint([ear], skin)
    canvas.paint([("polygon", _ellipse(skel.head_center, HEAD_MARGIN * rx, HEAD_MARGIN * ry, skel.head_angle))], skin)
    for ear, depth in zip(ear_shapes, skel.ear_depth):
        if depth >= 0:
            canvas.paint([ear], skin)
    if cap:
        canvas.paint(cap, Fill(idt.hair_color))
    (_paint_face if idt.detailed else _paint_simple_face)(canvas, idt, skel)


def render_person(canvas: Canvas, idt: Identity, skel: Skeleton, behind: tuple[bool, bool]) -> np.ndarray:
    """Paint the character back to front; returns final confidences ``(133,)`` (torso occlusion applied)."""
    back_hair, cap = _hair_shapes(idt, skel)
    if back_hair:
        canvas.paint(back_hair, Fill(idt.hair_color))
    for side_index in (0, 1):
        if behind[side_index]:
            _paint_arm(canvas, idt, skel, side_index)
    for side_index in (0, 1):
        _paint_leg(canvas, idt, skel, side_index)
    neck_radius = 0.32 * idt.head_rx * skel.unit
    canvas.paint(_capsule(skel.neck, skel.head_center, neck_radius, neck_radius), Fill(idt.skin))
    shirt, waist = _torso_shapes(idt, skel)
    torso = canvas.paint(shirt, _cloth_fill(idt.shirt, skel.pelvis, skel.tilt, skel.unit))
    accent = _shirt_accent(idt, skel)
    if accent:
        canvas.paint(accent, Fill(idt.shirt["color2"]))
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
