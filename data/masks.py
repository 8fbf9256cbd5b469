"""Region weights at token resolution (One-to-All Eq. 17).

``L = L_RF * M_text * ((w_roi - 1) * M_roi + 1)``: regions of interest (the head, and each hand
whose 21 keypoint confidences all exceed ``roi_conf``) weigh ``w_roi``, text regions weigh 0,
the rest 1. Masks are drawn at pixel resolution per frame, then brought to the token grid of
:data:`common.geometry.WAN`: a token (16 x 16 px) is ROI when any of its pixels is and is
zeroed when any of its pixels is text; frames merge into latent frames causally (latent 0 =
frame 0, latent i = frames 4i-3..4i) with the same rule.

Boxes are ``[t, x0, y0, x1, y1]`` with pixel-edge coordinates (pixel ``j`` spans ``[j, j + 1)``);
keypoints use pixel-centre coordinates (pixel ``j`` is centred at ``j``), as the bucket crop does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from common.geometry import WAN, Compression
from common.pose.layout import hand_boxes, head_box

Box = Sequence[float]  # [t, x0, y0, x1, y1]


def box_masks(boxes: Iterable[Box], num_frames: int, height: int, width: int) -> torch.Tensor:
    """Bool (T, H, W): True on every pixel a box overlaps in its frame."""
    masks = torch.zeros(num_frames, height, width, dtype=torch.bool)
    for t, x0, y0, x1, y1 in boxes:
        if not 0 <= int(t) < num_frames:
            raise ValueError(f"box {[t, x0, y0, x1, y1]} is on frame {int(t)}, the clip has {num_frames} frames")
        cols = slice(max(int(np.floor(x0)), 0), max(min(int(np.ceil(x1)), width), 0))
        rows = slice(max(int(np.floor(y0)), 0), max(min(int(np.ceil(y1)), height), 0))
        masks[int(t), rows, cols] = True
    return masks


def roi_boxes(keypoints: np.ndarray, roi_conf: float = 0.8, head_conf: float = 0.3) -> list[list[float]]:
    """ROI boxes of keypoints (T, 133, 3): the head of each frame and every hand whose 21 points exceed ``roi_conf``.

    The head box (``common.pose.layout.head_box``: face and head points above ``head_conf``,
    raised for the forehead) counts when it has a positive area. Boxes are in pixel edges.
    """
    heads, _ = head_box(keypoints, threshold=head_conf)  # (T, 4)
    hands, hands_valid = hand_boxes(keypoints, threshold=roi_conf)  # (T, 2, 4), (T, 2)
    boxes = []
    for t in range(len(keypoints)):
        candidates = [heads[t]] + [hands[t, side] for side in range(2) if hands_valid[t, side]]
        for x0, y0, x1, y1 in candidates:
            if x1 > x0 and y1 > y0:
                boxes.append([t, x0 + 0.5, y0 + 0.5, x1 + 0.5, y1 + 0.5])
    return boxes


def pixel_masks(keypoints: np.ndarray, height: int, width: int, text_boxes: Iterable[Box] = (),
                roi_conf: float = 0.8, head_conf: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-resolution ROI and text masks, bool (T, H, W) each (for the weights and for visualisation)."""
    num_frames = len(keypoints)
    roi = box_masks(roi_boxes(keypoints, roi_conf, head_conf), num_frames, height, width)
    text = box_masks(text_boxes, num_frames, height, width)
    return roi, text


def merge_latent_frames(masks: torch.Tensor, compression: Compression = WAN) -> torch.Tensor:
    """Bool (T, ...) -> (F, ...): latent 0 = frame 0, latent i = any of frames 4i-3..4i."""
    compression.check_frames(masks.shape[0])
    rest = masks[1:].unflatten(0, (-1, compression.vae_time)).any(dim=1)  # (F - 1, ...)
    return torch.cat([masks[:1], rest])


def to_token_grid(masks: torch.Tensor, compression: Compression = WAN) -> torch.Tensor:
    """Bool (T, H, W) -> (F, h, w): a latent token is True when any of its pixels in any of its frames is."""
    num_frames, height, width = masks.shape
    side = compression.token_space
    compression.check_size(height, width)
    tokens = masks.view(num_frames, height // side, side, width // side, side).any(dim=4).any(dim=2)
    return merge_latent_frames(tokens, compression)


def token_weights(roi: torch.Tensor, text: torch.Tensor, w_roi: float = 3.0,
                  compression: Compression = WAN) -> torch.Tensor:
    """Float (F, h, w) = M_text * ((w_roi - 1) * M_roi + 1) from pixel masks bool (T, H, W)."""
    roi_tokens = to_token_grid(roi, compression).float()  # (F, h, w)
    text_free = (~to_token_grid(text, compression)).float()  # (F, h, w)
    return text_free * ((w_roi - 1.0) * roi_tokens + 1.0)


def region_weights(keypoints: np.ndarray, height: int, width: int, text_boxes: Iterable[Box] = (),
                   w_roi: float = 3.0, roi_conf: float = 0.8, head_conf: float = 0.3,
                   compression: Compression = WAN) -> torch.Tensor:
    """Loss weights float (F, h, w) of a clip from its keypoints (T, 133, 3) and text boxes."""
    roi, text = pixel_masks(keypoints, height, width, text_boxes, roi_conf, head_conf)
    return token_weights(roi, text, w_roi, compression)
