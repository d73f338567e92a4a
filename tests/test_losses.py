"""The metric loss against a brute-force loop over triplets; the KL term against a direct computation."""
import itertools
import math

import numpy as np
import pytest
import torch

from models.losses import TripletDistancingLoss, class_kl_loss


def brute_force_metric_loss(z: np.ndarray, y: np.ndarray, margin: float, neg_margin: float) -> float:
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    losses = []
    for a, p, n in itertools.product(range(len(y)), repeat=3):
        if a == p or y[a] != y[p] or y[a] == y[n]:
            continue
        d_ap = np.linalg.norm(unit[a] - unit[p])
        d_an = np.linalg.norm(unit[a] - unit[n])
        losses.append(max(d_ap - d_an + margin, 0.0) + max(neg_margin - d_an, 0.0))
    nonzero = [value for value in losses if value > 0]
    return float(np.mean(nonzero)) if nonzero else 0.0


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("seed,neg_margin", [(0, 0.15), (1, 1.15), (2, 3.0), (3, 0.0)])
def test_metric_loss_matches_brute_force(seed, neg_margin, dense):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=14)
    z = rng.normal(size=(14, 5))
    loss = TripletDistancingLoss(margin=0.1, neg_margin=neg_margin, dense=dense)
    got = loss(torch.tensor(z), torch.tensor(y)).item()
    assert got == pytest.approx(brute_force_metric_loss(z, y, 0.1, neg_margin), rel=1e-9, abs=1e-12)


def test_dense_and_listed_triplets_give_the_same_gradient():
    torch.manual_seed(0)
    y = torch.arange(24) % 4
    grads = []
    for dense in (False, True):
        z = torch.randn(24, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
        TripletDistancingLoss(neg_margin=1.0, dense=dense)(z, y).backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_metric_loss_margin_change_takes_effect():
    rng = np.random.default_rng(5)
    y = torch.tensor(rng.integers(0, 3, size=12))
    z = torch.tensor(rng.normal(size=(12, 4)))
    loss = TripletDistancingLoss(margin=0.1, neg_margin=0.15)
    before = loss(z, y).item()
    loss.neg_margin = 5.0  # beyond the largest possible distance (2): every negative pulls
    after = loss(z, y).item()
    assert after == pytest.approx(brute_force_metric_loss(z.numpy(), y.numpy(), 0.1, 5.0))
    assert after > before


@pytest.mark.parametrize("dense", [False, True])
def test_metric_loss_has_gradient_and_zero_without_triplets(dense):
    z = torch.randn(6, 3, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    TripletDistancingLoss(neg_margin=1.0, dense=dense)(z, y).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert TripletDistancingLoss(dense=dense)(torch.randn(4, 3), torch.tensor([0, 1, 2, 3])).item() == 0.0


def direct_kl(z, mu, log_var, y, means, prior_std=0.1):
    per_class = []
    for c in sorted(set(y.tolist())):
        rows = y == c
        total = 0.0
        for i in np.flatnonzero(rows):
            for j in range(z.shape[1]):
                std = math.exp(log_var[i, j] / 2)
                log_q = -0.5 * ((z[i, j] - mu[i, j]) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
                log_p = (-0.5 * ((z[i, j] - means[c, j]) / prior_std) ** 2 - math.log(prior_std)
                         - 0.5 * math.log(2 * math.pi))
                total += log_q - log_p
        per_class.append(total / (rows.sum() * z.shape[1]))
    return float(np.mean(per_class))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_matches_direct_computation(seed):
    rng = np.random.default_rng(seed)
    y = rng.choice([0, 2, 3], size=11)  # class 1 absent: it must not count in the average
    mu, log_var = rng.normal(size=(11, 4)), rng.normal(scale=0.5, size=(11, 4))
    z = mu + np.exp(log_var / 2) * rng.normal(size=(11, 4))
    means = rng.normal(size=(4, 4))
    got = class_kl_loss(*(torch.tensor(a) for a in (z, mu, log_var, y, means))).item()
    assert got == pytest.approx(direct_kl(z, mu, log_var, y, means), rel=1e-10)


def test_kl_agrees_with_torch_distributions():
    torch.manual_seed(0)
    mu, log_var = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    z = mu + torch.exp(log_var / 2) * torch.randn_like(mu)
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    means = torch.randn(2, 3, dtype=torch.float64)
    q = torch.distributions.Normal(mu, torch.exp(log_var / 2))
    p = torch.distributions.Normal(means[y], 0.1)
    per_sample = (q.log_prob(z) - p.log_prob(z)).mean(1)
    expected = 0.5 * (per_sample[:5].mean() + per_sample[5:].mean())
    assert class_kl_loss(z, mu, log_var, y, means).item() == pytest.approx(expected.item(), rel=1e-12)
