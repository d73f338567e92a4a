"""The standard detectors (models/baselines.py, pytorch-ood's own ones through the registry of
models/detector_registry.py) against a direct computation of their formulas; every one
returns pytorch-ood's outlier score (higher = more unknown)."""

import math

import numpy as np
import pytest
import torch
from pytorch_ood.api import Detector, RequiresFittingException

from models.baselines import KNNDetector, LatentGaussians, MahalanobisDetector, ViMDetector, vim_dim
from models.detector_registry import DETECTORS
from models.evaluation import check_detectors, make_detector
from models.records import FeatureRecord
from utils.errors import UserError

K, D, L = 3, 8, 4


def _logsumexp(a):
    top = a.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis=1, keepdims=True)))[:, 0]


def _softmax(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _make_set(gen, n, weight, bias, shift=0.0, labels=None):
    """Features from class-dependent means, logits = h W^T + b, mu a projection of h."""
    if labels is None:
        labels = torch.arange(n) % K
    centers = torch.linspace(-2.0, 2.0, K).view(K, 1) * torch.ones(K, D)
    centers[:, 0] += torch.arange(K, dtype=torch.float32) * 3.0
    h = centers[labels.clamp(max=K - 1)] + torch.randn(n, D, generator=gen) * torch.linspace(0.5, 1.5, D) + shift
    logits = h @ weight.T + bias
    mu = h[:, :L] * 0.7 + 0.1 * torch.randn(n, L, generator=gen)
    return FeatureRecord(labels=labels.long(), h=h, logits=logits.double(), mu=mu)


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(K, D, generator=gen)
    bias = torch.randn(K, generator=gen)
    train = _make_set(gen, 60, weight, bias)
    test = _make_set(gen, 15, weight, bias)
    far = _make_set(gen, 10, weight, bias, shift=25.0, labels=torch.full((10,), K))
    joined = FeatureRecord(**{name: torch.cat([getattr(test, name), getattr(far, name)])
                              for name in ("labels", "h", "logits", "mu")})
    return dict(weight=weight, bias=bias, train=train, test=test, far=far, all=joined)


def _np(t):
    return t.detach().double().cpu().numpy()


# ---- logit scores -------------------------------------------------------------------


@pytest.mark.parametrize("name, formula", [
    ("msp", lambda a: _softmax(a).max(axis=1)),
    ("energy", _logsumexp),
    ("maxlogit", lambda a: a.max(axis=1)),
])
def test_logit_scores_match_formula(data, name, formula):
    detector = make_detector(name, None).fit_logits(data["train"].logits, data["train"].labels)
    outlier = detector.predict_logits(data["all"].logits)
    assert outlier.dtype == torch.float64 and outlier.shape == (len(data["all"]),)
    np.testing.assert_allclose(-outlier.numpy(), formula(_np(data["all"].logits)), rtol=1e-10, atol=1e-10)


# ---- Mahalanobis --------------------------------------------------------------------


def _mahalanobis_reference(train, record):
    h, y = _np(train.h), train.labels.numpy()
    means = np.stack([h[y == c].mean(0) for c in range(K)])
    centred = h - means[y]
    cov = centred.T @ centred / h.shape[0]          # tied covariance, normalised by N
    precision = np.linalg.inv(cov)
    x = _np(record.h)
    sq = np.stack([np.einsum("nd,de,ne->n", x - m, precision, x - m) for m in means], axis=1)
    return 0.5 * sq.min(axis=1), sq.argmin(axis=1)


def test_mahalanobis_matches_formula(data):
    detector = MahalanobisDetector().fit_features(data["train"].h, data["train"].labels)
    outlier = detector.predict_features(data["all"].h)
    expected, nearest = _mahalanobis_reference(data["train"], data["all"])
    assert outlier.dtype == torch.float64 and torch.isfinite(outlier).all()
    np.testing.assert_allclose(outlier.numpy(), expected, rtol=1e-8, atol=1e-8)
    np.testing.assert_array_equal(detector.classify_features(data["all"].h).numpy(), nearest)
    n_test = len(data["test"])
    assert outlier[:n_test].max() < outlier[n_test:].min()   # higher = more unknown


# ---- KNN ----------------------------------------------------------------------------


def _knn_reference(train, record, k):
    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)
    a, b = unit(_np(record.h)), unit(_np(train.h))
    dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return np.sort(dist, axis=1)[:, k - 1]


@pytest.mark.parametrize("k", [1, 5, 500])
def test_knn_matches_brute_force(data, k):
    detector = KNNDetector(k=k).fit_features(data["train"].h, data["train"].labels)
    outlier = detector.predict_features(data["all"].h)
    k_used = min(k, len(data["train"]))
    assert outlier.dtype == torch.float64 and torch.isfinite(outlier).all()
    np.testing.assert_allclose(outlier.numpy(), _knn_reference(data["train"], data["all"], k_used),
                               rtol=1e-9, atol=1e-9)


def test_knn_default_k_is_50():
    assert KNNDetector().k == 50


# ---- ViM ----------------------------------------------------------------------------


def test_vim_matches_paper_formula(data):
    weight, bias = data["weight"], data["bias"]
    head = torch.nn.Linear(D, K)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    model = torch.nn.Module()
    model.fc = head
    detector = make_detector("vim", model).fit_features(data["train"].h, data["train"].labels)
    d = vim_dim(D)
    assert d == D // 2 and detector.d == d
    outlier = detector.predict_features(data["all"].h)

    w, b = _np(weight), _np(bias)
    u = -np.linalg.pinv(w) @ b
    x_train = _np(data["train"].h) - u
    eig_vals, eig_vecs = np.linalg.eigh(x_train.T @ x_train / x_train.shape[0])
    residual_space = eig_vecs[:, np.argsort(eig_vals)[:D - d]]     # all but the d largest
    alpha = (_np(data["train"].logits).max(1).mean()
             / np.linalg.norm(x_train @ residual_space, axis=1).mean())
    x = _np(data["all"].h)
    expected = alpha * np.linalg.norm((x - u) @ residual_space, axis=1) - _logsumexp(x @ w.T + b)

    assert detector.alpha == pytest.approx(alpha, rel=1e-4)
    assert torch.isfinite(outlier).all()
    np.testing.assert_allclose(outlier.double().numpy(), expected, rtol=1e-4, atol=1e-3)


def test_vim_dim_rule():
    assert vim_dim(4096) == 1000 and vim_dim(2048) == 1000
    assert vim_dim(768) == 512 and vim_dim(1024) == 512
    assert vim_dim(512) == 256 and vim_dim(64) == 32


def test_vim_needs_a_head_of_the_feature_width():
    with pytest.raises(ValueError):
        ViMDetector(None, torch.zeros(K, D), torch.zeros(K + 1))
    with pytest.raises(ValueError):
        ViMDetector(None, torch.zeros(K, D), torch.zeros(K), d=D)


# ---- VMDLS latent -------------------------------------------------------------------


def test_vmdls_latent_matches_gaussian_log_density(data):
    detector = LatentGaussians().fit_features(data["train"].mu, data["train"].labels)
    # well-conditioned: the ladder's first step works, leaving only its 2-step margin
    jitter = detector.gaussians.jitter
    assert jitter == pytest.approx(2e-6)
    mu, y = _np(data["train"].mu), data["train"].labels.numpy()
    x = _np(data["all"].mu)
    logp = []
    for c in range(K):
        m = mu[y == c].mean(0)
        cov = np.cov(mu[y == c], rowvar=False, bias=True) + jitter * np.eye(L)
        diff = x - m
        _, logdet = np.linalg.slogdet(cov)
        quad = np.einsum("nd,nd->n", diff, np.linalg.solve(cov, diff.T).T)
        logp.append(-0.5 * (quad + logdet + L * math.log(2 * math.pi)))
    logp = np.stack(logp, axis=1)
    outlier = detector.predict_features(data["all"].mu)
    assert outlier.dtype == torch.float64 and torch.isfinite(outlier).all()
    np.testing.assert_allclose(-outlier.numpy(), logp.max(1), rtol=1e-9, atol=1e-8)
    np.testing.assert_array_equal(detector.classify_features(data["all"].mu).numpy(), logp.argmax(1))


# ---- rank-deficient training set ----------------------------------------------------


@pytest.mark.parametrize("cls", [MahalanobisDetector, LatentGaussians])
def test_rank_deficient_training_set_fits(cls):
    gen = torch.Generator().manual_seed(1)
    n = 5                                    # fewer images than dims (D = 8)
    labels = torch.tensor([0, 0, 1, 1, 2])
    detector = cls().fit_features(torch.randn(n, D, generator=gen), labels)
    test = torch.randn(7, D, generator=gen)
    outlier = detector.predict_features(test)
    assert outlier.shape == (7,) and torch.isfinite(outlier).all()
    assert detector.classify_features(test).shape == (7,)


# ---- ODIN ---------------------------------------------------------------------------


def _odin_setup():
    gen = torch.Generator().manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, K))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(K, 12, generator=gen))
        model[1].bias.copy_(torch.randn(K, generator=gen))
    images = torch.rand(9, 3, 2, 2, generator=gen)
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    return model, (images - mean) / std


def test_odin_perturbs_the_normalised_input():
    """The registry's odin is pytorch-ood's ODIN on the model, applied to normalised images."""
    model, x = _odin_setup()
    detector = make_detector("odin", model)
    temperature, eps = detector.temperature, detector.eps
    assert (temperature, eps) == (1000.0, 0.0014)
    outlier = detector.predict(x)
    x = x.detach().requires_grad_()
    logits = model(x) / temperature
    loss = torch.nn.functional.cross_entropy(logits, logits.argmax(1))
    (grad,) = torch.autograd.grad(loss, x)
    with torch.no_grad():
        expected = torch.softmax(model(x - eps * grad.sign()) / temperature, dim=1).max(1).values
    np.testing.assert_allclose(-outlier.detach().numpy(), expected.numpy(), rtol=1e-6)


# ---- registry -----------------------------------------------------------------------


def test_every_registered_detector_is_a_pytorch_ood_detector():
    assert list(DETECTORS) == ["vmdls", "msp", "energy", "maxlogit", "odin", "mahalanobis", "knn", "vim",
                               "vmdls_latent"]
    needs = {name: entry.needs for name, entry in DETECTORS.items()}
    assert needs == {"vmdls": "ensemble", "msp": "logits", "energy": "logits", "maxlogit": "logits",
                     "odin": "inputs", "mahalanobis": "h", "knn": "h", "vim": "h", "vmdls_latent": "mu"}
    for entry in DETECTORS.values():
        assert issubclass(entry.cls, Detector)


@pytest.mark.parametrize("name", ["msp", "energy", "maxlogit", "odin", "vim"])
def test_logit_detectors_refuse_vmdls_checkpoints(name):
    with pytest.raises(UserError) as info:
        check_detectors([name], "vmdls")
    assert info.value.setting == "detector"
    assert "cross-entropy checkpoint" in str(info.value) and name in str(info.value)
    assert str(info.value).count(". ") == 0          # one sentence


def test_latent_detector_refuses_ce_checkpoints():
    with pytest.raises(UserError) as info:
        check_detectors(["vmdls_latent"], "ce")
    assert info.value.setting == "detector"
    assert "VMDLS checkpoint" in str(info.value)


def test_unknown_names_are_refused_and_repeats_dropped():
    with pytest.raises(UserError) as info:
        check_detectors(["gram"], "ce")
    assert info.value.setting == "detector"
    assert check_detectors(["knn", "msp", "knn"], "ce") == ["knn", "msp"]


def test_score_before_fit_is_refused(data):
    for detector in (MahalanobisDetector(), LatentGaussians()):
        with pytest.raises(RequiresFittingException):
            detector.predict_features(data["test"].h)
