"""Exact OOD-detection metrics from sorted scores (docs/method.md section 3 step 5).

Conventions everywhere: "positive" = known (in-distribution); a higher score means more
in-distribution; a sample is *accepted* at threshold t when score >= t. Labels 0..K-1
are the known classes and K is "unknown".

Every curve is evaluated at every distinct score, in one pass over the score-sorted
order with cumulative sums: no threshold grid and no Python loop over thresholds (the
original approximated them with 1,000 / 100,000-point grids, docs/method.md section 7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

DEFAULT_TPR = 0.95


# --------------------------------------------------------------------------------------
# Input checks and the shared sorted view
# --------------------------------------------------------------------------------------


def _as_scores(scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite (no NaN or Inf)")
    return scores


def _as_known_mask(is_known, n: int) -> np.ndarray:
    is_known = np.asarray(is_known).reshape(-1).astype(bool)
    if is_known.shape[0] != n:
        raise ValueError(f"got {n} scores but {is_known.shape[0]} known/unknown flags")
    return is_known


def _require_both_sides(is_known: np.ndarray) -> None:
    if not is_known.any():
        raise ValueError("no known (in-distribution) samples: OOD metrics need both sides")
    if is_known.all():
        raise ValueError("no unknown (out-of-distribution) samples: OOD metrics need both sides")


@dataclass
class _SortedScores:
    """Scores sorted in descending order, cut at each distinct value.

    ``order`` sorts the samples by decreasing score; ``ends[g]`` is the last sorted
    position of the g-th distinct score, so accepting at ``thresholds[g]`` accepts the
    sorted samples 0..ends[g].
    """

    order: np.ndarray
    ends: np.ndarray
    thresholds: np.ndarray
    group: np.ndarray  # group[i]: index of the distinct score of sample i

    @classmethod
    def of(cls, scores: np.ndarray) -> "_SortedScores":
        order = np.argsort(-scores, kind="stable")
        ordered = scores[order]
        is_last_of_value = np.r_[ordered[1:] != ordered[:-1], True]
        ends = np.flatnonzero(is_last_of_value)
        group = np.empty(scores.shape[0], dtype=np.int64)
        group[order] = np.r_[0, np.cumsum(is_last_of_value[:-1])]
        return cls(order=order, ends=ends, thresholds=ordered[ends], group=group)

    def accepted_count(self, flags: np.ndarray) -> np.ndarray:
        """For each threshold, how many accepted samples have ``flags`` set."""
        return np.cumsum(flags[self.order])[self.ends]

    def accepted_count_per_value(self, values: np.ndarray, n_values: int,
                                 where: Optional[np.ndarray] = None) -> np.ndarray:
        """[thresholds, n_values]: accepted samples with each value (0..n_values-1).

        One bincount over (distinct score, value) pairs, then a cumulative sum down the
        thresholds: O(N + G*n_values), no [N, n_values] one-hot.
        """
        group = self.group
        if where is not None:
            group, values = group[where], values[where]
        n_groups = self.ends.shape[0]
        per_group = np.bincount(group * n_values + values, minlength=n_groups * n_values)
        return np.cumsum(per_group.reshape(n_groups, n_values), axis=0)


def _rates(sorted_scores: _SortedScores, is_known: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(TPR, FPR) at each distinct threshold, descending thresholds."""
    tp = sorted_scores.accepted_count(is_known)
    fp = (sorted_scores.ends + 1) - tp
    return tp / is_known.sum(), fp / (~is_known).sum()


# --------------------------------------------------------------------------------------
# Threshold-free detection metrics
# --------------------------------------------------------------------------------------


def roc_points(scores, is_known) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, in descending threshold order.

    Like sklearn.metrics.roc_curve(is_known, scores, drop_intermediate=False): the first
    point is (0, 0) at threshold +inf (accept nothing), then one point per distinct score.
    """
    scores = _as_scores(scores)
    is_known = _as_known_mask(is_known, scores.shape[0])
    _require_both_sides(is_known)
    sorted_scores = _SortedScores.of(scores)
    tpr, fpr = _rates(sorted_scores, is_known)
    return (np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[np.inf, sorted_scores.thresholds])


def auroc(scores, is_known) -> float:
    """Area under the ROC curve (known = positive); ties count one half."""
    scores = _as_scores(scores)
    is_known = _as_known_mask(is_known, scores.shape[0])
    _require_both_sides(is_known)
    return float(roc_auc_score(is_known, scores))


def aupr_in(scores, is_known) -> float:
    """AUPR-In: average precision with known samples as the positive class."""
    scores = _as_scores(scores)
    is_known = _as_known_mask(is_known, scores.shape[0])
    _require_both_sides(is_known)
    return float(average_precision_score(is_known, scores))


def aupr_out(scores, is_known) -> float:
    """AUPR-Out: average precision with unknown samples as positive, on the negated score."""
    scores = _as_scores(scores)
    is_known = _as_known_mask(is_known, scores.shape[0])
    _require_both_sides(is_known)
    return float(average_precision_score(~is_known, -scores))


def _operating_point(sorted_scores: _SortedScores, is_known: np.ndarray,
                     tpr: float) -> Tuple[int, float, float]:
    """(index g, threshold, FPR) of the largest threshold whose TPR >= ``tpr``."""
    if not 0.0 <= tpr <= 1.0:
        raise ValueError(f"target TPR must be in [0, 1], got {tpr}")
    rates_tpr, rates_fpr = _rates(sorted_scores, is_known)
    # TPR is non-decreasing as the threshold falls and reaches 1 at the lowest score,
    # so the first index meeting the target is the largest qualifying threshold.
    g = int(np.argmax(rates_tpr >= tpr))
    return g, float(sorted_scores.thresholds[g]), float(rates_fpr[g])


def threshold_at_tpr(scores, is_known, tpr: float = DEFAULT_TPR) -> float:
    """The largest threshold t that accepts (score >= t) at least ``tpr`` of the known."""
    scores = _as_scores(scores)
    is_known = _as_known_mask(is_known, scores.shape[0])
    _require_both_sides(is_known)
    return _operating_point(_SortedScores.of(scores), is_known, tpr)[1]


def fpr_at_tpr(scores, is_known, tpr: float = DEFAULT_TPR) -> float:
    """Fraction of unknown samples accepted at threshold_at_tpr (FPR at 95% TPR)."""
    scores = _as_scores(scores)
    is_known = _as_known_mask(is_known, scores.shape[0])
    _require_both_sides(is_known)
    return _operating_point(_SortedScores.of(scores), is_known, tpr)[2]


def tnr_at_tpr(scores, is_known, tpr: float = DEFAULT_TPR) -> float:
    """Fraction of unknown samples rejected at threshold_at_tpr: 1 - fpr_at_tpr."""
    return 1.0 - fpr_at_tpr(scores, is_known, tpr)


def _detection_accuracy(sorted_scores: _SortedScores, is_known: np.ndarray) -> float:
    tpr, fpr = _rates(sorted_scores, is_known)
    # The "+inf" threshold (accept nothing) gives 0.5 * (0 + 1) = 0.5.
    return float(max(0.5, np.max(0.5 * (tpr + 1.0 - fpr))))


def detection_accuracy(scores, is_known) -> float:
    """Detection accuracy, as in ODIN (Liang et al. 2018) and Mahalanobis (Lee et al. 2018).

    max over thresholds t of 0.5 * (TPR(t) + TNR(t)), where TPR(t) is the fraction of
    known samples with score >= t and TNR(t) the fraction of unknown samples with
    score < t, i.e. the best accuracy of a threshold classifier when known and unknown
    are equally likely a priori. t ranges over every distinct score and +inf.
    """
    scores = _as_scores(scores)
    is_known = _as_known_mask(is_known, scores.shape[0])
    _require_both_sides(is_known)
    return _detection_accuracy(_SortedScores.of(scores), is_known)


def closed_set_accuracy(pred, labels, num_classes: int) -> float:
    """Accuracy of the predicted (argmax) class on the known samples (labels < K) only."""
    pred = np.asarray(pred).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    known = labels < num_classes
    if not known.any():
        raise ValueError("no known samples to measure the closed-set accuracy on")
    return float(np.mean(pred[known] == labels[known]))


# --------------------------------------------------------------------------------------
# Open-set macro-F1 over K+1 labels
# --------------------------------------------------------------------------------------


def _check_labels(pred: np.ndarray, labels: np.ndarray, num_classes: int, n: int) -> None:
    if pred.shape[0] != n or labels.shape[0] != n:
        raise ValueError(f"got {n} scores, {pred.shape[0]} predictions and {labels.shape[0]} labels")
    for name, values in (("predictions", pred), ("labels", labels)):
        if values.size and (values.min() < 0 or values.max() > num_classes):
            raise ValueError(f"{name} must lie in 0..{num_classes} (K = unknown)")


def _macro_f1_at_thresholds(sorted_scores: _SortedScores, pred: np.ndarray,
                            labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-F1 over K+1 labels at each distinct threshold (descending), all at once.

    Prediction at threshold t: pred if score >= t, else K. Per class c and threshold,
    with T_c = #{label = c} fixed and P_c(t) = #{prediction = c}:
      c < K:  TP_c = accepted samples with pred = label = c,  P_c = accepted with pred = c;
      c = K:  TP_K = T_K - #{accepted, label = K, pred != K},
              P_K  = #{rejected} + #{accepted, pred = K}.
    F1_c = 2 TP_c / (P_c + T_c) (0 when undefined), averaged over the classes with
    P_c + T_c > 0, i.e. the labels present in y_true or y_pred: exactly
    sklearn.metrics.f1_score(..., average='macro', zero_division=0).
    """
    n_labels = num_classes + 1
    unknown = num_classes
    true_count = np.bincount(labels, minlength=n_labels)
    # Columns 0..K-1 are already right; column K is corrected for the rejected samples.
    predicted = sorted_scores.accepted_count_per_value(pred, n_labels)
    true_positive = sorted_scores.accepted_count_per_value(pred, n_labels, where=pred == labels)

    n_rejected = pred.shape[0] - (sorted_scores.ends + 1)
    accepted_unknown_label = sorted_scores.accepted_count(labels == unknown)
    predicted[:, unknown] += n_rejected
    # label K is right unless the sample was accepted with a known-class prediction:
    # true_positive[:, K] so far counts the accepted ones predicted K.
    true_positive[:, unknown] += true_count[unknown] - accepted_unknown_label

    support = predicted + true_count[None, :]
    present = support > 0
    f1 = np.divide(2.0 * true_positive, support, out=np.zeros(support.shape), where=present)
    return f1.sum(axis=1) / present.sum(axis=1)


def _prepare_f1_inputs(scores, pred, labels, num_classes):
    scores = _as_scores(scores)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    _check_labels(pred, labels, num_classes, scores.shape[0])
    if scores.shape[0] == 0:
        raise ValueError("no samples")
    return scores, pred, labels


def macro_f1_curve(scores, pred, labels, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """(thresholds, macro-F1) at every distinct score, thresholds descending.

    docs/method.md section 3 step 5: prediction = pred if score >= t else K ("unknown");
    macro-F1 over the labels present in the true labels or the predictions. Only the
    distinct scores are thresholds; the "+inf" threshold (everything unknown) is left out.
    """
    scores, pred, labels = _prepare_f1_inputs(scores, pred, labels, num_classes)
    sorted_scores = _SortedScores.of(scores)
    return (sorted_scores.thresholds.copy(),
            _macro_f1_at_thresholds(sorted_scores, pred, labels, num_classes))


def f1_at_threshold(scores, pred, labels, num_classes: int, threshold: float) -> float:
    """Macro-F1 over K+1 labels with prediction = pred if score >= threshold else K."""
    scores, pred, labels = _prepare_f1_inputs(scores, pred, labels, num_classes)
    final = np.where(scores >= threshold, pred, num_classes)
    n_labels = num_classes + 1
    true_positive = np.bincount(labels[final == labels], minlength=n_labels)
    support = np.bincount(final, minlength=n_labels) + np.bincount(labels, minlength=n_labels)
    present = support > 0
    f1 = np.divide(2.0 * true_positive, support, out=np.zeros(n_labels), where=present)
    return float(f1.sum() / present.sum())


def best_f1(scores, pred, labels, num_classes: int) -> Tuple[float, float]:
    """(best macro-F1 over all distinct-score thresholds, the highest threshold reaching it)."""
    thresholds, f1 = macro_f1_curve(scores, pred, labels, num_classes)
    g = int(np.argmax(f1))
    return float(f1[g]), float(thresholds[g])


# --------------------------------------------------------------------------------------
# Tables and the full metric set
# --------------------------------------------------------------------------------------


def threshold_table(scores, is_known, pred, labels, num_classes: int) -> pd.DataFrame:
    """One row per distinct score, thresholds descending: threshold, tpr, fpr, f1_macro."""
    scores, pred, labels = _prepare_f1_inputs(scores, pred, labels, num_classes)
    is_known = _as_known_mask(is_known, scores.shape[0])
    _require_both_sides(is_known)
    sorted_scores = _SortedScores.of(scores)
    tpr, fpr = _rates(sorted_scores, is_known)
    f1 = _macro_f1_at_thresholds(sorted_scores, pred, labels, num_classes)
    return pd.DataFrame({"threshold": sorted_scores.thresholds, "tpr": tpr, "fpr": fpr,
                         "f1_macro": f1})


def ood_positive_metrics(scores, is_known) -> Dict[str, float]:
    """The figures with *unknown* as the positive class and -score as the outlier score,
    as pytorch-ood (``pytorch_ood.metrics.functional``) and OpenOOD compute them, by calling
    pytorch-ood's own functions:

    - ``auroc_ood_positive``: equal to ``auroc`` (the AUROC does not depend on which side
      is positive); reported so that tables can cite either convention;
    - ``fpr_at_95_tpr_ood_positive``: the fraction of known images flagged as unknown at
      the first threshold where 95 % of the unknown images are flagged; ``fpr_at_95_tpr``
      is instead the fraction of unknown images accepted when 95 % of the known are;
    - ``aupr_ood_positive``: the trapezoidal area under the precision-recall curve of the
      unknown class (``sklearn.metrics.auc(recall, precision)``), where ``aupr_out`` is
      scikit-learn's average precision of the same curve (a step sum).
    """
    import torch
    from pytorch_ood.metrics import functional as ood

    is_known = np.asarray(is_known, dtype=bool)
    outlier = torch.as_tensor(-_as_scores(scores))
    # pytorch-ood's labels: negative marks an unknown (OOD) image.
    labels = torch.as_tensor(np.where(is_known, 0, -1))
    return {
        "auroc_ood_positive": float(ood.auroc(outlier, labels)),
        "fpr_at_95_tpr_ood_positive": float(ood.fpr_at_tpr(outlier, labels, DEFAULT_TPR)),
        "aupr_ood_positive": float(ood.aupr(outlier, labels, positive="ood")),
    }


def cauroc(scores, pred, labels, num_classes: int) -> float:
    """The original's CAUROC, exactly: the AUROC of known against unknown in which the
    known side holds only the correctly classified known images (its TPR is counted over
    them); misclassified known images take no part. The original summed it over a
    100,000-point threshold grid; here ties count half, as in ``auroc``. NaN when no
    known image is classified correctly."""
    scores, pred, labels = _prepare_f1_inputs(scores, pred, labels, num_classes)
    is_known = labels < num_classes
    kept = ~is_known | (pred == labels)
    if not (is_known & kept).any():
        return float("nan")
    return float(roc_auc_score(is_known[kept], scores[kept]))


def ood_metrics(scores, pred, labels, num_classes: int) -> Dict[str, float]:
    """All docs/method.md section 3 step 5 metrics; labels 0..K-1 known, K unknown.

    Keys: auroc, aupr_in, aupr_out, fpr_at_95_tpr, tnr_at_95_tpr, detection_accuracy,
    closed_set_accuracy, f1_macro_at_95_tpr (the paper's F1: macro-F1 over K+1 labels at
    the 95%-TPR threshold), f1_macro_best, threshold_at_95_tpr, n_known, n_unknown; the
    original's ``cauroc``; and the unknown-positive figures of :func:`ood_positive_metrics`.
    Raises ValueError when there are no known or no unknown samples.
    """
    scores, pred, labels = _prepare_f1_inputs(scores, pred, labels, num_classes)
    is_known = labels < num_classes
    _require_both_sides(is_known)
    sorted_scores = _SortedScores.of(scores)
    g95, threshold95, fpr95 = _operating_point(sorted_scores, is_known, DEFAULT_TPR)
    f1 = _macro_f1_at_thresholds(sorted_scores, pred, labels, num_classes)
    return {
        "auroc": float(roc_auc_score(is_known, scores)),
        "aupr_in": float(average_precision_score(is_known, scores)),
        "aupr_out": float(average_precision_score(~is_known, -scores)),
        "fpr_at_95_tpr": fpr95,
        "tnr_at_95_tpr": 1.0 - fpr95,
        "detection_accuracy": _detection_accuracy(sorted_scores, is_known),
        "closed_set_accuracy": closed_set_accuracy(pred, labels, num_classes),
        "f1_macro_at_95_tpr": float(f1[g95]),
        "f1_macro_best": float(f1.max()),
        "threshold_at_95_tpr": threshold95,
        "cauroc": cauroc(scores, pred, labels, num_classes),
        **ood_positive_metrics(scores, is_known),
        "n_known": int(is_known.sum()),
        "n_unknown": int((~is_known).sum()),
    }
