"""The paper's OOD detector: class Gaussians of a deep feature ensemble, weighted by an
autoencoder's reconstruction error.

Dinari & Freifeld, "Variational- and Metric-based Deep Latent Space for Out-of-Distribution
Detection", UAI 2022; ../shared/METHOD.md section 3 states it step by step:

1. f(x) = [tap1, tap2, tap3, h, mu] from one forward pass; per class c, the mean m_c and
   covariance S_c of f over the known training set (float64), one shared jitter lambda I.
2. l_c(x) = log N(f(x); m_c, S_c + lambda I); the predicted class is argmax_c l_c(x).
3. r(x) = mean((tap1(x) - tap1(AE(x)))^2) / max r (r = 1 without an autoencoder).
4. s(x) = max_c (l_c(x) - M) * r(x), M = max l + 1. Higher s = more in-distribution.

``score_stats='test'`` takes M and max r from the evaluated images, as the paper did;
``'train'`` takes both from the known training set, so one image can be scored alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from models.gaussians import ClassGaussians, ClassStatistics

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Evaluation:
    """What the detector gives for a set of images (numpy-friendly CPU tensors)."""

    scores: torch.Tensor            # s(x), [N]
    predictions: torch.Tensor       # argmax_c l_c(x), [N]
    labels: torch.Tensor            # true labels, K for unknown, [N]
    log_likelihoods: torch.Tensor   # l_c(x), [N, K]
    reconstruction: torch.Tensor    # r(x) before normalisation, [N]
    features: torch.Tensor | None   # f(x), [N, D], kept only when asked


class FeatureEnsembleDetector:
    """fit / predict surface in the style of pytorch-ood's detectors (see module docstring)."""

    def __init__(self, model: nn.Module, autoencoder: nn.Module | None = None, score_stats: str = "test",
                 preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 device: torch.device | str = "cpu", jitter_step: float = 1e-6, extra_steps: int = 2):
        if score_stats not in ("test", "train"):
            raise ValueError(f"score_stats must be 'test' or 'train', not {score_stats!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.autoencoder = autoencoder.to(self.device).eval() if autoencoder is not None else None
        self.score_stats = score_stats
        self.preprocess = preprocess or (lambda x: x)
        self.jitter_step = jitter_step
        self.extra_steps = extra_steps
        self.gaussians: ClassGaussians | None = None
        self.max_log_likelihood: float | None = None   # from the training set, 'train' mode
        self.max_reconstruction: float | None = None   # likewise

    @property
    def num_classes(self) -> int:
        return int(self.model.hparams.class_num)

    # ------------------------------------------------------------------ feature passes
    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The normalised batch, its tap1 and f(x), from one backbone pass."""
        x = self.preprocess(x.to(self.device, non_blocking=True))
        out = self.model.embed(x)
        return x, out["taps"][0], torch.cat([*out["taps"], out["h"], out["mu"]], dim=1)

    def _reconstruction_distance(self, x: torch.Tensor, tap1: torch.Tensor) -> torch.Tensor:
        """mean over dims of (tap1(x) - tap1(AE(x)))^2; 1 without an autoencoder."""
        if self.autoencoder is None:
            return torch.ones(len(x), device=self.device)
        _, reconstructed_taps = self.model.encoder(self.autoencoder(x))
        return ((tap1 - reconstructed_taps[0]) ** 2).mean(dim=1)

    @torch.no_grad()
    def fit(self, batches: Iterable[Batch]) -> "FeatureEnsembleDetector":
        """Per-class Gaussians of f over the known training set (step 1), in one pass."""
        stats: ClassStatistics | None = None
        for x, y in batches:
            _, _, features = self._features(x)
            if stats is None:
                stats = ClassStatistics(self.num_classes, features.shape[1]).to(self.device)
            stats.update(features, y.to(self.device))
        if stats is None:
            raise ValueError("the training set gave no batches to fit the class Gaussians on")
        self.gaussians = ClassGaussians.from_statistics(stats, step=self.jitter_step, extra_steps=self.extra_steps)
        return self

    @torch.no_grad()
    def fit_score_statistics(self, batches: Iterable[Batch]) -> "FeatureEnsembleDetector":
        """'train' mode: M and the largest r from a second pass over the training set."""
        evaluation = self.evaluate(batches)
        self.max_log_likelihood = float(evaluation.log_likelihoods.max())
        self.max_reconstruction = float(evaluation.reconstruction.max())
        return self

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch], keep_features: bool = False) -> Evaluation:
        """l_c(x), r(x) and the argmax class of every image (steps 2 and 3), unscored."""
        if self.gaussians is None:
            raise RuntimeError("call fit() before evaluate()")
        log_likelihoods, reconstruction, labels, features = [], [], [], []
        for x, y in batches:
            x, tap1, f = self._features(x)
            r = self._reconstruction_distance(x, tap1)
            log_likelihoods.append(self.gaussians.log_prob(f).cpu())
            reconstruction.append(r.double().cpu())
            labels.append(y.cpu())
            if keep_features:
                features.append(f.cpu())
        log_likelihoods = torch.cat(log_likelihoods)
        return Evaluation(
            scores=torch.empty(0), predictions=log_likelihoods.argmax(dim=1), labels=torch.cat(labels),
            log_likelihoods=log_likelihoods, reconstruction=torch.cat(reconstruction),
            features=torch.cat(features) if keep_features else None,
        )

    def score(self, evaluation: Evaluation) -> Evaluation:
        """s(x) = max_c (l_c(x) - M) * r(x) (step 4), M and max r per ``score_stats``."""
        if self.score_stats == "train":
            if self.max_log_likelihood is None:
                raise RuntimeError("score_stats='train' needs fit_score_statistics() first")
            top, max_r = self.max_log_likelihood, self.max_reconstruction
        else:
            top, max_r = float(evaluation.log_likelihoods.max()), float(evaluation.reconstruction.max())
        weight = evaluation.reconstruction / max_r if max_r > 0 else torch.ones_like(evaluation.reconstruction)
        best = evaluation.log_likelihoods.max(dim=1).values
        # (l - M) < 0 and r > 0, so the max over classes is taken at the largest l_c.
        evaluation.scores = (best - (top + 1.0)) * weight
        return evaluation

    def predict(self, batches: Iterable[Batch], keep_features: bool = False) -> Evaluation:
        return self.score(self.evaluate(batches, keep_features=keep_features))
