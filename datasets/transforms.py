"""Batch augmentation and normalisation (``--data_transforms``), run on the device.

Datasets yield un-normalised ``[0, 1]`` images; :class:`BatchTransform` augments a
whole batch with kornia (each image its own random parameters) and normalises it.

========== ============================================================ ====================
name       training augmentation                                          normalisation
========== ============================================================ ====================
mnist      rotation up to 10 deg (black fill), RandomResizedCrop 0.95-1   0.5 / 0.5
cifar      RandomCrop with padding 4, horizontal flip                     CIFAR mean / std
cifar_test none                                                           CIFAR mean / std
blob       none                                                           0.5 / 0.5
========== ============================================================ ====================
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from utils.errors import UserError

from .images import check_image_shape

DATA_TRANSFORMS = ("mnist", "cifar", "cifar_test", "blob")

_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2023, 0.1994, 0.2010)


def _check_name(data_transforms) -> str:
    if data_transforms not in DATA_TRANSFORMS:
        raise UserError(
            f"Unknown data transforms {data_transforms!r}: set data_transforms to one of "
            f"{', '.join(DATA_TRANSFORMS)}.",
            setting="data_transforms",
        )
    return data_transforms


def normalization_for(data_transforms: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` per channel for ``data_transforms`` and ``channels`` channels.

    ``mnist``/``blob``: 0.5 / 0.5. ``cifar``/``cifar_test``: the CIFAR-10 statistics,
    or for one channel the mean of the three.
    """
    _check_name(data_transforms)
    channels = int(channels)
    if channels < 1:
        raise UserError(f"Images need at least one channel (got {channels}): check the dataset's image shape.")
    if data_transforms in ("mnist", "blob"):
        return (0.5,) * channels, (0.5,) * channels
    if channels == 3:
        return _CIFAR_MEAN, _CIFAR_STD
    mean = sum(_CIFAR_MEAN) / 3.0
    std = sum(_CIFAR_STD) / 3.0
    return (mean,) * channels, (std,) * channels


class BatchTransform(nn.Module):
    """Augment (only when ``train``) and normalise a float batch ``N x C x H x W`` in [0, 1].

    Move it to the batch's device with ``.to(device)``; ``forward`` works on any device.
    Whether it augments is fixed by ``train`` at construction, not by ``.train()`` /
    ``.eval()``.
    """

    def __init__(self, data_transforms: str, image_shape: Sequence[int], train: bool):
        super().__init__()
        self.data_transforms = _check_name(data_transforms)
        self.image_shape = check_image_shape(image_shape)
        c, h, w = self.image_shape
        mean, std = normalization_for(data_transforms, c)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1), persistent=False)
        self.augment = bool(train) and data_transforms in ("mnist", "cifar")
        self.augmentation = self._build_augmentation(data_transforms, h, w) if self.augment else None

    @staticmethod
    def _build_augmentation(data_transforms: str, h: int, w: int) -> nn.Module:
        import kornia.augmentation as K

        if data_transforms == "mnist":
            return nn.Sequential(
                K.RandomRotation(degrees=10.0, p=1.0),  # zero (black) padding, before normalising
                K.RandomResizedCrop((h, w), scale=(0.95, 1.0), p=1.0),
            )
        return nn.Sequential(
            K.RandomCrop((h, w), padding=4, fill=0, padding_mode="constant", p=1.0),
            K.RandomHorizontalFlip(p=0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"BatchTransform expects N x C x H x W, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            x = x.float()
        if self.augmentation is not None and x.shape[0] > 0:
            with torch.no_grad():
                x = self.augmentation(x)
        mean = self.mean.to(device=x.device, dtype=x.dtype)
        std = self.std.to(device=x.device, dtype=x.dtype)
        return (x - mean) / std

    def extra_repr(self) -> str:
        return f"data_transforms={self.data_transforms!r}, image_shape={self.image_shape}, augment={self.augment}"
