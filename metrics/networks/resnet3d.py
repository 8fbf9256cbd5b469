"""Kinetics-400 3D ResNet-50 (kenshohara/3D-ResNets-PyTorch, shortcut type B) for FID-VID.

Module names follow the original so that ``resnet-50-kinetics.pth`` (its ``state_dict``, keys
prefixed ``module.`` by DataParallel) loads strictly: ``conv1``, ``bn1``, ``layer1..4`` of
bottlenecks (``conv1..3``, ``bn1..3``, ``downsample.0`` conv + ``downsample.1`` BN), ``fc``.
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck3D(nn.Module):
    """1x1x1 -> 3x3x3 (strided) -> 1x1x1 residual block with 4x channel expansion."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv3d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm3d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block forward."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNet3D50(nn.Module):
    """3D ResNet-50; ``forward`` returns the 2048-d average-pooled features (the ``fc`` is unused).

    The original pools with ``AvgPool3d((1, 4, 4))`` sized for 16 x 112 x 112 input, where the last
    stage is 1 x 4 x 4: a global mean there, which is what this forward takes for any input size.
    """

    feature_dim = 2048

    def __init__(self, num_classes: int = 400, blocks: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 64, kernel_size=7, stride=(1, 2, 2), padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        for index, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
            stride = 1 if index == 1 else 2
            layer = []
            for block in range(count):
                layer.append(Bottleneck3D(in_channels, planes, stride if block == 0 else 1))
                in_channels = planes * Bottleneck3D.expansion
            self.add_module(f"layer{index}", nn.Sequential(*layer))
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, H, W)`` mean-subtracted [0, 255] clips -> ``(B, 2048)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3, 4))


def resnet3d_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The model weights of a kenshohara checkpoint (``{'state_dict': ...}``, ``module.`` prefixes removed)."""
    state = checkpoint.get("state_dict", checkpoint)
    return {key.removeprefix("module."): value for key, value in state.items()}
