"""Scenes and samples: backgrounds, text overlays, rendered frames, video clips and image pairs."""

from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data.shards import Sample
from data.synthetic.config import BACKGROUND, GENERATOR_NAME, SCENE, SyntheticConfig, sample_rng
from data.synthetic.identity import Identity, make_identity, random_color
from data.synthetic.motion import Motion, make_motion, pose_at
from data.synthetic.person import render_person
from data.synthetic.raster import Canvas
from data.synthetic.skeleton import build_skeleton

ASPECTS = {"square": (1, 1), "portrait": (3, 4), "landscape": (4, 3)}  # width : height
ASPECT_SHARES = {"square": 0.4, "portrait": 0.45, "landscape": 0.15}  # mostly upright frames, as in dance videos
TEXT_WORDS = ("DANCE", "LIVE", "NEW", "puppet", "challenge", "2024", "#fun", "HD", "subscribe", "step", "groove", "tutorial")


def frame_size(aspect: str, size: int) -> tuple[int, int]:
    """(height, width) of an aspect ratio with short side ``size``; the long side rounds to a multiple of 16."""
    w, h = ASPECTS[aspect]
    long_side = int(round(size * max(w, h) / min(w, h) / 16)) * 16
    return (size, long_side) if w > h else (long_side, size) if h > w else (size, size)


def _muted_color(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation scene colour (RGB float), so that clothes stand out."""
    return np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.08, 0.45), rng.uniform(0.35, 0.9))) * 255


def flat_background(rng: np.random.Generator, height: int, width: int, ground: float) -> np.ndarray:
    """A static low-frequency scene ``(H, W, 3)`` uint8: a smooth gradient, a few large soft blobs, maybe a floor."""
    ys, xs = np.mgrid[0:height, 0:width].astype(float)
    angle = rng.uniform(0, 2 * np.pi)
    along = xs * np.cos(angle) + ys * np.sin(angle)
    mix = ((along - along.min()) / max(np.ptp(along), 1.0))[..., None]
    image = _muted_color(rng) * (1 - mix) + _muted_color(rng) * mix
    scale = max(height, width)
    for _ in range(rng.integers(2, 5)):
        cy, cx, sigma = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.15, 0.35) * scale
        weight = rng.uniform(0.4, 0.8) * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2))[..., None]
        image = image * (1 - weight) + _muted_color(rng) * weight
    if rng.uniform() < 0.6:
        horizon = int(height * rng.uniform(0.55, min(ground, 0.95) - 0.05))
        depth = ((ys[horizon:] - horizon) / max(height - horizon, 1))[..., None]
        image[horizon:] = _muted_color(rng) * (0.8 + 0.2 * depth)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def make_background(rng: np.random.Generator, height: int, width: int, ground: float) -> np.ndarray:
    """A static textured scene ``(H, W, 3)`` uint8: gradient, tiles, blotchy noise or wallpaper stripes, maybe a floor."""
    kind = rng.choice(["gradient", "tiles", "noise", "stripes"])
    top, bottom = np.array(random_color(rng, 20, 235), float), np.array(random_color(rng, 20, 235), float)
    ys, xs = np.mgrid[0:height, 0:width].astype(float)
    if kind == "gradient":
        mix = (ys / height)[..., None]
        image = top * (1 - mix) + bottom * mix
    elif kind == "tiles":
        tile = rng.integers(8, 24)
        checker = ((ys // tile + xs // tile) % 2)[..., None]
        image = top * (1 - checker) + (0.6 * top + 0.4 * bottom) * checker
        image[(ys % tile < 1) | (xs % tile < 1)] *= 0.8
    elif kind == "noise":
        coarse = rng.uniform(30, 230, (rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=float)
    else:
        period = rng.integers(6, 20)
        stripe = ((xs // period) % 2)[..., None]
        image = top * (1 - stripe) + (top * 0.75 + bottom * 0.25) * stripe
    if rng.uniform() < 0.6:
        horizon = int(height * rng.uniform(0.55, min(ground, 0.95) - 0.05))
        floor = np.array(random_color(rng, 20, 200), float)
        depth = ((ys[horizon:] - horizon) / max(height - horizon, 1))[..., None]
        image[horizon:] = floor * (0.75 + 0.25 * depth)
    image += rng.normal(0, 2.0, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@dataclass
class _Text:
    """A static text overlay: string, position, font size, colour."""

    text: str
    position: tuple[int, int]
    size: int
    color: tuple


def make_text(rng: np.random.Generator, height: int, width: int) -> _Text:
    """A random caption placed somewhere in the frame."""
    words = rng.choice(TEXT_WORDS, size=rng.integers(1, 3), replace=False)
    text = " ".join(str(w) for w in words)
    size = int(rng.integers(max(8, min(height, width) // 14), max(9, min(height, width) // 8)))
    x = int(rng.uniform(0.02, 0.55) * width)
    y = int(rng.choice([rng.uniform(0.02, 0.12), rng.uniform(0.84, 0.9)]) * height)
    y = min(y, height - size - 2)
    return _Text(text=text, position=(x, y), size=size, color=random_color(rng, 150, 255))


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """PIL's default (scalable) font at ``size`` pixels."""
    return ImageFont.load_default(size=size)


def _draw_text(frame: np.ndarray, text: _Text) -> list[int]:
    """Draw the overlay on ``frame`` in place; returns its box [x0, y0, x1, y1] clipped to the frame."""
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    font = _font(text.size)
    draw.text(text.position, text.text, font=font, fill=text.color, stroke_width=1, stroke_fill=(0, 0, 0))
    x0, y0, x1, y1 = draw.textbbox(text.position, text.text, font=font, stroke_width=1)
    frame[:] = np.asarray(image)
    height, width = frame.shape[:2]
    return [max(0, x0), max(0, y0), min(width, x1), min(height, y1)]


def _outside(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Whether pixel points ``(N, 2)`` lie outside the frame."""
    return (points[:, 0] < 0) | (points[:, 0] >= width) | (points[:, 1] < 0) | (points[:, 1] >= height)


def render_frame(
    idt: Identity, motion: Motion, t: float, background: np.ndarray, behind: tuple[bool, bool]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame at time ``t``: image uint8 ``(H, W, 3)``, keypoints ``(133, 3)``, person mask bool ``(H, W)``."""
    height, width = background.shape[:2]
    skel = build_skeleton(idt, motion, pose_at(motion, t), height, width)
    canvas = Canvas(height, width, outlines=idt.detailed)
    confidence = render_person(canvas, idt, skel, behind)
    frame, mask = canvas.composite(background)
    keypoints = skel.keypoints.copy()
    keypoints[:, 2] = np.where(_outside(keypoints[:, :2], height, width), 0.0, confidence)
    return frame, keypoints.astype(np.float32), mask


@dataclass
class _Scene:
    """Everything fixed over one clip or image pair."""

    motion: Motion
    background: np.ndarray
    behind: tuple[bool, bool]
    text: _Text | None
    start: float


def _scene(config: SyntheticConfig, idt: Identity, rng: np.random.Generator, backdrop: np.random.Generator, duration: float) -> _Scene:
    """Aspect, framing, motion, arm layering and text for one clip from ``rng`` (the same in both styles), the background from ``backdrop``."""
    aspect = str(rng.choice(list(ASPECT_SHARES), p=list(ASPECT_SHARES.values())))
    height, width = frame_size(aspect, config.size)
    motion = make_motion(idt, rng, duration + 30.0)
    background = (flat_background if config.style == "flat" else make_background)(backdrop, height, width, motion.ground)
    behind = tuple(bool(b) for b in rng.uniform(size=2) < 0.25)
    text = make_text(rng, height, width)
    with_text = rng.uniform() < config.text_share()
    return _Scene(motion=motion, background=background, behind=behind, text=text if with_text else None, start=float(rng.uniform(0, 30)))


def _render_times(idt: Identity, scene: _Scene, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Frames ``(T, H, W, 3)``, keypoints ``(T, 133, 3)``, masks ``(T, H, W)`` and text boxes at ``times``."""
    frames, keypoints, masks, boxes = [], [], [], []
    for index, t in enumerate(times):
        frame, kp, mask = render_frame(idt, scene.motion, float(t), scene.background, scene.behind)
        if scene.text is not None:
            boxes.append([index, *_draw_text(frame, scene.text)])
        frames.append(frame)
        keypoints.append(kp)
        masks.append(mask)
    return np.stack(frames), np.stack(keypoints), np.stack(masks), boxes


def _plate(scene: _Scene) -> np.ndarray:
    """The clip's static scene without the person: background with the text overlay (uint8 (H, W, 3))."""
    plate = scene.background.copy()
    if scene.text is not None:
        _draw_text(plate, scene.text)
    return plate


def _meta(idt: Identity, split: str, kind: str, fps: float, frames: np.ndarray, boxes: list, **extra) -> dict:
    """Sample metadata as the shard format defines it."""
    return {
        "identity": idt.name, "split": split, "kind": kind, "fps": float(fps), "width": int(frames.shape[2]),
        "height": int(frames.shape[1]), "num_frames": int(frames.shape[0]), "text_boxes": boxes, "source": GENERATOR_NAME, **extra,
    }


def make_clip(config: SyntheticConfig, split: str, index: int, subset: str = "video") -> Sample:
    """Clip ``index`` of a split, of its own identity (``subset`` "video": ``config.frames`` frames; "long": ``long_seconds``)."""
    idt = make_identity(config, split, subset, index)
    count = config.frames if subset == "video" else max(1, int(round(config.long_seconds * config.fps)))
    rng, backdrop = sample_rng(config, split, subset, index, SCENE), sample_rng(config, split, subset, index, BACKGROUND)
    scene = _scene(config, idt, rng, backdrop, count / config.fps)
    frames, keypoints, masks, boxes = _render_times(idt, scene, scene.start + np.arange(count) / config.fps)
    key = f"{idt.name}-{'clip' if subset == 'video' else 'long'}"
    return Sample(key=key, frames=frames, keypoints=keypoints, meta=_meta(idt, split, "video", config.fps, frames, boxes), person_mask=masks,
                  plate=_plate(scene))


def make_image_pair(config: SyntheticConfig, split: str, index: int) -> tuple[Sample, Sample]:
    """Image pair ``index`` of a split: its own identity in two poses over one background, each image naming the other as ``pair``."""
    idt = make_identity(config, split, "images", index)
    rng, backdrop = sample_rng(config, split, "images", index, SCENE), sample_rng(config, split, "images", index, BACKGROUND)
    scene = _scene(config, idt, rng, backdrop, 30.0)
    times = scene.start + np.array([0.0, rng.uniform(2.0, 20.0)])
    keys = [f"{idt.name}-{tag}" for tag in ("a", "b")]
    samples = []
    for which, t in enumerate(times):
        frames, keypoints, masks, boxes = _render_times(idt, scene, np.array([t]))
        meta = _meta(idt, split, "image", config.fps, frames, boxes, pair=keys[1 - which])
        samples.append(Sample(key=keys[which], frames=frames, keypoints=keypoints, meta=meta, person_mask=masks, plate=_plate(scene)))
    return samples[0], samples[1]
