"""Video I/O: the shards' near-lossless H.264 codec, and videos for people to watch (comparison
grids, mp4 in yuv420p that plays everywhere, gif); every file is written atomically."""

from __future__ import annotations

import io
import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from common.files import atomic_write_bytes


def frames_uint8(video: Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()


def comparison_grid(reference: Tensor, pose: Tensor, generated: Tensor, target: Tensor | None = None) -> np.ndarray:
    """Rows of clips, columns reference | driving pose | generated | ground truth: (T, H*B, W*k, 3).

    reference (B, 3, H, W); pose, generated, target (B, 3, T, H, W); all in [-1, 1].
    """
    frames = generated.shape[2]
    columns = [reference[:, :, None].expand(-1, -1, frames, -1, -1), pose, generated]
    if target is not None:
        columns.append(target)
    rows = torch.cat([c.float().cpu() for c in columns], dim=-1)  # (B, 3, T, H, W*k)
    grid = torch.cat(list(rows), dim=-2)  # (3, T, H*B, W*k)
    return frames_uint8(grid)


def still_grid(grid: np.ndarray, frames: int = 4) -> np.ndarray:
    """``frames`` evenly spaced frames of a comparison grid video (T, H, W, 3) stacked top to bottom: (frames*H, W, 3)."""
    indices = np.linspace(0, grid.shape[0] - 1, num=min(frames, grid.shape[0])).round().astype(int)
    return np.concatenate(list(grid[indices]), axis=0)


def side_by_side(images: list[np.ndarray], gap: int = 8) -> np.ndarray:
    """uint8 (H_i, W_i, 3) images in a row, top-aligned on white, separated by ``gap``-pixel white columns."""
    height = max(image.shape[0] for image in images)
    padded = [np.pad(image, ((0, height - image.shape[0]), (0, 0), (0, 0)), constant_values=255) for image in images]
    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    parts = [part for image in padded for part in (image, spacer)][:-1]
    return np.concatenate(parts, axis=1)


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 (H, W, 3) image losslessly as PNG, atomically."""
    path = Path(path)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path


SHARD_VIDEO_CRF = 10
SHARD_VIDEO_PRESET = "fast"
SHARD_VIDEO_PIXEL_FORMAT = "yuv444p"


def _even_size(frames: np.ndarray) -> None:
    """Raise unless frames are ``(T, H, W, 3)`` uint8 with even H and W."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"video frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"H.264 needs even frame sizes, got {frames.shape[1]}x{frames.shape[2]} (HxW); pad or crop first")


def encode_video(frames: np.ndarray, fps: float) -> bytes:
    """uint8 ``(T, H, W, 3)`` -> H.264 (libx264, crf 10, preset fast, yuv444p) in an in-memory mp4.

    yuv444p keeps the sharp colour edges that 4:2:0 chroma subsampling smears: measured round
    trip on six default synthetic clips (33 frames, 128 px short side), mean PSNR 42.7 dB (worst
    clip 41.7) with yuv444p against 31.0 dB with yuv420p at the same settings. H and W must be
    even (refused otherwise, so the same data also encodes as yuv420p).
    """
    _even_size(frames)
    return h264_bytes(frames, fps, SHARD_VIDEO_PIXEL_FORMAT, {"crf": str(SHARD_VIDEO_CRF), "preset": SHARD_VIDEO_PRESET})


def h264_bytes(frames: np.ndarray, fps: float, pixel_format: str, options: dict[str, str]) -> bytes:
    """uint8 ``(T, H, W, 3)`` with even H and W -> libx264 in an in-memory mp4."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pixel_format
        stream.options = options
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def decode_video(data: bytes, name: str) -> np.ndarray:
    """mp4 bytes -> uint8 ``(T, H, W, 3)``; raises ValueError naming ``name`` when unreadable."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except (av.error.FFmpegError, ValueError, IndexError) as exn:
        raise ValueError(f"{name}: unreadable video ({exn})") from exn
    if not frames:
        raise ValueError(f"{name}: video has no frames")
    return np.stack(frames)


def mp4_bytes(frames: np.ndarray, fps: float) -> bytes:
    """uint8 (T, H, W, 3) -> H.264 yuv420p mp4 bytes (sizes padded to even)."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    return h264_bytes(frames, fps, "yuv420p", {"crf": "16"})


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float) -> Path:
    """Write uint8 (T, H, W, 3) frames to an mp4 atomically."""
    path = Path(path)
    atomic_write_bytes(path, mp4_bytes(frames, fps))
    return path


class Mp4Stream:
    """An mp4 written as frames arrive: a fragmented mp4 at ``NAME.partial.mp4`` that plays while it grows, renamed to ``path`` by :meth:`close`.

    Frames are uint8 (T, H, W, 3), H.264 yuv420p at crf 16 like :func:`write_mp4` (odd sizes padded).
    Leaving the ``with`` block by an exception keeps the partial file, playable up to its last fragment.
    """

    def __init__(self, path: str | os.PathLike, fps: float):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.stem + ".partial.mp4")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.partial), mode="w", format="mp4", options={"movflags": "frag_keyframe+empty_moov"})
        self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": "16", "tune": "zerolatency"}  # each frame leaves the encoder as it is written
        self.frames = 0

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 (T, H, W, 3) frames."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"video frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)))
        if self.frames == 0:
            self.stream.width, self.stream.height = frames.shape[2], frames.shape[1]
        for frame in frames:
            self.container.mux(self.stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        self.frames += len(frames)

    def close(self, finished: bool = True) -> Path:
        """Flush and close; a finished stream is renamed to ``path``, else the partial file stays."""
        self.container.mux(self.stream.encode())
        self.container.close()
        if finished:
            os.replace(self.partial, self.path)
            return self.path
        return self.partial

    def __enter__(self) -> Mp4Stream:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(finished=kind is None)


def write_gif(path: str | os.PathLike, frames: np.ndarray, fps: float) -> Path:
    """Write uint8 (T, H, W, 3) frames to a looping gif atomically."""
    path = Path(path)
    images = [Image.fromarray(f) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_frames(directory: str | os.PathLike, frames: np.ndarray) -> Path:
    """Write uint8 (T, H, W, 3) frames losslessly as ``frame_NNNN.png`` into ``directory``, atomically.

    The frames go into a hidden sibling folder that is renamed into place, so a reader sees the
    whole clip or none of it; an existing clip of the same name is replaced.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp / f"frame_{index:04d}.png")
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    return directory
