"""The small conv autoencoder (``MnistAE``), the original's MNIST_AE with enc_type 'mnist'.

For 28x28 grey images: five 3x3 convs of 100 channels with three max-pools, linear
900 -> 500 -> latent -> 500 -> 900, then 2x2 transposed convs back to the image. It also
takes other square sizes that are a multiple of 4 (at least 8) and any number of input
channels. Input and output are in the normalised image space, with no final sigmoid.
"""
from __future__ import annotations

import torch
from torch import nn

from utils.errors import UserError

__all__ = ["MnistConvEncoder", "MnistConvDecoder", "MnistAE"]


def _conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=True)


class MnistConvEncoder(nn.Module):
    """28x28 -> 14 -> 7 -> 3 feature map of 100 channels, then a linear layer to 500."""

    def __init__(self, in_channels: int = 1, input_height: int = 28, width: int = 100, out_dim: int = 500):
        super().__init__()
        self.bottom = input_height // 8
        self.width = width
        self.encoder = nn.Sequential(
            _conv3x3(in_channels, width), nn.ReLU(),
            _conv3x3(width, width), nn.ReLU(),
            nn.MaxPool2d(2, 2),
            _conv3x3(width, width), nn.ReLU(),
            _conv3x3(width, width), nn.ReLU(),
            nn.MaxPool2d(2, 2),
            _conv3x3(width, width), nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        self.dec_layer = nn.Linear(width * self.bottom * self.bottom, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec_layer(torch.flatten(self.encoder(x), 1))


class MnistConvDecoder(nn.Module):
    """latent -> 500 -> 100x3x3, four 2x2 stride-1 transposed convs (3 -> 7), two 2x2
    stride-2 ones (7 -> 14 -> 28), then a 1x1 conv to the image channels.

    For a side H (multiple of 4) the stride-1 part grows H//8 to H//4 one pixel at a time.
    """

    def __init__(self, latent_dim: int, input_height: int = 28, out_channels: int = 1,
                 width: int = 100, hidden: int = 500):
        super().__init__()
        self.bottom = input_height // 8
        self.width = width
        self.latent = nn.Linear(latent_dim, hidden)
        self.enc_layer = nn.Linear(hidden, width * self.bottom * self.bottom)
        layers: list[nn.Module] = []
        for _ in range(input_height // 4 - self.bottom):
            layers += [nn.ConvTranspose2d(width, width, 2, 1, 0), nn.ReLU()]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(width, width, 2, 2, 0), nn.ReLU()]
        layers.append(nn.Conv2d(width, out_channels, 1, 1, 0))
        self.decoder = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.enc_layer(self.latent(z))
        return self.decoder(x.view(-1, self.width, self.bottom, self.bottom))


class MnistAE(nn.Module):
    """The original's conv autoencoder (its MNIST_AE with enc_type 'mnist').

    As in the original there is no non-linearity between the encoder's last linear layer,
    ``fc`` and the decoder's first two linear layers.
    """

    def __init__(self, input_height: int = 28, in_channels: int = 1, latent_dim: int = 32,
                 enc_out_dim: int = 500):
        super().__init__()
        if input_height < 8 or input_height % 4 != 0:
            raise UserError(f"the MNIST autoencoder needs square images whose side is a multiple of 4 "
                            f"and at least 8, not {input_height}; use train_resnet_ae.py for other sizes",
                            setting="input_height")
        self.input_height = input_height
        self.encoder = MnistConvEncoder(in_channels, input_height, out_dim=enc_out_dim)
        self.fc = nn.Linear(enc_out_dim, latent_dim)
        self.decoder = MnistConvDecoder(latent_dim, input_height, in_channels, hidden=enc_out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.fc(self.encoder(x)))
