"""models.class_statistics and models.gaussians against numpy / scipy references."""

import numpy as np
import pytest
import torch
from scipy.stats import Covariance, multivariate_normal

from models.class_statistics import ClassStatistics, quantile_bounds
from models.gaussians import ClassGaussians, fit_jitter
from utils.errors import UserError


def random_spd(rng, dim):
    a = rng.normal(size=(dim, dim))
    return a @ a.T + dim * np.eye(dim)


def cholesky_works(covs, lam):
    eye = torch.eye(covs.shape[-1], dtype=torch.float64)
    return bool((torch.linalg.cholesky_ex(covs + lam * eye).info == 0).all())


def smallest_working_step(covs, step=1e-6):
    """The reference for the original's ladder: the smallest k >= 0 with every S_c + k*step*I
    factorisable, by doubling then bisection (success is monotone in k)."""
    if cholesky_works(covs, 0.0):
        return 0
    failing, working = 0, 1
    while not cholesky_works(covs, working * step):
        failing, working = working, 2 * working
    while working - failing > 1:
        middle = (failing + working) // 2
        failing, working = (failing, middle) if cholesky_works(covs, middle * step) else (middle, working)
    return working


def jitter(covs, **kwargs):
    return fit_jitter(covs, **kwargs)[0]


# ---- ClassStatistics -------------------------------------------------------------------


def test_class_statistics_match_numpy_over_several_batches():
    rng = np.random.default_rng(0)
    num_classes, dim = 4, 5
    stats = ClassStatistics(num_classes, dim)
    xs, ys = [], []
    for batch in range(6):
        n = 37
        x = rng.normal(size=(n, dim)) * (1 + np.arange(dim)) + 3.0
        # class 3 only in even batches; label K (unknown) and -1 sprinkled in to be ignored
        y = rng.integers(0, 3 if batch % 2 else 4, size=n)
        y[:3] = num_classes
        y[3] = -1
        stats.update(torch.tensor(x, dtype=torch.float32 if batch % 3 == 0 else torch.float64),
                     torch.tensor(y))
        # the float32 batches are compared after the same rounding
        xs.append(x.astype(np.float32).astype(np.float64) if batch % 3 == 0 else x)
        ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert stats.present().tolist() == [True] * num_classes
    for c in range(num_classes):
        rows = x[y == c]
        assert stats.count[c].item() == rows.shape[0]
        np.testing.assert_allclose(stats.means()[c].numpy(), rows.mean(0), rtol=1e-10)
        np.testing.assert_allclose(stats.covariances()[c].numpy(),
                                   np.cov(rows, rowvar=False, bias=True), rtol=1e-8, atol=1e-10)
    cov = stats.covariances()
    assert torch.equal(cov, cov.transpose(1, 2))
    assert stats.count.dtype == stats.sum.dtype == stats.outer.dtype == torch.float64


def test_class_statistics_absent_class_reset_and_state_dict():
    stats = ClassStatistics(3, 2)
    stats.update(torch.randn(10, 2), torch.tensor([0] * 5 + [2] * 5))
    assert stats.present().tolist() == [True, False, True]
    assert set(stats.state_dict()) == {"count", "sum", "outer"}
    stats.all_reduce()  # no process group: a no-op
    stats.reset()
    assert stats.count.sum().item() == 0 and stats.outer.abs().sum().item() == 0


# ---- jitter ladder ----------------------------------------------------------------------


def test_jitter_ladder_well_conditioned_is_two_steps():
    rng = np.random.default_rng(1)
    covs = torch.tensor(np.stack([random_spd(rng, 6) for _ in range(3)]))
    assert cholesky_works(covs, 0.0)
    assert jitter(covs) == pytest.approx(2e-6)


@pytest.mark.parametrize("seed,scale", [(2, 1.0), (3, 1e3)])
def test_jitter_ladder_singular_covariance_finds_smallest_k(seed, scale):
    rng = np.random.default_rng(seed)
    dim, step = 8, 1e-6
    stats = ClassStatistics(2, dim)
    # Rank-deficient data: 3 samples in 8 dims for class 0, a rank-2 subspace for class 1.
    x0 = rng.normal(size=(3, dim)) * scale
    x1 = rng.normal(size=(40, 2)) @ rng.normal(size=(2, dim)) * scale
    stats.update(torch.tensor(np.r_[x0, x1]), torch.tensor([0] * 3 + [1] * 40))
    covs = stats.covariances()
    k = smallest_working_step(covs, step=step)
    assert k >= 1
    assert cholesky_works(covs, k * step)
    assert not cholesky_works(covs, (k - 1) * step)
    assert jitter(covs, step=step, extra_steps=2) == pytest.approx((k + 2) * step)


def test_jitter_ladder_needs_many_steps_quickly():
    # A covariance with a clearly negative eigenvalue (-0.5) needs k ~ 5e5 steps of 1e-6.
    covs = torch.diag(torch.tensor([1.0, -0.5], dtype=torch.float64)).unsqueeze(0)
    k = round(jitter(covs) / 1e-6) - 2
    assert cholesky_works(covs, k * 1e-6) and not cholesky_works(covs, (k - 1) * 1e-6)
    assert 499_000 < k < 501_000


def test_jitter_ladder_rejects_non_finite_and_hopeless_covariances():
    with pytest.raises(UserError):
        jitter(torch.full((1, 2, 2), float("nan"), dtype=torch.float64))
    with pytest.raises(UserError):
        jitter(-torch.eye(2, dtype=torch.float64).unsqueeze(0), max_steps=1000)


# ---- ClassGaussians ---------------------------------------------------------------------


def test_log_prob_matches_scipy():
    rng = np.random.default_rng(4)
    num_classes, dim = 3, 5
    means = rng.normal(size=(num_classes, dim))
    covs = np.stack([random_spd(rng, dim) for _ in range(num_classes)])
    gaussians = ClassGaussians.fit(torch.tensor(means), torch.tensor(covs))
    assert gaussians.jitter == pytest.approx(2e-6)
    x = rng.normal(size=(50, dim)) * 2
    logp = gaussians.log_prob(torch.tensor(x, dtype=torch.float32))
    assert logp.shape == (50, num_classes) and logp.dtype == torch.float64
    x32 = x.astype(np.float32).astype(np.float64)
    for c in range(num_classes):
        ref = multivariate_normal(means[c], covs[c] + gaussians.jitter * np.eye(dim)).logpdf(x32)
        np.testing.assert_allclose(logp[:, c].numpy(), ref, rtol=1e-10)


def test_log_prob_chunks_and_singular_fit_from_statistics(monkeypatch):
    import models.gaussians as gaussian_module

    rng = np.random.default_rng(5)
    dim = 6
    x = rng.normal(size=(30, 2)) @ rng.normal(size=(2, dim))  # rank 2: needs jitter
    y = np.repeat([0, 1, 3], 10)  # class 2 absent, label 3 = unknown (K = 3)
    stats = ClassStatistics(3, dim)
    stats.update(torch.tensor(x), torch.tensor(y))
    gaussians = ClassGaussians.from_statistics(stats)
    assert gaussians.jitter > 2e-6
    monkeypatch.setattr(gaussian_module, "CHUNK_DOUBLES", 50)  # force many row chunks
    logp = gaussians.log_prob(torch.tensor(x))
    assert torch.isinf(logp[:, 2]).all()  # absent class never wins
    covs = stats.covariances().numpy()
    means = stats.means().numpy()
    for c in (0, 1):
        ref = multivariate_normal(means[c], covs[c] + gaussians.jitter * np.eye(dim),
                                  allow_singular=True).logpdf(x)
        np.testing.assert_allclose(logp[:, c].numpy(), ref, rtol=1e-6)


# ---- any finite features: scale, rank, the jitter used --------------------------------


def rank_deficient_statistics(scale, seed=11, per_class=5, dim=20, num_classes=3):
    """5 images per class in 20 dimensions (rank 4 per class), offset from the origin."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(per_class * num_classes, dim)) + 3 * rng.normal(size=dim)) * scale
    y = np.repeat(np.arange(num_classes), per_class)
    stats = ClassStatistics(num_classes, dim)
    stats.update(torch.tensor(x), torch.tensor(y))
    probe = (rng.normal(size=(10, dim)) + 3 * rng.normal(size=dim)) * scale
    return stats, np.r_[x, probe]


def scipy_log_probs(means, covs, jitter, x, plain=True):
    """scipy's multivariate_normal on S_c + jitter I. With plain=False the covariance goes in
    through its eigendecomposition, which skips scipy's own singularity test (it calls a
    matrix singular below a condition number of ~4e9; the original's jitter on features of
    scale 1e3 leaves ~1e12, which float64 still evaluates to ~4 digits)."""
    eye = np.eye(covs.shape[-1])
    out = []
    for mean, cov in zip(means, covs):
        jittered = cov + jitter * eye
        if plain:
            out.append(multivariate_normal(mean, jittered).logpdf(x))
        else:
            covariance = Covariance.from_eigendecomposition(np.linalg.eigh(jittered))
            out.append(multivariate_normal(mean, covariance).logpdf(x))
    return np.stack(out, axis=1)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, 1e6, 1e9, 1e12])
def test_rank_deficient_features_of_any_scale_fit_and_match_scipy(scale):
    stats, x = rank_deficient_statistics(scale)
    gaussians = ClassGaussians.from_statistics(stats)
    logp = gaussians.log_prob(torch.tensor(x)).numpy()
    assert np.isfinite(logp).all()
    means, covs = stats.means().numpy(), stats.covariances().numpy()
    # The jitter reported is the one the factors hold: L L^T = S_c + jitter I.
    chol = gaussians.chol
    np.testing.assert_allclose((chol @ chol.transpose(1, 2)).numpy(), covs + gaussians.jitter * np.eye(20),
                               rtol=1e-9, atol=1e-12 * np.abs(covs).max())
    np.testing.assert_allclose(logp, scipy_log_probs(means, covs, gaussians.jitter, x, plain=False), rtol=1e-3)
    if scale != 1e3:  # well enough conditioned for scipy's own test: compare tightly
        np.testing.assert_allclose(logp, scipy_log_probs(means, covs, gaussians.jitter, x), rtol=1e-7)


def test_the_ladder_keeps_the_original_steps_and_continues_relative_to_the_variance():
    for scale in (1e-3, 1.0, 1e3):  # the original's steps suffice: (k + 2) * 1e-6
        stats, _ = rank_deficient_statistics(scale)
        k = smallest_working_step(stats.covariances())
        assert ClassGaussians.from_statistics(stats).jitter == pytest.approx((k + 2) * 1e-6)
    # Beyond them the jitter is 1e-6 times the mean variance: the same Gaussians at every scale,
    # the log-densities shifted by -D log(scale) and the decisions unchanged.
    reference = None
    for scale in (1e6, 1e9, 1e12):
        stats, x = rank_deficient_statistics(scale)
        gaussians = ClassGaussians.from_statistics(stats)
        variance = torch.diagonal(stats.covariances(), dim1=-2, dim2=-1).mean().item()
        assert gaussians.jitter == pytest.approx(1e-6 * variance, rel=1e-12)
        logp = gaussians.log_prob(torch.tensor(x)).numpy() + 20 * np.log(scale)
        if reference is None:
            reference = logp
        np.testing.assert_allclose(logp, reference, rtol=1e-6)


def test_the_jitter_returned_is_the_one_whose_factorisation_succeeded(monkeypatch):
    """Should (k + 2) * step fail to factorise (rounding at the edge), the ladder climbs on and
    reports the jitter it factorised with, never one it did not use."""
    import models.gaussians as gaussian_module

    stats, x = rank_deficient_statistics(1.0)
    k = smallest_working_step(stats.covariances())
    real = gaussian_module._factorise
    refused = []

    def refuse_the_first_candidate(covs, lam):
        if lam == pytest.approx((k + 2) * 1e-6) and not refused:
            refused.append(lam)
            return None
        return real(covs, lam)

    monkeypatch.setattr(gaussian_module, "_factorise", refuse_the_first_candidate)
    gaussians = ClassGaussians.from_statistics(stats)
    assert refused and gaussians.jitter == pytest.approx((k + 4) * 1e-6)  # twice as far from k
    logp = gaussians.log_prob(torch.tensor(x)).numpy()
    np.testing.assert_allclose(logp, scipy_log_probs(stats.means().numpy(), stats.covariances().numpy(),
                                                     gaussians.jitter, x), rtol=1e-7)


def test_fit_symmetrises_the_covariances():
    rng = np.random.default_rng(12)
    covs = np.stack([random_spd(rng, 4) for _ in range(2)])
    skewed = covs + np.triu(np.full((4, 4), 1e-9), 1)  # asymmetric by rounding-sized amounts
    gaussians = ClassGaussians.fit(torch.zeros(2, 4, dtype=torch.float64), torch.tensor(skewed))
    symmetric = 0.5 * (skewed + skewed.transpose(0, 2, 1))
    chol = gaussians.chol.numpy()
    np.testing.assert_allclose(chol @ chol.transpose(0, 2, 1), symmetric + gaussians.jitter * np.eye(4), rtol=1e-12)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features_are_one_sentence_naming_the_checkpoint(bad):
    stats, _ = rank_deficient_statistics(1.0)
    x = torch.randn(6, 20, dtype=torch.float64)
    x[2, 5] = bad
    stats.update(x, torch.tensor([0, 1, 2, 0, 1, 2]))
    with pytest.raises(UserError, match="NaN or infinite") as info:
        ClassGaussians.from_statistics(stats)
    assert info.value.setting == "checkpoint_path" and "\n" not in str(info.value)
    assert "(change --checkpoint_path)" in info.value.for_command_line()


# ---- quantile bounds --------------------------------------------------------------------


@pytest.mark.parametrize("q", [0.0, 0.05, 0.5, 0.99, 1.0])
def test_quantile_bounds_match_numpy(q):
    rng = np.random.default_rng(7)
    num_classes = 5
    labels = rng.integers(0, num_classes + 1, size=300)  # includes K (ignored)
    labels[labels == 3] = 0  # class 3 has no samples
    labels[0] = 4  # class 4 keeps at least one sample
    values = rng.normal(size=(300, num_classes))
    bounds = quantile_bounds(torch.tensor(values), torch.tensor(labels), num_classes, q)
    own = values[np.arange(300), np.clip(labels, 0, num_classes - 1)]
    for c in range(num_classes):
        if c == 3:
            assert bounds[c].item() == -np.inf
        else:
            assert bounds[c].item() == pytest.approx(np.quantile(own[labels == c], q), rel=1e-12)
    bounds_1d = quantile_bounds(torch.tensor(own), torch.tensor(labels), num_classes, q)
    assert torch.allclose(bounds, bounds_1d)


def test_one_hot_update_equals_the_padded_update():
    """The accelerator path (one-hot weights, no host sync) against the CPU path."""
    rng = np.random.default_rng(7)
    padded, one_hot = ClassStatistics(4, 3), ClassStatistics(4, 3)
    for n in (9, 5, 12):
        x = torch.tensor(rng.normal(size=(n, 3)))
        y = torch.tensor(rng.integers(-1, 6, size=n))  # includes labels outside 0..K-1
        padded.update(x, y)
        one_hot._update_one_hot(*one_hot._on_buffers(x, y))
    for name in ("count", "sum", "outer"):
        torch.testing.assert_close(getattr(one_hot, name), getattr(padded, name))
