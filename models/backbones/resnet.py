"""CIFAR-style ResNet-18 / ResNet-50 backbones (``--enc_type resnet18 / resnet50``).

The same network as torchvision's ResNet without its classifier, as pl_bolts'
``resnet18_encoder`` / ``resnet50_encoder`` build it (the original's
``models/resnet_encoders.py``): by default a 3x3 stride-1 stem and no max-pool, suited
to 32x32 images; ``first_conv=True`` gives the ImageNet 7x7 stride-2 stem and
``maxpool1=True`` the 3x3 stride-2 max-pool after it.

Parameter names equal the original's (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0`` ...); neither the max-pool nor the average pool has
parameters, so the stem options do not change the key set.
"""
from __future__ import annotations

from typing import Type, Union

import torch
from torch import Tensor, nn

from ._common import global_avg_pool

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet50"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 bottleneck with a residual connection (ResNet-50); stride on the 3x3."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


Block = Type[Union[BasicBlock, Bottleneck]]


class ResNet(nn.Module):
    """ResNet trunk returning ``(h, [tap1, tap2, tap3])``.

    h is the global average of ``layer4``'s output (512 * expansion); the taps are the
    global averages of the outputs of ``layer1``, ``layer2`` and ``layer3``
    (64, 128, 256 channels times the block's expansion).
    """

    def __init__(self, block: Block, layers: list[int], in_channels: int = 3,
                 first_conv: bool = False, maxpool1: bool = False) -> None:
        super().__init__()
        self.inplanes = 64
        if first_conv:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        # The original used MaxPool2d(kernel_size=1, stride=1) when off, which is the identity.
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if maxpool1 else nn.Identity()
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = 512 * block.expansion
        self.tap_dims = (64 * block.expansion, 128 * block.expansion, 256 * block.expansion)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        tap1 = global_avg_pool(x)
        x = self.layer2(x)
        tap2 = global_avg_pool(x)
        x = self.layer3(x)
        tap3 = global_avg_pool(x)
        x = self.layer4(x)
        h = torch.flatten(self.avgpool(x), 1)
        return h, [tap1, tap2, tap3]


def resnet18(in_channels: int = 3, first_conv: bool = False, maxpool1: bool = False) -> ResNet:
    """ResNet-18 backbone: feature 512, taps (64, 128, 256)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], in_channels, first_conv, maxpool1)


def resnet50(in_channels: int = 3, first_conv: bool = False, maxpool1: bool = False) -> ResNet:
    """ResNet-50 backbone: feature 2048, taps (256, 512, 1024)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], in_channels, first_conv, maxpool1)
