"""The training losses of Dinari & Freifeld (UAI 2022): triplet + distancing, and the class KL."""
from __future__ import annotations

import math

import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.reducers import AvgNonZeroReducer
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class TripletDistancingLoss(BaseMetricLossFunction):
    """Triplet loss plus the paper's "distancing" term, over all triplets of a batch.

    For every (anchor a, positive p, negative n) triplet::

        relu(d(a, p) - d(a, n) + margin) + relu(neg_margin - d(a, n))

    averaged over the triplets whose loss is non-zero (pytorch-metric-learning's
    AvgNonZeroReducer). ``neg_margin`` is the margin M_d that the MarginSchedule callback
    grows during training. d is the library's default distance: Euclidean between
    L2-normalised embeddings, so d <= 2 and M_d above 2 keeps every negative pair active.
    """

    def __init__(self, margin: float = 0.1, neg_margin: float = 0.15, triplets_per_anchor="all", **kwargs):
        super().__init__(**kwargs)
        self.margin = margin
        self.neg_margin = neg_margin
        self.triplets_per_anchor = triplets_per_anchor
        self.add_to_recordable_attributes(list_of_names=["margin", "neg_margin"], is_stat=False)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_or_indices_tuple_required(labels, indices_tuple)
        indices_tuple = lmu.convert_to_triplets(
            indices_tuple, labels, ref_labels, t_per_anchor=self.triplets_per_anchor
        )
        anchor_idx, positive_idx, negative_idx = indices_tuple
        if len(anchor_idx) == 0:
            return self.zero_losses()
        dist = self.distance(embeddings, ref_emb)
        ap = dist[anchor_idx, positive_idx]
        an = dist[anchor_idx, negative_idx]
        triplet = torch.relu(self.distance.margin(ap, an) + self.margin)
        distancing = torch.relu(self.distance.margin(self.neg_margin, an))
        return {"loss": {"losses": triplet + distancing, "indices": indices_tuple, "reduction_type": "triplet"}}

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
    """The paper's class-conditional KL term, estimated with the sample z (METHOD.md section 2).

    For each class c present in the batch: the mean over its samples and latent dims of
    ``log q(z|x) - log N(z; m_c, prior_std^2 I)`` with q = N(mu, exp(log_var)); the result
    is the average over the classes present (each class weighs the same, whatever its count).
    """
    log_q = gaussian_log_density(z, mu, 0.5 * log_var)
    prior_mean = class_means[labels].to(z.dtype)
    log_p = gaussian_log_density(z, prior_mean, torch.full_like(z, math.log(prior_std)))
    per_sample = (log_q - log_p).mean(dim=1)
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    per_class_sum = torch.zeros(len(classes), dtype=per_sample.dtype, device=z.device)
    per_class_sum = per_class_sum.index_add(0, inverse, per_sample)
    return (per_class_sum / counts).mean()
