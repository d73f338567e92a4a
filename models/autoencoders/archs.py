"""The autoencoder architectures by name: ``ARCHS``, ``build_autoencoder``, which builds the
plain network for a name, and ``encoder_out_dim``, the size of its encoder's output."""
from __future__ import annotations

import torch
from torch import nn

from utils.errors import UserError

from .mnist_ae import MnistAE
from .resnet_ae import RESNET_ARCHS, ResNetAE

__all__ = ["ARCHS", "build_autoencoder", "encoder_out_dim"]

ARCHS = ("mnist",) + RESNET_ARCHS


def build_autoencoder(arch: str, input_height: int, in_channels: int, latent_dim: int) -> nn.Module:
    """The network (without the LightningModule around it) for ``arch``, one of ``ARCHS``."""
    if arch == "mnist":
        return MnistAE(input_height, in_channels, latent_dim)
    if arch in RESNET_ARCHS:
        return ResNetAE(arch, input_height, in_channels, latent_dim)
    raise UserError(f"autoencoder architecture {arch!r} is unknown; use one of {', '.join(ARCHS)}",
                    setting="arch")


def encoder_out_dim(arch: str) -> int:
    """The size of the encoder output of ``arch``'s autoencoder (the input of its ``fc`` to the
    latent), read off the network built on the meta device: the classes alone declare it."""
    with torch.device("meta"):
        return build_autoencoder(arch, input_height=32, in_channels=1, latent_dim=1).fc.in_features
