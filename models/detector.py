"""The paper's OOD detector: class Gaussians of a deep feature ensemble, weighted by an
autoencoder's reconstruction error, behind pytorch-ood's ``Detector`` interface.

Dinari & Freifeld, "Variational- and Metric-based Deep Latent Space for Out-of-Distribution
Detection", UAI 2022; docs/method.md section 3 states it step by step:

1. f(x) = [tap1, tap2, tap3, h, mu] from one forward pass; per class c, the mean m_c and
   covariance S_c of f over the known training set (float64), one shared jitter lambda I.
2. l_c(x) = log N(f(x); m_c, S_c + lambda I); the predicted class is argmax_c l_c(x).
3. r(x) = mean((tap1(x) - tap1(AE(x)))^2) / r_max (r = 1 without an autoencoder).
4. s(x) = max_c (l_c(x) - M) * r(x), M = max l + 1. Higher s = more in-distribution.

As in pytorch-ood, ``predict(x)`` and ``predict_features(f)`` return *outlier* scores
(higher = more unknown), here -s(x), with M and r_max taken from the known training set
by ``fit``; so one batch, or one image, is scored on its own. The paper's numbers take M
and r_max from the evaluated images instead: that set-level step is :func:`score_set`,
on the :class:`~models.records.FeatureRecord` of :meth:`FeatureEnsembleDetector.evaluate`.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from pytorch_ood.api import FeaturesDetector, RequiresFittingException
from torch import nn

from models.class_statistics import ClassStatistics
from models.gaussians import ClassGaussians
from models.records import FeatureRecord
from models.speed import ChannelsLast, autocast, full_precision

Batch = tuple[torch.Tensor, torch.Tensor]

# The most f(x) values (N x D) the fitting pass keeps to score the training set for
# ``--score_stats train`` without a second pass (1e8 float32 values: 400 MB).
FIT_KEEP_LIMIT = 10**8


def _dataset_size(loader) -> int | None:
    """The number of images a loader yields, when it says (a DataLoader over a sized dataset)."""
    for candidate in (loader, getattr(loader, "iterable", None)):  # tqdm keeps the loader as .iterable
        dataset = getattr(candidate, "dataset", None)
        if dataset is not None:
            try:
                return len(dataset)
            except TypeError:
                return None
    return None


def likelihood_outlier(log_likelihoods: torch.Tensor, reconstruction: torch.Tensor,
                       top: float, max_reconstruction: float) -> torch.Tensor:
    """The outlier score -s(x) = (M - max_c l_c(x)) * r(x) / r_max with M = top + 1 (step 4).

    Rule: the gap M - max_c l_c(x) is floored at 1, the gap of an image as likely as the
    most likely reference image. With the evaluated images as reference (``score_set``)
    it never acts; with the training set as reference, an image more likely than every
    training image keeps a negative (l - M), so a worse reconstruction (larger r) always
    lowers s, instead of raising it once (l - M) turned positive.
    """
    best = log_likelihoods.max(dim=1).values
    gap = (top + 1.0) - best
    gap = torch.where(best > top, torch.ones_like(gap), gap)
    weight = reconstruction / max_reconstruction if max_reconstruction > 0 else torch.ones_like(reconstruction)
    return gap * weight.to(gap)


def score_set(record: FeatureRecord) -> torch.Tensor:
    """The paper's default (``test.py --score_stats test``): outlier scores with M and r_max
    from the evaluated images themselves, so an image's score depends on the set it comes with."""
    return likelihood_outlier(record.log_likelihoods, record.reconstruction,
                              float(record.log_likelihoods.max()), float(record.reconstruction.max()))


class FeatureEnsembleDetector(FeaturesDetector):
    """Dinari & Freifeld (UAI 2022): the class-Gaussian likelihood of the feature ensemble,
    weighted by the reconstruction distance (module docstring, steps 1-4).

    ``model`` is a trained :class:`models.vmdls.VMDLS` (anything with ``embed(x)`` giving
    ``h``, ``taps`` and ``mu``, an ``encoder`` and ``hparams.class_num``); ``autoencoder``
    maps a normalised batch to its reconstruction (None: r = 1); ``preprocess`` turns the
    loader's [0, 1] images into the normalised batch the model takes.

    pytorch-ood interface: ``fit(loader)``, ``fit_features(f, y)``, ``predict(x)`` and
    ``predict_features(f)``; outlier score = -s(x), higher is more unknown.
    """

    requires_fit = True

    def __init__(self, model: nn.Module | None, autoencoder: nn.Module | None = None,
                 preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 device: torch.device | str | None = None, num_classes: int | None = None,
                 jitter_step: float = 1e-6, extra_steps: int = 2, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        # The forward passes' autocast (test.py --precision bf16-mixed); features, statistics and
        # scores stay float32 / float64.
        self.autocast_dtype = autocast_dtype
        self.model = model.eval() if model is not None else None
        self.autoencoder = autoencoder.eval() if autoencoder is not None else None
        self.preprocess = preprocess or (lambda x: x)
        self.num_classes = int(num_classes if num_classes is not None else model.hparams.class_num)
        self.jitter_step = jitter_step
        self.extra_steps = extra_steps
        self.gaussians: ClassGaussians | None = None
        self.max_log_likelihood: float | None = None   # of the training set: M - 1
        self.max_reconstruction: float | None = None   # of the training set: r_max
        self.fit_record: FeatureRecord | None = None  # the training set's h and mu: fit(keep_outputs=True)
        self.to(device or "cpu")

    def to(self, device) -> "FeatureEnsembleDetector":
        super().to(device)
        if self.gaussians is not None:
            self.gaussians.to(device)
        return self

    # ------------------------------------------------------------------ feature passes
    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """The normalised batch, its tap1, f(x) and the model's outputs, from one backbone pass."""
        if self.model is None:
            raise ValueError("this detector was built without a model: use fit_features / predict_features")
        x = self.preprocess(x.to(self.device, non_blocking=True))
        with autocast(self.device, self.autocast_dtype):
            out = self.model.embed(x)
        if self.autocast_dtype is not None:
            out = {"h": full_precision(out["h"]), "taps": [full_precision(t) for t in out["taps"]],
                   "mu": full_precision(out["mu"]), "log_var": full_precision(out["log_var"])}
        return x, out["taps"][0], torch.cat([*out["taps"], out["h"], out["mu"]], dim=1), out

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f(x) and r(x) before normalisation, for a batch of loader images: one backbone
        pass, plus one over the autoencoder's reconstruction."""
        f, r, _ = self._features_and_outputs(x)
        return f, r

    def _features_and_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        x, tap1, f, out = self._embed(x)
        return f, self._reconstruction_distance(x, tap1), out

    def _reconstruction_distance(self, x: torch.Tensor, tap1: torch.Tensor) -> torch.Tensor:
        """mean over dims of (tap1(x) - tap1(AE(x)))^2; 1 without an autoencoder."""
        if self.autoencoder is None:
            return torch.ones(len(x), dtype=torch.float64, device=x.device)
        with autocast(self.device, self.autocast_dtype):
            reconstructed = self.autoencoder(x)
            if isinstance(self.model, ChannelsLast):
                reconstructed = self.model.in_memory_format(reconstructed)
            _, reconstructed_taps = self.model.encoder(reconstructed)
        return ((tap1 - reconstructed_taps[0].to(tap1.dtype)) ** 2).mean(dim=1).double()

    # ------------------------------------------------------------------------ fitting
    @torch.no_grad()
    def fit(self, data_loader: Iterable[Batch], score_statistics: bool = True,
            keep_outputs: bool = False, keep_limit: int = FIT_KEEP_LIMIT) -> "FeatureEnsembleDetector":
        """Step 1 on the known training set, in one pass; with ``score_statistics``, also the
        training set's M and r_max, which ``predict`` needs. r(x) comes from the same pass;
        M needs the fitted Gaussians, so the pass keeps f(x) on the device and scores it
        once they are fitted, unless f(x) of the whole set would exceed ``keep_limit``
        values (N x D; 1e8, 400 MB, by default): then a second pass computes M (and the
        loader must be iterable twice: a DataLoader or a list, not a generator).
        ``keep_outputs`` keeps the training images' h, mu and labels from the same pass in
        :attr:`fit_record`, for other detectors fitted on the same model."""
        total = _dataset_size(data_loader)
        keep_features = score_statistics and (total is None or total * self._feature_dim_hint() <= keep_limit)
        stats: ClassStatistics | None = None
        kept: dict[str, list[torch.Tensor]] = {"h": [], "mu": [], "labels": []}
        features: list[torch.Tensor] | None = [] if keep_features else None
        reconstruction: list[torch.Tensor] = []
        kept_values = 0
        for x, y in data_loader:
            if score_statistics:
                f, r, out = self._features_and_outputs(x)
                reconstruction.append(r)
            else:
                _, _, f, out = self._embed(x)
            if stats is None:
                stats = ClassStatistics(self.num_classes, f.shape[1]).to(f.device)
            stats.update(f, y)
            if features is not None:
                kept_values += f.numel()
                if kept_values <= keep_limit:
                    features.append(f)
                else:  # larger than announced: score the training set in a second pass
                    features = None
            if keep_outputs:
                kept["h"].append(full_precision(out["h"]))
                kept["mu"].append(full_precision(out["mu"]))
                kept["labels"].append(y)
        self.fit_record = None if not keep_outputs or stats is None else FeatureRecord(
            **{k: torch.cat(v).cpu() for k, v in kept.items()})
        if stats is None:
            raise ValueError("the training set gave no batches to fit the class Gaussians on")
        self.gaussians = ClassGaussians.from_statistics(stats, step=self.jitter_step, extra_steps=self.extra_steps)
        if score_statistics and features is not None:
            # max l over the training images and classes; batch by batch, as a second pass would score them
            self.max_log_likelihood = float(torch.stack([self.gaussians.log_prob(f).max() for f in features]).max())
            self.max_reconstruction = float(torch.cat(reconstruction).max())
        elif score_statistics:
            if iter(data_loader) is data_loader:
                raise ValueError("the training set's features are too many to keep, so fit() passes over it twice: "
                                 "give a DataLoader or a list of batches, not a one-shot iterator")
            self.fit_score_statistics(data_loader)
        return self

    def _feature_dim_hint(self) -> int:
        """D of f(x), from the backbone's tap dimensions when it declares them (else 1: the
        limit is then checked as the features come)."""
        encoder = getattr(self.model, "encoder", None)
        taps, h = getattr(encoder, "tap_dims", None), getattr(encoder, "feature_dim", None)
        mu = getattr(getattr(self.model, "fc_mu", None), "out_features", None)
        if taps is None or h is None or mu is None:
            return 1
        return int(sum(taps) + h + mu)

    @torch.no_grad()
    def fit_score_statistics(self, data_loader: Iterable[Batch]) -> "FeatureEnsembleDetector":
        """M - 1 and r_max of the known training set (a pass after the Gaussians are fitted)."""
        record = self.evaluate(data_loader)
        self.max_log_likelihood = float(record.log_likelihoods.max())
        self.max_reconstruction = float(record.reconstruction.max())
        return self

    @torch.no_grad()
    def fit_features(self, x: torch.Tensor, y: torch.Tensor,
                     reconstruction: torch.Tensor | None = None) -> "FeatureEnsembleDetector":
        """Steps 1 and the training statistics from precomputed f(x) [N, D] of the known
        training set and its labels; ``reconstruction`` is r(x) of the same images (r_max
        is 1 without it)."""
        stats = ClassStatistics(self.num_classes, x.shape[1]).to(x.device)
        stats.update(x, y)
        self.gaussians = ClassGaussians.from_statistics(stats, step=self.jitter_step, extra_steps=self.extra_steps)
        known = (y >= 0) & (y < self.num_classes)
        self.max_log_likelihood = float(self.gaussians.log_prob(x[known]).max())
        self.max_reconstruction = 1.0 if reconstruction is None else float(reconstruction[known].max())
        return self

    # ------------------------------------------------------------------------ scoring
    def _require_fit(self, statistics: bool) -> None:
        if self.gaussians is None or (statistics and self.max_log_likelihood is None):
            raise RequiresFittingException("call fit() (or fit_features()) before scoring")

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Outlier scores -s(x) of one batch of loader images, M and r_max from training."""
        self._require_fit(statistics=True)
        f, r = self.features(x)
        return self.predict_features(f, r)

    @torch.no_grad()
    def predict_features(self, x: torch.Tensor, reconstruction: torch.Tensor | None = None) -> torch.Tensor:
        """Outlier scores -s(x) from f(x) [N, D] (and r(x) before normalisation, if any)."""
        self._require_fit(statistics=True)
        log_likelihoods = self.gaussians.log_prob(x)
        if reconstruction is None:
            reconstruction = torch.ones(len(x), dtype=torch.float64, device=log_likelihoods.device)
        return likelihood_outlier(log_likelihoods, reconstruction.to(log_likelihoods.device),
                                  self.max_log_likelihood, self.max_reconstruction)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch], keep_ensemble: bool = False,
                 keep_outputs: bool = False) -> FeatureRecord:
        """l_c(x) and r(x) of every image (steps 2 and 3), unscored: :func:`score_set` or
        :meth:`predict_record` turns them into outlier scores. ``keep_outputs`` keeps h and mu
        of the same pass, for other detectors; ``keep_ensemble`` keeps f(x)."""
        self._require_fit(statistics=False)
        # Everything stays on the device until the pass ends: no synchronisation per batch.
        kept: dict[str, list[torch.Tensor]] = {"log_likelihoods": [], "reconstruction": [], "labels": [],
                                               "ensemble": [], "h": [], "mu": []}
        for x, y in batches:
            f, r, out = self._features_and_outputs(x)
            kept["log_likelihoods"].append(self.gaussians.log_prob(f))
            kept["reconstruction"].append(r)
            kept["labels"].append(y)
            if keep_ensemble:
                kept["ensemble"].append(f)
            if keep_outputs:
                kept["h"].append(full_precision(out["h"]))
                kept["mu"].append(full_precision(out["mu"]))
        if not kept["labels"]:
            raise ValueError("no batches to evaluate")
        return FeatureRecord(**{name: torch.cat(values).cpu() if values else None for name, values in kept.items()})

    def predict_record(self, record: FeatureRecord) -> torch.Tensor:
        """Outlier scores of evaluated images with M and r_max of the training set (``--score_stats train``)."""
        self._require_fit(statistics=True)
        return likelihood_outlier(record.log_likelihoods, record.reconstruction,
                                  self.max_log_likelihood, self.max_reconstruction)
