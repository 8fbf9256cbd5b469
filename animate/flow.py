"""Rectified flow: timesteps, interpolation, loss, Euler sampling and classifier-free guidance.

Convention (all four methods): ``t`` in [0, 1], ``t = 0`` is data, ``t = 1`` is noise,
``x_t = (1 - t) x0 + t eps``, velocity target ``u = eps - x0``, Euler step ``x_s = x_t + (s - t) v``.
Time is per latent frame ``(B, F)``: frames whose role is a clean condition stay at ``t = 0``.
The network predicts the velocity (Wan) or the clean sample x0 (``prediction: sample``, "Back to
Basics: Let Denoising Generative Models Denoise", Li & He 2025), which is turned into the velocity
``(x_t - x0) / t``, so the loss, the guidance and the sampler see a velocity either way.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import Tensor


def shift_time(t: Tensor, shift: float) -> Tensor:
    """SD3/Wan time shift: t' = s t / (1 + (s - 1) t); s > 1 spends more time at high noise."""
    return shift * t / (1 + (shift - 1) * t)


def sample_time(
    n: int,
    mode: str = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Training times (n,) in (0, 1): ``uniform`` or ``logit_normal``, then shifted."""
    if mode == "uniform":
        t = torch.rand(n, generator=generator, device=device)
    elif mode == "logit_normal":
        t = torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))
    else:
        raise ValueError(f"unknown timestep sampling {mode!r}: use 'uniform' or 'logit_normal'")
    return shift_time(t, shift).clamp(1e-5, 1 - 1e-5)


LOSS_WEIGHTINGS = ("none", "bell")


def training_weight(t: Tensor, weighting: str = "none", shift: float = 1.0, steps: int = 1000) -> Tensor:
    """Per-sample loss weights (n,) of training times t (n,): ones, or ``bell``, DiffSynth's FlowMatchScheduler training weights.

    ``bell``: exp(-2 (t - 1/2)^2) less its minimum over the ``steps``-step shifted schedule, scaled to mean 1 on that schedule.
    """
    if weighting == "none":
        return torch.ones_like(t)
    if weighting != "bell":
        raise ValueError(f"unknown time_sampling.loss_weighting {weighting!r}: use one of {', '.join(LOSS_WEIGHTINGS)}")
    grid = shift_time(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[:-1], shift)  # DiffSynth's training sigmas
    bell = torch.exp(-2 * (grid - 0.5) ** 2)
    floor, total = bell.min(), (bell - bell.min()).sum()
    weight = (torch.exp(-2 * (t.double() - 0.5) ** 2) - floor).clamp_min(0) * steps / total
    return weight.to(t.dtype)


def _frames(t: Tensor) -> Tensor:
    """(B, F) per-frame time -> (B, 1, F, 1, 1) for broadcasting over latents."""
    return t[:, None, :, None, None]


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = (1 - t) x0 + t eps with per-frame t (B, F); latents (B, C, F, h, w)."""
    t = _frames(t).to(x0.dtype)
    return (1 - t) * x0 + t * noise


PREDICTIONS = ("velocity", "sample")


def velocity_from_sample(latents: Tensor, sample: Tensor, t: Tensor, min_time: float) -> Tensor:
    """x0-prediction -> velocity: v = (x_t - x0) / t with per-frame t (B, F) clamped below at ``min_time``."""
    return (latents - sample) / _frames(t).clamp_min(min_time).to(latents.dtype)


def flow_loss(prediction: Tensor, target: Tensor, weight: Tensor, sample_weight: Tensor | None = None) -> Tensor:
    """Weighted MSE: sum(s_b * w * (v - u)^2) / sum(w * C); weight broadcasts to (B, 1, F, h, w), ``sample_weight`` s (B,) (time weighting) scales each sample's error only."""
    weight = weight.to(prediction.dtype).expand(prediction.shape[0], 1, *prediction.shape[2:])
    squared = (prediction.float() - target.float()).pow(2) * weight
    if sample_weight is not None:
        squared = squared * sample_weight.float().to(squared.device).view(-1, *([1] * (squared.ndim - 1)))
    return squared.sum() / (weight.sum() * prediction.shape[1]).clamp_min(1e-8)


SCHEDULES = ("diffsynth", "diffusers")
"""Sampling schedules (``method.sampler.schedule``), each the official sampler of the methods that use it:

- ``diffsynth``: DiffSynth-Studio's ``FlowMatchScheduler(sigma_min=0, extra_one_step=True)`` (UniAnimate-DiT;
  EverAnimate's ``FlowMatchScheduler("Wan")``): ``shift(linspace(1, 0, steps + 1))``, the shift applied once.
- ``diffusers``: diffusers' ``FlowMatchEulerDiscreteScheduler(shift)`` (One-to-All), which shifts twice: once at
  init over its 1000 training sigmas (so the schedule ends at shift(1/1000), not 0) and again in ``set_timesteps``;
  then it steps to 0. At shift 7 and 30 steps its last times are 0.231, 0.047, 0 (diffsynth's: 0.333, 0.194, 0).
"""


def sampling_times(steps: int, shift: float, *, schedule: str, device: torch.device | str = "cpu") -> Tensor:
    """Decreasing times (steps + 1,) from 1 to 0 of the named schedule (:data:`SCHEDULES`) at ``shift``."""
    if schedule == "diffsynth":
        return shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)
    if schedule == "diffusers":
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift, use_dynamic_shifting=False)
        scheduler.set_timesteps(steps)
        return scheduler.sigmas.to(device=device, dtype=torch.float32)  # (steps + 1,), the last 0
    raise ValueError(f"sampler.schedule={schedule!r}: use one of {', '.join(SCHEDULES)}")


def guidance_weights(scales: Sequence[float]) -> list[float]:
    """Coefficients c_0..c_K of cumulative CFG, x = sum_i c_i x_i, for condition levels 0..K.

    Level 0 drops every condition, level i adds conditions 1..i; the guided prediction is
    x = x_0 + sum_i s_i (x_i - x_{i-1}) (One-to-All Eq. 16 for K = 2: lP, lI; plain CFG for
    K = 1). Levels whose coefficient is 0 need no forward pass: all scales 1 -> one pass,
    equal scales -> two passes (x_0, x_K), different scales -> K + 1 passes.
    """
    s = list(scales)
    coefficients = [1.0 - s[0]] if s else [1.0]
    coefficients += [s[i] - s[i + 1] for i in range(len(s) - 1)]
    if s:
        coefficients.append(s[-1])
    return coefficients


LevelVelocityFn = Callable[[Tensor, Tensor, Sequence[int]], Tensor]
"""(latents (B, C, F, h, w), t (B, F), levels) -> velocity (len(levels) * B, C, F, h, w), batched by level."""


def guided_velocity(velocity_fn: LevelVelocityFn, latents: Tensor, t: Tensor, scales: Sequence[float]) -> Tensor:
    """Cumulative classifier-free guidance with every needed level in one batched forward."""
    coefficients = guidance_weights(scales)
    levels = [i for i, c in enumerate(coefficients) if c != 0.0]
    b = latents.shape[0]
    predictions = velocity_fn(latents, t, levels).split(b)
    return sum(coefficients[level] * v for level, v in zip(levels, predictions))


StepCallback = Callable[[int, Tensor, Tensor, Tensor], None]
"""(step index, x_t (B, C, F, h, w), t (B, F), velocity) -> None: called before each Euler step (diagnostics)."""


@torch.no_grad()
def euler_sample(
    velocity_fn: Callable[[Tensor, Tensor], Tensor],  # (x (B, C, F, h, w), t (B, F)) -> velocity
    x: Tensor,  # (B, C, F, h, w) at t = 1
    generate: Tensor,  # (B, F) bool: frames to integrate; the rest are seen at t = 0
    steps: int,
    shift: float,
    on_step: StepCallback | None = None,
    *,
    schedule: str,
) -> Tensor:
    """Euler integration of dx/dt = v from t = 1 to 0 over the named schedule (:func:`sampling_times`)."""
    times = sampling_times(steps, shift, schedule=schedule, device=x.device)
    for i in range(steps):
        t, s = times[i], times[i + 1]
        t_frames = torch.where(generate, t, torch.zeros_like(t)).to(x.dtype)  # (B, F)
        v = velocity_fn(x, t_frames)
        if on_step is not None:
            on_step(i, x, t_frames, v)
        x = x + (s - t) * v
    return x


def sample_estimate(x: Tensor, t: Tensor, velocity: Tensor) -> Tensor:
    """The clean sample a velocity implies: x0 = x_t - t v with per-frame t (B, F)."""
    return x - _frames(t).to(x.dtype) * velocity


def clip_noise(shape: Sequence[int], keys: Sequence[str] | None, seed: int) -> Tensor:
    """Starting noise (B, ...) drawn per clip from ``seed`` and the clip's key: the same however clips are batched or split over devices."""
    names = list(keys) if keys is not None else [str(i) for i in range(shape[0])]
    return torch.stack([torch.randn(tuple(shape[1:]), generator=torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(n.encode()))) for n in names])
