"""The two records an evaluation keeps: what one pass over an image set gives every detector,
and one detector's scores of a known/unknown pair.

Every detector of a run is fitted and scored from one :class:`FeatureRecord` per image set
(models/evaluation.py), filled by one forward pass over the set; only a detector that needs
gradients with respect to the images (ODIN) makes a pass of its own, whose outlier scores the
record carries beside the features.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class FeatureRecord:
    """One image set's pass (CPU tensors, one row per image); a field the model kind or the
    requested detectors do not need stays None."""

    labels: torch.Tensor                          # [N] long: the class, or K for an unknown image
    h: torch.Tensor | None = None                 # [N, D] the backbone feature
    logits: torch.Tensor | None = None            # [N, K] float64, a cross-entropy model's
    mu: torch.Tensor | None = None                # [N, L] a VMDLS model's latent mean
    log_likelihoods: torch.Tensor | None = None   # [N, K] the paper's l_c(x) (a VMDLS model)
    reconstruction: torch.Tensor | None = None    # [N] the paper's r(x) before normalisation
    ensemble: torch.Tensor | None = None          # [N, D_f] the feature ensemble f(x), kept for the t-SNE
    gradient_outliers: dict[str, torch.Tensor] = field(default_factory=dict)  # detector -> [N] from its own pass

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def own_predictions(self) -> torch.Tensor:
        """The model's closed-set class: the paper's class Gaussians for a VMDLS model, the
        logits' argmax for a cross-entropy one."""
        source = self.log_likelihoods if self.log_likelihoods is not None else self.logits
        return source.argmax(dim=1)


@dataclass
class DetectorScores:
    """One detector's verdict on a known test set followed by one unknown set (CPU tensors)."""

    outlier: torch.Tensor                           # [N] float64, pytorch-ood's sign: higher = more unknown
    predictions: torch.Tensor                       # [N] the closed-set class
    labels: torch.Tensor                            # [N] K for unknown images
    max_log_likelihood: torch.Tensor | None = None  # [N] max_c l_c(x), for the likelihood detectors
    reconstruction: torch.Tensor | None = None      # [N] r(x) before normalisation (vmdls)

    @property
    def scores(self) -> torch.Tensor:
        """The paper's known-positive score (higher = more known), which utils/metrics and
        scores.csv take: the one place where pytorch-ood's outlier sign is turned around."""
        return -self.outlier
