"""Face boxes from COCO-WholeBody 133 keypoints, as Wan2.2-Animate's preprocessing draws them.

Face = the 68 iBUG points at indices 23..90 (``common.pose.layout.FACE``). A point is valid
when its confidence is at least ``min_confidence`` (DWPose's 0.3). The box is the min/max of the
valid points, its area scaled by ``area_scale`` (1.3) with the aspect ratio kept: the width grows
equally on both sides, the height by 3 parts upward and 1 part downward (forehead). Coordinates
are clipped to the frame and truncated to integers; the box covers rows ``y0:y1``, columns
``x0:x1``. (``common.pose.layout.face_box`` is the tight, unclipped numpy box of the same points; EverAnimate crops
the motion encoder's faces in these boxes, as Wan2.2-Animate's preprocessing does.)
"""

from __future__ import annotations

import torch

from common.pose.layout import FACE


def face_boxes(
    keypoints: torch.Tensor, height: int, width: int, min_confidence: float = 0.3, area_scale: float = 1.3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes ``(N, 4)`` long ``x0, y0, x1, y1`` and validity ``(N,)`` from keypoints ``(N, 133, 3)``."""
    face = keypoints[:, FACE].double()  # (N, 68, 3)
    valid_point = face[..., 2] >= min_confidence
    xy = face[..., :2]
    low = xy.masked_fill(~valid_point[..., None], float("inf")).amin(dim=1)  # (N, 2)
    high = xy.masked_fill(~valid_point[..., None], float("-inf")).amax(dim=1)
    size = high - low  # (N, 2): initial width, height
    grow = size * (area_scale**0.5 - 1.0)  # sqrt(scale * w * h * w / h) - w = w (sqrt(scale) - 1)
    x0 = (low[:, 0] - grow[:, 0] / 2).clamp(min=0)
    x1 = (high[:, 0] + grow[:, 0] / 2).clamp(max=width)
    y0 = (low[:, 1] - 3 * grow[:, 1] / 4).clamp(min=0)
    y1 = (high[:, 1] + grow[:, 1] / 4).clamp(max=height)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).nan_to_num(0.0, posinf=0.0, neginf=0.0).long()
    has_area = (size > 0).all(dim=1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes, valid_point.any(dim=1) & has_area


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boolean masks ``(N, H, W)`` that are True inside each ``x0, y0, x1, y1`` box."""
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    inside_rows = (rows >= boxes[:, 1:2]) & (rows < boxes[:, 3:4])  # (N, H)
    inside_cols = (cols >= boxes[:, 0:1]) & (cols < boxes[:, 2:3])  # (N, W)
    return inside_rows[:, :, None] & inside_cols[:, None, :]
