"""Per-class running statistics of features: count, sum and sum of outer products.

docs/method.md section 2 ("Class statistics"): during training, the statistics of z from
which the class Gaussians (:mod:`models.gaussians`) are fitted, and the per-class "bound"
(a quantile of the training samples' log-likelihood under their own class); section 3
step 1 ("Fit"): the same statistics of the feature-ensemble vector f(x).

Everything is accumulated in float64: the feature ensembles are up to a few thousand
dimensions wide and nearly singular, where float32 sums lose the covariances' digits.
"""

from __future__ import annotations

import math

import torch

# Largest number of float64 values one batched intermediate may hold (128 MiB): bounds
# the memory of the outer products here and of models.gaussians' log-densities and
# factorisations.
CHUNK_DOUBLES = 1 << 24

# Largest K * N * D^2 (multiply-adds) for which an accelerator takes the one-hot update.
ONE_HOT_WORK_LIMIT = 1 << 30


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
        per_chunk = classes_per_chunk(self.dim)
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


def classes_per_chunk(dim: int) -> int:
    """How many [dim, dim] float64 matrices fit in one batched intermediate."""
    return max(1, CHUNK_DOUBLES // max(1, dim * dim))


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
