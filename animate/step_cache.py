"""Step caching for sampling: skip most of the DiT on denoising steps where its input barely changed.

First-Block Cache (ParaAttention's FBCache; diffusers' ``FirstBlockCacheConfig`` is the same idea
on diffusers' own block loop, which this framework's packed forward does not run): every step
runs block 0; when the residual block 0 adds differs from the one of the last fully computed step
by less than ``threshold`` (mean absolute difference over mean absolute value), the remaining
blocks are skipped and the residual they added on that step is reused. The comparison is always
against the last computed step, so reuse cannot drift step after step. ``threshold = 0`` never
reuses: the output is the uncached forward's, bit for bit. TeaCache and MagCache are the same
family with other skip signals (a timestep-modulated input with a fitted polynomial; residual
magnitude ratios calibrated per model); this one needs no calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class FirstBlockCache:
    """The reuse state of one denoising trajectory (one per sampled sequence; CFG levels share it: they run in one forward)."""

    threshold: float
    first_residual: Tensor | None = None  # (B, L, D) what block 0 added at the last computed step
    rest_residual: Tensor | None = None  # (B, L, D) what the blocks after it added at that step
    computed: int = 0  # forwards that ran every block
    reused: int = 0  # forwards that ran block 0 only

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ValueError(f"sampler.cache_threshold={self.threshold}: use 0 (off) or a positive relative change such as 0.05")

    @torch.no_grad()
    def can_reuse(self, first_residual: Tensor) -> bool:
        """Whether this step's block-0 residual is within ``threshold`` of the last computed step's."""
        if self.first_residual is None or self.first_residual.shape != first_residual.shape:
            return False
        change = (first_residual - self.first_residual).abs().mean() / self.first_residual.abs().mean().clamp_min(1e-12)
        return bool(change < self.threshold)

    def reuse(self, hidden_states: Tensor) -> Tensor:
        """Tokens after block 0 -> the last computed step's output of the remaining blocks."""
        self.reused += 1
        return hidden_states + self.rest_residual

    def store(self, first_residual: Tensor, rest_residual: Tensor) -> None:
        """Record a computed step's residuals."""
        self.computed += 1
        if self.threshold > 0:  # at 0 nothing is ever reused: keep no copies
            self.first_residual, self.rest_residual = first_residual.detach(), rest_residual.detach()

    @property
    def reuse_fraction(self) -> float:
        """Share of forwards that skipped the blocks after block 0."""
        total = self.computed + self.reused
        return self.reused / total if total else 0.0
