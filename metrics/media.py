"""Reading clips for evaluation: video files (PyAV) or folders of frames, paired by name.

A clip is a video file (``.mp4``, ``.webm``, ``.gif``, ``.mkv``, ``.mov``, ``.avi``) or a folder of
``.png`` / ``.jpg`` frames ordered by natural sort of their names. An input path is one clip (a
video file, or a folder holding frames directly) or a folder of clips, named by file stem or
subfolder name. Ground-truth sidecars follow the shard format (docs/ARCHITECTURE.md) next to the
target clip: ``NAME.pose.npy`` keypoints ``(T, 133, 3)``, ``NAME.mask.npy`` packed person masks and
``NAME.plate.npy`` the background plate (the scene without the person; synthetic data).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.video import decode_video

VIDEO_SUFFIXES = {".mp4", ".webm", ".gif", ".mkv", ".mov", ".avi"}
FRAME_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass(frozen=True)
class ClipPair:
    """A generated clip and its ground truth, sharing ``name``."""

    name: str
    generated: Path
    target: Path


def natural_key(path: Path) -> list:
    """Sort key that orders ``frame_2`` before ``frame_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def frame_files(directory: Path) -> list[Path]:
    """The frame images directly inside ``directory``, in natural order."""
    return sorted((p for p in directory.iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=natural_key)


def read_frames(directory: Path) -> np.ndarray:
    """A folder of frames as uint8 ``(T, H, W, 3)`` RGB; every frame must have the first one's size."""
    files = frame_files(directory)
    if not files:
        raise ValueError(f"{directory}: no .png/.jpg frames")
    frames = []
    for file in files:
        try:
            with Image.open(file) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except OSError as error:
            raise ValueError(f"{file}: cannot read image: {error}") from error
        if frames[-1].shape != frames[0].shape:
            size, first = frames[-1].shape[:2], frames[0].shape[:2]
            raise ValueError(f"{file}: frame size {size} differs from {files[0].name} {first}")
    return np.stack(frames)


def read_clip(path: Path) -> torch.Tensor:
    """A clip (video file or folder of frames) as uint8 ``(3, T, H, W)``."""
    frames = read_frames(path) if path.is_dir() else decode_video(path.read_bytes(), str(path))
    return torch.from_numpy(frames).permute(3, 0, 1, 2)


def is_clip(path: Path) -> bool:
    """Whether ``path`` is a video file or a folder holding frames directly."""
    if path.is_dir():
        return bool(frame_files(path))
    return path.suffix.lower() in VIDEO_SUFFIXES


def clip_name(path: Path) -> str:
    """Name that pairs a clip: file stem or folder name."""
    return path.name if path.is_dir() else path.stem


def list_clips(path: Path) -> dict[str, Path]:
    """``{name: clip path}`` of an input: itself if it is one clip, else the clips inside it."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if is_clip(path):
        return {clip_name(path): path}
    if not path.is_dir():
        raise ValueError(f"{path}: not a video ({', '.join(sorted(VIDEO_SUFFIXES))}) nor a folder")
    clips = {clip_name(child): child for child in sorted(path.iterdir()) if is_clip(child)}
    if not clips:
        raise ValueError(f"{path}: holds no videos and no folders of frames")
    return clips


def pair_clips(generated: Path, target: Path) -> list[ClipPair]:
    """Pair generated clips with ground truth by name; two single clips pair directly.

    Every generated clip needs a target; targets without a generated clip are left out.
    """
    generated_clips, target_clips = list_clips(generated), list_clips(target)
    if is_clip(generated) and is_clip(target):
        return [ClipPair(clip_name(generated), generated, target)]
    missing = sorted(set(generated_clips) - set(target_clips))
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} generated clip(s) have no ground truth of the same name in {target}: {shown}")
    return [ClipPair(name, path, target_clips[name]) for name, path in generated_clips.items()]


def sidecar(clip: Path, suffix: str) -> Path:
    """``NAME{suffix}`` beside a clip (``suffix`` like ``.pose.npy``)."""
    return clip.parent / f"{clip_name(clip)}{suffix}"


def load_array(path: Path) -> np.ndarray:
    """``np.load`` without pickles, with an error naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (needed by the configured metrics)")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{path}: not a plain .npy array: {error}") from error


def read_keypoints(clip: Path, frames: int) -> torch.Tensor:
    """The target's keypoints ``(T, 133, 3)`` float32 from ``NAME.pose.npy``."""
    path = sidecar(clip, ".pose.npy")
    keypoints = load_array(path)
    if keypoints.shape != (frames, 133, 3):
        raise ValueError(f"{path}: keypoints shape {keypoints.shape}, expected ({frames}, 133, 3)")
    return torch.from_numpy(keypoints.astype(np.float32))


def read_person_mask(clip: Path, frames: int, height: int, width: int) -> torch.Tensor:
    """The target's person mask ``(T, H, W)`` bool from ``NAME.mask.npy`` (``np.packbits(axis=-1)``)."""
    path = sidecar(clip, ".mask.npy")
    packed = load_array(path)
    if packed.dtype != np.uint8 or packed.shape != (frames, height, (width + 7) // 8):
        raise ValueError(
            f"{path}: packed mask {packed.dtype} {packed.shape}, expected uint8 ({frames}, {height}, {(width + 7) // 8})"
        )
    return torch.from_numpy(np.unpackbits(packed, axis=-1, count=width).astype(bool))


def read_plate(clip: Path, height: int, width: int) -> torch.Tensor:
    """The target's background plate ``(3, H, W)`` uint8 from ``NAME.plate.npy`` (``(H, W, 3)`` uint8)."""
    path = sidecar(clip, ".plate.npy")
    plate = load_array(path)
    if plate.dtype != np.uint8 or plate.shape != (height, width, 3):
        raise ValueError(f"{path}: plate {plate.dtype} {plate.shape}, expected uint8 ({height}, {width}, 3)")
    return torch.from_numpy(plate).permute(2, 0, 1)
