"""Decoding the input: videos and frame folders resampled to the target fps and resized, images loaded (bad input raises SkipSource)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from data.pose_import import natural_key
from data.prepare.config import PrepareConfig, SkipSource
from data.prepare.sources import IMAGE_SUFFIXES

VFR_TOLERANCE = 0.1  # relative spread of frame intervals above which a video counts as variable-rate
LOW_FPS_TOLERANCE = 1.01  # a target fps above source fps x this would duplicate frames


@dataclass
class Decoded:
    """Selected frames uint8 ``(N, H, W, 3)`` (resized), their source frame indices ``(N,)`` and the source's facts."""

    frames: np.ndarray
    indices: np.ndarray
    source_size: tuple[int, int]  # (height, width)
    source_frames: int
    source_fps: float
    fps: float
    variable_rate: bool


def output_size(height: int, width: int, size: int | None) -> tuple[int, int]:
    """(H, W) of the stored frames: short side ``size`` with even sides, or the source size cut to even sides."""
    if size is None:
        return height - height % 2, width - width % 2
    scale = size / min(height, width)
    return max(2, 2 * round(height * scale / 2)), max(2, 2 * round(width * scale / 2))


def resize(image: np.ndarray, out: tuple[int, int]) -> np.ndarray:
    """uint8 ``(H, W, 3)`` -> ``out`` (H, W): a crop when only cutting odd sides, else a bilinear (antialiased) resize."""
    height, width = image.shape[:2]
    if out[0] <= height and out[1] <= width and (height - out[0]) < 2 and (width - out[1]) < 2:
        return np.ascontiguousarray(image[: out[0], : out[1]])
    return np.asarray(Image.fromarray(image).resize((out[1], out[0]), Image.BILINEAR))


class _Selector:
    """Streaming nearest-timestamp resampler: feed (time, frame) in order, keep the frames nearest each target time."""

    def __init__(self, fps: float | None, transform: Callable[[Any], Any]):
        self.fps, self.transform = fps, transform  # transform: applied to kept frames only (the resize)
        self.target = 0  # index of the next target time
        self.previous: tuple[float, int, Any] | None = None
        self.kept: list[tuple[int, Any]] = []

    def feed(self, time_s: float, index: int, frame: Any) -> None:
        """Offer the next frame (time relative to the first frame, seconds)."""
        if self.fps is None:
            self.kept.append((index, self.transform(frame)))
            return
        while self.target / self.fps <= time_s + 1e-9:
            t = self.target / self.fps
            take_previous = self.previous is not None and t - self.previous[0] < time_s - t
            chosen_index, chosen = (self.previous[1], self.previous[2]) if take_previous else (index, frame)
            if self.kept and self.kept[-1][0] == chosen_index:
                self.kept.append(self.kept[-1])  # a repeated frame (target rate above the source's)
            else:
                self.kept.append((chosen_index, self.transform(chosen)))
            self.target += 1
        self.previous = (time_s, index, frame)


def _is_variable(times: list[float]) -> bool:
    """Whether frame intervals vary by more than :data:`VFR_TOLERANCE` of their median."""
    if len(times) < 3:
        return False
    deltas = np.diff(np.asarray(times))
    median = float(np.median(deltas))
    return median <= 0 or float(deltas.max() - deltas.min()) > VFR_TOLERANCE * median


def _frames_of_video(path: Path) -> Iterator[tuple[float | None, np.ndarray]]:
    """(time in seconds or None, rgb frame) of a video file in presentation order; raises SkipSource."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exn:
        raise SkipSource("unreadable_video", str(exn)) from exn
    with container:
        if not container.streams.video:
            raise SkipSource("unreadable_video", "no video stream")
        stream = container.streams.video[0]
        count = 0
        try:
            for frame in container.decode(stream):
                count += 1
                yield frame.time, frame.to_ndarray(format="rgb24")
        except (av.error.FFmpegError, ValueError) as exn:
            if count == 0:
                raise SkipSource("unreadable_video", str(exn)) from exn
            raise SkipSource("corrupt_frames", f"decoding failed after {count} frames: {exn}") from exn


def _frames_of_folder(path: Path, fps: float) -> Iterator[tuple[float | None, np.ndarray]]:
    """(time, rgb frame) of a folder of images in natural order at ``fps``; raises SkipSource."""
    files = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
    for index, file in enumerate(files):
        try:
            with Image.open(file) as image:
                yield index / fps, np.asarray(image.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as exn:
            raise SkipSource("corrupt_frames", f"{file.name} does not load: {exn}") from exn


def _stream_rate(path: Path) -> float | None:
    """The stream's declared average frame rate (None when unknown)."""
    try:
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate if container.streams.video else None
    except (av.error.FFmpegError, OSError, ValueError):
        return None
    return float(rate) if rate else None


def decode_source(path: Path, config: PrepareConfig) -> Decoded:
    """Decode, resample and resize one video or frame folder; raises SkipSource for bad input."""
    if path.is_file() and path.stat().st_size == 0:
        raise SkipSource("empty_file")
    folder = path.is_dir()
    frames = _frames_of_folder(path, config.frame_fps) if folder else _frames_of_video(path)
    declared = config.frame_fps if folder else _stream_rate(path)
    times: list[float] = []
    first_time, shape, out = None, None, None
    selector = _Selector(config.fps, lambda image: resize(image, out))
    index = -1
    for index, (time_s, image) in enumerate(frames):
        if shape is None:
            shape = image.shape
            if min(shape[:2]) < config.min_size:
                raise SkipSource("too_small", f"{shape[1]}x{shape[0]} < min_size {config.min_size}")
            out = output_size(shape[0], shape[1], config.size)
        elif image.shape != shape:
            raise SkipSource("inconsistent_size", f"frame {index} is {image.shape[1]}x{image.shape[0]}, frame 0 {shape[1]}x{shape[0]}")
        if time_s is None:
            time_s = index / (declared or 30.0)
        first_time = time_s if first_time is None else first_time
        times.append(time_s - first_time)
        selector.feed(times[-1], index, image)
    if index < 0:
        raise SkipSource("no_frames")
    variable = _is_variable(times)
    measured = (len(times) - 1) / times[-1] if len(times) > 1 and times[-1] > 0 else (declared or config.frame_fps)
    source_fps = float(declared) if declared and not variable else measured
    if config.fps is None and variable:
        raise SkipSource("variable_frame_rate", f"intervals {np.diff(times).min():.4f}-{np.diff(times).max():.4f} s; set fps= to resample")
    if config.fps is not None and config.fps > source_fps * LOW_FPS_TOLERANCE:
        raise SkipSource("low_frame_rate", f"source {source_fps:.3f} fps < target {config.fps}")
    indices = np.array([i for i, _ in selector.kept], dtype=np.int64)
    resized = np.stack([image for _, image in selector.kept])
    return Decoded(resized, indices, (shape[0], shape[1]), index + 1, source_fps, config.fps or source_fps, variable)


def load_image(path: Path, config: PrepareConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """An image resized to the stored size ``(1, H, W, 3)`` and its source size; raises SkipSource."""
    if not path.is_file():
        raise SkipSource("missing_image", str(path))
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exn:
        raise SkipSource("unreadable_image", f"{path}: {exn}") from exn
    if min(rgb.shape[:2]) < config.min_size:
        raise SkipSource("too_small", f"{path}: {rgb.shape[1]}x{rgb.shape[0]} < min_size {config.min_size}")
    out = output_size(rgb.shape[0], rgb.shape[1], config.size)
    return resize(rgb, out)[None], rgb.shape[:2]
