"""FramePrompt ("FramePrompt: In-context Controllable Animation with Zero Structural Changes"): reference, pose frames and target in one sequence.

No new modules. The latent sequence along time is ``[reference | pose frames | target frames]``;
with selective noise only the target frames are noised (condition frames stay clean at t = 0);
the loss covers the target frames ("half", the paper's default and best) or every frame ("all",
its ablation). An optional causal mask lets target tokens attend to everything while context
tokens see only context (paper Sec. 3.5).

Deviation, stated: the paper VAE-encodes the concatenated pixel sequence at once; here the
reference, the pose clip and the target clip are three VAE segments (1 + F + F latent frames), so
that each part has whole causal-VAE frame groups and the target latents are shared with the other
methods' cache. With a causal VAE the two differ only in the first latent frame of each segment.
"""

from __future__ import annotations

import torch
from torch import Tensor

from animate.backbone import WanBackbone
from animate.methods.base import AnimationSystem, LatentSequence, PixelFn, keep_samples, pose_pixels, reference_pixels, video_pixels


def context_causal_mask(is_target: Tensor, tokens_per_frame: int) -> Tensor:
    """(B, 1, L, L) bool: target queries see every token; context queries see context only."""
    roles = is_target.repeat_interleave(tokens_per_frame, dim=1)  # (B, L)
    return (roles[:, :, None] | ~roles[:, None, :])[:, None]


class FramePrompt(AnimationSystem):
    """FramePrompt as a LightningModule."""

    conditions = ("pose", "reference")
    guidance_levels = ((), ("pose", "reference"))

    def __init__(
        self,
        backbone: WanBackbone,
        optimizer,
        loss_frames: str = "half",
        selective_noise: bool = True,
        causal_mask: bool = False,
        **kwargs,
    ):
        if loss_frames not in ("half", "all"):
            raise ValueError(f"method.loss_frames={loss_frames!r}: use 'half' (target frames only) or 'all'")
        if backbone.in_channels != backbone.latent_channels:
            raise ValueError(
                f"FramePrompt adds no channels: backbone.transformer.in_channels must be {backbone.latent_channels}, got {backbone.in_channels}"
            )
        super().__init__(backbone, optimizer, **kwargs)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler", "metrics"])
        self.loss_frames = loss_frames
        self.selective_noise = selective_noise
        self.causal_mask = causal_mask

    def latent_inputs(self, training: bool) -> dict[str, PixelFn]:
        inputs = {"reference": reference_pixels, "pose": pose_pixels}
        return inputs | {"video": video_pixels} if training else inputs

    def build_sequence(self, batch: dict, latents: dict[str, Tensor], drop: dict[str, Tensor], training: bool) -> LatentSequence:
        reference = keep_samples(latents["reference"], drop["reference"])  # (B, C, 1, h, w)
        pose = keep_samples(latents["pose"], drop["pose"])  # (B, C, F, h, w)
        target = latents["video"] if training else torch.zeros_like(pose)
        b, _, f, h, w = target.shape
        n_context = reference.shape[2] + pose.shape[2]
        clean = torch.cat([reference, pose, target], dim=2)
        is_target = torch.zeros(b, n_context + f, dtype=torch.bool, device=clean.device)
        is_target[:, n_context:] = True
        generate = is_target if self.selective_noise or not training else torch.ones_like(is_target)
        frame_weight = is_target if self.loss_frames == "half" else torch.ones_like(is_target)
        loss_weight = frame_weight[:, None, :, None, None].float().expand(b, 1, n_context + f, h, w).clone()
        loss_weight[:, :, n_context:] *= self.region_weight(batch, (h, w))
        tokens_per_frame = (h // self.backbone.compression.patch_space) * (w // self.backbone.compression.patch_space)
        return LatentSequence(
            clean=clean,
            generate=generate,
            loss_weight=loss_weight,
            target=slice(n_context, n_context + f),
            attention_mask=context_causal_mask(is_target, tokens_per_frame) if self.causal_mask else None,
        )
