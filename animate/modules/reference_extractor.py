"""One-to-All's Reference Extractor: M text-free DiT blocks over the masked reference, one feature per backbone block.

The VAE latents of the masked reference and of its mask, concatenated on channels (B, 2C, 1, h, w),
are patchified to r^0 and refined by M text-free blocks copied from the backbone's first M blocks;
r^0..r^M, each through its own zero-initialised projection (M + 1 of them, as the official code
has), are the M + 1 features, so an untrained extractor adds nothing. Backbone block i reads
feature ``i // n`` with ``n = N / (M + 1)`` (1.3B: N = 30, M = 14; 14B: N = 40, M = 7). The
extractor has no timestep, so it runs once per sample, not once per denoising step: its blocks
run at the backbone's t = 0 modulation, learned from there (:class:`TextFreeBlock`; the official
code gives the extractor its own timestep embedder fed the denoising time).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from animate.backbone import WanBackbone, widened_patch_embedding
from animate.modules.text_free import TextFreeBlock, zero_linear


def feature_of_block(num_blocks: int, num_features: int) -> list[int]:
    """The extractor feature each of ``num_blocks`` backbone blocks reads: ``n = N / (M + 1)`` consecutive blocks share one."""
    if num_features < 1 or num_blocks % num_features:
        raise ValueError(
            f"the Reference Extractor's M + 1 = {num_features} features must divide the backbone's N = {num_blocks} blocks "
            f"(One-to-All: n = N / (M + 1) consecutive blocks share a feature); pick method.extractor_blocks = M accordingly"
        )
    share = num_blocks // num_features
    return [block // share for block in range(num_blocks)]


class ReferenceExtractor(nn.Module):
    """Masked reference latents -> the M + 1 reference features (B, M + 1, Lr, D) HRFA reads (block i: :attr:`feature_of_block` [i])."""

    def __init__(self, backbone: WanBackbone, num_blocks: int, in_channels: int | None = None):
        super().__init__()
        if not 0 <= num_blocks < backbone.num_blocks:
            raise ValueError(f"method.extractor_blocks={num_blocks}: needs 0 <= M < N = {backbone.num_blocks}")
        self.feature_of_block = feature_of_block(backbone.num_blocks, num_blocks + 1)
        in_channels = in_channels or 2 * backbone.latent_channels  # reference latent + mask latent
        # the reference channels start from the backbone's own patch embedding, the mask channels at zero
        self.patch_embedding = widened_patch_embedding(backbone.transformer.patch_embedding, in_channels)
        modulation = backbone.clean_modulation()  # (6, D)
        self.blocks = nn.ModuleList(TextFreeBlock(backbone.transformer.blocks[i], modulation) for i in range(num_blocks))
        self.projections = nn.ModuleList(zero_linear(backbone.dim) for _ in range(num_blocks + 1))

    def features(self, reference: Tensor, rotary_emb: tuple[Tensor, Tensor]) -> list[Tensor]:
        """r^0..r^M before their projections, each (B, Lr, D), of reference latents (B, 2C, 1, h, w) with their frame-0 RoPE."""
        r = self.patch_embedding(reference.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        features = [r]
        for block in self.blocks:
            r = block(r, rotary_emb)
            features.append(r)
        return features

    def forward(self, reference: Tensor, rotary_emb: tuple[Tensor, Tensor]) -> Tensor:
        """Reference latents (B, 2C, 1, h, w) -> the projected features the backbone blocks attend to (B, M + 1, Lr, D)."""
        return torch.stack([proj(r) for proj, r in zip(self.projections, self.features(reference, rotary_emb))], dim=1)



