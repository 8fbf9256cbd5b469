"""Text-to-video pretraining (Wan2.1-T2V's objective): every frame generated from noise, no conditions.

This is how the embedded default gets its pretrained base (``conf=base``): the tiny Wan learns to
generate the synthetic puppets under the fixed empty prompt, and the animation methods then
fine-tune from it as they would from Wan2.1-T2V. At real scale the same recipe continues
pretraining a Wan checkpoint on a domain's videos.
"""

from __future__ import annotations

from torch import Tensor

from animate.methods.base import AnimationSystem, LatentSequence, PixelFn, video_pixels


class TextToVideo(AnimationSystem):
    """Unconditional (fixed-prompt) video flow matching: the base model the methods start from."""

    def latent_inputs(self, training: bool) -> dict[str, PixelFn]:
        return {"video": video_pixels} if training else {}

    def build_sequence(self, batch: dict, latents: dict[str, Tensor], drop: dict[str, Tensor], training: bool) -> LatentSequence:
        if training:
            clean = latents["video"]  # (B, C, F, h, w)
        else:
            clean = batch["video"].new_zeros(batch["video"].shape[0], *self.target_latent_shape(batch))
        b, _, f, h, w = clean.shape
        return LatentSequence(
            clean=clean,
            generate=clean.new_ones(b, f, dtype=bool),
            loss_weight=self.region_weight(batch, (h, w)),
            target=slice(0, f),
        )
