"""The small MNIST convolutional backbone (``--enc_type mnist-conv``).

Five 3x3 convolutions of 100 channels, each followed by a ReLU, with 2x2 max-pools after
convolutions 2, 4 and 5, then a linear layer to 500 features. For 28x28 input the maps
go 28 -> 14 -> 7 -> 3, so the linear layer sees 100 * 3 * 3 = 900 inputs.

Parameter names follow the original ``MnistConvEncoder``: the layers live in one
``nn.Sequential`` called ``encoder`` (indices 0, 2, 5, 7, 10 are the convolutions) and
the final linear layer is ``dec_layer``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ._common import run_with_taps

__all__ = ["MnistConv", "mnist_conv"]


class MnistConv(nn.Module):
    """MNIST conv backbone returning ``(h, [tap1, tap2, tap3])``.

    Taps (each global-average-pooled to N x 100):
      1. output of conv 2 (``encoder[2]``), before its ReLU;
      2. output of the first max-pool (``encoder[4]``);
      3. output of conv 3 + ReLU (``encoder[6]``).
    """

    # Indices into ``encoder`` after which a tap is taken.
    _TAP_AFTER = (2, 4, 6)

    def __init__(self, in_channels: int = 1, input_height: int = 28, width: int = 100,
                 feature_dim: int = 500) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1),  # 0
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1),        # 2  -> tap 1 (before ReLU)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),                      # 4  -> tap 2
            nn.Conv2d(width, width, 3, 1, 1),        # 5
            nn.ReLU(inplace=True),                   # 6  -> tap 3
            nn.Conv2d(width, width, 3, 1, 1),        # 7
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),                      # 9
            nn.Conv2d(width, width, 3, 1, 1),        # 10
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),                      # 12
        )
        side = input_height // 2 // 2 // 2
        if side < 1:
            raise ValueError(f"mnist-conv needs input at least 8 pixels high, got {input_height}")
        self.dec_layer = nn.Linear(width * side * side, feature_dim)
        self.feature_dim = feature_dim
        self.tap_dims = (width, width, width)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        x, taps = run_with_taps(self.encoder, x, self._TAP_AFTER)
        h = self.dec_layer(torch.flatten(x, 1))
        return h, taps


def mnist_conv(in_channels: int = 1, input_height: int = 28) -> MnistConv:
    """The paper's MNIST backbone: feature 500, taps (100, 100, 100)."""
    return MnistConv(in_channels=in_channels, input_height=input_height)
