"""The training losses of Dinari & Freifeld (UAI 2022): triplet + distancing, and the class KL."""
from __future__ import annotations

import math

import torch
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
    on a dense grid rather than listing the triplets; ``dense`` forces either way. ``neg_margin`` is the margin M_d that the MarginSchedule callback
    grows during training. d is the library's default distance: Euclidean between
    L2-normalised embeddings, so d <= 2 and M_d above 2 keeps every negative pair active.
    """

    def __init__(self, margin: float = 0.1, neg_margin: float = 0.15, triplets_per_anchor="all",
                 dense: bool | None = None, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense
        self.margin = margin
        self.neg_margin = neg_margin
        self.triplets_per_anchor = triplets_per_anchor
        self.add_to_recordable_attributes(list_of_names=["margin", "neg_margin"], is_stat=False)

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
        same = labels.unsqueeze(1) == ref_labels.unsqueeze(0)
        positive = same
        if ref_emb is embeddings:
            positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        valid = positive.unsqueeze(2) & ~same.unsqueeze(1)
        losses = self._terms(dist.unsqueeze(2), dist.unsqueeze(1)) * valid
        # AvgNonZeroReducer's rule: the mean over the triplets whose loss is positive.
        loss = losses.sum() / (losses > 0).sum().clamp(min=1)
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


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(x; mean, exp(log_std)^2)."""
    return -0.5 * ((x - mean) * torch.exp(-log_std)) ** 2 - log_std - LOG_SQRT_2PI


def class_kl_loss(
    z: torch.Tensor,
    mu: torch.Tensor,
    log_var: torch.Tensor,
    labels: torch.Tensor,
    class_means: torch.Tensor,
    prior_std: float = 0.1,
) -> torch.Tensor:
    """The paper's class-conditional KL term, estimated with the sample z (docs/method.md section 2).

    For each class c present in the batch: the mean over its samples and latent dims of
    ``log q(z|x) - log N(z; m_c, prior_std^2 I)`` with q = N(mu, exp(log_var)); the result
    is the average over the classes present (each class weighs the same, whatever its count).
    """
    log_q = gaussian_log_density(z, mu, 0.5 * log_var)
    prior_mean = class_means[labels].to(z.dtype)
    log_p = gaussian_log_density(z, prior_mean, torch.full_like(z, math.log(prior_std)))
    per_sample = (log_q - log_p).mean(dim=1)
    # Per-class sums over a fixed K-slot table: no torch.unique, so no host synchronisation.
    num_classes = class_means.shape[0]
    per_class_sum = per_sample.new_zeros(num_classes).index_add(0, labels, per_sample)
    counts = torch.bincount(labels, minlength=num_classes).to(per_sample.dtype)
    present = counts > 0
    return (per_class_sum / counts.clamp(min=1)).sum() / present.sum()
