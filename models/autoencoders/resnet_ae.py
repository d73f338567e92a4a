"""The ResNet autoencoder (``ResNetAE``): pl_bolts' ``AE``.

A CIFAR-style ResNet-18 (enc_out_dim 512) or ResNet-50 (2048) encoder, a linear layer to
the latent (256), and a mirrored ResNet decoder made of upsample + conv blocks. The
encoder is the backbone's ``models.backbones.resnet.ResNet`` (3x3 stride-1 stem, no
max-pool); the autoencoder uses its pooled feature h and ignores its taps. The decoder
works on multiples of 8 pixels: for an input whose side is not a multiple of 8 (28x28
digits) it decodes to the next multiple (32x32) and resizes the result bilinearly to the
input size. Input and output are in the normalised image space, with no final sigmoid.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones.resnet import BasicBlock, Bottleneck, ResNet, conv1x1, conv3x3
from utils.errors import UserError

__all__ = ["Interpolate", "UpBasicBlock", "UpBottleneck", "ResNetDecoder", "ResNetAE", "RESNET_ARCHS"]


class Interpolate(nn.Module):
    """Nearest-neighbour resize by a factor or to a size (no parameters)."""

    def __init__(self, size: int | None = None, scale_factor: float | None = None):
        super().__init__()
        self.size = size
        self.scale_factor = scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and x.shape[-1] == self.size and x.shape[-2] == self.size:
            return x
        if self.size is None and self.scale_factor == 1:
            return x
        return F.interpolate(x, size=self.size, scale_factor=self.scale_factor)


def _up_conv(in_ch: int, out_ch: int, kernel: int, scale: int) -> nn.Module:
    """A conv, preceded by a nearest upsampling when scale > 1 (avoids checkerboards)."""
    conv = conv3x3(in_ch, out_ch) if kernel == 3 else conv1x1(in_ch, out_ch)
    return conv if scale == 1 else nn.Sequential(Interpolate(scale_factor=scale), conv)


class UpBasicBlock(nn.Module):
    """Decoder basic block: a 3x3 conv, then an (upsample +) 3x3 conv that changes channels."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, scale: int = 1, upsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _up_conv(in_ch, in_ch, 3, 1)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _up_conv(in_ch, planes, 3, scale)
        self.bn2 = nn.BatchNorm2d(planes)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.upsample is None else self.upsample(x)
        return self.relu(out + shortcut)


class UpBottleneck(nn.Module):
    """Decoder bottleneck: 1x1 reduce, (upsample +) 3x3, 1x1 expand by 4."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, scale: int = 1, upsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _up_conv(in_ch, planes, 1, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _up_conv(planes, planes, 3, scale)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.upsample is None else self.upsample(x)
        return self.relu(out + shortcut)


# encoder block, decoder block, blocks per stage
_LAYOUT = {
    "resnet18": (BasicBlock, UpBasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, UpBottleneck, (3, 4, 6, 3)),
}
RESNET_ARCHS = tuple(_LAYOUT)


class ResNetDecoder(nn.Module):
    """Mirror of the ResNet encoder: linear to a (512*expansion)x4x4 map, three x2 stages,
    a final stage at full width, and a 3x3 conv to the image channels.

    It decodes to side 8 * ceil(input_height / 8); ResNetAE resizes that to the input size.
    """

    def __init__(self, block: type, layers: Sequence[int], latent_dim: int, input_height: int = 32,
                 out_channels: int = 3):
        super().__init__()
        self.expansion = block.expansion
        self._in = 512 * block.expansion
        self.decoded_height = 8 * math.ceil(input_height / 8)
        self.linear = nn.Linear(latent_dim, self._in * 4 * 4)
        self.upscale1 = Interpolate(size=self.decoded_height // 8)
        self.layer1 = self._stage(block, 256, layers[0], 2)
        self.layer2 = self._stage(block, 128, layers[1], 2)
        self.layer3 = self._stage(block, 64, layers[2], 2)
        self.layer4 = self._stage(block, 64, layers[3], 1)
        self.upscale = Interpolate(scale_factor=1)
        self.conv1 = nn.Conv2d(64 * block.expansion, out_channels, kernel_size=3, stride=1, padding=1, bias=False)

    def _stage(self, block: type, planes: int, count: int, scale: int) -> nn.Sequential:
        out = planes * block.expansion
        upsample = None
        if scale != 1 or self._in != out:
            upsample = nn.Sequential(_up_conv(self._in, out, 1, scale), nn.BatchNorm2d(out))
        blocks = [block(self._in, planes, scale, upsample)]
        self._in = out
        blocks += [block(out, planes) for _ in range(1, count)]
        return nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.linear(z).view(z.shape[0], 512 * self.expansion, 4, 4)
        x = self.upscale1(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.conv1(self.upscale(x))


class ResNetAE(nn.Module):
    """pl_bolts' AE: ResNet encoder -> Linear(enc_out_dim, latent_dim) -> ResNet decoder."""

    def __init__(self, enc_type: str = "resnet18", input_height: int = 32, in_channels: int = 3,
                 latent_dim: int = 256):
        super().__init__()
        if enc_type not in _LAYOUT:
            raise UserError(f"{enc_type!r} is not a ResNet autoencoder; use resnet18 or resnet50",
                            setting="enc_type")
        if input_height < 1:
            raise UserError(f"the image side must be positive, not {input_height}", setting="input_height")
        enc_block, dec_block, layers = _LAYOUT[enc_type]
        self.input_height = input_height
        self.encoder = ResNet(enc_block, list(layers), in_channels, first_conv=False, maxpool1=False)
        self.fc = nn.Linear(self.encoder.feature_dim, latent_dim)
        self.decoder = ResNetDecoder(dec_block, layers, latent_dim, input_height, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _taps = self.encoder(x)
        x_hat = self.decoder(self.fc(h))
        if x_hat.shape[-2:] != x.shape[-2:]:
            x_hat = F.interpolate(x_hat, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
        return x_hat
