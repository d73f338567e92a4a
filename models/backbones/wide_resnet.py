"""Wide ResNet 28-10 with dropout 0.1 (``--enc_type wresnet``).

Pre-activation wide basic blocks (BN-ReLU-Conv3x3-BN-ReLU-Dropout-Conv3x3 with a 1x1
shortcut convolution where the width changes), a 3x3 stem of 16 channels and three
groups of 4 blocks of widths 160, 320, 640 (strides 1, 2, 2), then BN and ReLU.

Parameter names equal the original's (``conv1``, ``block1.layer.0.bn1``,
``block1.layer.0.convShortcut``, ``bn1`` ...), so ``finetuning_wideresnet.tar`` loads by
name. The original's WideResNet has no classifier layer, so neither has this one.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._common import global_avg_pool

__all__ = ["WideBasicBlock", "NetworkBlock", "WideResNet", "wide_resnet"]


class WideBasicBlock(nn.Module):
    """Pre-activation wide residual block.

    When the input and output widths differ the shortcut is a 1x1 convolution of the
    pre-activated input (BN + ReLU of x); otherwise it is x itself.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0,
                 dropout_in_eval: bool = False) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.dropout_in_eval = dropout_in_eval
        self.equalInOut = in_planes == out_planes
        self.convShortcut = (
            None if self.equalInOut
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training or self.dropout_in_eval)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A group of ``num_layers`` wide blocks; the first one changes width and stride."""

    def __init__(self, num_layers: int, in_planes: int, out_planes: int, stride: int,
                 drop_rate: float = 0.0, dropout_in_eval: bool = False) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1,
                           drop_rate, dropout_in_eval)
            for i in range(num_layers)
        ])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """Wide ResNet backbone returning ``(h, [tap1, tap2, tap3])``.

    Taps (each global-average-pooled):
      1. output of group 1 (``block1``, 16 * widen_factor channels);
      2. output of group 2 (``block2``, 32 * widen_factor);
      3. output of group 3 + BN + ReLU (64 * widen_factor), which is also h: tap 3 and h
         are the same vector, as in the original.

    ``dropout_in_eval=True`` reproduces the original exactly, which applied dropout
    even in eval mode (``F.dropout(..., training=True)``); the default applies it only
    in training, so that evaluation is deterministic.
    """

    def __init__(self, depth: int = 28, widen_factor: int = 10, drop_rate: float = 0.1,
                 in_channels: int = 3, dropout_in_eval: bool = False) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate, dropout_in_eval)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate, dropout_in_eval)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate, dropout_in_eval)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.feature_dim = widths[3]
        self.tap_dims = (widths[1], widths[2], widths[3])

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        out = self.block1(self.conv1(x))
        tap1 = global_avg_pool(out)
        out = self.block2(out)
        tap2 = global_avg_pool(out)
        out = self.relu(self.bn1(self.block3(out)))
        h = global_avg_pool(out)
        return h, [tap1, tap2, h]


def wide_resnet(in_channels: int = 3, class_num: int = 10, dropout_in_eval: bool = False) -> WideResNet:
    """WRN-28-10, dropout 0.1: feature 640, taps (160, 320, 640).

    ``class_num`` is accepted for a uniform signature and ignored: the original
    WideResNet has no classifier, so there is no ``fc`` to size.
    """
    del class_num
    return WideResNet(depth=28, widen_factor=10, drop_rate=0.1, in_channels=in_channels,
                      dropout_in_eval=dropout_in_eval)
