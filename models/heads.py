"""The variational heads: mu and log-variance of the latent Gaussian q(z|x)."""
from __future__ import annotations

import math

import torch
from torch import nn


def make_heads(feature_dim: int, latent_dim: int,
               initial_sampling_std: float | None = None) -> tuple[nn.Linear, nn.Linear]:
    """fc_mu and fc_var, the original's names, so its checkpoints' keys load.

    With ``initial_sampling_std`` the bias of fc_var starts at 2 log(std), so that the
    sampling std exp(log_var / 2) starts near it instead of near 1 (PyTorch's default
    initialisation, the original's): at std 1 the sampled z is almost pure noise beside
    mu, whose input-dependent part starts about 1e-3 (docs/method.md section 2)."""
    fc_mu, fc_var = nn.Linear(feature_dim, latent_dim), nn.Linear(feature_dim, latent_dim)
    if initial_sampling_std is not None:
        nn.init.constant_(fc_var.bias, 2.0 * math.log(initial_sampling_std))
    return fc_mu, fc_var


def reparameterise(mu: torch.Tensor, sampling_std: torch.Tensor) -> torch.Tensor:
    """z = mu + sampling_std * eps with eps ~ N(0, I); sampling_std = exp(log_var / 2)."""
    return mu + sampling_std * torch.randn_like(mu)
