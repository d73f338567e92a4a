"""The variational heads: mu and log-variance of the latent Gaussian q(z|x)."""
from __future__ import annotations

import torch
from torch import nn


def make_heads(feature_dim: int, latent_dim: int) -> tuple[nn.Linear, nn.Linear]:
    """fc_mu and fc_var, the original's names, so its checkpoints' keys load."""
    return nn.Linear(feature_dim, latent_dim), nn.Linear(feature_dim, latent_dim)


def reparameterise(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """z = mu + exp(log_var / 2) * eps with eps ~ N(0, I)."""
    return mu + torch.exp(0.5 * log_var) * torch.randn_like(mu)
