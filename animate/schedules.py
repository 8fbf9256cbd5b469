"""Learning-rate multipliers for ``torch.optim.lr_scheduler.LambdaLR`` (picklable for checkpoints)."""

from __future__ import annotations

from functools import partial


def _warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup to 1, then constant."""
    return min(1.0, (step + 1) / max(1, warmup_steps))


def constant_with_warmup(warmup_steps: int = 0) -> partial:
    """Constant after a linear warmup (One-to-All: constant with warmup)."""
    return partial(_warmup_factor, warmup_steps=warmup_steps)
