"""Per-part colours of a person: the mean colour along each limb and the torso, read where the skeleton says.

A generated person can be in the right place and still wear the wrong clothes. Reading each body
part's colour at points along its bones (COCO body keypoints, in pixels) and comparing the colours
of a generated clip with those of the real one asks whether the appearance followed the
reference: the swap test (``benchmarks.learnability``) compares that error with the right
reference against the error with another person's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# COCO body keypoints: 0 nose, 5/6 shoulders, 7/8 elbows, 9/10 wrists, 11/12 hips, 13/14 knees, 15/16 ankles
PARTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {  # part -> (start joints, end joints), each averaged
    "head": ((0,), (0,)),
    "torso": ((5, 6), (11, 12)),
    "upper_arm_left": ((5,), (7,)),
    "upper_arm_right": ((6,), (8,)),
    "forearm_left": ((7,), (9,)),
    "forearm_right": ((8,), (10,)),
    "thigh_left": ((11,), (13,)),
    "thigh_right": ((12,), (14,)),
    "shin_left": ((13,), (15,)),
    "shin_right": ((14,), (16,)),
}
ALONG = (0.3, 0.5, 0.7)  # where along a bone colours are read


def part_points(keypoints: Tensor, conf_threshold: float = 0.3) -> tuple[Tensor, Tensor]:
    """Sample points (..., P, S, 2) along each part's bone and whether they count (..., P, S) bool."""
    points, valid = [], []
    for start, end in PARTS.values():
        a, b = keypoints[..., list(start), :].mean(-2), keypoints[..., list(end), :].mean(-2)  # (..., 3)
        seen = (keypoints[..., list(start + end), 2] >= conf_threshold).all(-1)  # (...)
        along = torch.tensor(ALONG, dtype=keypoints.dtype, device=keypoints.device)
        points.append(a[..., None, :2] + along[:, None] * (b - a)[..., None, :2])  # (..., S, 2)
        valid.append(seen[..., None].expand(*seen.shape, len(ALONG)))
    return torch.stack(points, -3), torch.stack(valid, -2)


def sample_pixels(video: Tensor, points: Tensor, radius: int = 1) -> Tensor:
    """Colours (B, T, N, 3) of ``video`` (B, 3, T, H, W) averaged over a (2r+1)^2 box around pixel points (B, T, N, 2)."""
    b, c, t, h, w = video.shape
    frames = video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    if radius:
        frames = F.avg_pool2d(frames, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)
    grid = points.reshape(b * t, -1, 1, 2).clone().to(frames.dtype)
    grid[..., 0] = (grid[..., 0] + 0.5) / w * 2 - 1  # pixel centres -> [-1, 1] (align_corners=False)
    grid[..., 1] = (grid[..., 1] + 0.5) / h * 2 - 1
    colours = F.grid_sample(frames, grid, mode="nearest", align_corners=False)  # (B*T, C, N, 1)
    return colours[..., 0].permute(0, 2, 1).reshape(b, t, -1, c)


def inside(points: Tensor, mask: Tensor) -> Tensor:
    """Whether pixel points (B, T, N, 2) fall on ``mask`` (B, T, H, W) bool; False outside the frame."""
    h, w = mask.shape[-2:]
    x, y = points[..., 0].round().long(), points[..., 1].round().long()
    within = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    b, t, n = x.shape
    flat = mask.reshape(b, t, h * w)
    index = (y.clamp(0, h - 1) * w + x.clamp(0, w - 1)).reshape(b, t, n)
    return within & flat.gather(2, index)


def part_colours(video: Tensor, keypoints: Tensor, person_mask: Tensor | None = None, conf_threshold: float = 0.3) -> tuple[Tensor, Tensor]:
    """Mean colour (B, T, P, 3) of each part of ``video`` (B, 3, T, H, W) and whether it was read (B, T, P) bool.

    ``keypoints`` (B, T, 133 or 17+, 3) in pixels; ``person_mask`` (B, T, H, W): only points on the person count.
    """
    points, valid = part_points(keypoints, conf_threshold)  # (B, T, P, S, 2), (B, T, P, S)
    b, t, p, s, _ = points.shape
    flat_points = points.reshape(b, t, p * s, 2)
    colours = sample_pixels(video, flat_points).reshape(b, t, p, s, -1)
    if person_mask is not None:
        valid = valid & inside(flat_points, person_mask.bool()).reshape(b, t, p, s)
    weight = valid.to(colours.dtype)[..., None]
    mean = (colours * weight).sum(-2) / weight.sum(-2).clamp_min(1)
    return mean, valid.any(-1)


def part_colour_error(generated: Tensor, real: Tensor, keypoints: Tensor, person_mask: Tensor | None = None) -> Tensor:
    """Per-clip mean distance (B,) between the part colours of ``generated`` and ``real`` (B, 3, T, H, W), read at the real clip's parts.

    Videos in [0, 1]; the distance is the RGB Euclidean norm, averaged over the parts and frames read.
    """
    real_colours, read = part_colours(real, keypoints, person_mask)
    generated_colours, _ = part_colours(generated, keypoints, person_mask)
    distance = (generated_colours - real_colours).norm(dim=-1)  # (B, T, P)
    weight = read.to(distance.dtype)
    return (distance * weight).sum((1, 2)) / weight.sum((1, 2)).clamp_min(1)
