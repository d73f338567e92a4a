"""models/baselines.py: every detector against a direct computation of its formula."""

import math

import numpy as np
import pytest
import torch

from models.baselines import (
    BASELINE_NAMES,
    BASELINES,
    KNNBaseline,
    MahalanobisBaseline,
    ODINBaseline,
    Outputs,
    VMDLSLatent,
    ViMBaseline,
    make_baseline,
    odin_scores,
    vim_dim,
)
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
    return Outputs(labels=labels.long(), features=h, logits=logits, mu=mu)


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(K, D, generator=gen)
    bias = torch.randn(K, generator=gen)
    train = _make_set(gen, 60, weight, bias)
    test = _make_set(gen, 15, weight, bias)
    far = _make_set(gen, 10, weight, bias, shift=25.0, labels=torch.full((10,), K))
    return dict(weight=weight, bias=bias, train=train, test=test, far=far,
                all=Outputs.cat([test, far]))


def _np(t):
    return t.detach().double().cpu().numpy()


# ---- Outputs ------------------------------------------------------------------------


def test_outputs_select_and_cat(data):
    test = data["test"]
    part = test.select(test.labels == 1)
    assert len(part) == int((test.labels == 1).sum())
    assert part.mu is not None and part.logits.shape[1] == K
    both = Outputs.cat([part, test.select(torch.tensor([0, 2]))])
    assert len(both) == len(part) + 2
    assert torch.equal(both.features[-2:], test.features[[0, 2]])
    without_mu = Outputs(labels=test.labels, features=test.features)
    with pytest.raises(ValueError):
        Outputs.cat([test, without_mu])
    with pytest.raises(ValueError):
        Outputs(labels=test.labels[:3], features=test.features)


# ---- logit scores -------------------------------------------------------------------


@pytest.mark.parametrize("name, formula", [
    ("msp", lambda a: _softmax(a).max(axis=1)),
    ("energy", _logsumexp),
    ("maxlogit", lambda a: a.max(axis=1)),
])
def test_logit_scores_match_formula(data, name, formula):
    detector = make_baseline(name, "ce").fit(data["train"])
    scores = detector.score(data["all"])
    assert scores.dtype == torch.float64 and scores.device.type == "cpu"
    assert scores.shape == (len(data["all"]),) and torch.isfinite(scores).all()
    np.testing.assert_allclose(scores.numpy(), formula(_np(data["all"].logits)), rtol=1e-10, atol=1e-10)
    assert detector.predict(data["all"]) is None


# ---- Mahalanobis --------------------------------------------------------------------


def _mahalanobis_reference(train, outputs):
    h, y = _np(train.features), train.labels.numpy()
    means = np.stack([h[y == c].mean(0) for c in range(K)])
    centred = h - means[y]
    cov = centred.T @ centred / h.shape[0]          # tied covariance, normalised by N
    precision = np.linalg.inv(cov)
    x = _np(outputs.features)
    sq = np.stack([np.einsum("nd,de,ne->n", x - m, precision, x - m) for m in means], axis=1)
    return -0.5 * sq.min(axis=1), sq.argmin(axis=1)


def test_mahalanobis_matches_formula(data):
    detector = make_baseline("mahalanobis", "ce").fit(data["train"])
    scores = detector.score(data["all"])
    expected, nearest = _mahalanobis_reference(data["train"], data["all"])
    assert scores.dtype == torch.float64 and torch.isfinite(scores).all()
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-8, atol=1e-8)
    np.testing.assert_array_equal(detector.predict(data["all"]).numpy(), nearest)
    n_test = len(data["test"])
    assert scores[:n_test].min() > scores[n_test:].max()   # higher = more known
    # also on a VMDLS checkpoint (features detector)
    make_baseline("mahalanobis", "vmdls").fit(data["train"]).score(data["test"])


# ---- KNN ----------------------------------------------------------------------------


def _knn_reference(train, outputs, k):
    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)
    a, b = unit(_np(outputs.features)), unit(_np(train.features))
    dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return -np.sort(dist, axis=1)[:, k - 1]


@pytest.mark.parametrize("k", [1, 5, 500])
def test_knn_matches_brute_force(data, k):
    detector = make_baseline("knn", "vmdls", k=k).fit(data["train"])
    scores = detector.score(data["all"])
    k_used = min(k, len(data["train"]))
    assert scores.dtype == torch.float64 and torch.isfinite(scores).all()
    np.testing.assert_allclose(scores.numpy(), _knn_reference(data["train"], data["all"], k_used),
                               rtol=1e-9, atol=1e-9)
    assert detector.predict(data["all"]) is None


def test_knn_default_k_is_50():
    assert KNNBaseline().k == 50


# ---- ViM ----------------------------------------------------------------------------


def test_vim_matches_paper_formula(data):
    weight, bias = data["weight"], data["bias"]
    detector = make_baseline("vim", "ce", head=(weight, bias)).fit(data["train"])
    d = vim_dim(D)
    assert d == D // 2
    scores = detector.score(data["all"])

    w, b = _np(weight), _np(bias)
    u = -np.linalg.pinv(w) @ b
    x_train = _np(data["train"].features) - u
    eig_vals, eig_vecs = np.linalg.eigh(x_train.T @ x_train / x_train.shape[0])
    residual_space = eig_vecs[:, np.argsort(eig_vals)[:D - d]]     # all but the d largest
    alpha = (_np(data["train"].logits).max(1).mean()
             / np.linalg.norm(x_train @ residual_space, axis=1).mean())
    x = _np(data["all"].features)
    expected = _logsumexp(x @ w.T + b) - alpha * np.linalg.norm((x - u) @ residual_space, axis=1)

    assert detector.alpha == pytest.approx(alpha, rel=1e-4)
    assert scores.dtype == torch.float64 and torch.isfinite(scores).all()
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-4, atol=1e-3)


def test_vim_dim_rule():
    assert vim_dim(4096) == 1000 and vim_dim(2048) == 1000
    assert vim_dim(768) == 512 and vim_dim(1024) == 512
    assert vim_dim(512) == 256 and vim_dim(64) == 32


# ---- VMDLS latent -------------------------------------------------------------------


def test_vmdls_latent_matches_gaussian_log_density(data):
    detector = make_baseline("vmdls_latent", "vmdls").fit(data["train"])
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
    scores = detector.score(data["all"])
    assert scores.dtype == torch.float64 and torch.isfinite(scores).all()
    np.testing.assert_allclose(scores.numpy(), logp.max(1), rtol=1e-9, atol=1e-8)
    np.testing.assert_array_equal(detector.predict(data["all"]).numpy(), logp.argmax(1))


# ---- rank-deficient training set ----------------------------------------------------


@pytest.mark.parametrize("cls", [MahalanobisBaseline, VMDLSLatent])
def test_rank_deficient_training_set_fits(cls):
    gen = torch.Generator().manual_seed(1)
    n = 5                                    # fewer images than dims (D = 8)
    labels = torch.tensor([0, 0, 1, 1, 2])
    h = torch.randn(n, D, generator=gen)
    train = Outputs(labels=labels, features=h, mu=torch.randn(n, D, generator=gen))
    test = Outputs(labels=torch.zeros(7, dtype=torch.long), features=torch.randn(7, D, generator=gen),
                   mu=torch.randn(7, D, generator=gen))
    detector = cls().fit(train)
    scores = detector.score(test)
    assert scores.shape == (7,) and torch.isfinite(scores).all()
    assert detector.predict(test).shape == (7,)


# ---- ODIN ---------------------------------------------------------------------------


def _odin_setup():
    gen = torch.Generator().manual_seed(2)
    model = torch.nn.Linear(12, K)
    with torch.no_grad():
        model.weight.copy_(torch.randn(K, 12, generator=gen))
        model.bias.copy_(torch.randn(K, generator=gen))
    images = torch.rand(9, 3, 2, 2, generator=gen)
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)

    def preprocess(x):
        return (x - mean) / std

    def logit_fn(x):
        return model(x.flatten(1))

    batches = [(images[:4], torch.zeros(4)), (images[4:], torch.zeros(5))]
    return logit_fn, preprocess, images, batches


def test_odin_without_perturbation_is_temperature_scaled_msp():
    logit_fn, preprocess, images, batches = _odin_setup()
    temperature = 7.0
    scores = odin_scores(logit_fn, batches, preprocess, temperature=temperature, eps=0.0)
    with torch.no_grad():
        expected = torch.softmax(logit_fn(preprocess(images)) / temperature, dim=1).max(1).values
    assert scores.dtype == torch.float64 and scores.shape == (9,)
    np.testing.assert_allclose(scores.numpy(), expected.double().numpy(), rtol=1e-6)


def test_odin_perturbs_the_normalised_input():
    logit_fn, preprocess, images, batches = _odin_setup()
    temperature, eps = 10.0, 0.05
    scores = odin_scores(logit_fn, batches, preprocess, temperature=temperature, eps=eps)
    x = preprocess(images).detach().requires_grad_()
    logits = logit_fn(x) / temperature
    loss = torch.nn.functional.cross_entropy(logits, logits.argmax(1))
    (grad,) = torch.autograd.grad(loss, x)
    with torch.no_grad():
        x_hat = x - eps * grad.sign()
        expected = torch.softmax(logit_fn(x_hat) / temperature, dim=1).max(1).values
    np.testing.assert_allclose(scores.numpy(), expected.double().numpy(), rtol=1e-6)
    detector = make_baseline("odin", "ce", temperature=temperature, eps=eps)
    assert detector.needs == "inputs"
    np.testing.assert_allclose(detector.score_inputs(logit_fn, batches, preprocess).numpy(), scores.numpy())


# ---- registry -----------------------------------------------------------------------


def test_registry_order_and_needs():
    assert BASELINE_NAMES == ("msp", "energy", "maxlogit", "odin", "mahalanobis", "knn", "vim",
                              "vmdls_latent")
    assert set(BASELINES) == set(BASELINE_NAMES)
    needs = {name: BASELINES[name].needs for name in BASELINE_NAMES}
    assert needs == {"msp": "logits", "energy": "logits", "maxlogit": "logits", "odin": "inputs",
                     "mahalanobis": "features", "knn": "features", "vim": "logits",
                     "vmdls_latent": "mu"}
    assert isinstance(make_baseline("odin", "ce"), ODINBaseline)


@pytest.mark.parametrize("name", ["msp", "energy", "maxlogit", "odin", "vim"])
def test_logit_detectors_refuse_vmdls_checkpoints(name):
    with pytest.raises(UserError) as info:
        make_baseline(name, "vmdls", head=(torch.zeros(K, D), torch.zeros(K)))
    assert info.value.setting == "detector"
    assert "--objective ce" in str(info.value) and name in str(info.value)
    assert str(info.value).count(". ") == 0          # one sentence


def test_latent_detector_refuses_ce_checkpoints():
    with pytest.raises(UserError) as info:
        make_baseline("vmdls_latent", "ce")
    assert info.value.setting == "detector"
    assert "VMDLS checkpoint" in str(info.value) and "--objective vmdls" in str(info.value)


def test_vim_needs_a_head_and_unknown_names_are_refused():
    with pytest.raises(UserError):
        make_baseline("vim", "ce")
    assert isinstance(make_baseline("vim", "ce", head=(torch.zeros(K, D), torch.zeros(K))), ViMBaseline)
    with pytest.raises(UserError) as info:
        make_baseline("gram", "ce")
    assert info.value.setting == "detector"


def test_score_before_fit_is_refused(data):
    with pytest.raises(RuntimeError):
        MahalanobisBaseline().score(data["test"])
