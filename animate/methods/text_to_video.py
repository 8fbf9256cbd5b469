"""Text-to-video pretraining (Wan2.1-T2V's objective): every frame generated from noise, no conditions.

This is how the embedded default gets its pretrained base (``conf=base``): the tiny Wan learns to
generate the synthetic puppets under the fixed empty prompt, and the animation methods then
fine-tune from it as they would from Wan2.1-T2V. At real scale the same recipe continues
pretraining a Wan checkpoint on a domain's videos.

Per-frame noise levels (``frame_noise``, docs/TINY_BASE.md): every method fine-tuned from the base
shows it clean frames beside noisy ones (FramePrompt's reference and pose frames, One-to-All's
reference prefix, EverAnimate's memory), and a base trained with one noise level for all frames
never learns to copy from a clean frame. So a training draw gives each sample one of three kinds:

- ``independent``: its own time for every latent frame (Diffusion Forcing's independent per-token
  noise levels; Pusa's vectorised timesteps);
- ``clean``: some frames held clean at t = 0 without loss (``generate=False``, loss weight 0, as
  every method holds its condition frames), the others at one shared time (One-to-All's official
  training puts the reference as a clean first frame in 20% of its samples);
- otherwise one time for every frame, the plain T2V objective.

Validation (the fixed-draw ``generator`` path of :meth:`AnimationSystem.loss`) and sampling keep
one time for every frame: ``val/loss`` stays the equal-noise T2V loss of docs/TINY_BASE.md's curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from animate.backbone import WanBackbone
from animate.flow import sample_time
from animate.methods.base import AnimationSystem, LatentSequence, PixelFn, video_pixels

CLEAN_FRAMES = ("first", "prefix", "subset")
FRAME_NOISE_DEFAULTS = dict(independent=0.0, clean=0.0, clean_frames="first")  # conf/method/text_to_video.yaml's: one time for all frames
HELD_FRAMES = "held_frames"  # batch entry of a training draw: (B, F) bool, latent frames held clean at t = 0 without loss
OWN_TIMES = "own_frame_times"  # batch entry of a training draw: (B, F) per-frame times of independent samples, NaN for the others


def clean_frame_mask(batch_size: int, frames: int, which: str, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """(B, F) bool, the frames a ``clean`` sample holds: latent frame 0, the first k, or k random frames, k uniform in 1..F-1."""
    index = torch.arange(frames, device=device)
    if which == "first":
        return (index == 0).expand(batch_size, frames)
    held = torch.randint(1, frames, (batch_size, 1), generator=generator, device=device)  # k: at least one frame held, one generated
    if which == "prefix":
        return index < held
    rank = torch.rand(batch_size, frames, generator=generator, device=device).argsort(dim=1).argsort(dim=1)  # a random order of the frames
    return rank < held


def draw_frame_noise(
    batch_size: int,
    frames: int,
    independent: float,
    clean: float,
    clean_frames: str,
    time_sampling: dict,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """One training draw of per-frame noise levels: held frames (B, F) bool and own times (B, F), NaN where a sample takes its one time.

    A sample is ``independent`` (its own time per frame, drawn as ``time_sampling`` draws one) with
    that probability, ``clean`` (frames of :func:`clean_frame_mask` held) with that one, else plain.
    A one-frame clip (an image) holds no frame: it would have nothing left to generate.
    """
    kind = torch.rand(batch_size, generator=generator, device=device)  # (B,)
    own = kind < independent
    holds = (kind >= independent) & (kind < independent + clean)
    times = sample_time(batch_size * frames, **time_sampling, generator=generator, device=device).view(batch_size, frames)
    own_times = torch.where(own[:, None], times, torch.full_like(times, float("nan")))
    if frames == 1:
        return torch.zeros(batch_size, 1, dtype=torch.bool, device=device), own_times
    return holds[:, None] & clean_frame_mask(batch_size, frames, clean_frames, generator, device), own_times


@dataclass
class FrameNoiseSequence(LatentSequence):
    """A T2V sequence whose training draw may give each latent frame its own time."""

    own_times: Tensor | None = None  # (B, F) per-frame flow times of independent samples, NaN where the sample's one time applies

    def frame_times(self, t: Tensor) -> Tensor:
        """Per-frame flow time (B, F): a sample's own times, else ``t`` (B,), on generated frames; 0 on held frames."""
        times = t[:, None].expand_as(self.generate)
        if self.own_times is not None:
            times = torch.where(self.own_times.isnan(), times, self.own_times.to(times))
        return torch.where(self.generate, times, torch.zeros_like(times))


class TextToVideo(AnimationSystem):
    """Unconditional (fixed-prompt) video flow matching: the base model the methods start from."""

    def __init__(self, backbone: WanBackbone, optimizer, frame_noise: dict | None = None, **kwargs):
        noise = FRAME_NOISE_DEFAULTS | dict(frame_noise or {})
        unknown = set(noise) - set(FRAME_NOISE_DEFAULTS)
        if unknown:
            raise ValueError(f"method.frame_noise: unknown keys {sorted(unknown)}; valid {list(FRAME_NOISE_DEFAULTS)}")
        if min(noise["independent"], noise["clean"]) < 0 or noise["independent"] + noise["clean"] > 1:
            raise ValueError(f"method.frame_noise: independent={noise['independent']} and clean={noise['clean']} are shares of the samples (>= 0, sum <= 1)")
        if noise["clean_frames"] not in CLEAN_FRAMES:
            raise ValueError(f"method.frame_noise.clean_frames={noise['clean_frames']!r}: use one of {', '.join(CLEAN_FRAMES)}")
        super().__init__(backbone, optimizer, **kwargs)
        if noise["independent"] and self.loss_weighting != "none":
            raise ValueError(f"method.frame_noise.independent with time_sampling.loss_weighting={self.loss_weighting}: the loss weights one time per sample")
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler", "metrics"])
        self.frame_noise = noise

    def latent_inputs(self, training: bool) -> dict[str, PixelFn]:
        return {"video": video_pixels} if training else {}

    def prepare_batch(self, batch: dict, augment: bool) -> dict:
        """A training draw adds each sample's per-frame noise levels (:func:`draw_frame_noise`); validation and sampling keep one time."""
        if not augment or not (self.frame_noise["independent"] or self.frame_noise["clean"]):
            return batch
        frames = self.target_latent_shape(batch)[1]
        held, own_times = draw_frame_noise(batch["video"].shape[0], frames, **self.frame_noise, time_sampling=self.time_sampling, device=self.device)
        return batch | {HELD_FRAMES: held, OWN_TIMES: own_times}

    def build_sequence(self, batch: dict, latents: dict[str, Tensor], drop: dict[str, Tensor], training: bool) -> FrameNoiseSequence:
        if training:
            clean = latents["video"]  # (B, C, F, h, w)
        else:
            clean = batch["video"].new_zeros(batch["video"].shape[0], *self.target_latent_shape(batch))
        b, _, f, h, w = clean.shape
        held = batch.get(HELD_FRAMES) if training else None  # (B, F), from a training draw only
        generate = clean.new_ones(b, f, dtype=bool) if held is None else ~held
        return FrameNoiseSequence(
            clean=clean,
            generate=generate,
            loss_weight=self.region_weight(batch, (h, w)) * generate[:, None, :, None, None],  # no loss on held frames
            target=slice(0, f),
            own_times=batch.get(OWN_TIMES) if training else None,
        )
