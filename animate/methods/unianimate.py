"""UniAnimate-DiT ("UniAnimate-DiT: Human Image Animation with Large-Scale Video Diffusion Transformer", Wang et al.): Wan I2V + a 3D-conv pose encoder added to the tokens.

- The reference enters the I2V way: the VAE latent of [reference, zero frames] and a 4-channel
  first-frame mask are concatenated on channels with the noisy latent (``channel_cond``).
  ``reference_latent="frame0"`` encodes the reference alone and pads with zero latents: 17x
  cheaper to encode. ``"repeat"`` puts the reference latent in every frame: a T2V base (the
  tiny default's) then copies appearance per token instead of first learning Wan I2V's frame-0
  copy through attention, which a pretrained I2V model already has (it expects ``"i2v"``).
  ``"still"`` encodes the reference held still for the clip's length, so
  each latent frame is in the same causal-VAE encoding as the target frame at its position:
  a causal VAE encodes frame 0 alone and later frames in groups of 4, and the tiny VAE's
  one-frame latent differs from its group latents of the same still image
  (``python -m benchmarks.vae_still``), so ``"repeat"`` asks the DiT to translate between them.
  The tiny default runs from the tiny I2V base (``conf=unianimate``, ``backbone=tiny_i2v``) with
  ``"i2v"``, as the official code runs from Wan2.1-I2V-14B.
- :class:`PoseVideoEncoder` maps the rendered driving poses to tokens that are ADDED to the
  patchified tokens before block 0 (``injections[-1]``).
- :class:`ReferencePoseEncoder` maps the reference's pose map to 20 channels added to the I2V
  conditioning of every frame (official code: ``y + randomref_embedding_pose(ref_pose)``).
- Pose maps enter both encoders in [0, 1] (the official code's ``/255``), so official encoder
  weights see what they were trained on.
- Condition dropout as the official code draws it: condition ``pose`` drops the driving pose and
  the reference pose together (one joint draw, 5%); condition ``reference`` zeroes the whole I2V
  conditioning, first-frame mask included (10%). CFG (1.5) has two levels: the negative pass
  removes the pose (driving and reference pose) and keeps the reference, which is the state the
  joint pose draw trains (5% x 90% of samples). The official negative pass keeps the reference
  pose, a state its training never realises; here it goes with the pose.
- LoRA through peft (``lora`` config) or full fine-tuning.
"""

from __future__ import annotations

import torch
from torch import Tensor

from animate.backbone import WanBackbone
from animate.methods.base import (
    I2V_MASK_CHANNELS,
    AnimationSystem,
    LatentSequence,
    PixelFn,
    i2v_condition,
    keep_samples,
    reference_clip_pixels,
    reference_pixels,
    reference_still_pixels,
    video_pixels,
)
from animate.modules.pose_encoders import PoseVideoEncoder, ReferencePoseEncoder

REFERENCE_LATENTS = ("i2v", "frame0", "repeat", "still")
POSE_ENCODER_DEFAULTS = dict(channels=8, num_layers=7, zero_init=True)  # conf/method/unianimate.yaml's (tests/test_methods.py compares them)


def unit_range(pose: Tensor) -> Tensor:
    """Pose maps in [-1, 1] -> [0, 1], the range the official encoders take (``/255``)."""
    return (pose + 1) / 2


class UniAnimate(AnimationSystem):
    """UniAnimate-DiT as a LightningModule."""

    conditions = ("pose", "reference")
    guidance_levels = (("reference",), ("pose", "reference"))

    def __init__(
        self,
        backbone: WanBackbone,
        optimizer,
        pose_encoder: dict | None = None,
        reference_pose_encoder: bool = True,
        reference_latent: str = "i2v",
        **kwargs,
    ):
        pose_cfg = POSE_ENCODER_DEFAULTS | dict(pose_encoder or {})
        latent_channels = backbone.latent_channels
        expected = 2 * latent_channels + I2V_MASK_CHANNELS
        if backbone.in_channels != expected:
            raise ValueError(
                f"UniAnimate needs a Wan I2V backbone with in_channels = {expected} (latents + mask + reference latent), "
                f"got {backbone.in_channels}: set backbone.transformer.in_channels={expected}"
            )
        if reference_latent not in REFERENCE_LATENTS:
            raise ValueError(f"method.reference_latent={reference_latent!r}: use one of {', '.join(REFERENCE_LATENTS)}")
        super().__init__(backbone, optimizer, **kwargs)
        self.reference_latent = reference_latent
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler", "metrics"])
        self.pose_encoder = PoseVideoEncoder(backbone.dim, **pose_cfg, compression=backbone.compression)
        self.reference_pose_encoder = (
            ReferencePoseEncoder(out_channels=latent_channels + I2V_MASK_CHANNELS, compression=backbone.compression)
            if reference_pose_encoder
            else None
        )

    def latent_inputs(self, training: bool) -> dict[str, PixelFn]:
        reference = {
            "i2v": {"reference_clip": reference_clip_pixels},
            "still": {"reference_still": reference_still_pixels},
        }.get(self.reference_latent, {"reference": reference_pixels})
        return {"video": video_pixels, **reference} if training else reference

    def reference_latents(self, batch: dict, latents: dict[str, Tensor]) -> Tensor:
        """(B, C, F, h, w): VAE([reference, zero frames]) (Wan I2V), VAE(reference) then zeros, repeated, or VAE(reference held still)."""
        if self.reference_latent == "i2v":
            return latents["reference_clip"]
        if self.reference_latent == "still":
            return latents["reference_still"]
        c, f, h, w = self.target_latent_shape(batch)
        reference = latents["reference"]  # (B, C, 1, h, w)
        if self.reference_latent == "repeat":
            return reference.expand(-1, -1, f, -1, -1)
        return torch.cat([reference, reference.new_zeros(reference.shape[0], c, f - 1, h, w)], dim=2)

    def build_sequence(self, batch: dict, latents: dict[str, Tensor], drop: dict[str, Tensor], training: bool) -> LatentSequence:
        reference = self.reference_latents(batch, latents)  # (B, C, F, h, w)
        b, _, f, h, w = reference.shape
        clean = latents["video"] if training else torch.zeros_like(reference)
        y = keep_samples(i2v_condition(reference), drop["reference"])  # (B, 4 + C, F, h, w)
        if self.reference_pose_encoder is not None:
            y = y + keep_samples(self.reference_pose_encoder(unit_range(batch["reference_pose"])), drop["pose"])
        pose_tokens = keep_samples(self.pose_encoder(unit_range(batch["pose"])), drop["pose"])  # (B, L, D)
        frames = torch.ones(b, f, dtype=torch.bool, device=clean.device)
        return LatentSequence(
            clean=clean,
            generate=frames,
            loss_weight=self.region_weight(batch, (h, w)),
            target=slice(0, f),
            channel_cond=y,
            injections={-1: pose_tokens},
        )
