"""Annotating decoded media: whole-body keypoints (sidecar files, annotation tables or the pose model) and text boxes."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from common.pose.layout import BODY, NUM_KEYPOINTS
from data.pose_import import KeypointError, check_keypoints, find_sidecar, load_keypoints
from data.prepare.config import PrepareConfig, SkipSource
from data.prepare.models import Models, TextDetector


def scale_keypoints(keypoints: np.ndarray, source: tuple[int, int], out: tuple[int, int]) -> np.ndarray:
    """Source-pixel keypoints -> stored-frame pixels (pixel centres at integers); points leaving the frame get confidence 0.

    Without a resize (only odd sides cut) coordinates are copied exactly.
    """
    out_kp = np.array(keypoints, dtype=np.float32, copy=True)
    if out[0] > source[0] or out[1] > source[1] or source[0] - out[0] >= 2 or source[1] - out[1] >= 2:
        out_kp[..., 0] = (out_kp[..., 0] + 0.5) * (out[1] / source[1]) - 0.5
        out_kp[..., 1] = (out_kp[..., 1] + 0.5) * (out[0] / source[0]) - 0.5
    inside = (out_kp[..., 0] >= -0.5) & (out_kp[..., 0] <= out[1] - 0.5) & (out_kp[..., 1] >= -0.5) & (out_kp[..., 1] <= out[0] - 0.5)
    out_kp[..., 2] = np.where(inside, out_kp[..., 2], 0.0)
    return out_kp


def source_keypoints(path: Path, root: Path, config: PrepareConfig, decoded_frames: int, size: tuple[int, int]) -> np.ndarray:
    """Sidecar keypoints ``(T_source, 133, 3)`` of a source, checked against it; raises SkipSource."""
    sidecar = find_sidecar(path, root, Path(config.poses) if config.poses else None)
    if sidecar is None:
        stem = path.name if path.is_dir() else path.stem
        raise SkipSource("no_keypoints", f"expected {stem}.pose.npy / .npy / .pkl / .json or {stem}_openpose/ beside it (pose=sidecar)")
    try:
        keypoints = load_keypoints(sidecar, width=size[1], height=size[0])
        return check_keypoints(keypoints, decoded_frames, size[1], size[0], str(sidecar), config.keypoint_threshold)
    except KeypointError as exn:
        raise SkipSource("keypoint_mismatch", str(exn)) from exn


def video_keypoints(frames: np.ndarray, clips: list[tuple[int, int]], config: PrepareConfig, models: Models) -> np.ndarray:
    """DWPose keypoints ``(N, 133, 3)`` of the stored frames the ``clips`` cover, tracked and smoothed over the whole span; raises SkipSource.

    The models see the stored (resized) frames; frames outside the span stay empty.
    """
    keypoints = np.zeros((len(frames), NUM_KEYPOINTS, 3), dtype=np.float32)
    if not clips:
        return keypoints
    lo, hi = min(start for start, _ in clips), max(start + length for start, length in clips)
    try:
        keypoints[lo:hi] = models.pose().video(frames[lo:hi], config.smooth)
    except Exception as exn:  # noqa: BLE001 - a model failure skips this source, the run goes on
        raise SkipSource("pose_model_error", f"{type(exn).__name__}: {exn}") from exn
    return keypoints


def image_keypoints(path: Path, root: Path, config: PrepareConfig, models: Models, frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Keypoints ``(1, 133, 3)`` of one image in stored pixels (annotation file, sidecar or DWPose); raises SkipSource."""
    if config.pose == "dwpose":
        return models.pose().video(frames)
    if config.image_keypoints:
        table = models.keypoint_table(config.image_keypoints)
        name = path.relative_to(root).as_posix()
        found = table.get(name, table.get(path.name))
        if found is None:
            raise SkipSource("no_keypoints", f"{name} is not in {config.image_keypoints}")
        keypoints = found[None]
    else:
        keypoints = source_keypoints(path, root, config, 1, size)
    try:
        keypoints = check_keypoints(keypoints, 1, size[1], size[0], str(path), config.keypoint_threshold)
    except KeypointError as exn:
        raise SkipSource("keypoint_mismatch", str(exn)) from exn
    return scale_keypoints(keypoints, size, frames.shape[1:3])


def text_sidecar(path: Path) -> Path:
    """``STEM.text.json`` beside a source."""
    stem = path.name if path.is_dir() else path.stem
    return path.with_name(f"{stem}.text.json")


def read_text_boxes(path: Path, source_frames: int) -> list[list[float]]:
    """Text boxes ``[t, x0, y0, x1, y1]`` (source frame, source pixels) from a sidecar; ``[x0, y0, x1, y1]`` = every frame."""
    try:
        data = json.loads(path.read_text())
        boxes = data["boxes"] if isinstance(data, dict) else data
        out = []
        for box in boxes:
            values = [float(v) for v in box]
            if len(values) == 4:
                out += [[t, *values] for t in range(source_frames)]
            elif len(values) == 5 and 0 <= values[0] < source_frames:
                out.append(values)
            else:
                raise ValueError(f"box {box} is neither [x0, y0, x1, y1] nor [t, x0, y0, x1, y1] with t < {source_frames}")
        return out
    except (OSError, ValueError, TypeError, KeyError, json.JSONDecodeError) as exn:
        raise SkipSource("bad_text_boxes", f"{path}: {exn}") from exn


def clip_text_boxes(boxes: list[list[float]], indices: np.ndarray, source: tuple[int, int], out: tuple[int, int]) -> list[list[float]]:
    """Source boxes -> boxes of the selected frames (position in ``indices``) in stored pixels, clipped, empty ones dropped."""
    by_frame = defaultdict(list)
    for t, *box in boxes:
        by_frame[int(t)].append(box)
    sy, sx = out[0] / source[0], out[1] / source[1]
    result = []
    for position, index in enumerate(indices):
        for x0, y0, x1, y1 in by_frame.get(int(index), []):
            nx0, nx1 = np.clip([x0 * sx, x1 * sx], 0, out[1])
            ny0, ny1 = np.clip([y0 * sy, y1 * sy], 0, out[0])
            if nx1 > nx0 and ny1 > ny0:
                result.append([position, float(nx0), float(ny0), float(nx1), float(ny1)])
    return result


def ocr_boxes(frames: np.ndarray, stride: int, detect: TextDetector) -> list[list[float]]:
    """``[t, x0, y0, x1, y1]`` boxes of frames ``(N, H, W, 3)``: detected every ``stride`` frames, held in between."""
    boxes = []
    for start in range(0, len(frames), stride):
        for box in detect(frames[start]):
            boxes += [[t, *box] for t in range(start, min(start + stride, len(frames)))]
    return boxes


def person_visible(keypoints: np.ndarray, threshold: float, min_points: int) -> np.ndarray:
    """Per frame ``(T,)``: at least ``min_points`` body points above ``threshold``."""
    return (keypoints[:, BODY, 2] > threshold).sum(-1) >= min_points
