"""Per-class Gaussians in a feature space: the shared jitter and the log-densities.

The same machinery serves two places of docs/method.md:

* section 2 ("Class statistics"): during training, the class Gaussians of z, fitted from
  the running statistics of :mod:`models.class_statistics`;
* section 3 steps 1-2 ("Fit" and "Score"): the class Gaussians of the feature-ensemble
  vector f(x), with one shared jitter lambda * I, and l_c(x) = log N(f(x); m_c, S_c + lambda I).

Everything is evaluated in float64: the feature ensembles are up to a few thousand
dimensions wide and nearly singular, where float32 Cholesky factors are unusable.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from utils.errors import UserError

from .class_statistics import CHUNK_DOUBLES, ClassStatistics, classes_per_chunk

# The original's ladder of steps ends here (1e-6 * 2**40 ~ 1.1e6); beyond it the ladder
# continues relative to the features' variance (see fit_jitter), so features of any scale fit.
DEFAULT_MAX_STEPS = 1 << 40


# --------------------------------------------------------------------------------------
# Shared jitter (docs/method.md section 3 step 1)
# --------------------------------------------------------------------------------------

# The message of non-finite features: the model that produced them is what must change.
NON_FINITE_FEATURES = ("the model's features hold NaN or infinite values: the checkpoint's weights are not usable "
                       "(retrain, or give another checkpoint)")

# The original's jitter is kept when it is at least this fraction of the features' mean
# diagonal variance v: a smaller ridge drowns in the rounding of S in float64 (eps ~ 2e-16,
# times the dimension, times the largest eigenvalue), where Cholesky may still succeed but
# the log-densities lose their digits (features of scale >~ 1e4 around a singular S).
ORIGINAL_JITTER_FLOOR = 1e-12
# Otherwise the ladder continues at these multiples of v, then (for features whose offset
# dwarfs their spread, where the rounding of S = E[xx^T] - mm^T follows the mean square)
# of their mean diagonal second moment E[x_i^2]: the result does not depend on the scale.
RELATIVE_RUNGS = tuple(10.0 ** e for e in range(-6, 1))


def _symmetric(covs: torch.Tensor) -> torch.Tensor:
    """(S + S^T) / 2 in float64: exact no-op on a symmetric matrix."""
    covs = covs.to(torch.float64)
    return 0.5 * (covs + covs.transpose(-1, -2))


def _check_finite(*tensors: torch.Tensor) -> None:
    if not all(bool(torch.isfinite(t).all()) for t in tensors):
        raise UserError(NON_FINITE_FEATURES, setting="checkpoint_path")


def _all_factorise(covs: torch.Tensor, lam: float) -> bool:
    """True when Cholesky of S_c + lam I succeeds for every class c."""
    eye = torch.eye(covs.shape[-1], dtype=covs.dtype, device=covs.device)
    step = classes_per_chunk(covs.shape[-1])
    for start in range(0, covs.shape[0], step):
        _, info = torch.linalg.cholesky_ex(covs[start:start + step] + lam * eye)
        if bool((info != 0).any()):
            return False
    return True


def _factorise(covs: torch.Tensor, lam: float) -> Optional[torch.Tensor]:
    """The Cholesky factors of S_c + lam I for every class, or None when one fails."""
    eye = torch.eye(covs.shape[-1], dtype=covs.dtype, device=covs.device)
    chol = torch.empty_like(covs)
    step = classes_per_chunk(covs.shape[-1])
    for start in range(0, covs.shape[0], step):
        factor, info = torch.linalg.cholesky_ex(covs[start:start + step] + lam * eye)
        if bool((info != 0).any()):
            return None
        chol[start:start + step] = factor
    return chol


def _smallest_step_or_none(covs: torch.Tensor, step: float, max_steps: int) -> Optional[int]:
    """The smallest k in 0..max_steps with every S_c + k*step*I factorisable (None if none).

    Exponential search then bisection on k (success is monotone in k: adding a ridge
    only raises eigenvalues), so a covariance that needs k ~ 1e6 costs ~40
    factorisations, not a million.
    """
    if _all_factorise(covs, 0.0):
        return 0
    failing, working = 0, 1
    while not _all_factorise(covs, working * step):
        failing = working
        if working >= max_steps:
            return None
        working = min(2 * working, max_steps)
    # Invariant: `failing` fails (or is 0, which failed above), `working` succeeds.
    while working - failing > 1:
        middle = (failing + working) // 2
        if _all_factorise(covs, middle * step):
            working = middle
        else:
            failing = middle
    return working


def _mean_variance(covs: torch.Tensor) -> float:
    return float(torch.diagonal(covs, dim1=-2, dim2=-1).abs().mean())


def _relative_rungs(covs: torch.Tensor, means: Optional[torch.Tensor]) -> list[float]:
    """The continuation of the ladder, ascending: RELATIVE_RUNGS times the mean diagonal
    variance, then times the mean diagonal second moment (when the means are known)."""
    diagonal = torch.diagonal(covs, dim1=-2, dim2=-1).abs()
    scales = [float(diagonal.mean())]
    if means is not None:
        scales.append(float((diagonal + means.to(covs.dtype) ** 2).mean()))
    rungs = sorted({scale * factor for scale in scales if 0.0 < scale < math.inf for factor in RELATIVE_RUNGS})
    return [rung for rung in rungs if math.isfinite(rung)]


def fit_jitter(covs: torch.Tensor, step: float = 1e-6, extra_steps: int = 2, max_steps: int = DEFAULT_MAX_STEPS,
               means: Optional[torch.Tensor] = None) -> tuple[float, torch.Tensor]:
    """The shared jitter lambda of docs/method.md section 3 step 1 and the Cholesky factors
    of S_c + lambda I it was accepted with: ``(lambda, [K, D, D])``.

    The covariances are symmetrised first. The original's ladder: the smallest k >= 0 (up
    to ``max_steps``) such that Cholesky succeeds for S_c + k*step*I for every class c, and
    lambda = (k + extra_steps) * step, the extra steps keeping a margin. It is kept when it
    is at least ORIGINAL_JITTER_FLOOR times the features' mean diagonal variance v (so for
    features of ordinary scale, always). Otherwise, or when no k up to ``max_steps``
    works, the ladder continues relative to the features: lambda is the first of
    RELATIVE_RUNGS (1e-6, 1e-5, ..., 1) times v, then times the features' mean diagonal
    second moment (given ``means`` [K, D]), with which every class factorises. The factors
    returned are those of that very factorisation, so the jitter reported is the one used;
    should (k + extra_steps) * step itself fail (rounding at the edge can make it), the
    ladder climbs on from there.
    """
    covs = _symmetric(covs)
    _check_finite(covs, *(() if means is None else (means,)))
    floor = ORIGINAL_JITTER_FLOOR * _mean_variance(covs)
    k = _smallest_step_or_none(covs, step, max_steps)
    # `failed`: the largest ridge known not to factorise (success is monotone in the ridge).
    if k is None:
        failed = max_steps * step
    else:
        failed = (k - 1) * step if k > 0 else -math.inf
        rung = k + extra_steps
        while rung * step >= floor and (rung <= max_steps or rung == k + extra_steps):
            chol = _factorise(covs, rung * step)
            if chol is not None:
                return rung * step, chol
            failed = rung * step
            rung += max(1, rung - k)  # on up the original's ladder, doubling the distance from k
    for lam in _relative_rungs(covs, means):
        if lam > failed:
            chol = _factorise(covs, lam)
            if chol is not None:
                return lam, chol
            failed = lam
    raise UserError(f"No jitter up to {max(failed, 0.0):g} makes every class covariance positive definite, so the "
                    "features cannot be fitted with Gaussians.", setting="checkpoint_path")


# --------------------------------------------------------------------------------------
# The class Gaussians (docs/method.md section 3 steps 1-2; section 2 validation)
# --------------------------------------------------------------------------------------


class ClassGaussians:
    """N(m_c, S_c + lambda I) for every class c, stored as means and Cholesky factors.

    Classes marked absent (no samples) get log-density -inf, so they never win an argmax.
    """

    def __init__(self, means: torch.Tensor, chol: torch.Tensor, jitter: float,
                 present: Optional[torch.Tensor] = None):
        self.means = means.to(torch.float64)
        self.chol = chol.to(torch.float64)
        self.jitter = float(jitter)
        if present is None:
            present = torch.ones(self.means.shape[0], dtype=torch.bool, device=self.means.device)
        self.present = present.to(device=self.means.device, dtype=torch.bool)
        # log|S| = 2 sum log diag(L)
        self.log_det = 2.0 * torch.log(torch.diagonal(self.chol, dim1=-2, dim2=-1)).sum(-1)
        self._log_norm = self.dim * math.log(2.0 * math.pi) + self.log_det  # [K], the same for every batch
        self._all_present = bool(self.present.all())

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def device(self) -> torch.device:
        return self.means.device

    # ---- fitting ----------------------------------------------------------------------

    @classmethod
    def fit(cls, means: torch.Tensor, covs: torch.Tensor, step: float = 1e-6,
            extra_steps: int = 2, present: Optional[torch.Tensor] = None,
            max_steps: int = DEFAULT_MAX_STEPS) -> "ClassGaussians":
        """Fit from per-class means [K, D] and covariances [K, D, D] (docs/method.md section 3 step 1).

        The jitter is shared by all classes and searched only over the present ones
        (:func:`fit_jitter`); their factors are those the search accepted. Absent classes
        (``present`` False, or non-finite mean) get an identity factor as a placeholder and
        a log-density of -inf. NaN or Inf in a present class's mean or covariance is a
        UserError: the features, hence the model's weights, are unusable.
        """
        means = means.to(torch.float64)
        covs = covs.to(torch.float64)
        if present is None:
            present = torch.isfinite(means).all(dim=1)
        present = present.to(device=means.device, dtype=torch.bool)
        if not bool(present.any()):
            raise UserError("No class has any sample, so no class Gaussian can be fitted.")
        _check_finite(means[present], covs[present])
        lam, factors = fit_jitter(covs[present], step=step, extra_steps=extra_steps, max_steps=max_steps,
                                  means=means[present])
        eye = torch.eye(means.shape[1], dtype=torch.float64, device=means.device)
        chol = eye.expand_as(covs).clone()
        chol[present] = factors
        means = torch.where(present.unsqueeze(1), means, torch.zeros_like(means))
        return cls(means, chol, lam, present)

    @classmethod
    def from_statistics(cls, stats: ClassStatistics, step: float = 1e-6,
                        extra_steps: int = 2) -> "ClassGaussians":
        """Fit from accumulated ClassStatistics (absent classes are skipped)."""
        return cls.fit(stats.means(), stats.covariances(), step=step,
                       extra_steps=extra_steps, present=stats.present())

    # ---- scoring ----------------------------------------------------------------------

    @torch.no_grad()
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """l_c(x) = log N(x; m_c, S_c + lambda I) for every row and class, [N, K] float64.

        docs/method.md section 3 step 2. x may be any float dtype on any device; the result
        lives on this object's device. Rows are processed in chunks so the [K, n, D]
        intermediate stays within ~128 MiB.
        """
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape [N, {self.dim}], got {tuple(x.shape)}")
        x = x.detach().to(device=self.device, dtype=torch.float64)
        rows = max(1, CHUNK_DOUBLES // (self.num_classes * self.dim))
        out = [self._log_prob_chunk(x[i:i + rows]) for i in range(0, x.shape[0], rows)]
        if not out:
            return torch.empty(0, self.num_classes, dtype=torch.float64, device=self.device)
        return torch.cat(out, dim=0)

    def _log_prob_chunk(self, x: torch.Tensor) -> torch.Tensor:
        # Mahalanobis distance via L^{-1}(x - m): one batched triangular solve for all
        # classes, [K, D, n].
        diff = (x.unsqueeze(0) - self.means.unsqueeze(1)).transpose(1, 2)
        whitened = torch.linalg.solve_triangular(self.chol, diff, upper=False)
        mahalanobis = whitened.pow(2).sum(dim=1)  # [K, n]
        logp = -0.5 * (mahalanobis + self._log_norm.unsqueeze(1))
        if not self._all_present:
            logp = logp.masked_fill(~self.present.unsqueeze(1), -math.inf)
        return logp.transpose(0, 1)

    # ---- device -----------------------------------------------------------------------

    def to(self, device) -> "ClassGaussians":
        """Move to ``device`` in place and return self."""
        self.means = self.means.to(device)
        self.chol = self.chol.to(device)
        self.log_det = self.log_det.to(device)
        self._log_norm = self._log_norm.to(device)
        self.present = self.present.to(device)
        return self
