"""What a puppet dataset depends on: the settings, the splits and the seeding of every random draw."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GENERATOR_NAME = "data.synthetic"
GENERATOR_VERSION = 3  # 3: an identity per sample, held-out colour combinations for val/test, the flat style, bigger people, 25-frame clips
SPLITS = ("train", "val", "test")
SUBSETS = ("video", "images", "long")  # clips, image pairs, long clips
STYLES = ("flat", "textured")
TEXT_FRACTION = {"flat": 0.0, "textured": 0.25}  # each style's share of clips and pairs with a text overlay
# Random streams of a sample: who and how it moves (both shared by the styles), then the style's draws: clothing patterns, background
IDENTITY, SCENE, PATTERN, BACKGROUND = 0, 1, 2, 3


@dataclass(frozen=True)
class SyntheticConfig:
    """What the generated dataset depends on (the manifest records it; workers are not part of it)."""

    seed: int = 0
    style: str = "flat"  # flat: plain low-frequency looks a 4x VAE keeps; textured: patterned clothes, busy backgrounds, detailed faces
    train_clips: int = 1024  # one identity each: as many training identities
    val_clips: int = 32
    test_clips: int = 32
    train_pairs: int = 256  # image pairs for pose transfer, one identity each
    val_pairs: int = 16
    test_pairs: int = 16
    frames: int = 25  # a 17-frame window, the reference and EverAnimate's three more views outside it
    fps: float = 12.0
    size: int = 128
    text_fraction: float | None = None  # share of clips and pairs with a text overlay; None: the style's (flat 0, textured 0.25)
    long_clips: int = 1  # minute-long clips per split (subset "long": the long-video horizons)
    long_seconds: float = 61.0  # a 60 s horizon at 12 fps needs 720 of the 1 + 4k frames a rollout generates
    samples_per_shard: int = 64

    def __post_init__(self) -> None:
        """Reject configurations that cannot produce a valid dataset."""
        if self.seed < 0:
            raise ValueError(f"seed must not be negative, got {self.seed}")
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, got {self.style!r}")
        if self.size < 32 or self.size % 16:
            raise ValueError(f"size must be a multiple of 16 and at least 32, got {self.size}")
        if self.frames < 1 or self.fps <= 0 or self.long_seconds <= 0:
            raise ValueError(f"frames, fps and long_seconds must be positive, got {self.frames}, {self.fps}, {self.long_seconds}")
        if min(*(self.clips(split) for split in SPLITS), *(self.pairs(split) for split in SPLITS), self.long_clips) < 0:
            raise ValueError("clip, pair and long-clip counts must not be negative")
        if self.text_fraction is not None and not 0.0 <= self.text_fraction <= 1.0:
            raise ValueError(f"text_fraction must be in [0, 1], got {self.text_fraction}")
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be at least 1, got {self.samples_per_shard}")

    def clips(self, split: str) -> int:
        """Video clips of a split."""
        return {"train": self.train_clips, "val": self.val_clips, "test": self.test_clips}[split]

    def pairs(self, split: str) -> int:
        """Image pairs of a split."""
        return {"train": self.train_pairs, "val": self.val_pairs, "test": self.test_pairs}[split]

    def text_share(self) -> float:
        """The share of clips and pairs with a text overlay: ``text_fraction``, else the style's."""
        return TEXT_FRACTION[self.style] if self.text_fraction is None else self.text_fraction


def seeded_rng(seed: int, *path: int) -> np.random.Generator:
    """Independent generator for one path (e.g. split, subset, index, stream) under ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=tuple(path)))


def sample_rng(config: SyntheticConfig, split: str, subset: str, index: int, stream: int) -> np.random.Generator:
    """Generator of one stream (IDENTITY, SCENE, PATTERN or BACKGROUND) of sample ``index`` of a split's subset."""
    return seeded_rng(config.seed, SPLITS.index(split), SUBSETS.index(subset), index, stream)
