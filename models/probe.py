"""A linear probe on the backbone feature h: the closed-set classifier of ``test.py --classifier h_linear``.

The paper predicts the class from the Gaussians of the feature ensemble; on the standard
profile that trails a cross-entropy model of the same backbone by about 5 points, while a
linear classifier on h of the same VMDLS network gets within one point (BENCHMARKS.md,
"Closed-set accuracy"). The probe changes only the predicted class, never an OOD score:
it is a multinomial logistic regression on standardised h, fitted on the known training
set's features that the evaluation's fitting pass already holds.
"""
from __future__ import annotations

import numpy as np
import torch

from utils.errors import UserError

PROBE_ITERATIONS = 1000


class LinearProbe:
    """Multinomial logistic regression on standardised features (scikit-learn, float64)."""

    def __init__(self, max_iter: int = PROBE_ITERATIONS, seed: int = 0):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> "LinearProbe":
        classes = torch.unique(labels)
        if len(classes) < 2:
            raise UserError(f"`classifier` h_linear needs training images of at least two classes, the known "
                            f"training set has {len(classes)}: evaluate without it", setting="classifier")
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():  # a probe short of full convergence still classifies; not worth a warning
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(_as_numpy(features), labels.cpu().numpy())
        return self

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.model.predict(_as_numpy(features)).astype(np.int64))


def _as_numpy(features: torch.Tensor) -> np.ndarray:
    return features.detach().cpu().double().numpy()
