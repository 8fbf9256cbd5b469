"""How big the person is for the DiT: the share of a frame's tokens it covers and its height in tokens."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from data.shards import BadSampleCounter, Sample, iter_shard_samples, read_manifest

TOKEN = 16  # pixels per side of a token of the tiny DiT: the tiny VAE's 4x spatial times the DiT's 4 x 4 patches
MIN_SHARE = 0.25  # a token counts as the person's when at least this share of its pixels is person mask


def covered_tokens(mask: np.ndarray, token: int = TOKEN, min_share: float = MIN_SHARE) -> np.ndarray:
    """Tokens the person covers ``(T, H // token, W // token)`` of a person mask bool ``(T, H, W)``."""
    frames, height, width = mask.shape
    rows, cols = height // token, width // token
    blocks = mask[:, : rows * token, : cols * token].reshape(frames, rows, token, cols, token)
    return blocks.mean(axis=(2, 4)) >= min_share


def token_stats(mask: np.ndarray, token: int = TOKEN, min_share: float = MIN_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the share of tokens covered ``(T,)`` and the height in tokens ``(T,)`` (first to last row holding one)."""
    covered = covered_tokens(mask, token, min_share)
    rows = covered.any(axis=2)  # (T, rows)
    first = rows.argmax(axis=1)
    last = rows.shape[1] - 1 - rows[:, ::-1].argmax(axis=1)
    height = np.where(rows.any(axis=1), last - first + 1, 0)
    return covered.mean(axis=(1, 2)), height


def mean_token_stats(samples: Iterable[Sample], token: int = TOKEN, min_share: float = MIN_SHARE) -> dict:
    """Mean token coverage and token height over every frame of ``samples`` (with person masks), and the frame count."""
    coverage, heights = [], []
    for sample in samples:
        share, height = token_stats(sample.person_mask, token, min_share)
        coverage.append(share)
        heights.append(height)
    coverage, heights = np.concatenate(coverage), np.concatenate(heights)
    return {"token_coverage": round(float(coverage.mean()), 4), "token_height": round(float(heights.mean()), 3), "frames": int(len(coverage))}


def split_token_stats(root: str | Path, split: str = "train", subset: str = "video", token: int = TOKEN, min_share: float = MIN_SHARE) -> dict:
    """:func:`mean_token_stats` over one subset of a split of the dataset in ``root`` (read from its shards)."""
    root = Path(root)
    paths = [root / path for path in read_manifest(root)["splits"][split][subset]["shards"]]
    return mean_token_stats(iter_shard_samples(paths, BadSampleCounter()), token, min_share)
