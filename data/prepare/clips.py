"""The work on one source, done in a worker process: decode, annotate, cut into clips (or pair images), encode; skips recorded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.prepare.annotate import (
    clip_text_boxes,
    image_keypoints,
    ocr_boxes,
    person_visible,
    read_text_boxes,
    scale_keypoints,
    source_keypoints,
    text_sidecar,
    video_keypoints,
)
from data.prepare.config import PrepareConfig, SkipSource
from data.prepare.decode import decode_source, load_image
from data.prepare.models import Models
from data.prepare.sources import Job, slug
from data.shards import Sample, encode_sample


@dataclass
class Result:
    """What a worker returns: encoded samples (key, webdataset dict), skips (where, reason, detail), adjustments."""

    job: Job
    samples: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    adjusted: list = field(default_factory=list)


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


def process_video(job: Job, config: PrepareConfig, root: Path, models: Models) -> Result:
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
            boxes = ocr_boxes(decoded.frames, config.ocr_stride, models.ocr())
        keys = [f"{slug(job.source)}-c{number:03d}" for number in range(len(clips))]
        todo = [clip for clip, key in zip(clips, keys) if key not in job.done]
        if config.pose == "sidecar":
            keypoints = source_keypoints(path, root, config, decoded.source_frames, decoded.source_size)[decoded.indices]
            keypoints = scale_keypoints(keypoints, decoded.source_size, out)
        else:
            keypoints = video_keypoints(decoded.frames, todo, config, models)
    except SkipSource as skip:
        result.skipped.append((job.source, skip.reason, skip.detail))
        return result
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


def process_pair(job: Job, config: PrepareConfig, root: Path, models: Models) -> Result:
    """Two one-frame image samples naming each other as ``pair`` (or the skip)."""
    result = Result(job)
    keys = [f"pair-{slug(job.source)}-{tag}" for tag in ("a", "b")]
    samples = []
    try:
        for path in map(Path, job.paths):
            frames, size = load_image(path, config)
            keypoints = image_keypoints(path, root, config, models, frames, size)
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


def run_job(job: Job, config: PrepareConfig, roots: dict[str, str], models: Models) -> Result:
    """Process one job (``roots``: the folder of each job kind); unexpected errors become a skip instead of killing the run."""
    try:
        return (process_video if job.kind == "video" else process_pair)(job, config, Path(roots[job.kind]), models)
    except Exception as exn:  # noqa: BLE001
        reason = "unreadable_video" if job.kind == "video" else "unreadable_image"
        return Result(job, skipped=[(job.source, reason, f"unexpected {type(exn).__name__}: {exn}")])
