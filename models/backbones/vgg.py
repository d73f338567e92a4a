"""The VGG-style CIFAR backbone (``--enc_type vgg``, the original's ``VGGM``).

Eight 3x3 convolutions, each followed by batch norm and ReLU, with channels
64, 128 / pool / 256, 256 / pool / 256 x 4 / pool, then flatten,
Linear(256 * 4 * 4 -> 1024), ReLU, Linear(1024 -> 1024), ReLU.

Parameter names follow the original: everything lives in one ``nn.Sequential`` called
``encoder`` with the same indices (convolutions at 0, 3, 7, 10, 14, 17, 20, 23, their
batch norms one index later, the linear layers at 28 and 30).
"""
from __future__ import annotations

from torch import Tensor, nn

from ._common import run_with_taps

__all__ = ["VGGM", "vgg"]


class VGGM(nn.Module):
    """VGG backbone returning ``(h, [tap1, tap2, tap3])``.

    Taps (each global-average-pooled), all batch-norm outputs before their ReLU:
      1. BN of conv 2 (``encoder[4]``, 128 channels);
      2. BN of conv 4 (``encoder[11]``, 256 channels);
      3. BN of conv 8 (``encoder[24]``, 256 channels).
    """

    _TAP_AFTER = (4, 11, 24)

    def __init__(self, in_channels: int = 3, input_height: int = 32, feature_dim: int = 1024) -> None:
        super().__init__()

        def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        side = input_height // 2 // 2 // 2
        if side < 1:
            raise ValueError(f"vgg needs input at least 8 pixels high, got {input_height}")
        self.encoder = nn.Sequential(
            *conv_bn_relu(in_channels, 64),   # 0-2
            *conv_bn_relu(64, 128),           # 3-5   tap 1 = BN at 4
            nn.MaxPool2d(2, 2),               # 6
            *conv_bn_relu(128, 256),          # 7-9
            *conv_bn_relu(256, 256),          # 10-12 tap 2 = BN at 11
            nn.MaxPool2d(2, 2),               # 13
            *conv_bn_relu(256, 256),          # 14-16
            *conv_bn_relu(256, 256),          # 17-19
            *conv_bn_relu(256, 256),          # 20-22
            *conv_bn_relu(256, 256),          # 23-25 tap 3 = BN at 24
            nn.MaxPool2d(2, 2),               # 26
            nn.Flatten(),                     # 27
            nn.Linear(256 * side * side, feature_dim),  # 28
            nn.ReLU(inplace=True),            # 29
            nn.Linear(feature_dim, feature_dim),        # 30
            nn.ReLU(inplace=True),            # 31
        )
        self.feature_dim = feature_dim
        self.tap_dims = (128, 256, 256)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return run_with_taps(self.encoder, x, self._TAP_AFTER)


def vgg(in_channels: int = 3, input_height: int = 32) -> VGGM:
    """The paper's VGG backbone: feature 1024, taps (128, 256, 256)."""
    return VGGM(in_channels=in_channels, input_height=input_height)
