"""DenseNet-BC (depth 100, growth rate 12, compression 0.5) for CIFAR (``--enc_type densenet``).

The network of ODIN / the Mahalanobis detector (``DenseNet3(100, num_classes)``): a 3x3
stem of 24 channels, three dense blocks of 16 bottleneck layers each, with 1x1
transition layers halving the channels and the resolution in between, then batch norm
and ReLU. Channels: 24 -> block 1 -> 216 -> transition 1 -> 108 -> block 2 -> 300 ->
transition 2 -> 150 -> block 3 -> 342.

Parameter names equal the original's (``conv1``, ``block1.layer.0.bn1``,
``trans1.conv1``, ``bn1``, ``fc`` ...), so the ODIN/Mahalanobis checkpoints
(``checkpoint_100.pth.tar``) load by name. The classifier ``fc`` is never used in
``forward``; it exists only so that the key set matches those checkpoints.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import global_avg_pool

__all__ = ["BottleneckBlock", "TransitionBlock", "DenseBlock", "DenseNet3", "densenet"]


class BottleneckBlock(nn.Module):
    """BN-ReLU-Conv1x1(4k)-BN-ReLU-Conv3x3(k); its k new channels are concatenated to the input."""

    def __init__(self, in_planes: int, out_planes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        inter_planes = out_planes * 4
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, inter_planes, kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(inter_planes)
        self.conv2 = nn.Conv2d(inter_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(self.relu(self.bn2(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return torch.cat([x, out], 1)


class TransitionBlock(nn.Module):
    """BN-ReLU-Conv1x1 then 2x2 average pooling."""

    def __init__(self, in_planes: int, out_planes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=1, padding=0, bias=False)
        self.drop_rate = drop_rate

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return F.avg_pool2d(out, 2)


class DenseBlock(nn.Module):
    """``num_layers`` bottleneck layers, the i-th seeing ``in_planes + i * growth_rate`` channels."""

    def __init__(self, num_layers: int, in_planes: int, growth_rate: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            BottleneckBlock(in_planes + i * growth_rate, growth_rate, drop_rate) for i in range(num_layers)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class DenseNet3(nn.Module):
    """DenseNet-BC backbone returning ``(h, [tap1, tap2, tap3])``.

    Taps (each global-average-pooled):
      1. output of transition 1 (108 channels at depth 100);
      2. output of transition 2 (150);
      3. output of block 3 + BN + ReLU (342), which is also h: tap 3 and h are the same
         vector, as in the original.
    """

    def __init__(self, depth: int = 100, num_classes: int = 10, growth_rate: int = 12,
                 reduction: float = 0.5, drop_rate: float = 0.0, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"DenseNet-BC depth must be 6n + 4, got {depth}")
        layers_per_block = (depth - 4) // 6  # bottleneck layers count two convolutions each
        in_planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, in_planes, kernel_size=3, stride=1, padding=1, bias=False)

        self.block1 = DenseBlock(layers_per_block, in_planes, growth_rate, drop_rate)
        in_planes += layers_per_block * growth_rate
        out_planes = int(math.floor(in_planes * reduction))
        self.trans1 = TransitionBlock(in_planes, out_planes, drop_rate)
        tap1_dim = in_planes = out_planes

        self.block2 = DenseBlock(layers_per_block, in_planes, growth_rate, drop_rate)
        in_planes += layers_per_block * growth_rate
        out_planes = int(math.floor(in_planes * reduction))
        self.trans2 = TransitionBlock(in_planes, out_planes, drop_rate)
        tap2_dim = in_planes = out_planes

        self.block3 = DenseBlock(layers_per_block, in_planes, growth_rate, drop_rate)
        in_planes += layers_per_block * growth_rate
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(in_planes, num_classes)  # unused in forward; kept for checkpoint keys

        self.in_planes = in_planes
        self.feature_dim = in_planes
        self.tap_dims = (tap1_dim, tap2_dim, in_planes)

        # The original's initialisation, kept as is: every convolution ~ N(0, 2 / n) with
        # n the number of bottleneck layers per block (16), not the usual He fan-out.
        # Every convolution feeds a batch norm, so the scale only affects optimisation.
        std = math.sqrt(2.0 / layers_per_block)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, std)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        out = self.trans1(self.block1(self.conv1(x)))
        tap1 = global_avg_pool(out)
        out = self.trans2(self.block2(out))
        tap2 = global_avg_pool(out)
        out = self.relu(self.bn1(self.block3(out)))
        h = global_avg_pool(out)
        return h, [tap1, tap2, h]


def densenet(in_channels: int = 3, class_num: int = 10) -> DenseNet3:
    """DenseNet-BC-100-12: feature 342, taps (108, 150, 342); ``class_num`` sizes the unused ``fc``."""
    return DenseNet3(depth=100, num_classes=class_num, in_channels=in_channels)
