"""The training losses of Dinari & Freifeld (UAI 2022): triplet + distancing, and the class KL."""
from __future__ import annotations

import math

import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.reducers import AvgNonZeroReducer
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# Batches up to N * M^2 = 2^27 grid cells (N = M = 512) take the dense path: 0.5 GB of
# float32 per grid tensor at the limit. Larger ones list their triplets instead.
DENSE_TRIPLET_LIMIT = 2**27


class TripletDistancingLoss(BaseMetricLossFunction):
    """Triplet loss plus the paper's "distancing" term, over all triplets of a batch.

    For every (anchor a, positive p, negative n) triplet::

        relu(d(a, p) - d(a, n) + margin) + relu(neg_margin - d(a, n))

    averaged over the triplets whose loss is non-zero (pytorch-metric-learning's
    AvgNonZeroReducer rule). On an accelerator, batches of up to 512 embeddings compute it
    on a dense grid rather than listing the triplets; ``dense`` forces either way.
    ``neg_margin`` is the margin M_d that the MarginSchedule callback grows during training.
    d is the library's default distance: Euclidean between L2-normalised embeddings, so
    d <= 2 and M_d above 2 keeps every negative pair active.
    """

    def __init__(self, margin: float = 0.1, neg_margin: float = 0.15, triplets_per_anchor="all",
                 dense: bool | None = None, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense
        self.margin = margin
        self.neg_margin = neg_margin
        self.triplets_per_anchor = triplets_per_anchor
        self._triplet_cache: dict = {}
        self._compiled = None  # compile_dense()
        self._margin = (None, None)
        self.add_to_recordable_attributes(list_of_names=["margin", "neg_margin"], is_stat=False)

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        """pytorch-metric-learning's forward; the training step's call (all triplets of one
        batch, the default distance and reducer, no statistics collected) goes straight to
        the same tensor operations, without the library's bookkeeping around them."""
        if self._direct(embeddings, labels, indices_tuple, ref_emb, ref_labels):
            labels = labels.to(embeddings.device)
            if self._compiled is not None and len(embeddings) ** 3 <= DENSE_TRIPLET_LIMIT:
                return self._compiled(embeddings, labels, self.margin, self._margin_tensor(embeddings))
            if self._use_dense(embeddings, embeddings, None):
                return dense_triplet_distancing(embeddings, labels, self.margin, self.neg_margin)
            return self._listed_loss(embeddings, labels)
        return super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)

    def _direct(self, embeddings, labels, indices_tuple, ref_emb, ref_labels) -> bool:
        return (indices_tuple is None and ref_emb is None and ref_labels is None and self.triplets_per_anchor == "all"
                and isinstance(labels, torch.Tensor) and labels.dim() == 1 and embeddings.dim() == 2
                and len(labels) == len(embeddings) and embeddings.dtype in (torch.float32, torch.float64)
                and type(self.distance) is LpDistance and self.distance.p == 2 and self.distance.power == 1
                and self.distance.normalize_embeddings and not self.distance.collect_stats
                and type(self.reducer) is AvgNonZeroReducer and not self.reducer.collect_stats
                and not self.collect_stats and self.embedding_regularizer is None)

    def _listed_loss(self, embeddings, labels):
        """Exactly the library's operations (so the same value and gradient, bit for bit): the
        triplets listed, the distances of the L2-normalised embeddings (normalised once as
        query and once as reference, as the library does), the terms, the mean of the
        non-zero ones. The triplets depend only on which labels are equal, so they are kept
        per pattern of labels (a balanced batch repeats its pattern)."""
        anchor_idx, positive_idx, negative_idx = self._triplets_of(labels)
        if len(anchor_idx) == 0:
            return torch.sum(embeddings * 0)
        query = torch.nn.functional.normalize(embeddings, p=2, dim=1)
        reference = torch.nn.functional.normalize(embeddings, p=2, dim=1)
        dist = torch.cdist(query, reference, p=2)
        losses = self._terms(dist[anchor_idx, positive_idx], dist[anchor_idx, negative_idx])
        losses = losses[losses > 0]
        if len(losses) >= 1:
            return torch.mean(losses)
        return torch.sum(embeddings * 0)

    def _triplets_of(self, labels: torch.Tensor):
        """lmu.get_all_triplets_indices(labels), kept per pattern of equal labels (on the CPU,
        where reading the labels costs no synchronisation)."""
        if labels.device.type != "cpu":
            return lmu.get_all_triplets_indices(labels, labels)
        values = labels.tolist()
        first: dict = {}
        pattern = tuple(first.setdefault(v, len(first)) for v in values)
        triplets = self._triplet_cache.get(pattern)
        if triplets is None:
            if len(self._triplet_cache) >= 64:
                self._triplet_cache.pop(next(iter(self._triplet_cache)))
            canonical = torch.tensor(pattern, dtype=labels.dtype)
            triplets = self._triplet_cache[pattern] = lmu.get_all_triplets_indices(canonical, canonical)
        return triplets

    def compile_dense(self) -> "TripletDistancingLoss":
        """Train with the dense grid, compiled by torch.compile (``--compile``): one fused
        computation instead of a dozen operations. M_d enters as a tensor, so its growth
        does not recompile."""
        self._compiled = torch.compile(dense_triplet_distancing, dynamic=False)
        return self

    def _margin_tensor(self, embeddings: torch.Tensor) -> torch.Tensor:
        value, tensor = self._margin
        if value != self.neg_margin or tensor.device != embeddings.device or tensor.dtype != embeddings.dtype:
            tensor = torch.tensor(self.neg_margin, dtype=embeddings.dtype, device=embeddings.device)
            self._margin = (self.neg_margin, tensor)
        return tensor

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_or_indices_tuple_required(labels, indices_tuple)
        if self._use_dense(embeddings, ref_emb, indices_tuple):
            return self._all_triplets_dense(embeddings, labels, ref_emb, ref_labels)
        return self._listed_triplets(embeddings, labels, indices_tuple, ref_emb, ref_labels)

    def _use_dense(self, embeddings, ref_emb, indices_tuple) -> bool:
        """The dense grid on accelerators (no host sync: the GPU never waits on the CPU);
        listing the triplets on the CPU, where the grid's extra arithmetic costs more."""
        if indices_tuple is not None or self.triplets_per_anchor != "all":
            return False
        if len(embeddings) * len(ref_emb) ** 2 > DENSE_TRIPLET_LIMIT:
            return False
        return embeddings.device.type != "cpu" if self.dense is None else self.dense

    def _terms(self, ap: torch.Tensor, an: torch.Tensor) -> torch.Tensor:
        triplet = torch.relu(self.distance.margin(ap, an) + self.margin)
        distancing = torch.relu(self.distance.margin(self.neg_margin, an))
        return triplet + distancing

    def _all_triplets_dense(self, embeddings, labels, ref_emb, ref_labels):
        """Every (a, p, n) at once on an [N, M, M] grid: the same value as listing the
        triplets, without the host synchronisation that listing them (nonzero) costs."""
        dist = self.distance(embeddings, ref_emb)
        loss = _mean_over_triplet_grid(dist, labels, ref_labels, ref_emb is embeddings, self._terms)
        return {"loss": {"losses": loss, "indices": None, "reduction_type": "already_reduced"}}

    def _listed_triplets(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        indices_tuple = lmu.convert_to_triplets(
            indices_tuple, labels, ref_labels, t_per_anchor=self.triplets_per_anchor
        )
        anchor_idx, positive_idx, negative_idx = indices_tuple
        if len(anchor_idx) == 0:
            return self.zero_losses()
        dist = self.distance(embeddings, ref_emb)
        losses = self._terms(dist[anchor_idx, positive_idx], dist[anchor_idx, negative_idx])
        return {"loss": {"losses": losses, "indices": indices_tuple, "reduction_type": "triplet"}}

    def get_default_reducer(self):
        return AvgNonZeroReducer()


def dense_triplet_distancing(embeddings: torch.Tensor, labels: torch.Tensor, margin: float,
                             neg_margin: torch.Tensor | float) -> torch.Tensor:
    """The triplet + distancing loss over every triplet of the batch on an [N, N, N] grid, as
    one function of tensors (what ``--compile`` compiles): the mean of the non-zero terms of
    relu(d(a,p) - d(a,n) + margin) + relu(M_d - d(a,n)), d Euclidean between L2-normalised
    embeddings."""
    unit = torch.nn.functional.normalize(embeddings, p=2, dim=1)
    dist = torch.cdist(unit, unit, p=2)
    return _mean_over_triplet_grid(dist, labels, labels, True,
                                   lambda ap, an: torch.relu(ap - an + margin) + torch.relu(neg_margin - an))


def _mean_over_triplet_grid(dist: torch.Tensor, labels: torch.Tensor, ref_labels: torch.Tensor, same_set: bool,
                            terms) -> torch.Tensor:
    """The mean of the positive ``terms(d(a,p), d(a,n))`` over every triplet (a, p, n) at once,
    on an [N, M, M] grid (AvgNonZeroReducer's rule). ``same_set``: the references are the
    anchors themselves, so an anchor is not its own positive."""
    same = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device) if same_set else same
    valid = positive.unsqueeze(2) & ~same.unsqueeze(1)
    losses = terms(dist.unsqueeze(2), dist.unsqueeze(1)) * valid
    return losses.sum() / (losses > 0).sum().clamp(min=1)


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor,
                         inverse_std: torch.Tensor | None = None) -> torch.Tensor:
    """Element-wise log N(x; mean, exp(log_std)^2); ``inverse_std``, exp(-log_std), when the
    caller already has it."""
    if inverse_std is None:
        inverse_std = torch.exp(-log_std)
    return -0.5 * ((x - mean) * inverse_std) ** 2 - log_std - LOG_SQRT_2PI


def class_kl_loss(
    z: torch.Tensor,
    mu: torch.Tensor,
    log_var: torch.Tensor,
    labels: torch.Tensor,
    class_means: torch.Tensor,
    prior_std: float = 0.1,
    layout=None,
) -> torch.Tensor:
    """The paper's class-conditional KL term, estimated with the sample z (docs/method.md section 2).

    For each class c present in the batch: the mean over its samples and latent dims of
    ``log q(z|x) - log N(z; m_c, prior_std^2 I)`` with q = N(mu, exp(log_var)); the result
    is the average over the classes present (each class weighs the same, whatever its count).
    ``layout`` (a :class:`models.class_statistics.LabelLayout` of the labels, on the CPU) supplies
    the class counts instead of counting them with tensor operations.
    """
    log_q = gaussian_log_density(z, mu, 0.5 * log_var)
    prior_mean = class_means[labels].to(z.dtype)
    log_p = gaussian_log_density(z, prior_mean, *_prior_scale(z, prior_std))
    per_sample = (log_q - log_p).mean(dim=1)
    # Per-class sums over a fixed K-slot table: no torch.unique, so no host synchronisation.
    num_classes = class_means.shape[0]
    per_class_sum = per_sample.new_zeros(num_classes).index_add(0, labels, per_sample)
    if layout is not None and layout.all_known:
        counts, present = layout.class_counts(num_classes, per_sample.dtype, per_sample.device)
        return (per_class_sum / counts).sum() / present
    counts = torch.bincount(labels, minlength=num_classes).to(per_sample.dtype)
    present = counts > 0
    return (per_class_sum / counts.clamp(min=1)).sum() / present.sum()


_PRIOR_SCALES: dict = {}


def _prior_scale(z: torch.Tensor, prior_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log(prior_std) and exp(-log(prior_std)) as constant tensors shaped like z: what
    gaussian_log_density computes from ``torch.full_like(z, log(prior_std))``, made once
    per shape instead of every step."""
    key = (tuple(z.shape), z.dtype, str(z.device), float(prior_std))
    scale = _PRIOR_SCALES.get(key)
    if scale is None:
        if len(_PRIOR_SCALES) >= 16:
            _PRIOR_SCALES.pop(next(iter(_PRIOR_SCALES)))
        with torch.no_grad():
            log_std = torch.full(z.shape, math.log(prior_std), dtype=z.dtype, device=z.device)
            scale = _PRIOR_SCALES[key] = (log_std, torch.exp(-log_std))
    return scale
