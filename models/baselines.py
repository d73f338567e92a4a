"""The standard OOD detectors that ``test.py --detector`` offers beside the paper's, as
pytorch-ood detectors with pytorch-ood's sign (higher = more unknown).

models/detector_registry.py names each one with the representation it reads from the
shared :class:`~models.records.FeatureRecord` of an image set. msp, energy, maxlogit and odin
are pytorch-ood's own classes (``MaxSoftmax``, ``EnergyBased``, ``MaxLogit``, ``ODIN``),
the logit ones scoring the record's float64 logits. The classes below subclass pytorch-ood's
where this project's fit differs, or add a detector pytorch-ood lacks; those with a class rule
of their own (mahalanobis, vmdls_latent) also give ``classify_features``, the closed-set class.

pytorch-ood 0.4.0 conventions found in its source (and how they are used here):

* ``MaxSoftmax``, ``EnergyBased``, ``MaxLogit`` return -max softmax, -logsumexp (T = 1) and
  -max logit of the logits.
* ``Mahalanobis`` reports half the *squared* distance, 0.5 min_c d_c^2, and its own
  ``fit_features`` estimates the tied covariance as the *unnormalised* sum of centred outer
  products plus 1e-6 I, in float32, inverted with ``torch.linalg.inv`` (it also asserts that
  every class 0..C-1 is present). That is scaled by N relative to the paper and breaks down
  when N < D; :class:`MahalanobisDetector` therefore fits the class means and the tied
  covariance itself (float64, divided by N, pseudo-inverse, as Lee et al.'s reference code
  with sklearn's ``EmpiricalCovariance``) and scores with pytorch-ood's ``predict_features``.
* ``KNN`` L2-normalises both the fitted and the scored features, takes k in the
  constructor, raises when k exceeds the number of fitted rows (k is clamped here), and
  returns the distance itself (not squared), in float64.
* ``ViM`` takes ``w`` [K, D] and ``b`` [K], computes in float32, recomputes the logits as
  h W^T + b, and has no default d (it only halves d when d > D).
* ``ODIN`` perturbs whatever tensor the model is called on; with ``norm_std`` the sign
  gradient is divided by the per-channel std.
"""

from __future__ import annotations

import torch
from pytorch_ood.api import FeaturesDetector, ModelNotSetException, RequiresFittingException
from pytorch_ood.detector import KNN, Mahalanobis, ViM

from models.class_statistics import CHUNK_DOUBLES, ClassStatistics
from models.gaussians import ClassGaussians


def _known_classes(labels: torch.Tensor, num_classes: int | None) -> int:
    """K: given, or one more than the largest training label."""
    if num_classes is not None:
        return int(num_classes)
    if labels.numel() == 0:
        raise ValueError("cannot fit a detector on an empty training set")
    return int(labels.max()) + 1


class MahalanobisDetector(Mahalanobis):
    """Mahalanobis distance to the closest class mean, Lee et al., NeurIPS 2018 ("A Simple
    Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks"),
    eq. (2) without input preprocessing (eps = 0) and on the penultimate feature h only.

    Fit (float64): class means m_c and one tied covariance
    S = (1/N) sum_i (h_i - m_{y_i})(h_i - m_{y_i})^T (normalised by N, as the reference
    code's ``sklearn.covariance.EmpiricalCovariance``), precision P = pinv(S) (symmetric
    pseudo-inverse, so a singular S with N < D fits without error).

    Outlier score 0.5 min_c (h - m_c)^T P (h - m_c): half the *squared* distance, computed by
    pytorch-ood's ``Mahalanobis.predict_features`` from the fitted m_c and P (in float64).
    ``classify_features`` = argmin_c of that distance. Classes absent from the training set
    are left out (never predicted).
    """

    def __init__(self, encoder=None, num_classes: int | None = None):
        super().__init__(encoder)
        self.num_classes = num_classes
        self.classes: torch.Tensor | None = None   # original class index of each fitted mean

    def fit_features(self, z: torch.Tensor, y: torch.Tensor) -> "MahalanobisDetector":
        h = z.detach().to(torch.float64)
        y = y.to(device=h.device, dtype=torch.long)
        k = _known_classes(y, self.num_classes)
        keep = (y >= 0) & (y < k)
        h, y = h[keep], y[keep]
        if h.shape[0] == 0:
            raise ValueError("detector mahalanobis: no known training image to fit on")
        counts = torch.bincount(y, minlength=k).to(torch.float64)
        present = counts > 0
        sums = torch.zeros(k, h.shape[1], dtype=torch.float64, device=h.device).index_add_(0, y, h)
        means = sums / counts.clamp(min=1).unsqueeze(1)
        # Tied covariance from the centred rows (no E[hh^T] - mm^T cancellation), in chunks.
        cov = torch.zeros(h.shape[1], h.shape[1], dtype=torch.float64, device=h.device)
        rows = max(1, CHUNK_DOUBLES // max(1, h.shape[1]))
        for start in range(0, h.shape[0], rows):
            centred = h[start:start + rows] - means[y[start:start + rows]]
            cov += centred.T @ centred
        cov = cov / h.shape[0]
        cov = 0.5 * (cov + cov.T)
        self.classes = torch.nonzero(present).flatten()
        self.mu = means[present]
        self.cov = cov
        self.precision = torch.linalg.pinv(cov, hermitian=True)
        return self

    def predict_features(self, z: torch.Tensor) -> torch.Tensor:
        return super().predict_features(z.detach().to(torch.float64))

    def classify_features(self, z: torch.Tensor) -> torch.Tensor:
        """The nearest fitted class of each row, in the Mahalanobis distance."""
        if self.mu is None:
            raise RequiresFittingException()
        return self.classes[self._half_squared_distances(z).argmin(dim=1)].cpu()

    def _half_squared_distances(self, z: torch.Tensor) -> torch.Tensor:
        """0.5 (h - m_c)^T P (h - m_c), [N, C] float64, the fitted classes only."""
        h = z.detach().to(device=self.mu.device, dtype=torch.float64)
        rows = max(1, CHUNK_DOUBLES // max(1, self.mu.numel()))
        out = []
        for start in range(0, h.shape[0], rows):
            centred = h[start:start + rows].unsqueeze(1) - self.mu.unsqueeze(0)      # [n, C, D]
            out.append(0.5 * ((centred @ self.precision) * centred).sum(-1))
        if not out:
            return torch.empty(0, self.mu.shape[0], dtype=torch.float64, device=self.mu.device)
        return torch.cat(out)


class KNNDetector(KNN):
    """Deep nearest neighbours, Sun et al., ICML 2022 ("Out-of-Distribution Detection with
    Deep Nearest Neighbors"), Algorithm 1: with z = h / ||h||_2, the outlier score is
    ||z - z_(k)||_2, the (not squared) distance to the k-th nearest normalised training
    feature; k = 50 by default (the paper's CIFAR-10 value), clamped to the training-set size.

    pytorch-ood's ``KNN`` (which normalises both sides and uses sklearn's exact
    ``NearestNeighbors`` on the CPU), fed float64 CPU features. Scoring the training set
    itself counts each image as its own nearest neighbour (distance 0), as the library does.
    """

    def __init__(self, encoder=None, k: int = 50):
        if int(k) < 1:
            raise ValueError(f"detector knn needs k >= 1, got {k}")
        super().__init__(encoder, k=int(k))
        self.requested_k = int(k)

    def fit_features(self, z: torch.Tensor, labels: torch.Tensor) -> "KNNDetector":
        labels = labels.detach().cpu()
        n_known = int((labels >= 0).sum())
        if n_known == 0:
            raise ValueError("detector knn: no known training image to fit on")
        self.k = min(self.requested_k, n_known)
        return super().fit_features(z.detach().to(device="cpu", dtype=torch.float64), labels)

    def predict_features(self, z: torch.Tensor) -> torch.Tensor:
        return super().predict_features(z.detach().to(device="cpu", dtype=torch.float64))


def vim_dim(feature_dim: int) -> int:
    """ViM's principal-subspace dimension d for features of width D.

    The ViM paper's rule (Wang et al. 2022, sec. 5; the official benchmark.py): d = 1000 for
    D >= 2048, d = 512 for D >= 768, else d = D // 2 (e.g. 256 for a ResNet-18's 512, the
    value OpenOOD uses on CIFAR).
    """
    feature_dim = int(feature_dim)
    if feature_dim >= 2048:
        return 1000
    if feature_dim >= 768:
        return 512
    return feature_dim // 2


class ViMDetector(ViM):
    """Virtual-logit matching, Wang et al., CVPR 2022 ("ViM: Out-Of-Distribution with
    Virtual-logit Matching"), sec. 3 (principal space, virtual logit, alpha, score):

    u = -W^+ b; R = the eigenvectors of the (uncentred, /N) covariance of (h_i - u) over the
    training set beyond the d largest eigenvalues; alpha = mean_i max_c f_c(x_i) /
    mean_i ||R^T (h_i - u)|| over the training set; outlier score
    alpha ||R^T (h - u)|| - log sum_c exp(f_c(x)), f = W h + b.

    pytorch-ood's ``ViM`` (float32) with d from :func:`vim_dim` (the paper's rule) unless
    given; W [K, D] and b [K] are a cross-entropy model's linear head.
    """

    def __init__(self, encoder, w: torch.Tensor, b: torch.Tensor, d: int | None = None):
        if w.dim() != 2 or b.dim() != 1 or b.shape[0] != w.shape[0]:
            raise ValueError(f"ViM needs a head weight [K, D] and bias [K], got {tuple(w.shape)} and {tuple(b.shape)}")
        d = vim_dim(w.shape[1]) if d is None else int(d)
        if not 0 <= d < w.shape[1]:
            raise ValueError(f"detector vim needs 0 <= d < {w.shape[1]} (the feature width), got {d}")
        super().__init__(encoder, d=d, w=w.detach(), b=b.detach())

    def fit_features(self, features: torch.Tensor, labels: torch.Tensor) -> "ViMDetector":
        if features.shape[1] != self.w.shape[1]:
            raise ValueError(f"ViM head expects {self.w.shape[1]}-dim features, got {features.shape[1]}")
        return super().fit_features(features, labels)


class LatentGaussians(FeaturesDetector):
    """The class Gaussians of the VMDLS latent mean alone (Dinari & Freifeld, UAI 2022,
    docs/method.md section 3 steps 1-2 restricted to f(x) = mu(x)):

    N(mu; m_c, S_c + lambda I) per class, fitted on the training set in float64 with this
    project's shared jitter lambda (models/gaussians.py: ``ClassGaussians.from_statistics``);
    outlier score -max_c log N(mu(x); m_c, S_c + lambda I), ``classify_features`` = argmax_c.
    """

    requires_fit = True

    def __init__(self, encoder=None, num_classes: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.num_classes = num_classes
        self.gaussians: ClassGaussians | None = None

    def fit_features(self, x: torch.Tensor, y: torch.Tensor) -> "LatentGaussians":
        mu = x.detach()
        y = y.to(device=mu.device, dtype=torch.long)
        stats = ClassStatistics(_known_classes(y, self.num_classes), mu.shape[1]).to(mu.device)
        stats.update(mu, y)
        self.gaussians = ClassGaussians.from_statistics(stats)
        return self

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log N(mu; m_c, S_c + lambda I), [N, K] float64."""
        if self.gaussians is None:
            raise RequiresFittingException()
        return self.gaussians.log_prob(x.detach())

    def max_log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x).max(dim=1).values

    def predict_features(self, x: torch.Tensor) -> torch.Tensor:
        return -self.max_log_likelihood(x)

    def classify_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x).argmax(dim=1).cpu()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            raise ModelNotSetException("this detector was built without an encoder: use predict_features on mu")
        return self.predict_features(self.encoder(x))
