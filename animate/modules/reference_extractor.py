"""One-to-All's Reference Extractor: M text-free DiT blocks over the masked reference, one feature per backbone block.

The VAE latents of the masked reference and of its mask, concatenated on channels (B, 2C, 1, h, w),
are patchified to r^0 and refined by M text-free blocks copied from the backbone's first M blocks;
r^0..r^M, each through its own zero-initialised projection (M + 1 of them, as the official code
has), are the M + 1 features, so an untrained extractor adds nothing. Backbone block i reads
feature ``i // n`` with ``n = N / (M + 1)`` (1.3B: N = 30, M = 14; 14B: N = 40, M = 7). The
extractor has no timestep by default, so it runs once per sample, not once per denoising step:
its blocks run at the backbone's t = 0 modulation, learned from there (:class:`TextFreeBlock`).
``timestep=True`` is the official code's form: the extractor owns a copy of the backbone's
timestep embedder and is fed the denoising time, so it runs at every step.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from animate import diffusers_wan as wan
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

    def __init__(self, backbone: WanBackbone, num_blocks: int, in_channels: int | None = None, timestep: bool = False):
        super().__init__()
        if not 0 <= num_blocks < backbone.num_blocks:
            raise ValueError(f"method.extractor_blocks={num_blocks}: needs 0 <= M < N = {backbone.num_blocks}")
        self.feature_of_block = feature_of_block(backbone.num_blocks, num_blocks + 1)
        in_channels = in_channels or 2 * backbone.latent_channels  # reference latent + mask latent
        # the reference channels start from the backbone's own patch embedding, the mask channels at zero
        self.patch_embedding = widened_patch_embedding(backbone.transformer.patch_embedding, in_channels)
        self.condition_embedder = wan.strip_text_embedding(copy.deepcopy(backbone.transformer.condition_embedder)) if timestep else None
        modulation = None if timestep else backbone.clean_modulation()  # (6, D)
        self.blocks = nn.ModuleList(TextFreeBlock(backbone.transformer.blocks[i], modulation) for i in range(num_blocks))
        self.projections = nn.ModuleList(zero_linear(backbone.dim) for _ in range(num_blocks + 1))

    @property
    def timestep(self) -> bool:
        """Whether the features depend on the denoising time (the official form)."""
        return self.condition_embedder is not None

    def features(self, reference: Tensor, rotary_emb: tuple[Tensor, Tensor], t: Tensor | None = None) -> list[Tensor]:
        """r^0..r^M before their projections, each (B, Lr, D), of reference latents (B, 2C, 1, h, w) with their frame-0 RoPE (and time t (B,))."""
        modulation = None
        if self.timestep:
            if t is None:
                raise ValueError("this Reference Extractor takes the denoising time t (method.extractor_timestep=true)")
            modulation = wan.timestep_modulation(self.condition_embedder, t)[:, None]  # (B, 1, 6, D)
        r = self.patch_embedding(reference.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        features = [r]
        for block in self.blocks:
            r = block(r, rotary_emb, modulation)
            features.append(r)
        return features

    def forward(self, reference: Tensor, rotary_emb: tuple[Tensor, Tensor], t: Tensor | None = None) -> Tensor:
        """Reference latents (B, 2C, 1, h, w) -> the projected features the backbone blocks attend to (B, M + 1, Lr, D)."""
        return torch.stack([proj(r) for proj, r in zip(self.projections, self.features(reference, rotary_emb, t))], dim=1)





class ResnetBlock2d(nn.Module):
    """GroupNorm, SiLU, conv 3x3, twice, plus the input (the official prefix encoder's block; its names)."""

    def __init__(self, channels: int, groups: int = 4):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels, eps=1e-6)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels, eps=1e-6)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> same."""
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        return x + self.conv2(nn.functional.silu(self.norm2(h)))


class ResnetStage2d(nn.Module):
    """One stage of one ResNet block, no downsampling (named as the official ``down_blocks.k``)."""

    def __init__(self, channels: int, groups: int = 4):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2d(channels, groups)])

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> same."""
        return self.resnets[0](x)


class ReferencePrefixEncoder(nn.Module):
    """The official code's prefix frame: [reference latent, mask latent] (B, 2C, 1, h, w) -> (B, C, 1, h, w).

    Per frame: conv 3x3 to ``channels``, ``stages`` ResNet blocks, a zero-initialised conv 3x3 out,
    so the prefix starts at zero (``method.reference_prefix=encoded``).
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int = 16, stages: int = 3, groups: int = 4):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down_blocks = nn.ModuleList(ResnetStage2d(channels, groups) for _ in range(stages))
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, F, h, w) -> (B, C_out, F, h, w), frame by frame."""
        b, _, f, h, w = x.shape
        x = self.conv_in(x.transpose(1, 2).flatten(0, 1).to(self.conv_in.weight.dtype))
        for stage in self.down_blocks:
            x = stage(x)
        return self.conv_out(x).unflatten(0, (b, f)).transpose(1, 2)
