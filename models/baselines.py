"""Standard OOD detectors on the outputs of one forward pass, through pytorch-ood.

``test.py`` runs one forward pass over each image set (training set, known test set, each
unknown set) and keeps, per image, the backbone feature h and either the logits of a
cross-entropy classifier (checkpoint kind ``"ce"``) or the latent mean mu of a VMDLS model
(kind ``"vmdls"``), collected in :class:`Outputs`. Each detector of :data:`BASELINES` is
fitted on the training set's outputs and scores the other sets.

Sign convention: unlike pytorch-ood, whose detectors return *outlier* scores (higher =
more unknown), :meth:`Baseline.score` returns **higher = more known** (in-distribution),
as float64 on the CPU, the convention of this project's own score s(x)
(models/detector.py). Every detector below negates pytorch-ood's score.

pytorch-ood 0.4.0 conventions found in its source (and how they are used here):

* ``MaxSoftmax.score``, ``EnergyBased.score``, ``MaxLogit.score`` are static methods on
  logits returning -max softmax, -logsumexp (T = 1) and -max logit.
* ``Mahalanobis`` reports half the *squared* distance, 0.5 min_c d_c^2, and its own
  ``fit_features`` estimates the tied covariance as the *unnormalised* sum of centred outer
  products plus 1e-6 I, in float32, inverted with ``torch.linalg.inv`` (it also asserts that
  every class 0..C-1 is present). That is scaled by N relative to the paper and breaks down
  when N < D; :class:`MahalanobisBaseline` therefore fits the class means and the tied
  covariance itself (float64, divided by N, pseudo-inverse, as Lee et al.'s reference code
  with sklearn's ``EmpiricalCovariance``) and scores with pytorch-ood's ``predict_features``.
* ``KNN`` L2-normalises both the fitted and the scored features, takes k in the
  constructor, raises when k exceeds the number of fitted rows (k is clamped here), and
  returns the distance itself (not squared), in float64.
* ``ViM`` takes ``w`` [K, D] and ``b`` [K], computes in float32, recomputes the logits as
  h W^T + b, and has no default d (it only halves d when d > D).
* ``ODIN`` / ``odin_preprocessing`` perturb whatever tensor the model is called on; with
  ``norm_std`` the sign gradient is divided by the per-channel std.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, ClassVar, Iterable, Optional, Sequence

import torch
from pytorch_ood.detector import KNN, ODIN as _PodODIN, EnergyBased, Mahalanobis, MaxLogit, MaxSoftmax, ViM

from models.gaussians import ClassGaussians, ClassStatistics
from utils.errors import UserError

CHECKPOINT_KINDS = ("ce", "vmdls")
# Largest number of float64 values one chunked intermediate holds (128 MiB).
_CHUNK_DOUBLES = 1 << 24


# --------------------------------------------------------------------------------------
# What one forward pass gives
# --------------------------------------------------------------------------------------


@dataclass
class Outputs:
    """What one forward pass gives for a set of images (float32 tensors on one device)."""

    labels: torch.Tensor                    # [N] long; class index, or K for unknown images
    features: torch.Tensor                  # [N, D] backbone feature h
    logits: Optional[torch.Tensor] = None   # [N, K], cross-entropy checkpoints
    mu: Optional[torch.Tensor] = None       # [N, L], VMDLS checkpoints

    def __post_init__(self):
        n = self.labels.shape[0]
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None and value.shape[0] != n:
                raise ValueError(f"Outputs.{field.name} has {value.shape[0]} rows, labels have {n}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, mask_or_index) -> "Outputs":
        """The rows picked by a boolean mask [N] or an index tensor / list / slice."""
        return Outputs(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[mask_or_index])
                          for f in fields(self)})

    @staticmethod
    def cat(parts: list["Outputs"]) -> "Outputs":
        """Rows of ``parts`` one after the other; they must carry the same fields."""
        parts = list(parts)
        if not parts:
            raise ValueError("Outputs.cat needs at least one part")
        merged = {}
        for field in fields(Outputs):
            values = [getattr(p, field.name) for p in parts]
            present = [v is not None for v in values]
            if all(present):
                merged[field.name] = torch.cat(values, dim=0)
            elif not any(present):
                merged[field.name] = None
            else:
                raise ValueError(f"Outputs.cat: {field.name} is missing in some parts only")
        return Outputs(**merged)

    def to(self, device) -> "Outputs":
        return Outputs(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device))
                          for f in fields(self)})


def _known_classes(labels: torch.Tensor, num_classes: Optional[int]) -> int:
    """K: given, or one more than the largest training label."""
    if num_classes is not None:
        return int(num_classes)
    if labels.numel() == 0:
        raise ValueError("cannot fit a detector on an empty training set")
    return int(labels.max()) + 1


def _as_score(values: torch.Tensor) -> torch.Tensor:
    return values.detach().to(device="cpu", dtype=torch.float64).reshape(-1)


# --------------------------------------------------------------------------------------
# The detectors
# --------------------------------------------------------------------------------------


class Baseline:
    """A detector fitted on the training set's :class:`Outputs` that scores other sets.

    ``needs`` names the output it reads ("logits", "features", "mu", or "inputs" for a
    detector that needs its own pass over the images); ``kinds`` the checkpoint kinds that
    provide it. ``score`` returns [N] float64 on the CPU, higher = more known.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[str] = ""
    kinds: ClassVar[tuple[str, ...]] = CHECKPOINT_KINDS
    requires_fit: ClassVar[bool] = False

    def __init__(self):
        self._fitted = not self.requires_fit

    def fit(self, train: Outputs) -> "Baseline":
        """Fit on the known training set's outputs; returns self (no-op for logit scores)."""
        self._fitted = True
        return self

    def score(self, outputs: Outputs) -> torch.Tensor:
        """[N] float64 on the CPU, higher = more known (in-distribution)."""
        raise NotImplementedError

    def predict(self, outputs: Outputs) -> Optional[torch.Tensor]:
        """[N] class predictions, or None (the caller then uses the checkpoint's classifier)."""
        return None

    # ---- helpers ----------------------------------------------------------------------

    def _input(self, outputs: Outputs) -> torch.Tensor:
        value = getattr(outputs, self.needs, None)
        if value is None:
            raise ValueError(f"detector {self.name} needs outputs.{self.needs}, which this set lacks")
        return value.detach()

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError(f"detector {self.name}: call fit(train) before score / predict")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MSP(Baseline):
    """Maximum softmax probability, Hendrycks & Gimpel, ICLR 2017 ("A Baseline for
    Detecting Misclassified and Out-of-Distribution Examples in Neural Networks").

    score(x) = max_c softmax(f(x))_c, from ``pytorch_ood.detector.MaxSoftmax.score`` (a
    static method returning its negative).
    """

    name = "msp"
    needs = "logits"
    kinds = ("ce",)

    def score(self, outputs: Outputs) -> torch.Tensor:
        return _as_score(-MaxSoftmax.score(self._input(outputs).double(), 1.0))


class Energy(Baseline):
    """Energy score, Liu et al., NeurIPS 2020 ("Energy-based Out-of-distribution
    Detection"), the free energy E(x; f) = -T log sum_c exp(f_c(x) / T) with T = 1;
    score(x) = -E(x) = T log sum_c exp(f_c(x) / T).

    From ``pytorch_ood.detector.EnergyBased.score(logits, t)`` (static; returns E(x)).
    """

    name = "energy"
    needs = "logits"
    kinds = ("ce",)

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = float(temperature)

    def score(self, outputs: Outputs) -> torch.Tensor:
        return _as_score(-EnergyBased.score(self._input(outputs).double(), self.temperature))


class MaxLogitBaseline(Baseline):
    """Maximum logit, Hendrycks et al., ICML 2022 ("Scaling Out-of-Distribution Detection
    for Real-World Settings"): score(x) = max_c f_c(x).

    From ``pytorch_ood.detector.MaxLogit.score`` (static; returns -max logit).
    """

    name = "maxlogit"
    needs = "logits"
    kinds = ("ce",)

    def score(self, outputs: Outputs) -> torch.Tensor:
        return _as_score(-MaxLogit.score(self._input(outputs).double()))


class MahalanobisBaseline(Baseline):
    """Mahalanobis distance to the closest class mean, Lee et al., NeurIPS 2018 ("A Simple
    Unified Framework for Detecting Out-of-Distribution Samples and Adversarial Attacks"),
    eq. (2) without input preprocessing (eps = 0) and on the penultimate feature h only.

    Fit (float64): class means m_c and one tied covariance
    S = (1/N) sum_i (h_i - m_{y_i})(h_i - m_{y_i})^T (normalised by N, as the reference
    code's ``sklearn.covariance.EmpiricalCovariance``), precision P = pinv(S) (symmetric
    pseudo-inverse, so a singular S with N < D fits without error).

    score(x) = -0.5 min_c (h - m_c)^T P (h - m_c): half the *squared* distance, the
    convention of ``pytorch_ood.detector.Mahalanobis.predict_features``, which computes it
    from the fitted m_c and P. (pytorch-ood's own ``fit_features`` would divide S by nothing,
    add 1e-6 I and invert in float32: the same ranking up to the factor N, but unusable
    when N < D.) predict(x) = argmin_c of that distance. Classes absent from the training
    set are left out (never predicted).
    """

    name = "mahalanobis"
    needs = "features"
    requires_fit = True

    def __init__(self, num_classes: Optional[int] = None):
        super().__init__()
        self.num_classes = num_classes
        self.detector = Mahalanobis(None)
        self.classes: Optional[torch.Tensor] = None   # original class index of each fitted mean

    def fit(self, train: Outputs) -> "MahalanobisBaseline":
        h = self._input(train).to(torch.float64)
        y = train.labels.to(device=h.device, dtype=torch.long)
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
        rows = max(1, _CHUNK_DOUBLES // max(1, h.shape[1]))
        for start in range(0, h.shape[0], rows):
            centred = h[start:start + rows] - means[y[start:start + rows]]
            cov += centred.T @ centred
        cov = cov / h.shape[0]
        cov = 0.5 * (cov + cov.T)
        self.classes = torch.nonzero(present).flatten()
        self.detector.mu = means[present]
        self.detector.cov = cov
        self.detector.precision = torch.linalg.pinv(cov, hermitian=True)
        self._fitted = True
        return self

    def _half_squared_distances(self, h: torch.Tensor) -> torch.Tensor:
        """0.5 (h - m_c)^T P (h - m_c), [N, C] float64, the fitted classes only."""
        mu, precision = self.detector.mu, self.detector.precision
        h = h.to(device=mu.device, dtype=torch.float64)
        rows = max(1, _CHUNK_DOUBLES // max(1, mu.numel()))
        out = []
        for start in range(0, h.shape[0], rows):
            centred = h[start:start + rows].unsqueeze(1) - mu.unsqueeze(0)      # [n, C, D]
            out.append(0.5 * ((centred @ precision) * centred).sum(-1))
        if not out:
            return torch.empty(0, mu.shape[0], dtype=torch.float64, device=mu.device)
        return torch.cat(out)

    def score(self, outputs: Outputs) -> torch.Tensor:
        self._check_fitted()
        h = self._input(outputs).to(torch.float64)
        return _as_score(-self.detector.predict_features(h))

    def predict(self, outputs: Outputs) -> torch.Tensor:
        self._check_fitted()
        nearest = self._half_squared_distances(self._input(outputs)).argmin(dim=1)
        return self.classes[nearest].cpu()


class KNNBaseline(Baseline):
    """Deep nearest neighbours, Sun et al., ICML 2022 ("Out-of-Distribution Detection with
    Deep Nearest Neighbors"), Algorithm 1: with z = h / ||h||_2,
    score(x) = -||z - z_(k)||_2, the (not squared) distance to the k-th nearest normalised
    training feature; k = 50 by default (the paper's CIFAR-10 value), clamped to the
    training-set size.

    From ``pytorch_ood.detector.KNN`` (which normalises both sides and uses sklearn's exact
    ``NearestNeighbors`` on the CPU). Scoring the training set itself counts each image as
    its own nearest neighbour (distance 0), as the library does.
    """

    name = "knn"
    needs = "features"
    requires_fit = True

    def __init__(self, k: int = 50):
        super().__init__()
        if int(k) < 1:
            raise ValueError(f"detector knn needs k >= 1, got {k}")
        self.k = int(k)
        self.detector: Optional[KNN] = None

    def fit(self, train: Outputs) -> "KNNBaseline":
        h = self._input(train).to(device="cpu", dtype=torch.float64)
        y = train.labels.detach().cpu()
        n_known = int((y >= 0).sum())
        if n_known == 0:
            raise ValueError("detector knn: no known training image to fit on")
        self.detector = KNN(None, k=min(self.k, n_known)).fit_features(h, y)
        self._fitted = True
        return self

    def score(self, outputs: Outputs) -> torch.Tensor:
        self._check_fitted()
        h = self._input(outputs).to(device="cpu", dtype=torch.float64)
        return _as_score(-self.detector.predict_features(h))


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


class ViMBaseline(Baseline):
    """Virtual-logit matching, Wang et al., CVPR 2022 ("ViM: Out-Of-Distribution with
    Virtual-logit Matching"), sec. 3 (principal space, virtual logit, alpha, score):

    u = -W^+ b; R = the eigenvectors of the (uncentred, /N) covariance of (h_i - u) over the
    training set beyond the d largest eigenvalues; alpha = mean_i max_c f_c(x_i) /
    mean_i ||R^T (h_i - u)|| over the training set;
    score(x) = log sum_c exp(f_c(x)) - alpha ||R^T (h - u)||, f = W h + b.

    From ``pytorch_ood.detector.ViM(None, d, w=W, b=b)`` (float32; returns minus this).
    d defaults to :func:`vim_dim` (the paper's rule). needs="logits": only cross-entropy
    checkpoints have the linear head (weight [K, D], bias [K]).
    """

    name = "vim"
    needs = "logits"
    kinds = ("ce",)
    requires_fit = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, d: Optional[int] = None):
        super().__init__()
        if weight.dim() != 2 or bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(f"ViM needs a head weight [K, D] and bias [K], got "
                             f"{tuple(weight.shape)} and {tuple(bias.shape)}")
        self.weight = weight.detach()
        self.bias = bias.detach()
        self.d = None if d is None else int(d)
        self.detector: Optional[ViM] = None

    def fit(self, train: Outputs) -> "ViMBaseline":
        h = train.features.detach()
        if h.shape[1] != self.weight.shape[1]:
            raise ValueError(f"ViM head expects {self.weight.shape[1]}-dim features, got {h.shape[1]}")
        d = vim_dim(h.shape[1]) if self.d is None else self.d
        if not 0 <= d < h.shape[1]:
            raise ValueError(f"detector vim needs 0 <= d < {h.shape[1]} (the feature width), got {d}")
        self.detector = ViM(None, d=d, w=self.weight.to(h.device), b=self.bias.to(h.device))
        self.detector.fit_features(h, train.labels.to(h.device))
        self._fitted = True
        return self

    @property
    def alpha(self) -> Optional[float]:
        return None if self.detector is None else self.detector.alpha

    def score(self, outputs: Outputs) -> torch.Tensor:
        self._check_fitted()
        return _as_score(-self.detector.predict_features(outputs.features.detach()))


class VMDLSLatent(Baseline):
    """The class Gaussians of the VMDLS latent mean alone (Dinari & Freifeld, UAI 2022,
    docs/method.md section 3 steps 1-2 restricted to f(x) = mu(x)):

    N(mu; m_c, S_c + lambda I) per class, fitted on the training set in float64 with this
    project's shared jitter lambda (models/gaussians.py: ``ClassGaussians.fit``, lambda =
    (k + 2) * 1e-6 with k the smallest step that factorises every class);
    score(x) = max_c log N(mu(x); m_c, S_c + lambda I), predict(x) = argmax_c.
    """

    name = "vmdls_latent"
    needs = "mu"
    kinds = ("vmdls",)
    requires_fit = True

    def __init__(self, num_classes: Optional[int] = None):
        super().__init__()
        self.num_classes = num_classes
        self.gaussians: Optional[ClassGaussians] = None

    def fit(self, train: Outputs) -> "VMDLSLatent":
        mu = self._input(train)
        y = train.labels.to(device=mu.device, dtype=torch.long)
        k = _known_classes(y, self.num_classes)
        stats = ClassStatistics(k, mu.shape[1]).to(mu.device)
        stats.update(mu, y)
        self.gaussians = ClassGaussians.from_statistics(stats)
        self._fitted = True
        return self

    def log_prob(self, outputs: Outputs) -> torch.Tensor:
        self._check_fitted()
        return self.gaussians.log_prob(self._input(outputs))

    def score(self, outputs: Outputs) -> torch.Tensor:
        return _as_score(self.log_prob(outputs).max(dim=1).values)

    def predict(self, outputs: Outputs) -> torch.Tensor:
        return self.log_prob(outputs).argmax(dim=1).cpu()


# --------------------------------------------------------------------------------------
# ODIN: needs its own pass over the images
# --------------------------------------------------------------------------------------


def odin_scores(logit_fn: Callable[[torch.Tensor], torch.Tensor],
                batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                preprocess: Callable[[torch.Tensor], torch.Tensor],
                temperature: float = 1000.0, eps: float = 0.0014,
                device: torch.device | str | None = None,
                norm_std: Optional[Sequence[float]] = None) -> torch.Tensor:
    """ODIN scores of a set of images, [N] float64 on the CPU, higher = more known.

    Liang et al., ICLR 2018 ("Enhancing The Reliability of Out-of-distribution Image
    Detection in Neural Networks"), eqs. (1)-(2): x' = x - eps sign(-grad_x log S_yhat(x; T)),
    score = max_c S_c(x'; T), S(x; T) = softmax(f(x) / T). Through
    ``pytorch_ood.detector.ODIN`` (whose outlier score is negated here).

    ``batches`` yields (x, y) with raw [0, 1] images; x is moved to ``device`` and
    normalised by ``preprocess``, and ``logit_fn`` maps the normalised batch to logits.
    The input perturbation is applied in the normalised space: x' = preprocess(x) - eps *
    sign(gradient), so eps is in normalised units. With ``norm_std`` (the per-channel std
    of ``preprocess``) the sign gradient is divided by it, as in the ODIN reference code,
    which makes eps a step in raw [0, 1] pixel units. eps = 0 gives the temperature-scaled
    MSP of the unperturbed images.
    """
    detector = _PodODIN(logit_fn, eps=float(eps), temperature=float(temperature),
                        norm_std=list(norm_std) if norm_std is not None else None)
    out = []
    for x, _ in batches:
        if device is not None:
            x = x.to(device)
        outlier = detector.predict(preprocess(x))
        out.append(_as_score(-outlier))
    if not out:
        return torch.empty(0, dtype=torch.float64)
    return torch.cat(out)


class ODINBaseline(Baseline):
    """ODIN (Liang et al., ICLR 2018): temperature scaling plus an input perturbation.

    It needs gradients with respect to the images, so it cannot run on stored
    :class:`Outputs`: ``needs == "inputs"`` tells the caller to make its own pass with
    :meth:`score_inputs` (i.e. :func:`odin_scores`). The perturbation is applied in the
    normalised input space (see :func:`odin_scores`). Needs a classifier's logits, so
    cross-entropy checkpoints only.
    """

    name = "odin"
    needs = "inputs"
    kinds = ("ce",)

    def __init__(self, temperature: float = 1000.0, eps: float = 0.0014,
                 norm_std: Optional[Sequence[float]] = None):
        super().__init__()
        self.temperature = float(temperature)
        self.eps = float(eps)
        self.norm_std = norm_std

    def score(self, outputs: Outputs) -> torch.Tensor:
        raise TypeError("detector odin needs the images themselves (a gradient pass): "
                        "call score_inputs(logit_fn, batches, preprocess, device)")

    def score_inputs(self, logit_fn, batches, preprocess, device=None) -> torch.Tensor:
        return odin_scores(logit_fn, batches, preprocess, temperature=self.temperature,
                           eps=self.eps, device=device, norm_std=self.norm_std)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

BASELINE_NAMES: tuple[str, ...] = ("msp", "energy", "maxlogit", "odin", "mahalanobis", "knn",
                                   "vim", "vmdls_latent")

BASELINES: dict[str, type[Baseline]] = {
    "msp": MSP,
    "energy": Energy,
    "maxlogit": MaxLogitBaseline,
    "odin": ODINBaseline,
    "mahalanobis": MahalanobisBaseline,
    "knn": KNNBaseline,
    "vim": ViMBaseline,
    "vmdls_latent": VMDLSLatent,
}

_CE_HINT = "evaluate a checkpoint trained with main.py --objective ce"
_VMDLS_HINT = "evaluate a checkpoint trained with main.py --objective vmdls"
_NEEDS_TEXT = {
    "msp": "a classifier's logits",
    "energy": "a classifier's logits",
    "maxlogit": "a classifier's logits",
    "odin": "a classifier's logits (it perturbs the images through the classifier)",
    "vim": "a classifier's logits and linear head",
    "vmdls_latent": "a VMDLS checkpoint's latent mu",
}


def make_baseline(name: str, checkpoint_kind: str,
                  head: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                  **options) -> Baseline:
    """The detector ``name`` for a checkpoint of kind ``checkpoint_kind`` ("ce" | "vmdls").

    ``head`` = (weight [K, D], bias [K]) of a cross-entropy checkpoint's linear classifier,
    needed by vim. ``options`` go to the detector's constructor (e.g. k for knn, d for vim,
    temperature / eps for odin). Raises :class:`UserError` (setting "detector") with one
    sentence when the detector does not fit the checkpoint.
    """
    if name not in BASELINES:
        raise UserError(f"Unknown detector {name!r}; choose one of {', '.join(BASELINE_NAMES)}.",
                        setting="detector")
    if checkpoint_kind not in CHECKPOINT_KINDS:
        raise ValueError(f"checkpoint kind must be one of {CHECKPOINT_KINDS}, got {checkpoint_kind!r}")
    cls = BASELINES[name]
    if checkpoint_kind not in cls.kinds:
        hint = _CE_HINT if cls.kinds == ("ce",) else _VMDLS_HINT
        raise UserError(f"detector {name} needs {_NEEDS_TEXT[name]}: {hint}.", setting="detector")
    if cls is ViMBaseline:
        if head is None:
            raise UserError("detector vim needs the linear head's weight and bias of a "
                            "cross-entropy checkpoint, and none was given.", setting="detector")
        weight, bias = head
        return ViMBaseline(weight, bias, **options)
    return cls(**options)
