"""Helpers shared by the backbones."""
from __future__ import annotations

from typing import Iterable

from torch import Tensor, nn


def global_avg_pool(x: Tensor) -> Tensor:
    """N x C x H x W -> N x C: the mean over the spatial positions (a new tensor).

    Because the result is a fresh tensor, an in-place ReLU applied to ``x`` afterwards
    does not change an already-pooled tap.
    """
    return x.mean(dim=(2, 3))


def run_with_taps(layers: nn.Sequential, x: Tensor, tap_after: Iterable[int]) -> tuple[Tensor, list[Tensor]]:
    """Run ``layers`` in order; pool the outputs of the layers at indices ``tap_after``.

    Each tap is pooled as soon as it is produced, before a following in-place ReLU can
    overwrite the activation it was taken from.
    """
    taps: list[Tensor] = []
    for index, layer in enumerate(layers):
        x = layer(x)
        if index in tap_after:
            taps.append(global_avg_pool(x))
    return x, taps
