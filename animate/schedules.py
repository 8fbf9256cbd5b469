"""Learning-rate multipliers for ``torch.optim.lr_scheduler.LambdaLR`` (picklable for checkpoints)."""

from __future__ import annotations

import math
from functools import partial


def _warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup to 1, then constant."""
    return min(1.0, (step + 1) / max(1, warmup_steps))


def constant_with_warmup(warmup_steps: int = 0) -> partial:
    """Constant after a linear warmup (One-to-All: constant with warmup)."""
    return partial(_warmup_factor, warmup_steps=warmup_steps)


def _cosine_factor(step: int, warmup_steps: int, total_steps: int, final: float) -> float:
    """Linear warmup to 1, then a half cosine down to ``final`` at ``total_steps``."""
    if step < warmup_steps:
        return _warmup_factor(step, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_with_warmup(total_steps: int, warmup_steps: int = 0, final: float = 0.0) -> partial:
    """Cosine decay to ``final`` x the peak at ``total_steps`` after a linear warmup (pretraining)."""
    return partial(_cosine_factor, warmup_steps=warmup_steps, total_steps=total_steps, final=final)
