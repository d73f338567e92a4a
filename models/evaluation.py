"""Every requested detector on one model: the detector registry and :func:`evaluate`, which
returns the metrics as a table with each image's scores beside it.

:func:`evaluate` fits every detector on the known training set, passes over the known test
set once and over each unknown set once (one :class:`~models.records.FeatureRecord` per
set), and scores each pair "known test set + one unknown set". Every detector is a
pytorch-ood ``Detector`` with pytorch-ood's sign (higher = more unknown); the paper's
known-positive score is :attr:`~models.records.DetectorScores.scores`, which the metrics take.
The paper's detector (``vmdls``) keeps its set-level step: with ``score_stats="test"`` M and
r_max come from the pair being scored, exactly as a run with that unknown set alone computes
them. The other detectors score each image on its own, from the h, mu or logits in the
records; only ODIN, which needs gradients with respect to the images, makes its own pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from pytorch_ood.api import Detector

from models.detector import FeatureEnsembleDetector, score_set
from models.detector_registry import CLASSIFIERS, DETECTORS, KIND_WORDS, PAPER_DETECTOR
from models.kinds import VMDLS_KIND
from models.records import DetectorScores, FeatureRecord
from models.speed import ChannelsLast, autocast, autocast_dtype, channels_last_pays, evaluation_dtype, full_precision
from utils.errors import UserError
from utils.metrics import ood_metrics

_FIT_AND_PREDICT = {"logits": ("fit_logits", "predict_logits"), "h": ("fit_features", "predict_features"),
                    "mu": ("fit_features", "predict_features")}


def check_detectors(names: Iterable[str], kind: str) -> list[str]:
    """The names, without repeats, once each is known and served by a model of ``kind``;
    else one sentence (UserError, setting "detector")."""
    names = list(dict.fromkeys(names))
    for name in names:
        if name not in DETECTORS:
            raise UserError(f"unknown detector {name!r}: choose from {', '.join(DETECTORS)}", setting="detector")
        entry = DETECTORS[name]
        if kind not in entry.kinds:
            served = [other for other, e in DETECTORS.items() if kind in e.kinds]
            raise UserError(f"detector {name} needs {entry.needs_text}: evaluate a {KIND_WORDS[entry.kinds[0]]} "
                            f"checkpoint, or choose {', '.join(served[:-1])} or {served[-1]}", setting="detector")
    return names


def make_detector(name: str, model, **paper_options) -> Detector:
    """An unfitted detector of the registry for ``model``. The ones that read a record's
    tensors get no model (the shared pass computes what they read); ODIN gets the model it
    perturbs the images through, the paper's detector the model and ``paper_options``."""
    entry = DETECTORS[name]
    if entry.needs == "ensemble":
        return entry.cls(model, **paper_options)
    if entry.needs == "inputs":
        return entry.cls(model)
    if entry.head:
        return entry.cls(None, w=model.fc.weight.detach().cpu(), b=model.fc.bias.detach().cpu())
    return entry.cls(None)


@dataclass
class EvaluationResult:
    """What :func:`evaluate` gives: ``table`` (one row per detector and unknown set, the
    columns ``detector``, ``unknown`` and every metric of utils.metrics.ood_metrics),
    ``scores[(detector, unknown set)]`` (each image of the pair), the records of the known
    test set and of each unknown set, the fitted detectors, and the paper's jitter (None
    for a cross-entropy model)."""

    table: pd.DataFrame
    scores: dict[tuple[str, str], DetectorScores]
    known: FeatureRecord
    unknown: dict[str, FeatureRecord]
    detectors: dict[str, Detector]
    jitter: float | None

    def metrics(self, detector: str, unknown: str) -> dict:
        """One row of the table as plain Python numbers (as results.json holds them)."""
        row = self.table[(self.table["detector"] == detector) & (self.table["unknown"] == unknown)].iloc[0]
        return {key: int(row[key]) if key in ("n_known", "n_unknown") else float(row[key])
                for key in self.table.columns[2:]}


def _no_progress(loader, description: str):
    return loader


def _opened(loader):
    """A loader, or a function returning one (called when its pass comes)."""
    return loader() if callable(loader) else loader


class _Passes:
    """The forward passes over image sets of one model, with the precision and device of the
    evaluation: each set's :class:`FeatureRecord`, and the detectors' own gradient passes."""

    def __init__(self, model, kind: str, autoencoder, preprocess, device, precision, progress):
        self.model, self.progress = model.eval(), progress
        self.preprocess = preprocess or (lambda x: x)
        double = evaluation_dtype(precision)
        if double is not None:  # --precision 64-true: every network pass in float64
            self.model.to(double)
            if autoencoder is not None:
                autoencoder.to(double)
            normalise = self.preprocess
            self.preprocess = lambda x: normalise(x).to(double)
        self.device = torch.device(device)
        self.model.to(self.device)
        # --precision bf16-mixed / 16-mixed: the forward passes autocast (features, statistics and
        # scores stay float32 / float64); channels-last where it pays (a GPU with mixed precision).
        self.autocast_dtype = autocast_dtype(precision, self.device)
        if channels_last_pays(self.device.type, precision) and isinstance(model, ChannelsLast):
            model.use_channels_last()
        self.paper = None if kind != VMDLS_KIND.name else make_detector(
            PAPER_DETECTOR, self.model, autoencoder=autoencoder, preprocess=self.preprocess, device=self.device,
            autocast_dtype=self.autocast_dtype)

    def fit(self, loader, score_statistics: bool, keep_outputs: bool) -> FeatureRecord | None:
        """The known training set's pass: fits the paper's detector of a VMDLS model (with
        ``score_statistics``, also M and r_max of the training set), and keeps h, mu or the
        logits for the other detectors when ``keep_outputs``."""
        batches = self.progress(loader, "fitting")
        if self.paper is not None:
            self.paper.fit(batches, score_statistics=score_statistics, keep_outputs=keep_outputs)
            return self.paper.fit_record
        return self._classifier_record(batches) if keep_outputs else None

    def record(self, loader, description: str, gradient_detectors: dict[str, Detector], keep_outputs: bool,
               keep_ensemble: bool) -> FeatureRecord:
        """One image set: the gradient passes first, then the one forward pass."""
        outliers = {name: self._gradient_outliers(detector, self.progress(loader, f"{description} ({name})"))
                    for name, detector in gradient_detectors.items()}
        batches = self.progress(loader, description)
        if self.paper is not None:
            record = self.paper.evaluate(batches, keep_ensemble=keep_ensemble, keep_outputs=keep_outputs)
        else:
            record = self._classifier_record(batches)
        record.gradient_outliers = outliers
        return record

    @torch.no_grad()
    def _classifier_record(self, batches) -> FeatureRecord:
        labels, features, logits = [], [], []
        for x, y in batches:  # the outputs stay on the device until the pass ends
            with autocast(self.device, self.autocast_dtype):
                h, z = self.model.features_and_logits(self.preprocess(x.to(self.device, non_blocking=True)))
            features.append(full_precision(h))
            logits.append(full_precision(z))
            labels.append(y)
        # float64 logits: the logit detectors score in double precision
        return FeatureRecord(labels=torch.cat(labels).cpu(), h=torch.cat(features).cpu(),
                             logits=torch.cat(logits).cpu().double())

    def _gradient_outliers(self, detector: Detector, batches) -> torch.Tensor:
        """A detector's outlier scores from images it perturbs itself (ODIN: in the normalised space)."""
        out = [detector.predict(self.preprocess(x.to(self.device))).detach().to("cpu", torch.float64).reshape(-1)
               for x, _ in batches]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def _set_scores(name: str, detector: Detector, record: FeatureRecord) -> DetectorScores:
    """A record-level detector's verdict on one set: its outlier scores, and its own class
    where it has a class rule (else the model's)."""
    needs = DETECTORS[name].needs
    if needs == "inputs":
        return DetectorScores(record.gradient_outliers[name], record.own_predictions(), record.labels)
    representation = getattr(record, needs)
    outlier = getattr(detector, _FIT_AND_PREDICT[needs][1])(representation).double().cpu()
    classify = getattr(detector, "classify_features", None)
    predictions = record.own_predictions() if classify is None else classify(representation)
    likelihood = getattr(detector, "max_log_likelihood", None)  # of the likelihood rules (vmdls_latent)
    likelihood = None if likelihood is None else likelihood(representation)
    return DetectorScores(outlier, predictions.cpu(), record.labels.cpu(), likelihood)


def _joined(known: DetectorScores, unknown: DetectorScores) -> DetectorScores:
    def cat(a, b):
        return None if a is None else torch.cat([a, b])
    return DetectorScores(*(cat(getattr(known, f), getattr(unknown, f))
                            for f in ("outlier", "predictions", "labels", "max_log_likelihood", "reconstruction")))


def _paper_scores(paper: FeatureEnsembleDetector, known: FeatureRecord, unknown: FeatureRecord,
                  score_stats: str) -> DetectorScores:
    """The paper's verdict on the pair: with ``score_stats="test"``, M and r_max of the pair."""
    pair = FeatureRecord(labels=torch.cat([known.labels, unknown.labels]),
                         log_likelihoods=torch.cat([known.log_likelihoods, unknown.log_likelihoods]),
                         reconstruction=torch.cat([known.reconstruction, unknown.reconstruction]))
    outlier = paper.predict_record(pair) if score_stats == "train" else score_set(pair)
    return DetectorScores(outlier, pair.own_predictions(), pair.labels,
                          pair.log_likelihoods.max(dim=1).values, pair.reconstruction)


def metrics_of(scores: DetectorScores, num_classes: int) -> dict:
    """utils.metrics.ood_metrics of one detector's pair, as plain Python numbers."""
    metrics = ood_metrics(scores.scores.numpy(), scores.predictions.numpy(), scores.labels.numpy(), num_classes)
    return {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in metrics.items()}


def evaluate(model, kind: str, fit_loader, known_loader, unknown_loaders: dict, detectors: Iterable[str], *,
             num_classes: int, autoencoder=None, preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
             device: torch.device | str = "cpu", precision: str | None = None, score_stats: str = "test",
             classifier: str = "gaussians", keep_ensemble: bool = False,
             progress: Callable[[Iterable, str], Iterable] = _no_progress) -> EvaluationResult:
    """Fit every detector on the known training set (``fit_loader``), then score the known
    test set followed by each unknown set (``unknown_loaders``: name -> loader).

    ``model`` is a trained model of ``kind`` ("vmdls" or "ce"); a loader may be given as a
    function that returns it. Predictions (closed-set accuracy) come from a detector's own
    class rule where it has one (vmdls, vmdls_latent, mahalanobis) and otherwise from the
    model's. ``classifier="h_linear"`` replaces every detector's predictions by a linear
    probe on h fitted on the known training set (models/probe.py); the scores do not change.
    ``keep_ensemble`` keeps the paper's feature ensemble f(x) in the records (for a t-SNE).
    """
    if classifier not in CLASSIFIERS:
        raise UserError(f"unknown classifier {classifier!r}: choose {' or '.join(CLASSIFIERS)}", setting="classifier")
    names = check_detectors(detectors, kind)
    passes = _Passes(model, kind, autoencoder, preprocess, device, precision, progress)
    fitted = {name: passes.paper if name == PAPER_DETECTOR else make_detector(name, passes.model) for name in names}
    on_records = {name: d for name, d in fitted.items() if DETECTORS[name].needs in _FIT_AND_PREDICT}
    on_inputs = {name: d for name, d in fitted.items() if DETECTORS[name].needs == "inputs"}
    keep_outputs = classifier == "h_linear" or bool(on_records)

    train = passes.fit(_opened(fit_loader), score_statistics=score_stats == "train", keep_outputs=keep_outputs)
    for name, detector in on_records.items():
        needs = DETECTORS[name].needs
        getattr(detector, _FIT_AND_PREDICT[needs][0])(getattr(train, needs), train.labels)
    probe = None
    if classifier == "h_linear":
        from models.probe import LinearProbe

        probe = LinearProbe().fit(train.h, train.labels)

    def verdicts(record: FeatureRecord) -> dict[str, DetectorScores]:
        return {name: _set_scores(name, detector, record) for name, detector in {**on_records, **on_inputs}.items()}

    known = passes.record(_opened(known_loader), "known test set", on_inputs, keep_outputs, keep_ensemble)
    known_verdicts = verdicts(known)
    known_probed = None if probe is None else probe.predict(known.h)
    records, scores, rows = {}, {}, []
    for set_name, loader in unknown_loaders.items():
        unknown = records[set_name] = passes.record(_opened(loader), set_name, on_inputs, keep_outputs,
                                                    keep_ensemble)
        unknown_verdicts = verdicts(unknown)
        probed = None if probe is None else torch.cat([known_probed, probe.predict(unknown.h)])
        for name in names:
            pair = _paper_scores(passes.paper, known, unknown, score_stats) if name == PAPER_DETECTOR else \
                _joined(known_verdicts[name], unknown_verdicts[name])
            if probed is not None:  # --classifier h_linear: the probe's class, whatever scored the image
                pair.predictions = probed
            scores[(name, set_name)] = pair
            rows.append({"detector": name, "unknown": set_name, **metrics_of(pair, num_classes)})
    jitter = None if passes.paper is None else passes.paper.gaussians.jitter
    return EvaluationResult(pd.DataFrame(rows), scores, known, records, fitted, jitter)
