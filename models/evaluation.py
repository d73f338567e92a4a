"""Every requested detector on one model: one pass over each image set, then the scores.

``test.py`` builds an :class:`Evaluator` for the checkpoint (and one for the untrained
reference), fits it on the known training set, passes over the known test set once and
over each unknown set once, and asks :meth:`Evaluator.score_pair` for each detector's
scores of "known test set + one unknown set". The paper's detector (``vmdls``) keeps its
set-level step: with ``score_stats="test"`` M and r_max come from the pair being scored,
exactly as a run with that unknown set alone computes them. The other detectors
(models/baselines.py) score each image on its own, from the h, mu or logits stored by the
same passes; only ODIN, which needs gradients with respect to the images, makes its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from models.baselines import BASELINES, Baseline, Outputs, make_baseline
from models.detector import Evaluation, FeatureEnsembleDetector, score_set
from models.speed import ChannelsLast, autocast, autocast_dtype, channels_last_pays, evaluation_dtype, full_precision
from utils.errors import UserError

PAPER_DETECTOR = "vmdls"
DETECTOR_NAMES = (PAPER_DETECTOR, *BASELINES)
CLASSIFIERS = ("gaussians", "h_linear")  # test.py --classifier: whose argmax is the closed-set class


def default_detectors(kind: str) -> list[str]:
    """The paper's score for a VMDLS checkpoint; MSP for a cross-entropy one."""
    return [PAPER_DETECTOR] if kind == "vmdls" else ["msp"]


@dataclass
class Scored:
    """One detector's verdict on a set of images (CPU tensors, one row per image)."""

    scores: torch.Tensor        # higher = more known
    predictions: torch.Tensor   # closed-set class
    labels: torch.Tensor        # K for unknown images
    max_log_likelihood: torch.Tensor | None = None  # max_c l_c(x), for the likelihood detectors
    reconstruction: torch.Tensor | None = None      # r(x) before normalisation (vmdls)


@dataclass
class SetPass:
    """What one pass over an image set stored."""

    evaluation: Evaluation | None   # the paper's l_c(x), r(x) (VMDLS checkpoints)
    outputs: Outputs                # h and mu or logits, for the other detectors
    odin: torch.Tensor | None = None


class Evaluator:
    """Fit every requested detector on the known training set, then score image sets.

    ``kind`` is the checkpoint's ("vmdls" or "ce"); ``detectors`` names from
    :data:`DETECTOR_NAMES`. A detector that the checkpoint cannot serve is one sentence
    (:class:`UserError`) before any pass. Predictions (closed-set accuracy) come from a
    detector's own classifier where it has one (vmdls, vmdls_latent, mahalanobis) and
    otherwise from the checkpoint's: the logits of a cross-entropy model, the paper's
    class Gaussians of a VMDLS model. ``classifier="h_linear"`` replaces every detector's
    predictions by a linear probe on h fitted on the known training set (models/probe.py);
    the scores do not change.
    """

    def __init__(self, model, kind: str, detectors: Iterable[str], autoencoder=None,
                 preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 device: torch.device | str = "cpu", score_stats: str = "test", keep_features: bool = False,
                 progress: Callable[[Iterable, str], Iterable] = lambda loader, description: loader,
                 precision: str | None = None, classifier: str = "gaussians"):
        if classifier not in CLASSIFIERS:
            raise UserError(f"unknown classifier {classifier!r}: choose {' or '.join(CLASSIFIERS)}",
                            setting="classifier")
        self.model, self.kind = model.eval(), kind
        self.classifier = classifier
        self.probe = None
        self.detectors = list(dict.fromkeys(detectors))
        self.preprocess = preprocess or (lambda x: x)
        double = evaluation_dtype(precision)
        if double is not None:  # --precision 64-true: every network pass in float64
            self.model.to(double)
            if autoencoder is not None:
                autoencoder.to(double)
            normalise = self.preprocess
            self.preprocess = lambda x: normalise(x).to(double)
        self.device = torch.device(device)
        self.score_stats = score_stats
        self.keep_features = keep_features
        self.progress = progress
        self.model.to(self.device)
        # --precision bf16-mixed / 16-mixed: the forward passes autocast (features, statistics and
        # scores stay float32 / float64); channels-last where it pays (a GPU with mixed precision).
        self.autocast_dtype = autocast_dtype(precision, self.device)
        if channels_last_pays(self.device.type, precision) and isinstance(model, ChannelsLast):
            model.use_channels_last()
        self.paper: FeatureEnsembleDetector | None = None
        if kind == "vmdls":
            self.paper = FeatureEnsembleDetector(model, autoencoder, preprocess=self.preprocess, device=self.device,
                                                 autocast_dtype=self.autocast_dtype)
        elif PAPER_DETECTOR in self.detectors:
            raise UserError("detector vmdls needs the feature ensemble and latent of a VMDLS checkpoint: evaluate a "
                            "checkpoint trained with main.py --objective vmdls, or choose msp, energy, maxlogit, "
                            "odin, mahalanobis, knn or vim", setting="detector")
        head = (model.fc.weight.detach().to(self.device), model.fc.bias.detach().to(self.device)) \
            if kind == "ce" else None
        self.baselines: dict[str, Baseline] = {
            name: make_baseline(name, kind, head=head) for name in self.detectors if name != PAPER_DETECTOR}
        self._known_scores: dict[str, Scored] = {}
        self._probed: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------ passes
    @property
    def needs_outputs(self) -> bool:
        return self.classifier == "h_linear" or any(b.needs != "inputs" for b in self.baselines.values())

    @torch.no_grad()
    def _classifier_pass(self, loader: Iterable) -> Outputs:
        labels, features, logits = [], [], []
        for x, y in loader:  # the outputs stay on the device until the pass ends
            with autocast(self.device, self.autocast_dtype):
                h, z = self.model.features_and_logits(self.preprocess(x.to(self.device, non_blocking=True)))
            features.append(full_precision(h))
            logits.append(full_precision(z))
            labels.append(y)
        return Outputs(labels=torch.cat(labels).cpu(), features=torch.cat(features).cpu(),
                       logits=torch.cat(logits).cpu())

    def _odin(self, loader: Iterable, description: str) -> torch.Tensor | None:
        odin = self.baselines.get("odin")
        if odin is None:
            return None
        return odin.score_inputs(self.model, self.progress(loader, description), self.preprocess, device=self.device)

    def fit(self, train_loader, description: str = "fitting") -> "Evaluator":
        """One pass over the known training set fits every detector, and gives the paper's
        ``--score_stats train`` its M and r_max of the training set (a second pass only for a
        training set whose features are too many to keep: FeatureEnsembleDetector.fit)."""
        if self.paper is not None:
            self.paper.fit(self.progress(train_loader, description), score_statistics=self.score_stats == "train",
                           keep_outputs=self.needs_outputs)
            train = self.paper.fit_outputs
            outputs = None if train is None else Outputs(labels=train["labels"], features=train["h"], mu=train["mu"])
        else:
            outputs = self._classifier_pass(self.progress(train_loader, description)) if self.needs_outputs else None
        for baseline in self.baselines.values():
            if baseline.needs != "inputs":
                baseline.fit(outputs)
        if self.classifier == "h_linear":
            from models.probe import LinearProbe

            self.probe = LinearProbe().fit(outputs.features, outputs.labels)
        return self

    def pass_over(self, loader, description: str = "scoring") -> SetPass:
        """One pass over an image set: what every detector needs to score it."""
        odin = self._odin(loader, f"{description} (odin)")
        if self.paper is not None:
            evaluation = self.paper.evaluate(self.progress(loader, description), keep_features=self.keep_features,
                                             keep_outputs=self.needs_outputs)
            outputs = Outputs(labels=evaluation.labels, features=evaluation.h if evaluation.h is not None
                              else torch.empty(len(evaluation.labels), 0), mu=evaluation.mu)
            return SetPass(evaluation, outputs, odin)
        return SetPass(None, self._classifier_pass(self.progress(loader, description)), odin)

    # ----------------------------------------------------------------------- scoring
    def _own_predictions(self, part: SetPass) -> torch.Tensor:
        if part.evaluation is not None:
            return part.evaluation.predictions
        return part.outputs.logits.argmax(dim=1)

    def _baseline_scores(self, name: str, part: SetPass) -> Scored:
        baseline = self.baselines[name]
        scores = part.odin if name == "odin" else baseline.score(part.outputs)
        predictions = None if name == "odin" else baseline.predict(part.outputs)
        if predictions is None:
            predictions = self._own_predictions(part)
        max_log_likelihood = scores if name == "vmdls_latent" else None
        return Scored(scores.double().cpu(), predictions.cpu(), part.outputs.labels.cpu(), max_log_likelihood)

    def score_pair(self, known: SetPass, unknown: SetPass, known_key: str = "known") -> dict[str, Scored]:
        """Every detector's scores of the known test set followed by one unknown set."""
        scored = self._score_pair(known, unknown, known_key)
        if self.probe is not None:  # --classifier h_linear: the probe's class, whatever scored the image
            if known_key not in self._probed:
                self._probed[known_key] = self.probe.predict(known.outputs.features)
            predictions = torch.cat([self._probed[known_key], self.probe.predict(unknown.outputs.features)])
            for verdict in scored.values():
                verdict.predictions = predictions
        return scored

    def _score_pair(self, known: SetPass, unknown: SetPass, known_key: str) -> dict[str, Scored]:
        scored = {}
        for name in self.detectors:
            if name == PAPER_DETECTOR:
                evaluation = Evaluation.cat([known.evaluation, unknown.evaluation])
                evaluation = self.paper.score(evaluation) if self.score_stats == "train" else score_set(evaluation)
                scored[name] = Scored(evaluation.scores, evaluation.predictions, evaluation.labels,
                                      evaluation.log_likelihoods.max(dim=1).values, evaluation.reconstruction)
                continue
            key = (known_key, name)
            if key not in self._known_scores:
                self._known_scores[key] = self._baseline_scores(name, known)
            known_part, unknown_part = self._known_scores[key], self._baseline_scores(name, unknown)
            scored[name] = Scored(*(None if a is None else torch.cat([a, b]) for a, b in zip(
                (known_part.scores, known_part.predictions, known_part.labels, known_part.max_log_likelihood),
                (unknown_part.scores, unknown_part.predictions, unknown_part.labels,
                 unknown_part.max_log_likelihood))))
        return scored

    def features_of(self, known: SetPass, unknown: SetPass) -> torch.Tensor | None:
        """The feature ensemble of a pair (kept with ``keep_features``), for the t-SNE."""
        if known.evaluation is None or known.evaluation.features is None:
            return None
        return torch.cat([known.evaluation.features, unknown.evaluation.features])

    @property
    def jitter(self) -> float | None:
        return None if self.paper is None else self.paper.gaussians.jitter
