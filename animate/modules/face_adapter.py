"""Wan2.2-Animate's face path as a backbone side branch (:class:`animate.backbone.BlockHook`).

Face crops of the driving frames go through the transformer's motion encoder and face encoder
(4x fewer frames, as the VAE compresses time), giving per-latent-frame motion tokens; after every
``inject_face_latents_blocks``-th block the face adapter (a temporally aligned cross-attention:
the tokens of latent frame f attend to frame f's motion tokens) adds its output to the tokens.
Latent frames without a face (Animate's reference slot, EverAnimate's memory frames) get zero
motion tokens in front, as diffusers' forward pads the reference slot.
"""

from __future__ import annotations

import torch
from torch import Tensor

from animate import diffusers_wan as wan


def face_motion_tokens(transformer, face_pixels: Tensor, lead_frames: int = 1) -> Tensor:
    """(B, lead + T', N + 1, D): zero tokens for ``lead_frames`` latent frames, then the motion tokens of face crops (B, 3, S, size, size)."""
    motion = wan.face_motion(transformer, face_pixels)
    return torch.cat([motion.new_zeros(motion.shape[0], lead_frames, *motion.shape[2:]), motion], dim=1)


class FaceAdapterHook:
    """The face adapter after every ``inject_face_latents_blocks``-th block, reading motion tokens (B, F, N + 1, D) aligned with the latent frames."""

    def __init__(self, transformer, motion: Tensor):
        self.transformer = transformer
        self.motion = motion
        self.every = wan.face_adapter_every(transformer)

    def __call__(self, index: int, hidden_states: Tensor, modulation: Tensor, rotary_emb: tuple[Tensor, Tensor]) -> Tensor:
        """Tokens (B, L, D) after block ``index``, with the face adapter's update where one runs."""
        if index % self.every:
            return hidden_states
        return hidden_states + wan.face_adapter_output(self.transformer, index, hidden_states, self.motion.to(hidden_states.dtype))
