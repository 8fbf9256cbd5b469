"""Writing videos for people to watch: comparison grids, mp4 (yuv420p, plays everywhere), gif."""

from __future__ import annotations

import io
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from torch import Tensor


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


def _atomic_bytes(path: Path, data: bytes) -> None:
    """Write bytes through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def mp4_bytes(frames: np.ndarray, fps: float) -> bytes:
    """uint8 (T, H, W, 3) -> H.264 yuv420p mp4 bytes (sizes padded to even)."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "16"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float) -> Path:
    """Write uint8 (T, H, W, 3) frames to an mp4 atomically."""
    path = Path(path)
    _atomic_bytes(path, mp4_bytes(frames, fps))
    return path


def write_gif(path: str | os.PathLike, frames: np.ndarray, fps: float) -> Path:
    """Write uint8 (T, H, W, 3) frames to a looping gif atomically."""
    path = Path(path)
    images = [Image.fromarray(f) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    _atomic_bytes(path, buffer.getvalue())
    return path
