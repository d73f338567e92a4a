"""utils.metrics against scikit-learn and brute-force loops over every threshold."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score, roc_curve

from utils import metrics

CASES = [(seed, n, ties) for seed in (0, 1, 2) for n in (50, 300) for ties in (False, True)]


def make_data(seed, n, num_classes=4, ties=False, unknown_fraction=0.3):
    """Scores, predictions and K+1 labels; known scores higher on average, some preds wrong."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n)
    unknown = rng.random(n) < unknown_fraction
    labels[unknown] = num_classes
    labels[0], labels[1] = 0, num_classes  # both sides always present
    scores = rng.normal(size=n) + 1.0 * (labels < num_classes)
    if ties:
        scores = np.round(scores, 1)
    pred = np.where(labels < num_classes, labels, rng.integers(0, num_classes, size=n))
    wrong = rng.random(n) < 0.2
    pred[wrong] = rng.integers(0, num_classes, size=wrong.sum())
    return scores, pred, labels, labels < num_classes


def brute_thresholds(scores):
    return np.sort(np.unique(scores))[::-1]


@pytest.mark.parametrize("seed,n,ties", CASES)
def test_roc_points_match_sklearn(seed, n, ties):
    scores, _, _, known = make_data(seed, n, ties=ties)
    fpr, tpr, thr = metrics.roc_points(scores, known)
    ref_fpr, ref_tpr, ref_thr = roc_curve(known, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_array_equal(thr[1:], ref_thr[1:])
    assert np.isinf(thr[0])


@pytest.mark.parametrize("seed,n,ties", CASES)
def test_auroc_and_aupr_match_sklearn(seed, n, ties):
    scores, _, _, known = make_data(seed, n, ties=ties)
    assert metrics.auroc(scores, known) == pytest.approx(roc_auc_score(known, scores))
    assert metrics.aupr_in(scores, known) == pytest.approx(average_precision_score(known, scores))
    assert metrics.aupr_out(scores, known) == pytest.approx(
        average_precision_score(~known, -scores))
    fpr, tpr, _ = metrics.roc_points(scores, known)
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.auroc(scores, known))


@pytest.mark.parametrize("seed,n,ties", CASES)
def test_fpr_at_tpr_matches_brute_force(seed, n, ties):
    scores, _, _, known = make_data(seed, n, ties=ties)
    for target in (0.5, 0.9, 0.95, 1.0):
        best_t = None
        for t in brute_thresholds(scores):  # descending: the first qualifying is the largest
            if np.mean(scores[known] >= t) >= target:
                best_t = t
                break
        expected_fpr = np.mean(scores[~known] >= best_t)
        assert metrics.threshold_at_tpr(scores, known, target) == best_t
        assert metrics.fpr_at_tpr(scores, known, target) == pytest.approx(expected_fpr)
        assert metrics.tnr_at_tpr(scores, known, target) == pytest.approx(1 - expected_fpr)


def test_fpr_at_tpr_exact_95_percent_boundary():
    # 20 known: 19 accepted is exactly 95%, so the threshold is the 19th known score.
    known_scores = np.arange(20, 0, -1, dtype=float)  # 20..1
    unknown_scores = np.array([1.5, 2.5, 0.5])
    scores = np.r_[known_scores, unknown_scores]
    known = np.r_[np.ones(20, bool), np.zeros(3, bool)]
    assert metrics.threshold_at_tpr(scores, known) == 2.0
    assert metrics.fpr_at_tpr(scores, known) == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed,n,ties", CASES)
def test_detection_accuracy_matches_brute_force(seed, n, ties):
    scores, _, _, known = make_data(seed, n, ties=ties)
    candidates = np.r_[np.inf, brute_thresholds(scores)]
    expected = max(0.5 * (np.mean(scores[known] >= t) + np.mean(scores[~known] < t))
                   for t in candidates)
    assert metrics.detection_accuracy(scores, known) == pytest.approx(expected)


def test_closed_set_accuracy_counts_known_only():
    pred = np.array([0, 1, 2, 0, 1])
    labels = np.array([0, 1, 1, 3, 3])  # K = 3: the last two are unknown
    assert metrics.closed_set_accuracy(pred, labels, 3) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed,n,ties", CASES)
def test_macro_f1_curve_matches_sklearn_at_every_threshold(seed, n, ties):
    num_classes = 4
    scores, pred, labels, _ = make_data(seed, n, num_classes=num_classes, ties=ties)
    thresholds, f1 = metrics.macro_f1_curve(scores, pred, labels, num_classes)
    np.testing.assert_array_equal(thresholds, brute_thresholds(scores))
    expected = [f1_score(labels, np.where(scores >= t, pred, num_classes), average="macro",
                         zero_division=0) for t in thresholds]
    np.testing.assert_allclose(f1, expected, rtol=1e-12, atol=1e-12)
    for t in thresholds[::7]:
        assert metrics.f1_at_threshold(scores, pred, labels, num_classes, t) == pytest.approx(
            f1_score(labels, np.where(scores >= t, pred, num_classes), average="macro",
                     zero_division=0))
    best, best_t = metrics.best_f1(scores, pred, labels, num_classes)
    assert best == pytest.approx(max(expected))
    assert best_t == thresholds[int(np.argmax(expected))]


def test_macro_f1_curve_with_absent_classes_and_unknown_predictions():
    # Class 2 never appears in labels; some predictions are already "unknown" (K = 3).
    num_classes = 3
    rng = np.random.default_rng(5)
    labels = rng.choice([0, 1, 3], size=200)
    pred = rng.choice([0, 1, 2, 3], size=200)
    scores = np.round(rng.normal(size=200), 1)
    thresholds, f1 = metrics.macro_f1_curve(scores, pred, labels, num_classes)
    expected = [f1_score(labels, np.where(scores >= t, pred, num_classes), average="macro",
                         zero_division=0) for t in thresholds]
    np.testing.assert_allclose(f1, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 3])
def test_threshold_table_columns_and_order(seed):
    num_classes = 4
    scores, pred, labels, known = make_data(seed, 200, num_classes=num_classes, ties=True)
    table = metrics.threshold_table(scores, known, pred, labels, num_classes)
    assert list(table.columns) == ["threshold", "tpr", "fpr", "f1_macro"]
    assert len(table) == np.unique(scores).size
    assert np.all(np.diff(table["threshold"].to_numpy()) < 0)
    fpr, tpr, _ = metrics.roc_points(scores, known)
    np.testing.assert_allclose(table["tpr"], tpr[1:])
    np.testing.assert_allclose(table["fpr"], fpr[1:])
    _, f1 = metrics.macro_f1_curve(scores, pred, labels, num_classes)
    np.testing.assert_allclose(table["f1_macro"], f1)


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True)])
def test_ood_metrics_agree_with_the_single_functions(seed, ties):
    num_classes = 4
    scores, pred, labels, known = make_data(seed, 400, num_classes=num_classes, ties=ties)
    result = metrics.ood_metrics(scores, pred, labels, num_classes)
    assert set(result) == {"auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr", "tnr_at_95_tpr",
                           "detection_accuracy", "closed_set_accuracy", "f1_macro_at_95_tpr",
                           "f1_macro_best", "threshold_at_95_tpr", "n_known", "n_unknown", "cauroc",
                           "auroc_ood_positive", "fpr_at_95_tpr_ood_positive", "aupr_ood_positive"}
    assert result["auroc"] == pytest.approx(roc_auc_score(known, scores))
    assert result["aupr_in"] == pytest.approx(average_precision_score(known, scores))
    assert result["aupr_out"] == pytest.approx(average_precision_score(~known, -scores))
    assert result["fpr_at_95_tpr"] == pytest.approx(metrics.fpr_at_tpr(scores, known))
    assert result["tnr_at_95_tpr"] == pytest.approx(1 - result["fpr_at_95_tpr"])
    assert result["detection_accuracy"] == pytest.approx(metrics.detection_accuracy(scores, known))
    assert result["closed_set_accuracy"] == pytest.approx(np.mean(pred[known] == labels[known]))
    t95 = metrics.threshold_at_tpr(scores, known)
    assert result["threshold_at_95_tpr"] == t95
    assert result["f1_macro_at_95_tpr"] == pytest.approx(
        f1_score(labels, np.where(scores >= t95, pred, num_classes), average="macro",
                 zero_division=0))
    assert result["f1_macro_best"] == pytest.approx(
        metrics.best_f1(scores, pred, labels, num_classes)[0])
    assert result["n_known"] == known.sum()
    assert result["n_unknown"] == (~known).sum()


@pytest.mark.parametrize("seed,n,ties", CASES)
def test_unknown_positive_figures_match_the_openood_recipe(seed, n, ties):
    """OpenOOD's evaluator: roc_curve with unknown positive on -score, the FPR at the first
    point reaching 95 % TPR; AUPR as auc(recall, precision) of the unknown class."""
    from sklearn.metrics import auc, precision_recall_curve

    scores, pred, labels, known = make_data(seed, n, ties=ties)
    result = metrics.ood_metrics(scores, pred, labels, 4)
    fpr, tpr, _ = roc_curve(~known, -scores)
    assert result["fpr_at_95_tpr_ood_positive"] == pytest.approx(fpr[np.argmax(tpr >= 0.95)])
    precision, recall, _ = precision_recall_curve(~known, -scores)
    assert result["aupr_ood_positive"] == pytest.approx(auc(recall, precision))
    assert result["auroc_ood_positive"] == pytest.approx(roc_auc_score(~known, -scores))
    assert result["auroc_ood_positive"] == pytest.approx(result["auroc"])


@pytest.mark.parametrize("seed,n,ties", CASES)
def test_cauroc_counts_pairs_of_correct_known_and_unknown(seed, n, ties):
    scores, pred, labels, known = make_data(seed, n, ties=ties)
    correct = scores[known & (pred == labels)]
    unknown = scores[~known]
    pairs = (correct[:, None] > unknown[None, :]) + 0.5 * (correct[:, None] == unknown[None, :])
    assert metrics.cauroc(scores, pred, labels, 4) == pytest.approx(pairs.mean())
    assert metrics.ood_metrics(scores, pred, labels, 4)["cauroc"] == pytest.approx(pairs.mean())


def test_cauroc_is_nan_when_no_known_image_is_classified_correctly():
    scores, labels = np.array([0.9, 0.8, 0.1]), np.array([0, 1, 2])
    assert np.isnan(metrics.cauroc(scores, np.array([1, 0, 0]), labels, 2))


def test_one_sided_sets_raise():
    scores = np.array([0.1, 0.5, 0.9])
    pred = np.array([0, 1, 0])
    with pytest.raises(ValueError):
        metrics.ood_metrics(scores, pred, np.array([0, 1, 0]), 2)  # no unknown
    with pytest.raises(ValueError):
        metrics.ood_metrics(scores, pred, np.array([2, 2, 2]), 2)  # no known
    with pytest.raises(ValueError):
        metrics.auroc(scores, np.array([True, True, True]))
    with pytest.raises(ValueError):
        metrics.fpr_at_tpr(scores, np.array([False, False, False]))


def test_non_finite_scores_raise():
    with pytest.raises(ValueError):
        metrics.auroc(np.array([0.1, np.nan]), np.array([True, False]))
