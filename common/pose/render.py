"""DWPose / ControlNet-OpenPose style pose maps from COCO-WholeBody keypoints (numpy + PIL).

What the reference (DWPose's ``draw_pose``) does and this module reproduces on a black canvas:
body in OpenPose-18 order, 17 limbs as filled ellipses in the 18 OpenPose colours scaled to 60%,
joints as filled circles in full colour; hands with 20 edges coloured by HSV hue over the edges
and blue points; face as white dots. Points below the confidence threshold are not drawn. The
reference draws stick width 4 at about 512 px; widths here scale with the short side (at least
1 px). ``lightened=True`` blends every colour half-way to white: the "colour-lighten" signal
One-to-All uses to mark altered (face-enhanced) poses. (Its public code instead dims the head
limbs and face dots to 35%; the paper's wording is followed here.)
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from common.pose.layout import FACE, HAND_EDGES, HANDS, OPENPOSE_DRAWN_LIMBS, to_openpose18

OPENPOSE_COLORS = np.array(
    [
        [255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0],
        [0, 255, 0], [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255],
        [0, 0, 255], [85, 0, 255], [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85],
    ],
    dtype=np.float64,
)
LIMB_OPACITY = 0.6
HAND_EDGE_COLORS = np.array([colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0) for i in range(len(HAND_EDGES))]) * 255
HAND_POINT_COLOR = np.array([0.0, 0.0, 255.0])
FACE_POINT_COLOR = np.array([255.0, 255.0, 255.0])
LIGHTEN = 0.5
REFERENCE_SIZE = 512
ELLIPSE_VERTICES = 32


@dataclass(frozen=True)
class _Style:
    """Stroke sizes (pixels) and PIL colours of one rendering call."""

    threshold: float
    stick: int
    joint: int
    hand_line: int
    hand_point: int
    face_point: int
    limb_colors: list
    joint_colors: list
    hand_edge_colors: list
    hand_point_color: tuple
    face_point_color: tuple


def _width(reference_width: float, height: int, width: int) -> int:
    """A stroke width the reference draws at 512 px, scaled to the short side (at least 1)."""
    return max(1, round(reference_width * min(height, width) / REFERENCE_SIZE))


def _palette(colors: np.ndarray, lightened: bool) -> list[tuple[int, int, int]]:
    """RGB colours ``(N, 3)`` -> PIL colour tuples, blended toward white when ``lightened``."""
    if lightened:
        colors = colors + (255.0 - colors) * LIGHTEN
    return [tuple(int(c) for c in color) for color in np.floor(np.asarray(colors) + 1e-6)]


def _style(height: int, width: int, threshold: float, lightened: bool) -> _Style:
    """Sizes for a ``height x width`` canvas and the (possibly lightened) colours."""
    return _Style(
        threshold=threshold,
        stick=_width(4, height, width),
        joint=_width(4, height, width),
        hand_line=_width(2, height, width),
        hand_point=_width(4, height, width),
        face_point=_width(3, height, width),
        limb_colors=_palette(OPENPOSE_COLORS[: len(OPENPOSE_DRAWN_LIMBS)] * LIMB_OPACITY, lightened),
        joint_colors=_palette(OPENPOSE_COLORS, lightened),
        hand_edge_colors=_palette(HAND_EDGE_COLORS, lightened),
        hand_point_color=_palette(HAND_POINT_COLOR[None], lightened)[0],
        face_point_color=_palette(FACE_POINT_COLOR[None], lightened)[0],
    )


def _limb_polygons(start: np.ndarray, end: np.ndarray, half_width: float) -> np.ndarray:
    """Ellipse polygons ``(..., V, 2)`` spanning segments ``start -> end`` ``(..., 2)``."""
    center = (start + end) / 2
    axis = (end - start) / 2  # (..., 2) semi-major axis vector
    length = np.linalg.norm(axis, axis=-1, keepdims=True)
    normal = np.stack([-axis[..., 1], axis[..., 0]], axis=-1) / np.maximum(length, 1e-6) * half_width
    theta = np.linspace(0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)[:, None]  # (V, 1)
    return center[..., None, :] + np.cos(theta) * axis[..., None, :] + np.sin(theta) * normal[..., None, :]


def _circle(draw: ImageDraw.ImageDraw, x: float, y: float, radius: int, color: tuple) -> None:
    """Filled circle of ``radius`` pixels centred on (x, y)."""
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color)


def _draw_body(draw: ImageDraw.ImageDraw, body: np.ndarray, style: _Style) -> None:
    """OpenPose-18 body ``(18, 3)``: limbs at 60% colour, then joints."""
    visible = body[:, 2] >= style.threshold
    starts = np.array([body[a, :2] for a, _ in OPENPOSE_DRAWN_LIMBS])
    ends = np.array([body[b, :2] for _, b in OPENPOSE_DRAWN_LIMBS])
    polygons = _limb_polygons(starts, ends, style.stick)  # (17, V, 2)
    for limb, (a, b) in enumerate(OPENPOSE_DRAWN_LIMBS):
        if visible[a] and visible[b]:
            draw.polygon([tuple(p) for p in polygons[limb].tolist()], fill=style.limb_colors[limb])
    for joint in np.flatnonzero(visible):
        _circle(draw, body[joint, 0], body[joint, 1], style.joint, style.joint_colors[joint])


def _draw_hand(draw: ImageDraw.ImageDraw, hand: np.ndarray, style: _Style) -> None:
    """One hand ``(21, 3)``: hue-coloured edges, then blue points."""
    visible = hand[:, 2] >= style.threshold
    for edge, (a, b) in enumerate(HAND_EDGES):
        if visible[a] and visible[b]:
            draw.line([tuple(hand[a, :2]), tuple(hand[b, :2])], fill=style.hand_edge_colors[edge], width=style.hand_line)
    for point in np.flatnonzero(visible):
        _circle(draw, hand[point, 0], hand[point, 1], style.hand_point, style.hand_point_color)


def _draw_face(draw: ImageDraw.ImageDraw, face: np.ndarray, style: _Style) -> None:
    """Face ``(68, 3)``: white dots."""
    for point in np.flatnonzero(face[:, 2] >= style.threshold):
        _circle(draw, face[point, 0], face[point, 1], style.face_point, style.face_point_color)


def _render_frame(keypoints: np.ndarray, height: int, width: int, style: _Style, parts: tuple[bool, bool, bool]) -> np.ndarray:
    """One frame ``(133, 3)`` -> uint8 ``(H, W, 3)``; ``parts`` = (body, hands, face) switches."""
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    draw_body, draw_hands, draw_face = parts
    if draw_body:
        _draw_body(draw, to_openpose18(keypoints), style)
    if draw_hands:
        for part in HANDS:
            _draw_hand(draw, keypoints[part], style)
    if draw_face:
        _draw_face(draw, keypoints[FACE], style)
    return np.asarray(image)


def render_pose(
    keypoints: np.ndarray,
    height: int,
    width: int,
    conf_threshold: float = 0.3,
    draw_body: bool = True,
    draw_hands: bool = True,
    draw_face: bool = True,
    lightened: bool = False,
) -> np.ndarray:
    """Pose map(s) of ``(133, 3)`` or ``(T, 133, 3)`` pixel keypoints -> uint8 ``(H, W, 3)`` / ``(T, H, W, 3)``."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.shape[-2:] != (133, 3) or keypoints.ndim not in (2, 3):
        raise ValueError(f"keypoints must have shape (133, 3) or (T, 133, 3), got {keypoints.shape}")
    style = _style(height, width, conf_threshold, lightened)
    parts = (draw_body, draw_hands, draw_face)
    frames = keypoints if keypoints.ndim == 3 else keypoints[None]
    rendered = np.stack([_render_frame(frame, height, width, style, parts) for frame in frames])  # (T, H, W, 3)
    return rendered if keypoints.ndim == 3 else rendered[0]


def pose_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 pose frames ``(T, H, W, 3)`` -> float ``(3, T, H, W)`` in [-1, 1] (``(H, W, 3)`` -> ``(3, H, W)``)."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1.0
    return tensor.movedim(-1, 0)
