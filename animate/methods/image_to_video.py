"""Image-to-video pretraining (Wan2.1-I2V's objective): the clip's first frame is the given image, every frame generated.

This is how the embedded default gets a tiny I2V base (``conf=base_i2v``, docs/TINY_BASE.md "The
I2V base"): the shipped T2V base widened to Wan I2V's 36 input channels, the new ones at zero, and
trained to animate each clip's first frame; UniAnimate's I2V conditioning then starts from a model
that has learned Wan I2V's frame-0 copy, as UniAnimate-DiT starts from Wan2.1-I2V.

- The conditioning enters on channels exactly as UniAnimate's ``reference_latent: i2v`` builds it
  (:func:`animate.methods.base.i2v_condition`): the 4-channel first-frame mask and the VAE latents
  of [first frame, zero frames], concatenated with the 16 noisy channels (16 + 4 + 16 = 36).
- Every latent frame is generated and carries loss, frame 0 included: Wan I2V generates frame 0
  too, and the mask tells it that frame is given.
- No image cross-attention: Wan2.1-I2V also feeds the image's CLIP tokens to a cross-attention in
  every block; the tiny T2V architecture has none (``image_dim`` null), and a backbone with one is
  refused (its tokens would be cached under the same name as other methods' reference tokens).
- Condition ``image`` zeroes the whole I2V conditioning, mask included (as UniAnimate's
  ``reference`` drop does): a dropped sample is the T2V task, which the widened base starts from,
  and CFG over the image exists. DiffSynth's Wan I2V training never drops the image (its
  ``input_image`` is always the clip's first frame; Wan's own CFG is over the text); the tiny
  default drops it in 10% of the samples, UniAnimate-DiT's rate for the same conditioning.
- The batch's ``reference`` becomes the clip's first frame (the data module's reference is another
  frame, outside the window). Its latents are cached as ``first_frame_clip``, a name of their own,
  so they never meet UniAnimate's ``reference_clip`` latents under the same clip's cache key; a
  batch without a video (your own image and poses) takes its ``reference`` as the image, uncached.
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
    video_pixels,
)

FIRST_FRAME_CLIP = "first_frame_clip"  # latent name (and cache name) of VAE([the clip's first frame, zero frames])


class ImageToVideo(AnimationSystem):
    """Wan2.1-I2V's objective on a channel-concatenating backbone: the base UniAnimate's ``i2v`` conditioning starts from."""

    conditions = ("image",)
    guidance_levels = ((), ("image",))

    def __init__(self, backbone: WanBackbone, optimizer, **kwargs):
        expected = 2 * backbone.latent_channels + I2V_MASK_CHANNELS
        if backbone.in_channels != expected:
            raise ValueError(
                f"ImageToVideo needs a Wan I2V backbone with in_channels = {expected} (latents + mask + image latents), "
                f"got {backbone.in_channels}: set backbone.transformer.in_channels={expected}"
            )
        if backbone.takes_image_tokens:
            raise ValueError("ImageToVideo trains no image cross-attention: use a transformer without one (image_dim null), as the tiny T2V base")
        super().__init__(backbone, optimizer, **kwargs)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler", "metrics"])

    def prepare_batch(self, batch: dict, augment: bool) -> dict:
        """The clip's first frame as the reference (B, 3, H, W); without a video, the given reference, encoded uncached."""
        if "video" in batch:
            return batch | {"reference": batch["video"][:, :, 0]}
        return batch | {"cache_key": None}  # your own image: no clip's cache key describes it

    def latent_inputs(self, training: bool) -> dict[str, PixelFn]:
        image = {FIRST_FRAME_CLIP: reference_clip_pixels}  # the reference is the first frame (prepare_batch)
        return {"video": video_pixels, **image} if training else image

    def build_sequence(self, batch: dict, latents: dict[str, Tensor], drop: dict[str, Tensor], training: bool) -> LatentSequence:
        image = latents[FIRST_FRAME_CLIP]  # (B, C, F, h, w): VAE([first frame, zero frames])
        b, _, f, h, w = image.shape
        clean = latents["video"] if training else torch.zeros_like(image)
        return LatentSequence(
            clean=clean,
            generate=torch.ones(b, f, dtype=torch.bool, device=clean.device),  # frame 0 too: the mask says it is given
            loss_weight=self.region_weight(batch, (h, w)),
            target=slice(0, f),
            channel_cond=keep_samples(i2v_condition(image), drop["image"]),  # (B, 4 + C, F, h, w)
        )
