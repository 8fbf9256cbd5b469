"""Video tensor conventions shared by every metric.

A batch of clips is ``(B, 3, T, H, W)``: RGB, channels first, time second. Values are either
float in [0, 1] or uint8 in [0, 255]; the validation loop passes float (its [-1, 1] tensors mapped
with ``(x + 1) / 2``), ``python -m experiments.evaluate`` passes the decoded uint8 frames so that a
long clip costs one byte per value until a chunk of it is processed. Metrics never hold more than
``frame_chunk`` frames of a clip in float at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

RANGE_TOLERANCE = 1e-3  # float inputs may overshoot [0, 1] this much (clamped); more is a range mistake


def check_video(video: torch.Tensor, what: str) -> None:
    """Raise unless ``video`` is a ``(B, 3, T, H, W)`` float or uint8 tensor."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"{what}: expected a video batch (B, 3, T, H, W), got shape {tuple(video.shape)}")
    if video.dtype != torch.uint8 and not video.dtype.is_floating_point:
        raise ValueError(f"{what}: expected float in [0, 1] or uint8, got dtype {video.dtype}")
    if video.dtype.is_floating_point and video.numel():
        low, high = (float(v) for v in torch.aminmax(video))
        if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            raise ValueError(
                f"{what}: float videos must be in [0, 1], got [{low:.3g}, {high:.3g}]; map [-1, 1] with (x + 1) / 2"
            )


def check_pair(generated: torch.Tensor, target: torch.Tensor) -> None:
    """Raise unless generated and target are valid video batches of the same shape."""
    check_video(generated, "generated")
    check_video(target, "target")
    if generated.shape != target.shape:
        raise ValueError(
            f"generated {tuple(generated.shape)} and target {tuple(target.shape)} differ in shape; "
            "resize or trim them to the same (B, 3, T, H, W) first"
        )


ANNOTATIONS = ("keypoints", "person_mask", "plate")  # what a metric may need beside the two videos


@dataclass(frozen=True)
class Annotations:
    """What is known about the target clips beside their frames; each field optional.

    Clip form (as ``update`` takes it): keypoints ``(B, T, K, 3)`` pixels of the target frames,
    person_mask ``(B, T, H, W)`` bool, plate ``(B, 3, H, W)`` the static scene without the person
    (float in [0, 1] or uint8, like the videos). Frame form (as ``frame_values`` gets it, see
    :meth:`frames`): ``(N, K, 3)``, ``(N, H, W)`` and ``(N, 3, H, W)`` float in [0, 1].
    """

    keypoints: torch.Tensor | None = None
    person_mask: torch.Tensor | None = None
    plate: torch.Tensor | None = None

    def check(self, video: torch.Tensor) -> None:
        """Raise unless the annotations match the clip batch ``video (B, 3, T, H, W)``."""
        batch, _, frames, height, width = video.shape
        if self.keypoints is not None and (self.keypoints.ndim != 4 or self.keypoints.shape[:2] != (batch, frames)):
            raise ValueError(f"keypoints {tuple(self.keypoints.shape)} do not match the video (B, T) = {(batch, frames)}")
        if self.person_mask is not None and self.person_mask.shape != (batch, frames, height, width):
            raise ValueError(f"person_mask {tuple(self.person_mask.shape)} is not (B, T, H, W) = {(batch, frames, height, width)}")
        if self.plate is not None:
            if self.plate.shape != (batch, 3, height, width):
                raise ValueError(f"plate {tuple(self.plate.shape)} is not (B, 3, H, W) = {(batch, 3, height, width)}")
            check_video(self.plate[:, :, None], "plate")

    def require(self, names: Iterable[str], metric: str) -> None:
        """Raise naming ``metric`` when one of the annotations it needs is missing."""
        missing = [name for name in names if getattr(self, name) is None]
        if missing:
            raise ValueError(f"{metric} needs {', '.join(missing)} (see metrics.video.Annotations)")

    def frames(self, start: int, stop: int, device: torch.device) -> Annotations:
        """Frames ``[start, stop)`` of every clip, flattened to the frame form on ``device``."""
        count = stop - start
        plate = None
        if self.plate is not None:
            plate = to_unit_float(self.plate.to(device))[:, None].expand(-1, count, -1, -1, -1).flatten(0, 1)  # (N, 3, H, W)
        return Annotations(
            keypoints=None if self.keypoints is None else self.keypoints[:, start:stop].to(device).flatten(0, 1),
            person_mask=None if self.person_mask is None else self.person_mask[:, start:stop].to(device).flatten(0, 1).bool(),
            plate=plate,
        )


def to_unit_float(video: torch.Tensor) -> torch.Tensor:
    """Float32 copy in [0, 1] of a float or uint8 tensor."""
    if video.dtype == torch.uint8:
        return video.float() / 255.0
    return video.float().clamp(0.0, 1.0)


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Uint8 in [0, 255] of a float [0, 1] or uint8 tensor (rounded, as when a frame is saved)."""
    if video.dtype == torch.uint8:
        return video
    return (video.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def frame_ranges(frames: int, chunk: int) -> Iterator[tuple[int, int]]:
    """Consecutive ``[start, stop)`` ranges of at most ``chunk`` frames covering ``frames``."""
    for start in range(0, frames, chunk):
        yield start, min(start + chunk, frames)


def flatten_frames(video: torch.Tensor) -> torch.Tensor:
    """``(B, C, T, H, W)`` -> ``(B * T, C, H, W)``, clip-major."""
    return video.transpose(1, 2).flatten(0, 1)


def clip_windows(clip: torch.Tensor, length: int, stride: int) -> torch.Tensor:
    """Every ``length``-frame window at ``stride`` of a ``(3, T, H, W)`` clip, as a view ``(S, 3, length, H, W)``."""
    if clip.shape[1] < length:
        return clip.new_empty((0, clip.shape[0], length, *clip.shape[2:]))
    return clip.unfold(1, length, stride).permute(1, 0, 4, 2, 3)


def window_batches(windows: torch.Tensor, frame_budget: int) -> Iterator[torch.Tensor]:
    """Consecutive slices of ``(S, 3, L, H, W)`` windows holding about ``frame_budget`` frames each."""
    per_batch = max(1, frame_budget // windows.shape[2])
    for start in range(0, windows.shape[0], per_batch):
        yield windows[start : start + per_batch]


def pad_to_multiple(clip: torch.Tensor, length: int) -> torch.Tensor:
    """Repeat the last frame of a ``(3, T, H, W)`` clip until T is a multiple of ``length``."""
    missing = -clip.shape[1] % length
    if missing == 0:
        return clip
    return torch.cat([clip, clip[:, -1:].expand(-1, missing, -1, -1)], dim=1)


def resize_frames(frames: torch.Tensor, size: tuple[int, int], mode: str, antialias: bool) -> torch.Tensor:
    """Resize float ``(N, C, H, W)`` frames; antialiased bicubic matches PIL's float BICUBIC to ~1e-5."""
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    return torch.nn.functional.interpolate(frames, size=size, mode=mode, align_corners=False, antialias=antialias)


def resize_short_side_and_crop(frames: torch.Tensor, size: int, mode: str, antialias: bool) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` so the short side is ``size`` (long side rounded up), then centre-crop a square."""
    height, width = frames.shape[-2:]
    if height < width:
        target = (size, math.ceil(width * size / height))
    else:
        target = (math.ceil(height * size / width), size)
    resized = resize_frames(frames, target, mode, antialias)
    top = (resized.shape[-2] - size) // 2
    left = (resized.shape[-1] - size) // 2
    return resized[..., top : top + size, left : left + size]
