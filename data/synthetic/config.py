"""What a puppet dataset depends on: the settings, the splits and the seeding of every random draw."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GENERATOR_NAME = "data.synthetic"
GENERATOR_VERSION = 2  # 2: every sample stores its background plate (plate.png)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SyntheticConfig:
    """What the generated dataset depends on (the manifest records it; workers are not part of it)."""

    seed: int = 0
    train_identities: int = 48
    val_identities: int = 8
    test_identities: int = 8
    clips_per_identity: int = 4
    frames: int = 33
    fps: float = 12.0
    size: int = 128
    image_pairs_per_identity: int = 1
    text_fraction: float = 0.25
    long_clips: int = 1  # minute-long clips per split (subset "long": the long-video horizons)
    long_seconds: float = 61.0  # a 60 s horizon at 12 fps needs 720 of the 1 + 4k frames a rollout generates
    samples_per_shard: int = 64

    def __post_init__(self) -> None:
        """Reject configurations that cannot produce a valid dataset."""
        if self.seed < 0:
            raise ValueError(f"seed must not be negative, got {self.seed}")
        if self.size < 32 or self.size % 16:
            raise ValueError(f"size must be a multiple of 16 and at least 32, got {self.size}")
        if self.frames < 1 or self.fps <= 0 or self.long_seconds <= 0:
            raise ValueError(f"frames, fps and long_seconds must be positive, got {self.frames}, {self.fps}, {self.long_seconds}")
        if min(self.train_identities, self.val_identities, self.test_identities, self.clips_per_identity, self.image_pairs_per_identity, self.long_clips) < 0:
            raise ValueError("identity, clip, pair and long-clip counts must not be negative")
        if not 0.0 <= self.text_fraction <= 1.0:
            raise ValueError(f"text_fraction must be in [0, 1], got {self.text_fraction}")
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be at least 1, got {self.samples_per_shard}")

    def identities(self, split: str) -> range:
        """Global identity indices of a split (disjoint ranges)."""
        counts = {"train": self.train_identities, "val": self.val_identities, "test": self.test_identities}
        start = sum(counts[name] for name in SPLITS[: SPLITS.index(split)])
        return range(start, start + counts[split])


def seeded_rng(seed: int, *path: int) -> np.random.Generator:
    """Independent generator for one (identity, purpose, index) path under ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=tuple(path)))
