"""Per-class Gaussians in a feature space: running statistics, shared jitter, log-densities.

The same machinery serves two places of docs/method.md:

* section 2 ("Class statistics"): during training, per-class count / sum / sum of outer
  products of z, the class Gaussians fitted from them, and the per-class "bound" (a
  quantile of the training samples' log-likelihood under their own class);
* section 3 steps 1-2 ("Fit" and "Score"): the class Gaussians of the feature-ensemble
  vector f(x), with one shared jitter lambda * I, and l_c(x) = log N(f(x); m_c, S_c + lambda I).

Everything is accumulated and evaluated in float64: the feature ensembles are up to a few
thousand dimensions wide and nearly singular, where float32 Cholesky factors are unusable.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from utils.errors import UserError

# Largest number of float64 values one batched intermediate may hold (128 MiB): bounds
# the memory of log_prob's [K, N, D] differences and of the jitter ladder's factorisations.
_CHUNK_DOUBLES = 1 << 24

# The original's ladder of steps ends here (1e-6 * 2**40 ~ 1.1e6); beyond it the ladder
# continues relative to the features' variance (see fit_jitter), so features of any scale fit.
DEFAULT_MAX_STEPS = 1 << 40
# Largest K * N * D^2 (multiply-adds) for which an accelerator takes the one-hot update.
ONE_HOT_WORK_LIMIT = 1 << 30


# --------------------------------------------------------------------------------------
# Running per-class statistics (docs/method.md section 2 "Class statistics", section 3 step 1)
# --------------------------------------------------------------------------------------


class ClassStatistics(torch.nn.Module):
    """Per-class running count, sum and sum of outer products, in float64.

    Held as registered buffers so they follow ``.to(device)`` and land in checkpoints.
    Accumulating sums (rather than assigning per batch) fixes the original's bug of
    docs/method.md section 7, where the feature-ensemble statistics were overwritten by each
    batch.
    """

    count: torch.Tensor
    sum: torch.Tensor
    outer: torch.Tensor

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"need num_classes >= 1 and dim >= 1, got {num_classes} and {dim}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("sum", torch.zeros(num_classes, dim, dtype=torch.float64))
        self.register_buffer("outer", torch.zeros(num_classes, dim, dim, dtype=torch.float64))

    def reset(self) -> None:
        """Zero every running sum (start of an epoch / of a fitting pass)."""
        self.count.zero_()
        self.sum.zero_()
        self.outer.zero_()

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor, layout: "LabelLayout | None" = None) -> None:
        """Add a batch: x [N, D] features, y [N] integer labels.

        Labels outside 0..K-1 are skipped, so a batch may carry the "unknown" label K.
        Labels on the CPU are grouped by class on the host (:class:`LabelLayout`; pass
        ``layout`` to share one between the statistics of the same batch): the same sums
        as the padded form below, with fewer tensor operations and, for features on an
        accelerator, no host synchronisation.
        """
        if layout is None and y.device.type == "cpu" and y.dim() == 1:
            layout = LabelLayout.of(y, self.num_classes)
        if layout is not None and layout.all_known and layout.size == x.shape[0]:
            self._update_with_layout(x, y, layout)
            return
        if self._one_hot_pays_off(x):
            self._update_one_hot(*self._on_buffers(x, y))
            return
        x, y = self._known_rows(x, y)
        if y.numel() == 0:
            return
        self.count.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        self.sum.index_add_(0, y, x)
        self._add_per_class_outer_products(x, y)

    def _update_with_layout(self, x: torch.Tensor, y: torch.Tensor, layout: "LabelLayout") -> None:
        """The padded form's sums, the grouping read from ``layout``: the same operations on
        the same values (so the same bits), less the ones that only depend on the labels."""
        x, y = self._on_buffers(x, y)
        if layout.size == 0:
            return
        classes, counts, order, sorted_compact, rank = layout.on(x.device)
        self.count.index_add_(0, classes, counts)
        self.sum.index_add_(0, y, x)
        if layout.equal_counts:  # every slot of the padded block is filled: it is x in class order
            padded = x[order].view(len(layout.classes), layout.max_count, self.dim)
        else:
            padded = x.new_zeros(len(layout.classes), layout.max_count, self.dim)
            padded[sorted_compact, rank] = x[order]
        self._add_padded_outer_products(padded, classes)

    def _add_per_class_outer_products(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """outer[c] += sum over the batch rows of class c of x x^T, for every class at once.

        The rows are scattered into a zero-padded [C, max_count, D] block (one slab per
        class present), so one batched matmul gives every X_c^T X_c: N*D^2 work, where a
        per-sample [N, D, D] outer product would need N*D^2 memory (gigabytes for the
        feature ensembles) and a one-hot matmul K times the work.
        """
        classes, compact, counts = torch.unique(y, return_inverse=True, return_counts=True)
        order = torch.argsort(compact, stable=True)
        sorted_compact = compact[order]
        offsets = torch.cumsum(counts, 0) - counts
        rank = torch.arange(y.numel(), device=y.device) - offsets[sorted_compact]
        padded = x.new_zeros(classes.numel(), int(counts.max()), self.dim)
        padded[sorted_compact, rank] = x[order]
        self._add_padded_outer_products(padded, classes)

    def _add_padded_outer_products(self, padded: torch.Tensor, classes: torch.Tensor) -> None:
        """outer[classes[i]] += padded[i]^T padded[i], for the [C, rows, D] block of each class present."""
        padded_t = padded.transpose(1, 2).contiguous()
        if classes.numel() == self.num_classes:
            # Every class in the batch (the usual case when fitting on a whole training
            # set): accumulate in place, with no [K, D, D] temporary.
            self.outer.baddbmm_(padded_t, padded)
            return
        # Chunk the classes so the [C, D, D] temporary stays bounded for wide features.
        per_chunk = _classes_per_chunk(self.dim)
        for start in range(0, classes.numel(), per_chunk):
            stop = start + per_chunk
            self.outer.index_add_(0, classes[start:stop],
                                  torch.bmm(padded_t[start:stop], padded[start:stop]))

    def _one_hot_pays_off(self, x: torch.Tensor) -> bool:
        # On an accelerator the one-hot form's K-fold extra arithmetic is cheaper than the
        # host synchronisations (unique, max, boolean indexing) of the padded form.
        work = self.num_classes * x.shape[0] * self.dim * self.dim
        return self.count.device.type != "cpu" and work <= ONE_HOT_WORK_LIMIT

    def _update_one_hot(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The same sums through a [N, K] one-hot weight matrix: no data-dependent shapes."""
        known = (y >= 0) & (y < self.num_classes)
        weights = torch.nn.functional.one_hot(y.clamp(0, self.num_classes - 1), self.num_classes)
        weights = weights.to(torch.float64) * known.unsqueeze(1)
        self.count += weights.sum(0)
        self.sum += weights.T @ x
        weighted = weights.T.unsqueeze(2) * x.unsqueeze(0)                      # [K, N, D]
        self.outer.baddbmm_(weighted.transpose(1, 2), x.expand(self.num_classes, -1, -1))

    def _on_buffers(self, x: torch.Tensor, y: torch.Tensor):
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape [N, {self.dim}], got {tuple(x.shape)}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"expected labels of shape [{x.shape[0]}], got {tuple(y.shape)}")
        device = self.count.device
        return x.detach().to(device=device, dtype=torch.float64), y.detach().to(device=device, dtype=torch.long)

    def _known_rows(self, x: torch.Tensor, y: torch.Tensor):
        x, y = self._on_buffers(x, y)
        keep = (y >= 0) & (y < self.num_classes)
        return x[keep], y[keep]

    def all_reduce(self) -> None:
        """Sum the buffers over all processes (DDP); a no-op in a single process."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        for buffer in (self.count, self.sum, self.outer):
            torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.SUM)

    def present(self) -> torch.Tensor:
        """Bool mask [K] of the classes that have at least one sample."""
        return self.count > 0

    def means(self) -> torch.Tensor:
        """Per-class means m_c = sum / count, [K, D] float64 (NaN for absent classes)."""
        return self.sum / self.count.unsqueeze(1)

    def covariances(self) -> torch.Tensor:
        """Population covariances S_c = outer / count - m m^T, symmetrised, [K, D, D] float64.

        The (S + S^T) / 2 removes the rounding asymmetry that would otherwise make
        Cholesky fail on an exactly symmetric-in-theory matrix. NaN for absent classes.
        """
        m = self.means()
        cov = self.outer / self.count.view(-1, 1, 1) - m.unsqueeze(2) * m.unsqueeze(1)
        return 0.5 * (cov + cov.transpose(1, 2))


class LabelLayout:
    """How the rows of one batch group into classes, worked out on the host from labels on
    the CPU (where reading them costs nothing): the class of each row, the classes present
    and their counts, the stable order that groups the rows by class, and each row's rank
    within its class. :meth:`ClassStatistics.update` reads it instead of computing it with
    tensor operations (``torch.unique`` and its host synchronisation on an accelerator);
    several statistics of the same batch can share one. Its index tensors are made once
    per device."""

    __slots__ = ("size", "all_known", "classes", "counts", "max_count", "equal_counts", "_order", "_sorted_compact",
                 "_rank", "_tensors", "_class_counts")

    def __init__(self, values: list[int], num_classes: int):
        self.size = len(values)
        self.all_known = all(0 <= v < num_classes for v in values)
        self._tensors: dict = {}
        self._class_counts: dict = {}
        if not self.all_known:
            return
        self.classes = sorted(set(values))
        position = {c: i for i, c in enumerate(self.classes)}
        compact = [position[v] for v in values]
        tally = [0] * len(self.classes)
        for c in compact:
            tally[c] += 1
        self.counts = tally
        self.max_count = max(tally, default=0)
        self.equal_counts = len(set(tally)) <= 1
        # torch.argsort(compact, stable=True): rows by class, in their order within a class
        self._order = sorted(range(self.size), key=compact.__getitem__)
        self._sorted_compact = [compact[i] for i in self._order]
        starts = [0] * len(tally)
        for c in range(1, len(tally)):
            starts[c] = starts[c - 1] + tally[c - 1]
        self._rank = [i - starts[c] for i, c in enumerate(self._sorted_compact)]

    @classmethod
    def of(cls, y: torch.Tensor, num_classes: int) -> "LabelLayout":
        """The layout of labels ``y`` [N] held on the CPU (the same labels give the same object:
        balanced batches repeat their label sequences)."""
        key = (tuple(y.tolist()), int(num_classes))
        layout = _LAYOUTS.get(key)
        if layout is None:
            if len(_LAYOUTS) >= _LAYOUT_CACHE_SIZE:
                _LAYOUTS.pop(next(iter(_LAYOUTS)))
            layout = _LAYOUTS[key] = cls(list(key[0]), num_classes)
        return layout

    def on(self, device: torch.device):
        """(classes, counts as float64, order, sorted class index, rank) as tensors on ``device``;
        the last two are None when every class has the same count (no padding needed)."""
        key = str(device)
        if key not in self._tensors:
            long = dict(dtype=torch.long)
            tensors = [torch.tensor(self.classes, **long), torch.tensor(self.counts, dtype=torch.float64),
                       torch.tensor(self._order, **long)]
            if not self.equal_counts:
                tensors += [torch.tensor(self._sorted_compact, **long), torch.tensor(self._rank, **long)]
            tensors = [t.to(device, non_blocking=True) for t in tensors]
            self._tensors[key] = tuple(tensors) + ((None, None) if self.equal_counts else ())
        return self._tensors[key]

    def class_counts(self, num_classes: int, dtype: torch.dtype, device: torch.device):
        """([K] counts clamped to at least 1, in ``dtype``; the number of classes present, a
        0-dim long tensor) on ``device``: what the class KL divides by."""
        key = (num_classes, dtype, str(device))
        if key not in self._class_counts:
            counts = [0] * num_classes
            for c, n in zip(self.classes, self.counts):
                counts[c] = n
            self._class_counts[key] = (torch.tensor([max(n, 1) for n in counts], dtype=dtype).to(device),
                                       torch.tensor(len(self.classes)).to(device))
        return self._class_counts[key]


# LabelLayout.of's cache: the layouts of the most recent distinct label sequences.
_LAYOUT_CACHE_SIZE = 256
_LAYOUTS: dict = {}


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


def _classes_per_chunk(dim: int) -> int:
    return max(1, _CHUNK_DOUBLES // max(1, dim * dim))


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
    step = _classes_per_chunk(covs.shape[-1])
    for start in range(0, covs.shape[0], step):
        _, info = torch.linalg.cholesky_ex(covs[start:start + step] + lam * eye)
        if bool((info != 0).any()):
            return False
    return True


def _factorise(covs: torch.Tensor, lam: float) -> Optional[torch.Tensor]:
    """The Cholesky factors of S_c + lam I for every class, or None when one fails."""
    eye = torch.eye(covs.shape[-1], dtype=covs.dtype, device=covs.device)
    chol = torch.empty_like(covs)
    step = _classes_per_chunk(covs.shape[-1])
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


def smallest_working_step(covs: torch.Tensor, step: float = 1e-6,
                          max_steps: int = DEFAULT_MAX_STEPS) -> int:
    """The smallest k >= 0 with every S_c + k*step*I Cholesky-factorisable: the original's
    ladder alone (:func:`jitter_ladder` continues it). A UserError when no k up to
    ``max_steps`` works, or when the covariances hold NaN or Inf."""
    covs = _symmetric(covs)
    _check_finite(covs)
    k = _smallest_step_or_none(covs, step, max_steps)
    if k is None:
        raise UserError(f"No jitter up to {max_steps * step:g} makes every class covariance positive definite.")
    return k


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


def jitter_ladder(covs: torch.Tensor, step: float = 1e-6, extra_steps: int = 2,
                  max_steps: int = DEFAULT_MAX_STEPS, means: Optional[torch.Tensor] = None) -> float:
    """The shared jitter lambda of docs/method.md section 3 step 1 (see :func:`fit_jitter`):
    (k + extra_steps) * step for the smallest working k on the original's ladder when that
    is at least ORIGINAL_JITTER_FLOOR times the features' mean variance, otherwise the
    first working multiple of that variance (1e-6, 1e-5, ..., 1)."""
    return fit_jitter(covs, step=step, extra_steps=extra_steps, max_steps=max_steps, means=means)[0]


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
        rows = max(1, _CHUNK_DOUBLES // (self.num_classes * self.dim))
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


# --------------------------------------------------------------------------------------
# Class bounds (docs/method.md section 2 "Class statistics" and "Validation")
# --------------------------------------------------------------------------------------


def quantile_bounds(log_likelihoods: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    q: float) -> torch.Tensor:
    """Per class c, the q-quantile of its training samples' log-likelihood under class c.

    ``log_likelihoods`` is either [N] (each sample's value under its own class) or
    [N, K] (all classes; the own-class column is taken). Linear interpolation, as
    torch.quantile / np.quantile by default. Samples with labels outside 0..K-1 are
    ignored; classes with no samples get -inf. Returns [K] float64.

    Vectorised over classes: values are sorted by (class, value) and each class's
    quantile is read from its own segment of the sorted array.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    labels = labels.detach().to(device=log_likelihoods.device, dtype=torch.long).reshape(-1)
    values = _own_class_values(log_likelihoods.detach().to(torch.float64), labels)
    keep = (labels >= 0) & (labels < num_classes)
    values, labels = values[keep], labels[keep]

    bounds = torch.full((num_classes,), -math.inf, dtype=torch.float64, device=values.device)
    if values.numel() == 0:
        return bounds
    # Stable sort by value, then by label: each class's values end up contiguous, sorted.
    by_value = torch.argsort(values, stable=True)
    by_label = torch.argsort(labels[by_value], stable=True)
    sorted_values = values[by_value][by_label]

    counts = torch.bincount(labels, minlength=num_classes)
    offsets = torch.cumsum(counts, 0) - counts
    has = counts > 0
    position = q * (counts[has] - 1).to(torch.float64)
    below = torch.floor(position).long()
    above = torch.minimum(below + 1, counts[has] - 1)
    low = sorted_values[offsets[has] + below]
    high = sorted_values[offsets[has] + above]
    bounds[has] = low + (position - below.to(torch.float64)) * (high - low)
    return bounds


def _own_class_values(log_likelihoods: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if log_likelihoods.dim() == 1:
        return log_likelihoods
    if log_likelihoods.dim() != 2:
        raise ValueError("log-likelihoods must be [N] or [N, K]")
    columns = labels.clamp(0, log_likelihoods.shape[1] - 1)
    return log_likelihoods.gather(1, columns.unsqueeze(1)).squeeze(1)
