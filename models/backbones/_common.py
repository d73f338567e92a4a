"""Helpers shared by the backbones."""
from __future__ import annotations

from torch import Tensor


def global_avg_pool(x: Tensor) -> Tensor:
    """N x C x H x W -> N x C: the mean over the spatial positions (a new tensor).

    Because the result is a fresh tensor, an in-place ReLU applied to ``x`` afterwards
    does not change an already-pooled tap.
    """
    return x.mean(dim=(2, 3))
