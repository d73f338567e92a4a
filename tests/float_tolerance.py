"""How far a recorded result may move on another CPU, derived from what the computation amplifies.

float32 convolutions and matrix products sum in an order each CPU's kernels choose (AVX-512,
AVX2, the baseline ones; MKL and oneDNN per vendor), so their last bits differ from machine to
machine. Two things follow:

* **Evaluation** (a fixed model scoring images) amplifies that rounding mildly and smoothly: the
  float32 score of an image differs from its exact value by its rounding error, which this
  module *measures* by evaluating the same model in float64 (``test.py --precision 64-true``).
  Two float32 evaluations (this CPU's and the recording CPU's) differ by at most the sum of
  their errors. The recording CPU's error is not known here; across three kernel families of
  one CPU (AVX-512, AVX2, baseline) the largest per-image score error of the v0 fixture ranged
  from 0.009 to 0.022 (1.2e-5 to 2.7e-5 relative), within a factor 2.5 of each other
  (benchmarks/kernel_spread.py, BENCHMARKS.md), so another CPU's is taken to be at most
  ``KERNEL_SPREAD`` = 3 times this one's, and the score tolerance is (1 + KERNEL_SPREAD) times
  the largest rounding error measured here (:func:`score_band`). A threshold is one of the
  scores (an order statistic, which moves by at most the largest move of any score), so it
  gets the same band.

* **Rank-based metrics** (AUROC, AUPR, FPR at 95 % TPR, F1, accuracy) change only where two
  scores lie within the band of each other and their order matters: where no such pair
  exists they are compared exactly; else each such pair or image may move the metric by its
  largest effect (:func:`rank_allowances`). Predictions (argmax over class log-likelihoods)
  are compared exactly: the float32 and float64 evaluations must agree on every one.

* **Training** is chaotic in the last bits: a few optimiser steps with hard-triplet mining turn
  a rounding difference of 1e-7 into 1e-3 of the weights (measured; see
  tests/test_speed_equivalence.py), so a short run is compared across CPUs only at the
  amplification measured for it.
"""
from __future__ import annotations

import math

import numpy as np

# How many times this CPU's float32 rounding error another CPU's kernels may make (see above).
KERNEL_SPREAD = 3.0


def score_band(float32_scores, float64_scores) -> float:
    """The absolute tolerance of any score (or threshold) of a float32 evaluation against a
    float32 evaluation of the same model on another CPU: (1 + KERNEL_SPREAD) times the largest
    rounding error of one score, measured against the float64 evaluation."""
    rounding = np.abs(np.asarray(float32_scores, dtype=np.float64) - np.asarray(float64_scores, dtype=np.float64))
    return float((1.0 + KERNEL_SPREAD) * rounding.max())


def _close_pairs(scores: np.ndarray, band: float, differ: np.ndarray) -> np.ndarray:
    """Pairs (i < j) whose scores lie within ``band`` and whose keys differ (their order matters)."""
    gap = np.abs(scores[:, None] - scores[None, :])
    close = (gap <= band) & differ
    return np.argwhere(np.triu(close, k=1))


def rank_allowances(scores, labels, predictions, num_classes: int, band: float, threshold: float) -> dict[str, float]:
    """How far each rank-based metric of ``utils.metrics.ood_metrics`` may move when every score
    may move by ``band``: 0 where no order that matters can change.

    * known-vs-unknown order (AUROC, AUPR, FPR/TNR at 95 % TPR, detection accuracy, CAUROC):
      each close known/unknown pair moves one image past one other, at most 1 / min(n_known,
      n_unknown) of any of these fractions;
    * F1 (macro over K + 1 labels): an image that crosses a threshold changes TP and the
      predicted count of at most two labels by one, so macro-F1 by at most
      4 / ((K + 1) min_c n_c); at the 95 % TPR threshold only images within the band of it can
      cross; for the best F1, any close pair of images with different (label, prediction).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    known = labels < num_classes
    n_known, n_unknown = int(known.sum()), int((~known).sum())
    order = len(_close_pairs(scores, band, known[:, None] != known[None, :])) / min(n_known, n_unknown)
    counts = np.bincount(np.minimum(labels, num_classes), minlength=num_classes + 1)
    per_flip = 4.0 / ((num_classes + 1) * counts[counts > 0].min())
    key = labels.astype(np.int64) * (num_classes + 2) + predictions.astype(np.int64)
    at_threshold = int((np.abs(scores - threshold) <= band).sum())
    best = len(_close_pairs(scores, band, key[:, None] != key[None, :]))
    allowances = {name: order for name in ("auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr", "tnr_at_95_tpr",
                                            "detection_accuracy", "cauroc", "auroc_ood_positive",
                                            "aupr_ood_positive", "fpr_at_95_tpr_ood_positive")}
    allowances["f1_macro_at_95_tpr"] = at_threshold * per_flip
    allowances["f1_macro_best"] = best * per_flip
    allowances["closed_set_accuracy"] = 0.0
    return allowances


def assert_results_within(got: dict, expected: dict, band: float, allowances: dict[str, float],
                          skip: tuple[str, ...] = ("checkpoint",)) -> None:
    """Every recorded value of a results.json holds: thresholds within ``band``, rank-based
    metrics within their allowance (exactly, to float64 rounding, where it is 0), every other
    value (counts, names, the jitter) exactly."""
    for key, value in expected.items():
        if key in skip:
            continue
        assert key in got, key
        if key.startswith("threshold"):
            assert abs(got[key] - value) <= band, (key, got[key], value, band)
        elif key in allowances:
            assert abs(got[key] - value) <= allowances[key] + 1e-12, (key, got[key], value, allowances[key])
        elif isinstance(value, float) and math.isnan(value):
            assert isinstance(got[key], float) and math.isnan(got[key]), key
        else:
            assert got[key] == value, (key, got[key], value)
