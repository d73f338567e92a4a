"""The six backbones and a registry to build them by ``--enc_type`` name.

Every backbone is an ``nn.Module`` whose ``forward(x)`` returns ``(h, [tap1, tap2, tap3])``
from one pass: h is N x ``feature_dim`` and each tap is an intermediate activation,
global-average-pooled to N x C_i with ``(C_1, C_2, C_3) == tap_dims``. The parameter
names equal the original implementation's encoder, so its checkpoints load by name.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from utils.errors import UserError

from .densenet import DenseNet3, densenet
from .mnist_conv import MnistConv, mnist_conv
from .resnet import ResNet, resnet18, resnet50
from .vgg import VGGM, vgg
from .wide_resnet import WideResNet, wide_resnet

__all__ = [
    "BACKBONES", "build_backbone", "build_encoder", "default_feature_dim", "default_tap_dims",
    "DenseNet3", "MnistConv", "ResNet", "VGGM", "WideResNet",
    "densenet", "mnist_conv", "resnet18", "resnet50", "vgg", "wide_resnet",
]

# The constructors, by --enc_type name. Each takes keyword arguments; see build_backbone
# for which of its options each one uses.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "mnist-conv": mnist_conv,
    "vgg": vgg,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "densenet": densenet,
    "wresnet": wide_resnet,
}


def _check_name(enc_type: str) -> None:
    if enc_type not in BACKBONES:
        names = ", ".join(sorted(BACKBONES))
        raise UserError(f"unknown backbone {enc_type!r}: the valid names are {names}", setting="enc_type")


def build_backbone(enc_type: str, *, in_channels: int | None = None, input_height: int | None = None,
                   first_conv: bool = False, maxpool1: bool = False, class_num: int = 10) -> nn.Module:
    """Build the backbone called ``enc_type``.

    in_channels: image channels; None means the architecture's default (1 for
      mnist-conv, 3 for the others).
    input_height: image side; only mnist-conv and vgg use it (to size their flattened
      linear layer); None means their natural size (28 for mnist-conv, 32 for vgg).
    first_conv, maxpool1: the ImageNet-style stem, for resnet18/resnet50 only (the other
      backbones ignore them, as the original did).
    class_num: sizes densenet's unused classifier so checkpoint keys match; the others
      ignore it.
    """
    _check_name(enc_type)
    channels = {} if in_channels is None else {"in_channels": in_channels}
    height = {} if input_height is None else {"input_height": input_height}
    if enc_type in ("mnist-conv", "vgg"):
        return BACKBONES[enc_type](**channels, **height)
    if enc_type in ("resnet18", "resnet50"):
        return BACKBONES[enc_type](**channels, first_conv=first_conv, maxpool1=maxpool1)
    return BACKBONES[enc_type](**channels, class_num=class_num)


def build_encoder(enc_type: str, enc_out_dim: int, **options) -> nn.Module:
    """:func:`build_backbone` for a model whose head expects h of size ``enc_out_dim`` (the
    original's --enc_out_dim): a clear error when the backbone's feature size differs."""
    encoder = build_backbone(enc_type, **options)
    if encoder.feature_dim != enc_out_dim:
        raise UserError(f"enc_out_dim {enc_out_dim} does not match {enc_type}'s feature size "
                        f"{encoder.feature_dim}; set it to {encoder.feature_dim}", setting="enc_out_dim")
    return encoder


def _meta_backbone(enc_type: str) -> nn.Module:
    """The backbone ``enc_type`` built on the meta device: its sizes, with no memory or random
    draws spent on weights. The sizes are declared by the backbone classes alone."""
    _check_name(enc_type)
    with torch.device("meta"):
        return build_backbone(enc_type)


def default_feature_dim(enc_type: str) -> int:
    """The size of h (the original's --enc_out_dim) for ``enc_type``."""
    return _meta_backbone(enc_type).feature_dim


def default_tap_dims(enc_type: str) -> tuple[int, int, int]:
    """The channels of the three taps for ``enc_type``."""
    return tuple(_meta_backbone(enc_type).tap_dims)
