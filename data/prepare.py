"""Real media -> training shards: ``python -m data.prepare videos=DIR out=SHARDS [key=value ...]``.

Sources: a folder of videos (``.mp4 .webm .mov .mkv .avi .m4v``, searched recursively) and folders
of frames (a directory holding images directly, read in natural order at ``frame_fps``), and/or
an image-pair dataset (``images=DIR pairs=FILE``, DeepFashion-style pose transfer). Each video is
decoded with PyAV, resampled to ``fps`` by timestamp (nearest frame, so variable frame rates come
out right), resized to short side ``size`` (sides rounded to even numbers for H.264), cut into
clips of ``clip_frames`` every ``clip_stride`` frames, given whole-body keypoints (``pose=sidecar``:
the user's file beside the video, see :mod:`data.pose_import`; ``pose=dwpose``: the ONNX models
in ``dwpose_dir``, see :mod:`common.pose.dwpose`) and text boxes (``text=sidecar``: ``STEM.text.json``;
``text=ocr``: an installed OCR detector), and written as shards in the documented format
(docs/ARCHITECTURE.md) with ``manifest.json`` (which also counts the samples per bucket
``"HxWxT"`` of each split and subset under ``buckets``), so ``python -m experiments.fit data=prepared
data.root=SHARDS`` trains on it. The region-weight masks (head, hands, text) are computed from
the stored keypoints and text boxes when batches are built (:mod:`data.masks`).

Splits: ``train/``, ``val/``, ``test/`` top-level folders when the source folder has them
(``split=auto`` or ``folders``), else by a hash of the identity (the source file, or its folder
with ``identity=folder``) with ``val_fraction``/``test_fraction``; val (and test, when asked for)
always gets at least one identity when there are enough.

Bad input never crashes the run and never becomes a wrong sample: each problem skips the source
(or clip, or pair) with a reason, and ``OUT/prepare_report.json`` lists the counts per reason and
the offending paths. Resumable: shards are written under a temporary name and renamed when
complete; ``OUT/prepare_state.json`` records the clips inside finished shards, and a re-run skips
them (and sources already finished) and appends new shards. Changing a setting that changes the
output needs ``overwrite=true``.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import av
import numpy as np
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from PIL import Image
from tqdm import tqdm

from common.pose.layout import BODY, NUM_KEYPOINTS
from data.pose_import import KeypointError, check_keypoints, find_sidecar, load_keypoints, natural_key, read_deepfashion_annotations
from common.files import atomic_write_json
from data.shards import Sample, ShardWriter, encode_sample, write_manifest

GENERATOR_NAME = "data.prepare"
GENERATOR_VERSION = 1
STATE_NAME = "prepare_state.json"
REPORT_NAME = "prepare_report.json"
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SPLITS = ("train", "val", "test")
VFR_TOLERANCE = 0.1  # relative spread of frame intervals above which a video counts as variable-rate
LOW_FPS_TOLERANCE = 1.01  # a target fps above source fps x this would duplicate frames
REASONS = {
    "empty_file": "the file has zero bytes",
    "unreadable_video": "PyAV cannot open or decode it",
    "no_frames": "it decodes to no frames",
    "corrupt_frames": "decoding stopped on a broken frame, or a frame image does not load",
    "inconsistent_size": "frames change size inside the video",
    "variable_frame_rate": "frame intervals vary and no target fps was given to resample by timestamp",
    "low_frame_rate": "the source has fewer frames per second than the target fps",
    "too_small": "the frames are smaller than min_size",
    "too_short": "fewer frames than min_frames after resampling",
    "no_keypoints": "no keypoint sidecar file was found",
    "keypoint_mismatch": "the keypoint file does not read or does not fit the video (frames, size, layout)",
    "no_person": "too few frames with a visible person (clip or image)",
    "bad_text_boxes": "the text-box sidecar does not parse",
    "missing_image": "an image named in the pairs file does not exist",
    "unreadable_image": "an image does not load",
    "bad_pair": "a line of the pairs file cannot be parsed",
    "pose_model_error": "the pose model failed on this source",
}


@dataclass
class PrepareConfig:
    """Settings of ``python -m data.prepare`` (``key=value`` on the command line)."""

    out: str = MISSING
    videos: Optional[str] = None  # folder of videos / frame folders
    images: Optional[str] = None  # folder of images for pose-transfer pairs
    pairs: Optional[str] = None  # pairs file (csv with from,to columns, or "a b" / "a,b" lines), relative to images
    pairs_split: Optional[str] = None  # put every pair in this split (DeepFashion ships train/test pair lists)
    image_keypoints: Optional[str] = None  # DeepFashion annotation csv (name:keypoints_y:keypoints_x)
    poses: Optional[str] = None  # sidecar keypoints in a parallel tree instead of beside the media
    pose: str = "sidecar"  # sidecar | dwpose
    dwpose_dir: str = "models/dwpose"  # yolox_l.onnx and dw-ll_ucoco_384.onnx
    smooth: int = 0  # DWPose: moving-average window over time (frames); 0/1 = off
    keypoint_threshold: float = 0.3  # confidence of a visible point
    fps: Optional[float] = None  # target frame rate; null keeps the source rate
    frame_fps: float = 30.0  # frame rate of folders of frames
    clip_frames: int = 33
    clip_stride: Optional[int] = None  # frames between clip starts; null = clip_frames (no overlap)
    min_frames: Optional[int] = None  # a shorter video becomes one clip if it has at least this many; null = clip_frames
    max_clips: Optional[int] = None  # per video
    size: Optional[int] = None  # short side in pixels; null keeps the source size (odd sides lose a row/column)
    min_size: int = 32
    min_person_fraction: float = 0.5  # of a clip's frames showing a person
    min_body_points: int = 4  # visible body points that make a frame "show a person"
    text: str = "sidecar"  # sidecar | ocr | none
    ocr_stride: int = 4  # text=ocr: detect every this many frames, boxes hold until the next detection
    split: str = "auto"  # auto | folders | hash
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    identity: str = "file"  # file | folder
    workers: int = 1
    samples_per_shard: int = 64
    overwrite: bool = False  # delete what an earlier run wrote and start over
    retry_skipped: bool = False  # process again sources an earlier run skipped
    progress: bool = True

    def check(self) -> None:
        """Raise ValueError for settings that cannot work, naming the key."""
        choices = {"pose": ("sidecar", "dwpose"), "text": ("sidecar", "ocr", "none"), "split": ("auto", "folders", "hash"), "identity": ("file", "folder")}
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ValueError(f"{key}={getattr(self, key)!r} is not one of {', '.join(valid)}")
        if self.videos is None and self.images is None:
            raise ValueError("give videos=DIR and/or images=DIR (with pairs=FILE)")
        if self.images is not None and self.pairs is None:
            raise ValueError("images=DIR needs pairs=FILE (the pose-transfer pairs list)")
        if self.clip_frames < 1 or (self.clip_stride is not None and self.clip_stride < 1):
            raise ValueError(f"clip_frames and clip_stride must be positive, got {self.clip_frames}, {self.clip_stride}")
        if self.fps is not None and self.fps <= 0 or self.frame_fps <= 0:
            raise ValueError(f"fps and frame_fps must be positive, got {self.fps}, {self.frame_fps}")
        if self.size is not None and self.size < self.min_size:
            raise ValueError(f"size={self.size} is below min_size={self.min_size}")
        if not (0 <= self.val_fraction and 0 <= self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be >= 0 and sum to less than 1")
        if self.pairs_split is not None and self.pairs_split not in SPLITS:
            raise ValueError(f"pairs_split={self.pairs_split!r} is not one of {', '.join(SPLITS)}")
        if self.workers < 1 or self.samples_per_shard < 1:
            raise ValueError("workers and samples_per_shard must be at least 1")

    def settings(self) -> dict:
        """The settings that change the output (an earlier run with other settings needs overwrite=true)."""
        skip = {"out", "workers", "overwrite", "retry_skipped", "progress"}
        return {key: value for key, value in asdict(self).items() if key not in skip}


class SkipSource(Exception):
    """A source (or clip, or pair) that is skipped: ``reason`` (a key of :data:`REASONS`) and a detail."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


# ----------------------------------------------------------------------------- sources


@dataclass
class Job:
    """One unit of work: a video / frame folder (``kind="video"``) or an image pair (``kind="pair"``)."""

    kind: str
    source: str  # the report's name for it: path relative to its root (pairs: "a|b")
    split: str
    identity: str
    paths: tuple[str, ...]  # absolute media paths (pairs: two images)
    done: frozenset = frozenset()  # keys already in finished shards


@dataclass
class Result:
    """What a worker returns: encoded samples (key, webdataset dict), skips (where, reason, detail), adjustments."""

    job: Job
    samples: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    adjusted: list = field(default_factory=list)
    clips_total: int = 0


def is_frame_folder(path: Path) -> bool:
    """Whether a directory holds image files directly (a video as frames)."""
    return path.is_dir() and any(child.suffix.lower() in IMAGE_SUFFIXES for child in path.iterdir() if child.is_file())


def find_videos(root: Path) -> list[Path]:
    """Video files and frame folders under ``root``, sorted; frame folders are not searched further."""
    found = []
    for directory, subdirs, files in os.walk(root):
        directory = Path(directory)
        subdirs.sort()
        keep = []
        for name in subdirs:
            (found if is_frame_folder(directory / name) else keep).append(directory / name)
        subdirs[:] = [path.name for path in keep]
        found += [directory / name for name in files if Path(name).suffix.lower() in VIDEO_SUFFIXES]
    return sorted(found)


def slug(text: str, limit: int = 48) -> str:
    """A key-safe ``[A-Za-z0-9_-]`` version of ``text`` with a short hash of the original appended."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[-limit:] or "x"
    return f"{safe}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def identity_of(relative: Path, rule: str) -> str:
    """Identity of a source: its path without suffix (``file``) or its folder (``folder``)."""
    if rule == "folder" and relative.parent != Path("."):
        return relative.parent.as_posix()
    return relative.with_suffix("").as_posix() if relative.suffix else relative.as_posix()


def _hash01(text: str) -> float:
    """A stable number in [0, 1) from ``text``."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:12], 16) / 16**12


def assign_splits(identities: list[str], config: PrepareConfig, known: dict[str, str]) -> dict[str, str]:
    """Identity -> split by hash (earlier runs' choices kept); val/test get one identity when empty and there are enough."""
    splits = dict(known)
    new = sorted(set(identities) - set(known), key=_hash01)
    for identity in new:
        h = _hash01(identity)
        splits[identity] = "val" if h < config.val_fraction else "test" if h < config.val_fraction + config.test_fraction else "train"
    for split, fraction, minimum in (("val", config.val_fraction, 2), ("test", config.test_fraction, 3)):
        if fraction > 0 and len(set(identities)) >= minimum and split not in {splits[i] for i in identities}:
            movable = [i for i in new if splits[i] == "train"]
            if len(movable) > 1 or (movable and any(splits[i] == "train" for i in identities if i not in movable)):
                splits[movable[0]] = split
    return splits


def _folder_split(relative: Path) -> str | None:
    """The split named by the first folder of ``relative`` (train/val/test), if any."""
    first = relative.parts[0] if len(relative.parts) > 1 else None
    return first if first in SPLITS else None


def video_jobs(config: PrepareConfig, root: Path, known: dict[str, str]) -> list[Job]:
    """Jobs of all videos under ``root`` with their identity and split."""
    sources = find_videos(root)
    relatives = [source.relative_to(root) for source in sources]
    by_folder = config.split == "folders" or (config.split == "auto" and any(_folder_split(r) for r in relatives))
    identities = [identity_of(r, config.identity) for r in relatives]
    if by_folder:
        splits = {identity: _folder_split(r) or "train" for identity, r in zip(identities, relatives)}
    else:
        splits = assign_splits(identities, config, known)
    return [Job("video", r.as_posix(), splits[i], i, (str(s),)) for s, r, i in zip(sources, relatives, identities)]


def read_pairs(path: Path) -> list[tuple[str, str] | str]:
    """Pairs file -> (from, to) names; a line that cannot be parsed becomes its text (reported as bad_pair)."""
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    pairs: list[tuple[str, str] | str] = []
    header = [part.strip().lower() for part in re.split(r"[,\s]+", lines[0])] if lines else []
    start = 1 if {"from", "to"} <= set(header) else 0
    columns = (header.index("from"), header.index("to")) if start else (0, 1)
    for line in lines[start:]:
        parts = [part.strip() for part in re.split(r",|\s+", line) if part.strip()]
        pairs.append((parts[columns[0]], parts[columns[1]]) if len(parts) > max(columns) else line)
    return pairs


def pair_jobs(config: PrepareConfig, root: Path, known: dict[str, str]) -> tuple[list[Job], list[tuple[str, str, str]]]:
    """Jobs of the pairs list and the lines that could not be parsed (as skips)."""
    pairs_path = Path(config.pairs) if Path(config.pairs).is_absolute() else root / config.pairs
    if not pairs_path.is_file():
        raise FileNotFoundError(f"pairs file {pairs_path} does not exist")
    parsed = read_pairs(pairs_path)
    good = [pair for pair in parsed if isinstance(pair, tuple)]
    bad = [(f"{pairs_path}: {line}", "bad_pair", "expected two image names") for line in parsed if isinstance(line, str)]
    identities = [identity_of(Path(a), config.identity) for a, _ in good]
    splits = {i: config.pairs_split for i in identities} if config.pairs_split else assign_splits(identities, config, known)
    jobs = [Job("pair", f"{a}|{b}", splits[i], i, (str(root / a), str(root / b))) for (a, b), i in zip(good, identities)]
    return jobs, bad


# ----------------------------------------------------------------------------- decoding


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


def _resize(image: np.ndarray, out: tuple[int, int]) -> np.ndarray:
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
    selector = _Selector(config.fps, lambda image: _resize(image, out))
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


# ----------------------------------------------------------------------------- keypoints and text


_DWPOSE = None  # one DWPose per worker process


def _dwpose(config: PrepareConfig):
    """This process's DWPose extractor (created on first use)."""
    global _DWPOSE
    if _DWPOSE is None:
        from common.pose.dwpose import DWPose

        _DWPOSE = DWPose(config.dwpose_dir, threads=1 if config.workers > 1 else 0, keypoint_threshold=config.keypoint_threshold)
    return _DWPOSE


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


def video_keypoints(frames: np.ndarray, clips: list[tuple[int, int]], config: PrepareConfig) -> np.ndarray:
    """DWPose keypoints ``(N, 133, 3)`` of the stored frames the ``clips`` cover, tracked and smoothed over the whole span; raises SkipSource.

    The models see the stored (resized) frames; frames outside the span stay empty.
    """
    keypoints = np.zeros((len(frames), NUM_KEYPOINTS, 3), dtype=np.float32)
    if not clips:
        return keypoints
    lo, hi = min(start for start, _ in clips), max(start + length for start, length in clips)
    try:
        keypoints[lo:hi] = _dwpose(config).video(frames[lo:hi], config.smooth)
    except Exception as exn:  # noqa: BLE001 - a model failure skips this source, the run goes on
        raise SkipSource("pose_model_error", f"{type(exn).__name__}: {exn}") from exn
    return keypoints


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


def ocr_detector() -> Callable[[np.ndarray], list[list[float]]]:
    """A text detector from an installed OCR package (rapidocr_onnxruntime, then easyocr): rgb frame -> [x0, y0, x1, y1] boxes."""
    try:
        from rapidocr_onnxruntime import RapidOCR

        engine = RapidOCR()

        def detect(frame: np.ndarray) -> list[list[float]]:
            """Boxes of RapidOCR's quadrilaterals."""
            result, _ = engine(frame)
            return [_quad_box(item[0]) for item in (result or [])]

        return detect
    except ImportError:
        pass
    try:
        import easyocr

        reader = easyocr.Reader(["en"], gpu=False, verbose=False)
        return lambda frame: [_quad_box(item[0]) for item in reader.readtext(frame)]
    except ImportError as exn:
        raise ImportError("text=ocr needs an OCR package: pip install rapidocr_onnxruntime (or easyocr); or use text=sidecar / none") from exn


def _quad_box(quad: Any) -> list[float]:
    """Four corner points -> [x0, y0, x1, y1]."""
    points = np.asarray(quad, dtype=np.float64).reshape(-1, 2)
    return [float(points[:, 0].min()), float(points[:, 1].min()), float(points[:, 0].max()), float(points[:, 1].max())]


_OCR = None


def ocr_boxes(frames: np.ndarray, stride: int) -> list[list[float]]:
    """``[t, x0, y0, x1, y1]`` boxes of frames ``(N, H, W, 3)``: detected every ``stride`` frames, held in between."""
    global _OCR
    if _OCR is None:
        _OCR = ocr_detector()
    boxes = []
    for start in range(0, len(frames), stride):
        for box in _OCR(frames[start]):
            boxes += [[t, *box] for t in range(start, min(start + stride, len(frames)))]
    return boxes


def person_visible(keypoints: np.ndarray, threshold: float, min_points: int) -> np.ndarray:
    """Per frame ``(T,)``: at least ``min_points`` body points above ``threshold``."""
    return (keypoints[:, BODY, 2] > threshold).sum(-1) >= min_points


# ----------------------------------------------------------------------------- workers


def clip_starts(count: int, config: PrepareConfig) -> list[tuple[int, int]]:
    """(start, length) of the clips of ``count`` frames."""
    stride = config.clip_stride or config.clip_frames
    minimum = config.min_frames or config.clip_frames
    if count < config.clip_frames:
        return [(0, count)] if count >= minimum else []
    starts = list(range(0, count - config.clip_frames + 1, stride))
    if config.max_clips is not None:
        starts = starts[: config.max_clips]
    return [(start, config.clip_frames) for start in starts]


def _meta(job: Job, kind: str, fps: float, frames: np.ndarray, boxes: list, **extra) -> dict:
    """Sample metadata as the shard format defines it."""
    return {"identity": job.identity, "split": job.split, "kind": kind, "fps": float(fps), "width": int(frames.shape[2]),
            "height": int(frames.shape[1]), "num_frames": int(frames.shape[0]), "text_boxes": boxes, "source": job.source, **extra}


def process_video(job: Job, config: PrepareConfig, root: Path) -> Result:
    """Decode a video, attach keypoints and text boxes, cut and encode its clips (skips go into the result)."""
    result = Result(job)
    path = Path(job.paths[0])
    try:
        decoded = decode_source(path, config)
        if decoded.variable_rate:
            result.adjusted.append(("resampled_variable_rate", job.source))
        if decoded.source_size[0] % 2 or decoded.source_size[1] % 2:
            result.adjusted.append(("odd_size_cut_to_even" if config.size is None else "odd_size_resized", job.source))
        out = decoded.frames.shape[1:3]
        clips = clip_starts(len(decoded.frames), config)
        if not clips:
            raise SkipSource("too_short", f"{len(decoded.frames)} frames at {decoded.fps:g} fps < {config.min_frames or config.clip_frames}")
        boxes = []
        if config.text == "sidecar" and text_sidecar(path).is_file():
            boxes = clip_text_boxes(read_text_boxes(text_sidecar(path), decoded.source_frames), decoded.indices, decoded.source_size, out)
        elif config.text == "ocr":
            boxes = ocr_boxes(decoded.frames, config.ocr_stride)
        keys = [f"{slug(job.source)}-c{number:03d}" for number in range(len(clips))]
        todo = [clip for clip, key in zip(clips, keys) if key not in job.done]
        if config.pose == "sidecar":
            keypoints = source_keypoints(path, root, config, decoded.source_frames, decoded.source_size)[decoded.indices]
            keypoints = scale_keypoints(keypoints, decoded.source_size, out)
        else:
            keypoints = video_keypoints(decoded.frames, todo, config)
    except SkipSource as skip:
        result.skipped.append((job.source, skip.reason, skip.detail))
        return result
    result.clips_total = len(clips)
    for number, ((start, length), key) in enumerate(zip(clips, keys)):
        if key in job.done:
            continue
        frames = decoded.frames[start : start + length]
        clip_kp = keypoints[start : start + length]
        visible = person_visible(clip_kp, config.keypoint_threshold, config.min_body_points)
        if visible.mean() < config.min_person_fraction:
            result.skipped.append((f"{job.source}#clip{number}", "no_person", f"{visible.sum()}/{length} frames show a person"))
            continue
        clip_boxes = [[t - start, *box] for t, *box in boxes if start <= t < start + length]
        meta = _meta(job, "video", decoded.fps, frames, clip_boxes, source_start=int(decoded.indices[start]), source_fps=decoded.source_fps)
        result.samples.append((key, encode_sample(Sample(key=key, frames=frames, keypoints=clip_kp, meta=meta))))
    return result


def _load_image(path: Path, config: PrepareConfig) -> tuple[np.ndarray, tuple[int, int]]:
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
    return _resize(rgb, out)[None], rgb.shape[:2]


_ANNOTATIONS: dict[str, dict] = {}


def _image_keypoints(path: Path, root: Path, config: PrepareConfig, frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Keypoints ``(1, 133, 3)`` of one image in stored pixels (annotation file, sidecar or DWPose); raises SkipSource."""
    if config.pose == "dwpose":
        return _dwpose(config).video(frames)
    if config.image_keypoints:
        if config.image_keypoints not in _ANNOTATIONS:
            _ANNOTATIONS[config.image_keypoints] = read_deepfashion_annotations(config.image_keypoints)
        table = _ANNOTATIONS[config.image_keypoints]
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


def process_pair(job: Job, config: PrepareConfig, root: Path) -> Result:
    """Two one-frame image samples naming each other as ``pair`` (or the skip)."""
    result = Result(job, clips_total=2)
    keys = [f"pair-{slug(job.source)}-{tag}" for tag in ("a", "b")]
    samples = []
    try:
        for path in map(Path, job.paths):
            frames, size = _load_image(path, config)
            keypoints = _image_keypoints(path, root, config, frames, size)
            if not person_visible(keypoints, config.keypoint_threshold, config.min_body_points).all():
                raise SkipSource("no_person", f"{path.name}: fewer than {config.min_body_points} visible body points")
            samples.append((frames, keypoints))
    except SkipSource as skip:
        result.skipped.append((job.source, skip.reason, skip.detail))
        return result
    for index, (frames, keypoints) in enumerate(samples):
        if keys[index] in job.done:
            continue
        meta = _meta(job, "image", config.fps or config.frame_fps, frames, [], pair=keys[1 - index])
        result.samples.append((keys[index], encode_sample(Sample(key=keys[index], frames=frames, keypoints=keypoints, meta=meta))))
    return result


def run_job(arguments: tuple[Job, PrepareConfig, str]) -> Result:
    """Worker entry point: process one job; unexpected errors become a skip instead of killing the run."""
    job, config, root = arguments
    try:
        return (process_video if job.kind == "video" else process_pair)(job, config, Path(root))
    except Exception as exn:  # noqa: BLE001
        reason = "unreadable_video" if job.kind == "video" else "unreadable_image"
        return Result(job, skipped=[(job.source, reason, f"unexpected {type(exn).__name__}: {exn}")])


# ----------------------------------------------------------------------------- state, manifest, report


def empty_state(config: PrepareConfig) -> dict:
    """The state of a fresh output directory."""
    return {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "settings": config.settings(), "runs": 0,
            "identities": {}, "sources": {}, "clips": {}, "shards": {s: {"video": [], "images": []} for s in SPLITS},
            "samples": {s: {"video": 0, "images": 0} for s in SPLITS}, "buckets": {s: {"video": {}, "images": {}} for s in SPLITS},
            "adjusted": {}}


def load_state(out: Path, config: PrepareConfig) -> dict:
    """The state of an earlier run (same settings), or a fresh one; ``overwrite`` deletes earlier output first."""
    path = out / STATE_NAME
    if config.overwrite:
        remove_output(out)
    if not path.is_file():
        return empty_state(config)
    state = json.loads(path.read_text())
    if state.get("settings") != config.settings() or state.get("version") != GENERATOR_VERSION:
        changed = sorted(k for k in set(config.settings()) | set(state.get("settings", {})) if config.settings().get(k) != state.get("settings", {}).get(k))
        raise ValueError(f"{out} was prepared with other settings ({', '.join(changed) or 'version'} differ): add overwrite=true to start over, or use another out=")
    return state


def remove_output(out: Path) -> None:
    """Delete shards, temporary files, state, manifest and report that data.prepare wrote in ``out``."""
    for split in SPLITS:
        for pattern in ("shard-r*.tar", "images-r*.tar", ".shard-r*.tar.tmp", ".images-r*.tar.tmp"):
            for path in (out / split).glob(pattern):
                path.unlink()
    for name in (STATE_NAME, REPORT_NAME, "manifest.json"):
        (out / name).unlink(missing_ok=True)


def remove_partial(out: Path) -> int:
    """Delete shards an interrupted run left half-written (temporary names); returns how many."""
    removed = 0
    for split in SPLITS:
        for path in list((out / split).glob(".shard-r*.tar.tmp")) + list((out / split).glob(".images-r*.tar.tmp")):
            path.unlink()
            removed += 1
    return removed


def manifest_of(state: dict) -> dict:
    """The dataset manifest (the layout data.synthetic writes) of the finished shards."""
    identities = defaultdict(set)
    for info in state["sources"].values():
        if info.get("clips"):
            identities[info["split"]].add(info["identity"])
    splits = {split: {"identities": sorted(identities[split]),
                      "video": {"shards": list(state["shards"][split]["video"]), "samples": state["samples"][split]["video"]},
                      "images": {"shards": list(state["shards"][split]["images"]), "samples": state["samples"][split]["images"]},
                      "buckets": state["buckets"][split]}
              for split in SPLITS}
    return {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "config": state["settings"], "splits": splits}


def report_of(state: dict, run: dict) -> dict:
    """``prepare_report.json``: totals, skips per reason with the offending paths, adjustments, this run's throughput."""
    skipped: dict[str, dict] = {}
    for _, info in sorted(state["sources"].items()):
        for where, reason, detail in info.get("skipped", []):
            entry = skipped.setdefault(reason, {"count": 0, "description": REASONS[reason], "paths": [], "details": []})
            entry["count"] += 1
            entry["paths"].append(where)
            entry["details"].append(detail)
    clips = sum(state["samples"][s]["video"] for s in SPLITS)
    images = sum(state["samples"][s]["images"] for s in SPLITS)
    return {
        "sources": len(state["sources"]), "video_clips": clips, "image_samples": images,
        "samples_per_split": state["samples"], "skipped": skipped, "skipped_total": sum(e["count"] for e in skipped.values()),
        "adjusted": {reason: {"count": len(paths), "paths": paths} for reason, paths in sorted(state["adjusted"].items())},
        "last_run": run,
    }


# ----------------------------------------------------------------------------- the run


class _Writers:
    """Open shard writers per (split, kind), tracking which keys sit in each unfinished shard."""

    def __init__(self, out: Path, run: int, samples_per_shard: int):
        self.out, self.run, self.samples_per_shard = out, run, samples_per_shard
        self.writers: dict[tuple[str, str], ShardWriter] = {}
        self.pending: dict[tuple[str, str], list[str]] = defaultdict(list)

    def write(self, split: str, kind: str, key: str, raw: dict) -> tuple[list[str], list[str]]:
        """Write one sample; returns (keys now inside finished shards, paths of finished shards)."""
        slot = (split, kind)
        if slot not in self.writers:
            prefix = f"{'shard' if kind == 'video' else 'images'}-r{self.run:03d}"
            self.writers[slot] = ShardWriter(self.out / split, prefix=prefix, max_samples=self.samples_per_shard)
        writer = self.writers[slot]
        before = len(writer.paths)
        writer.write_encoded(raw)
        self.pending[slot].append(key)
        if len(writer.paths) > before:
            keys, self.pending[slot] = self.pending[slot], []
            return keys, [str(writer.paths[-1].relative_to(self.out))]
        return [], []

    def close(self) -> list[tuple[str, str, list[str], str]]:
        """Finish every open shard: (split, kind, keys, path) of each."""
        finished = []
        for (split, kind), writer in self.writers.items():
            before = len(writer.paths)
            writer.close()
            if len(writer.paths) > before:
                finished.append((split, kind, self.pending.pop((split, kind)), str(writer.paths[-1].relative_to(self.out))))
        return finished

    def abort(self) -> None:
        """Delete the unfinished shards (on an error)."""
        for writer in self.writers.values():
            writer._abort()  # noqa: SLF001 - ShardWriter's own cleanup


def _results(jobs: list[Job], config: PrepareConfig, roots: dict[str, str]) -> Iterator[Result]:
    """Results of ``jobs`` in order, from ``config.workers`` processes."""
    arguments = [(job, config, roots[job.kind]) for job in jobs]
    if config.workers <= 1:
        yield from map(run_job, arguments)
        return
    with multiprocessing.get_context("fork").Pool(config.workers) as pool:
        yield from pool.imap(run_job, arguments, chunksize=1)


def prepare(config: PrepareConfig, on_sample: Callable[[str], None] | None = None) -> dict:
    """Prepare (or continue preparing) ``config.out``; returns the report. ``on_sample(key)`` runs after each written sample."""
    config.check()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    state = load_state(out, config)
    partial = remove_partial(out)
    if config.pose == "dwpose":
        import onnxruntime  # noqa: F401 - a missing package fails now, not once per source

        from common.pose.dwpose import model_paths

        model_paths(config.dwpose_dir)  # a missing model fails now, naming the file
    if config.text == "ocr":
        ocr_detector()  # likewise for a missing OCR package
    state["runs"] += 1
    roots, jobs, bad_lines = {}, [], []
    if config.videos is not None:
        root = Path(config.videos)
        if not root.is_dir():
            raise FileNotFoundError(f"videos={root}: no such directory")
        roots["video"] = str(root)
        jobs += video_jobs(config, root, state["identities"])
    if config.images is not None:
        root = Path(config.images)
        if not root.is_dir():
            raise FileNotFoundError(f"images={root}: no such directory")
        roots["pair"] = str(root)
        pairs, bad_lines = pair_jobs(config, root, state["identities"])
        jobs += pairs
    for where, reason, detail in bad_lines:
        state["sources"][where] = {"kind": "pair", "split": "train", "identity": "", "clips": [], "skipped": [[where, reason, detail]], "complete": True}
    for job in jobs:
        state["identities"][job.identity] = job.split
    todo = []
    for job in jobs:
        info = state["sources"].get(job.source)
        if info and info.get("complete") and not (config.retry_skipped and info.get("skipped")):
            continue
        done = frozenset(key for key in (info or {}).get("clips", []) if key in state["clips"])
        todo.append(Job(job.kind, job.source, job.split, job.identity, job.paths, done))
    started, written = time.perf_counter(), 0
    writers = _Writers(out, state["runs"], config.samples_per_shard)
    owners: dict[str, str] = {}
    sizes: dict[str, str] = {}  # key -> "HxWxT", the bucket metadata the manifest counts

    def finish(split: str, kind: str, keys: list[str], path: str) -> None:
        """Record a finished shard and the keys inside it; mark complete sources; save the state and manifest."""
        subset = "video" if kind == "video" else "images"
        state["shards"][split][subset].append(path)
        state["samples"][split][subset] += len(keys)
        buckets = state["buckets"][split][subset]
        for key in keys:
            state["clips"][key] = path
            buckets[sizes[key]] = buckets.get(sizes[key], 0) + 1
        for source in {owners[key] for key in keys}:
            info = state["sources"][source]
            info["complete"] = info["expected_done"] and all(key in state["clips"] for key in info["clips"])
        _save(out, state, None)

    try:
        with tqdm(total=len(todo), desc=f"prepare -> {out}", unit="source", disable=not config.progress) as bar:
            for result in _results(todo, config, roots):
                job = result.job
                info = state["sources"].setdefault(job.source, {"kind": job.kind, "split": job.split, "identity": job.identity, "clips": []})
                info.update(skipped=[list(s) for s in result.skipped], expected_done=False, complete=False)
                for reason, where in result.adjusted:
                    if where not in state["adjusted"].setdefault(reason, []):
                        state["adjusted"][reason].append(where)
                info["clips"] = sorted(set(info["clips"]) | {key for key, _ in result.samples})
                for key, raw in result.samples:
                    owners[key] = job.source
                    meta = json.loads(raw["json"])
                    sizes[key] = f"{meta['height']}x{meta['width']}x{meta['num_frames']}"
                    keys, paths = writers.write(job.split, job.kind, key, raw)
                    written += 1
                    if paths:
                        finish(job.split, job.kind, keys, paths[0])
                    if on_sample is not None:
                        on_sample(key)
                info["expected_done"] = True
                info["complete"] = all(key in state["clips"] for key in info["clips"])
                bar.update()
            for split, kind, keys, path in writers.close():
                finish(split, kind, keys, path)
    except BaseException:
        writers.abort()
        _save(out, state, None)
        raise
    seconds = time.perf_counter() - started
    run = {"run": state["runs"], "sources_processed": len(todo), "samples_written": written, "seconds": round(seconds, 3),
           "workers": config.workers, "samples_per_second": round(written / seconds, 3) if seconds > 0 else None,
           "samples_per_second_per_worker": round(written / seconds / config.workers, 3) if seconds > 0 else None,
           "removed_partial_shards": partial, "pose": config.pose}
    return _save(out, state, run)


def _save(out: Path, state: dict, run: dict | None) -> dict:
    """Write state, manifest and report atomically; returns the report."""
    atomic_write_json(out / STATE_NAME, state, indent=1)
    write_manifest(out, manifest_of(state))
    report = report_of(state, run or {"run": state["runs"], "status": "interrupted or in progress"})
    atomic_write_json(out / REPORT_NAME, report, indent=1)
    return report


def parse_args(argv: list[str]) -> PrepareConfig:
    """``key=value`` arguments -> a checked PrepareConfig (one-line ValueError for unknown keys or bad values)."""
    bad = [arg for arg in argv if "=" not in arg]
    if bad:
        raise ValueError(f"arguments are key=value, got {' '.join(bad)}; keys: {', '.join(f.name for f in PrepareConfig.__dataclass_fields__.values())}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(PrepareConfig), OmegaConf.from_dotlist(argv))
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exn:
        raise ValueError(str(exn).splitlines()[0] + f" (keys: {', '.join(PrepareConfig.__dataclass_fields__)})") from exn
    config.check()
    return config


def main(argv: list[str] | None = None) -> dict:
    """CLI entry point: prepare, print a summary line per split and the skip counts."""
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
        report = prepare(config)
    except (ValueError, FileNotFoundError, ImportError) as exn:
        print(f"error: {exn}", file=sys.stderr)
        raise SystemExit(2) from exn
    for split, counts in report["samples_per_split"].items():
        print(f"{split}: {counts['video']} clips, {counts['images']} images")
    skips = ", ".join(f"{reason} {entry['count']}" for reason, entry in sorted(report["skipped"].items()))
    print(f"skipped: {report['skipped_total']}" + (f" ({skips})" if skips else "") + f"; details in {Path(config.out) / REPORT_NAME}")
    return report


if __name__ == "__main__":
    main()
