"""The autoencoder architectures by name: ``ARCHS``, their encoder output sizes
(``ENC_OUT_DIM``) and ``build_autoencoder``, which builds the plain network for a name."""
from __future__ import annotations

from torch import nn

from utils.errors import UserError

from .mnist_ae import MnistAE
from .resnet_ae import RESNET_ARCHS, ResNetAE

__all__ = ["ARCHS", "ENC_OUT_DIM", "build_autoencoder"]

ARCHS = ("mnist",) + RESNET_ARCHS
ENC_OUT_DIM = {"mnist": 500, "resnet18": 512, "resnet50": 2048}


def build_autoencoder(arch: str, input_height: int, in_channels: int, latent_dim: int) -> nn.Module:
    """The network (without the LightningModule around it) for ``arch``, one of ``ARCHS``."""
    if arch == "mnist":
        return MnistAE(input_height, in_channels, latent_dim)
    if arch in RESNET_ARCHS:
        return ResNetAE(arch, input_height, in_channels, latent_dim)
    raise UserError(f"autoencoder architecture {arch!r} is unknown; use one of {', '.join(ARCHS)}",
                    setting="arch")
