"""Animate your own reference image with a driving video or pose file of any length, with any method's checkpoint.

    python -m experiments.generate ckpt=RUN/last.ckpt reference=IMAGE driving=VIDEO_OR_POSES \
        [reference_pose=FILE] [driving_pose=FILE] [dwpose_dir=DIR] [retarget=ratio] [lightened_poses=true] \
        [rollout.strategy=...] [rollout.chunk_frames=...]

1. Keypoints: the reference's from ``reference_pose`` (any keypoint file ``data.prepare`` reads)
   or DWPose on the image (``dwpose_dir``); the driving ones from a keypoint file given as
   ``driving`` itself, from ``driving_pose`` beside a driving video, or DWPose on its frames.
2. The output size: the driving frames' (the video's, or ``driving_size`` for a keypoint file),
   scaled so the short side is the run's ``data.resolution`` and rounded to whole tokens.
3. Pose-guided translation (:func:`common.pose.translate.translate_reference`): the reference is
   scaled and placed on the driving layout; the pad mask tells the model what to outpaint.
4. Optional retargeting of the driving poses to the reference's proportions (``retarget``).
5. Generation chunk by chunk with the method's long-video strategy (:mod:`animate.rollout`:
   One-to-All's token replace, EverAnimate's latent propagation, UniAnimate-DiT's sliding
   windows, ...), with a progress bar over chunks. Every finished chunk is kept in
   ``out/chunks`` and ``generated.mp4`` grows as chunks finish (``generated.partial.mp4`` until
   the end), so an interrupted generation run again with the same arguments resumes at the next
   chunk and gives the same video.

Writes into ``out`` (default ``RUN/animate/<reference>__<driving>/``): ``generated.mp4``,
``grid.mp4`` (translated reference | driving pose | generated), ``reference_translated.png``,
``reference_mask.png`` and ``inputs.json`` (anchor frame, scale, sizes, rollout).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from PIL import Image

from animate.rollout import ChunkStore, roll_out, tensor_digest
from common.files import atomic_write_json
from common.pose.render import pose_to_tensor, render_pose
from common.pose.retarget import MODES as RETARGET_MODES
from common.pose.retarget import retarget as retarget_poses
from common.pose.translate import translate_reference
from common.video import Mp4Stream, comparison_grid, decode_video, frames_uint8, write_mp4, write_png
from data.pose_import import KeypointError, load_keypoints
from experiments.cli import UsageError
from experiments.prediction import load_run, long_rollout

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif")


def read_image(path: str) -> np.ndarray:
    """uint8 (H, W, 3) of an image file; a one-line error naming it otherwise."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as exn:
        raise UsageError(f"reference={path}: not a readable image ({exn})") from exn


def detect(frames: np.ndarray, dwpose_dir: str | None, what: str) -> np.ndarray:
    """DWPose keypoints (T, 133, 3) of uint8 frames (T, H, W, 3); a one-line error when no model is configured."""
    if not dwpose_dir:
        raise UsageError(f"{what} has no keypoints: pass {what}_pose=FILE (a keypoint file) or dwpose_dir=DIR (DWPose's ONNX models)")
    from common.pose.dwpose import DWPose

    return DWPose(dwpose_dir).video(frames)


def keypoints_from_file(path: str, width: int, height: int, what: str) -> np.ndarray:
    """(T, 133, 3) keypoints of a keypoint file; a one-line error naming it otherwise."""
    try:
        return load_keypoints(path, width, height)
    except (KeypointError, OSError) as exn:
        raise UsageError(f"{what}: {exn}") from exn


def load_reference(cfg: DictConfig) -> tuple[np.ndarray, np.ndarray]:
    """The reference image (H, W, 3) and its keypoints (133, 3)."""
    image = read_image(cfg.reference)
    height, width = image.shape[:2]
    if cfg.reference_pose:
        keypoints = keypoints_from_file(cfg.reference_pose, width, height, f"reference_pose={cfg.reference_pose}")
    else:
        keypoints = detect(image[None], cfg.dwpose_dir, "reference")
    if keypoints.shape[0] != 1:
        raise UsageError(f"reference keypoints hold {keypoints.shape[0]} frames; one image needs one")
    return image, keypoints[0]


def load_driving(cfg: DictConfig) -> tuple[np.ndarray, tuple[int, int], np.ndarray | None]:
    """Driving keypoints (T, 133, 3) in source pixels, the source size (H, W), and its frames when it is a video."""
    path = Path(cfg.driving)
    if not path.exists():
        raise UsageError(f"driving={cfg.driving}: no such file or directory")
    if path.suffix.lower() in VIDEO_SUFFIXES:
        frames = decode_video(path.read_bytes(), str(path))  # (T, H, W, 3)
        height, width = frames.shape[1:3]
        if cfg.driving_pose:
            keypoints = keypoints_from_file(cfg.driving_pose, width, height, f"driving_pose={cfg.driving_pose}")
        else:
            keypoints = detect(frames, cfg.dwpose_dir, "driving")
        if len(keypoints) != len(frames):
            raise UsageError(f"driving_pose={cfg.driving_pose}: {len(keypoints)} keypoint frames for a video of {len(frames)} frames")
        return keypoints, (height, width), frames
    if not cfg.driving_size:
        raise UsageError(f"driving={cfg.driving} is a keypoint file: give the frame size its coordinates are in, driving_size=[H,W]")
    height, width = (int(v) for v in cfg.driving_size)
    return keypoints_from_file(str(path), width, height, f"driving={cfg.driving}"), (height, width), None


def output_size(source: tuple[int, int], short_side: int, multiple: int) -> tuple[tuple[int, int], float]:
    """The generated frame size (H, W): the source scaled to ``short_side``, rounded to ``multiple``; and the scale."""
    scale = short_side / min(source)
    size = tuple(max(multiple, int(round(side * scale / multiple)) * multiple) for side in source)
    return size, scale


def animate_custom(cfg: DictConfig) -> Path:
    """Translate, optionally retarget, and animate ``cfg.reference`` with ``cfg.driving``; returns the output directory."""
    system, run_cfg, _ = load_run(cfg.ckpt)
    rollout = long_rollout(system, cfg)
    image, reference_keypoints = load_reference(cfg)
    driving, source, driving_frames = load_driving(cfg)
    compression = system.backbone.compression
    size, scale = output_size(source, int(run_cfg.data.resolution), compression.token_space)
    driving = driving.copy()
    driving[..., :2] *= np.array([size[1] / source[1], size[0] / source[0]])  # into the output frame
    threshold = float(run_cfg.data.get("pose_conf_threshold", 0.3))
    try:
        translation = translate_reference(image, reference_keypoints, driving, size, threshold)
    except ValueError as exn:
        raise UsageError(f"reference={cfg.reference}: {exn}") from exn
    if cfg.retarget:
        if cfg.retarget not in RETARGET_MODES:
            raise UsageError(f"retarget={cfg.retarget}: use one of {', '.join(RETARGET_MODES)} or null")
        driving = retarget_poses(driving, translation.keypoints, mode=cfg.retarget, threshold=threshold)
    height, width = size
    poses = render_pose(driving, height, width, conf_threshold=threshold, lightened=bool(cfg.lightened_poses))  # (T, H, W, 3)
    batch = {
        "reference": pose_to_tensor(translation.image)[None],  # (1, 3, H, W)
        "reference_pose": pose_to_tensor(render_pose(translation.keypoints, height, width, conf_threshold=threshold))[None],
        "reference_mask": torch.from_numpy(translation.mask).float()[None, None],  # (1, 1, H, W), 1 = padded
        "reference_keypoints": torch.from_numpy(translation.keypoints)[None],
        "pose": pose_to_tensor(poses)[None],  # (1, 3, T, H, W)
        "keypoints": torch.from_numpy(driving).float()[None],  # (1, T, 133, 3) in the output frame
        "key": [f"{Path(cfg.reference).stem}__{Path(cfg.driving).stem}"],
    }
    if driving_frames is not None:  # the driving video itself, for methods that read it (Wan-Animate's face crops)
        batch["driving"] = F.interpolate(pose_to_tensor(driving_frames)[None], size=(len(driving_frames), height, width), mode="trilinear")
    options = {name: cfg.sampler[name] for name in ("steps", "shift", "schedule", "seed") if cfg.sampler.get(name) is not None}
    if cfg.sampler.get("guidance") is not None:
        options["guidance"] = list(cfg.sampler.guidance)
    out = Path(cfg.out) if cfg.out else Path(cfg.ckpt).parent / "animate" / batch["key"][0]
    frames = batch["pose"].shape[2]
    if frames < rollout.chunk_frames and rollout.strategy != "sliding_window":
        print(f"driving={cfg.driving}: {frames} frames, shorter than one chunk ({rollout.chunk_frames}): generated as one chunk")
    signature = {"ckpt": Path(cfg.ckpt).resolve(), "ckpt_bytes": Path(cfg.ckpt).stat().st_size, "rollout": rollout, "sampler": sorted(options.items()),
                 "inputs": tensor_digest(batch["reference"], batch["pose"], batch["reference_mask"])}
    store = ChunkStore(out / "chunks", signature) if cfg.get("resume", True) else None
    with Mp4Stream(out / "generated.mp4", cfg.fps) as stream:
        try:
            video = roll_out(system, batch, rollout, options, store, on_frames=lambda piece: stream.write(frames_uint8(piece[0])))
        except ValueError as exn:
            raise UsageError(f"ckpt={cfg.ckpt}: {exn}") from exn
    write_mp4(out / "grid.mp4", comparison_grid(batch["reference"], batch["pose"], video), cfg.fps)
    write_png(out / "reference_translated.png", translation.image)
    write_png(out / "reference_mask.png", (translation.mask * 255).astype(np.uint8)[..., None].repeat(3, -1))
    atomic_write_json(out / "inputs.json", {
        "ckpt": str(cfg.ckpt), "reference": str(cfg.reference), "driving": str(cfg.driving), "frames": int(video.shape[2]),
        "size": list(size), "source_size": list(source), "anchor_frame": translation.anchor, "reference_scale": translation.scale,
        "retarget": cfg.retarget, "lightened_poses": bool(cfg.lightened_poses), "method": type(system).__name__,
        "rollout": {name: getattr(rollout, name) for name in rollout.__dataclass_fields__},
    })
    log.info("animated %d frames at %dx%d into %s (scale %.3g from %dx%d)", video.shape[2], height, width, out, scale, *source)
    print(f"wrote {out / 'generated.mp4'} ({video.shape[2]} frames, {height}x{width})")
    return out
