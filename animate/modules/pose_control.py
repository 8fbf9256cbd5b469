"""One-to-All's reference-guided pose control: Pose ResNet over [reference pose | driving poses], one self-attention block.

The reference pose (never face-enhanced, aligned with the reference image) and the driving poses
are encoded by a Pose ResNet (the paper's Table 4) to the token grid, concatenated along time like
the latents ``[reference | target]``, refined by one text-free self-attention block so the driving
frames see the reference's pose, and added to the output of the first DiT block through a
zero-initialised projection.

Table 4 lists the down-sampling strides (1,2,2), (2,2,2), (1,2,2) and a final stride-1 conv, which
compresses (2, 8, 8); the text says the encoder compresses like the VAE, and its output adds to
the tokens, so here the strides are (1,2,2), (2,2,2), (2,2,2) and the final conv strides (1,2,2):
Wan's (4, 16, 16) from pixels to tokens. A single pose frame is repeated to 4 like the causal
VAE's first frame (UniAnimate-DiT's encoder does the same).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from animate.backbone import WanBackbone
from animate.modules.text_free import TextFreeBlock, zero_linear
from common.geometry import WAN, Compression

DOWNSAMPLING = ((1, 2, 2), (2, 2, 2), (2, 2, 2))  # between the 4 stages
OUTPUT_STRIDE = (1, 2, 2)


class ResidualBlock3d(nn.Module):
    """GroupNorm, SiLU, Conv3d k3, twice, plus the input (Table 4's ResNet block)."""

    def __init__(self, channels: int, groups: int = 4):
        super().__init__()
        self.layers = nn.Sequential(
            nn.GroupNorm(groups, channels, eps=1e-6), nn.SiLU(), nn.Conv3d(channels, channels, 3, padding=1),
            nn.GroupNorm(groups, channels, eps=1e-6), nn.SiLU(), nn.Conv3d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> same."""
        return x + self.layers(x)


class PoseResNet(nn.Module):
    """Pose maps (B, 3, T, H, W) in [-1, 1], T = 1 + 4k -> features (B, D, 1 + k, H/16, W/16) on the token grid."""

    def __init__(self, dim: int, channels: int = 16, blocks_per_stage: int | Sequence[int] = 2, groups: int = 4, compression: Compression = WAN):
        super().__init__()
        blocks = [blocks_per_stage] * 4 if isinstance(blocks_per_stage, int) else list(blocks_per_stage)
        if len(blocks) != 4 or min(blocks) < 0:
            raise ValueError(f"pose_control.blocks_per_stage={blocks_per_stage}: one count, or 4 (one per stage), each >= 0")
        if compression.vae_time != 4 or compression.token_space != 16:
            raise ValueError("PoseResNet is built for Wan's (4, 16, 16) pixel-to-token compression")
        if channels % groups:
            raise ValueError(f"pose_control.channels={channels} must be a multiple of its {groups} GroupNorm groups")
        self.compression = compression
        layers: list[nn.Module] = [nn.Conv3d(3, channels, 3, padding=1)]
        for stage in range(4):
            layers += [ResidualBlock3d(channels, groups) for _ in range(blocks[stage])]
            if stage < 3:
                layers.append(nn.Conv3d(channels, channels, 3, stride=DOWNSAMPLING[stage], padding=1))
        layers.append(nn.Conv3d(channels, dim, 3, stride=OUTPUT_STRIDE, padding=1))
        self.layers = nn.Sequential(*layers)
        self.to(memory_format=torch.channels_last_3d)  # oneDNN's fast path for small-channel 3D convs on CPU

    def forward(self, pose: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> (B, D, F, h, w)."""
        self.compression.check_frames(pose.shape[2])
        repeat = self.compression.vae_time - 1
        pose = torch.cat([pose[:, :, :1].expand(-1, -1, repeat, -1, -1), pose], dim=2)
        return self.layers(pose.contiguous(memory_format=torch.channels_last_3d))


class ReferenceGuidedPoseControl(nn.Module):
    """Reference pose (B, 3, H, W) and driving poses (B, 3, T, H, W) -> tokens (B, (1 + F) h w, D) to add after block 0."""

    def __init__(self, backbone: WanBackbone, channels: int = 16, blocks_per_stage: int | Sequence[int] = 2, groups: int = 4):
        super().__init__()
        self.encoder = PoseResNet(backbone.dim, channels, blocks_per_stage, groups, backbone.compression)
        self.attention = TextFreeBlock(backbone.transformer.blocks[0], backbone.clean_modulation())
        self.proj_out = zero_linear(backbone.dim)

    def forward(self, reference_pose: Tensor | None, pose: Tensor, rotary_emb: tuple[Tensor, Tensor]) -> Tensor:
        """RoPE (B, (1 + F) h w, 1, head_dim) is the packed sequence's own: the pose tokens line up with its frames.

        Without a reference pose (a sequence without the reference frame in front) only the driving poses are encoded.
        """
        features = self.encoder(pose)  # (B, D, F, h, w)
        if reference_pose is not None:
            features = torch.cat([self.encoder(reference_pose[:, :, None]), features], dim=2)  # (B, D, 1 + F, h, w)
        tokens = features.flatten(2).transpose(1, 2)  # (B, (1 + F) h w, D)
        return self.proj_out(self.attention(tokens, rotary_emb))


class DrivingPoseControl(nn.Module):
    """Driving poses (B, 3, T, H, W) -> tokens (B, F h w, D) added to the noisy latent's tokens before block 0.

    Table 3's rows without reference-guided pose control: "the driving pose is still directly added
    to the noisy latent" (Sec. 4.4), the same Pose ResNet with no reference pose and no attention.
    """

    def __init__(self, backbone: WanBackbone, channels: int = 16, blocks_per_stage: int | Sequence[int] = 2, groups: int = 4):
        super().__init__()
        self.encoder = PoseResNet(backbone.dim, channels, blocks_per_stage, groups, backbone.compression)
        self.proj_out = zero_linear(backbone.dim)

    def forward(self, pose: Tensor) -> Tensor:
        features = self.encoder(pose)  # (B, D, F, h, w)
        return self.proj_out(features.flatten(2).transpose(1, 2))  # (B, F h w, D)


# ----- the official code's pose path: a causal 3D conv encoder and ControlNet-style blocks ------------------------
CAUSAL_STRIDES = ((1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))  # the official encoder's 4 downsamplers: (4, 16, 16)


class CausalConv3d(nn.Module):
    """Conv3d k3 after replicate padding: 2 frames in front (causal in time), 1 pixel on each side in space."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int, int] | int = 1):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, C', 1 + (T - 1) // s_t, ...)."""
        return self.conv(nn.functional.pad(x, (1, 1, 1, 1, 2, 0), mode="replicate"))


class CausalResnetBlock3d(nn.Module):
    """GroupNorm (over all frames), SiLU, causal conv, twice, plus the input."""

    def __init__(self, channels: int, groups: int = 4):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels, eps=1e-6)
        self.conv1 = CausalConv3d(channels, channels)
        self.norm2 = nn.GroupNorm(groups, channels, eps=1e-6)
        self.conv2 = CausalConv3d(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> same."""
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        return x + self.conv2(nn.functional.silu(self.norm2(h)))


class CausalDownsampler(nn.Module):
    """A strided causal conv (named as the official ``downsamplers.0``)."""

    def __init__(self, channels: int, stride: tuple[int, int, int]):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> downsampled."""
        return self.conv(x)


class CausalDownBlock(nn.Module):
    """One ResNet block then one downsampler."""

    def __init__(self, channels: int, stride: tuple[int, int, int], groups: int = 4):
        super().__init__()
        self.resnets = nn.ModuleList([CausalResnetBlock3d(channels, groups)])
        self.downsamplers = nn.ModuleList([CausalDownsampler(channels, stride)])

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> downsampled."""
        return self.downsamplers[0](self.resnets[0](x))


class CausalPoseEncoder(nn.Module):
    """The official pose encoder: poses (B, 3, 1 + 4k, H, W) in [-1, 1] -> (B, D, 1 + k, H/16, W/16), zero at initialisation."""

    def __init__(self, dim: int, channels: int = 16, groups: int = 4, compression: Compression = WAN):
        super().__init__()
        if compression.vae_time != 4 or compression.token_space != 16:
            raise ValueError("CausalPoseEncoder is built for Wan's (4, 16, 16) pixel-to-token compression")
        self.compression = compression
        self.conv_in = CausalConv3d(3, channels)
        self.down_blocks = nn.ModuleList(CausalDownBlock(channels, stride, groups) for stride in CAUSAL_STRIDES)
        self.conv_out = CausalConv3d(channels, dim)
        nn.init.zeros_(self.conv_out.conv.weight)
        nn.init.zeros_(self.conv_out.conv.bias)

    def forward(self, pose: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> (B, D, F, h, w)."""
        self.compression.check_frames(pose.shape[2])
        x = self.conv_in(pose)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(x)


class ControlNetPoseBranch(nn.Module):
    """The official code's pose path: pose tokens + the output of block 0 feed L text-free blocks; block j's output,
    through a zero-initialised linear, is added after main block j + 1 (``method.pose_control.style=controlnet``)."""

    def __init__(self, backbone: WanBackbone, num_blocks: int = 2, channels: int = 16, groups: int = 4):
        super().__init__()
        if not 1 <= num_blocks < backbone.num_blocks:
            raise ValueError(f"pose_control.blocks={num_blocks}: needs 1 <= L < N = {backbone.num_blocks} (official: 1.3B 2, 14B 1)")
        self.encoder = CausalPoseEncoder(backbone.dim, channels, groups, backbone.compression)
        self.blocks = nn.ModuleList(TextFreeBlock(backbone.transformer.blocks[j]) for j in range(num_blocks))  # from main block j
        self.zero = nn.ModuleList(zero_linear(backbone.dim) for _ in range(num_blocks))

    def tokens(self, reference_pose: Tensor | None, pose: Tensor) -> Tensor:
        """Pose tokens (B, (1 + F) h w, D): the reference pose is its own one-frame call in front."""
        features = self.encoder(pose)
        if reference_pose is not None:
            features = torch.cat([self.encoder(reference_pose[:, :, None]), features], dim=2)
        return features.flatten(2).transpose(1, 2)

    def hook(self, tokens: Tensor, scale: Tensor):
        """The backbone's block hook for one forward: pose tokens (B, L, D), per-sample scale (B,) (0 = pose dropped)."""
        state: dict[str, Tensor] = {}

        def after_block(index: int, hidden_states: Tensor, modulation: Tensor, rotary_emb: tuple[Tensor, Tensor]) -> Tensor:
            if index == 0:
                state["control"] = hidden_states + tokens.to(hidden_states.dtype)
                return hidden_states
            j = index - 1
            if j >= len(self.blocks):
                return hidden_states
            state["control"] = self.blocks[j](state["control"], rotary_emb, modulation)
            return hidden_states + self.zero[j](state["control"]) * scale.to(hidden_states.dtype)[:, None, None]

        return after_block
