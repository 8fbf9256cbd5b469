"""Inception-v1 I3D (piergiaj/pytorch-i3d as vendored by VideoGPT and DisCo) for FVD.

Module names follow the original so that ``i3d_pretrained_400.pt`` loads strictly:
``Conv3d_1a_7x7``, ``Conv3d_2b_1x1``, ``Conv3d_2c_3x3``, ``Mixed_3b`` ... ``Mixed_5c`` (branches
``b0``, ``b1a``, ``b1b``, ``b2a``, ``b2b``, ``b3b``), ``logits``; each unit holds ``conv3d`` and
``bn``. Convolutions and pools pad "SAME" the TensorFlow way. VideoGPT builds its BatchNorms with
eps 1e-5, DisCo with eps 1e-3 (``bn_eps``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Triple = tuple[int, int, int]

MIXED_CHANNELS: dict[str, tuple[int, tuple[int, ...]]] = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


def pad_same(x: torch.Tensor, kernel: Triple, stride: Triple) -> torch.Tensor:
    """Zero-pad ``(B, C, T, H, W)`` as TensorFlow's SAME padding does (extra pixel at the end)."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """SAME-padded Conv3d, optional BatchNorm, optional ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
        bn_eps: float | None = 1e-5,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, bias=bn_eps is None)
        self.bn = None if bn_eps is None else nn.BatchNorm3d(out_channels, eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conv (+ BN) (+ ReLU)."""
        x = self.conv3d(pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max pooling after SAME zero padding."""

    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad then pool."""
        return F.max_pool3d(pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches (1x1; 1x1->3x3x3; 1x1->3x3x3; pool->1x1) concatenated on channels."""

    def __init__(self, in_channels: int, out: tuple[int, ...], bn_eps: float) -> None:
        super().__init__()
        self.b0 = Unit3D(in_channels, out[0], bn_eps=bn_eps)
        self.b1a = Unit3D(in_channels, out[1], bn_eps=bn_eps)
        self.b1b = Unit3D(out[1], out[2], (3, 3, 3), bn_eps=bn_eps)
        self.b2a = Unit3D(in_channels, out[3], bn_eps=bn_eps)
        self.b2b = Unit3D(out[3], out[4], (3, 3, 3), bn_eps=bn_eps)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, out[5], bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the branch outputs."""
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


class InceptionI3D(nn.Module):
    """I3D; ``forward`` returns the 400 Kinetics logits that FVD uses as features.

    The originals average-pool Mixed_5c with kernel (2, 7, 7) (VideoGPT) or (1, 7, 7) then average
    the logits over time (DisCo); for 16 frames at 224 both equal a global mean before the linear
    ``logits`` unit, which is what this forward does.
    """

    feature_dim = 400

    def __init__(self, num_classes: int = 400, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2), bn_eps=bn_eps)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, bn_eps=bn_eps)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), bn_eps=bn_eps)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        for name in ("Mixed_3b", "Mixed_3c"):
            self.add_module(name, InceptionModule(*MIXED_CHANNELS[name], bn_eps=bn_eps))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            self.add_module(name, InceptionModule(*MIXED_CHANNELS[name], bn_eps=bn_eps))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        for name in ("Mixed_5b", "Mixed_5c"):
            self.add_module(name, InceptionModule(*MIXED_CHANNELS[name], bn_eps=bn_eps))
        self.logits = Unit3D(1024, num_classes, bn_eps=None, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` clips in [-1, 1] -> ``(B, 400)`` logits."""
        for module in self.children():
            if module is self.logits:
                break
            x = module(x)
        pooled = x.mean(dim=(2, 3, 4), keepdim=True)  # (B, 1024, 1, 1, 1)
        return self.logits(pooled).flatten(1)
