"""The detectors ``test.py --detector`` accepts, by name: each one's pytorch-ood class, the
representation it reads from an image set's :class:`~models.records.FeatureRecord`, and the
model kinds (models/kinds.py) that provide it.

Every class is a pytorch-ood ``Detector`` with pytorch-ood's sign (higher = more unknown).
``needs`` is one of:

* ``"logits"``: a cross-entropy model's logits (``fit_logits`` / ``predict_logits``);
* ``"h"``: the backbone feature (``fit_features`` / ``predict_features``);
* ``"mu"``: a VMDLS model's latent mean (``fit_features`` / ``predict_features``);
* ``"ensemble"``: the paper's feature ensemble and reconstruction distance, which its own
  fitting pass and evaluation compute (models/detector.py);
* ``"inputs"``: gradients with respect to the images, a pass of its own (``predict``).

Importing this module imports no torch: the scripts' --help reads the names from here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from models.kinds import CE_KIND, KINDS, VMDLS_KIND

PAPER_DETECTOR = "vmdls"
CLASSIFIERS = ("gaussians", "h_linear")  # test.py --classifier: whose argmax is the closed-set class


@dataclass(frozen=True)
class DetectorEntry:
    class_path: str            # "module:Class", imported when first asked for
    needs: str                 # the representation it reads (module docstring)
    kinds: tuple[str, ...]     # the model kinds that provide it
    needs_text: str = ""       # what it needs, in words, for the sentence refusing another kind
    head: bool = False         # built on the model's linear head (weight [K, D], bias [K])

    @property
    def cls(self) -> type:
        module, name = self.class_path.split(":")
        return getattr(importlib.import_module(module), name)


_LOGITS = "a classifier's logits"
_BOTH = (VMDLS_KIND.name, CE_KIND.name)
DETECTORS: dict[str, DetectorEntry] = {
    PAPER_DETECTOR: DetectorEntry("models.detector:FeatureEnsembleDetector", "ensemble", (VMDLS_KIND.name,),
                                  "the feature ensemble and latent of a VMDLS checkpoint"),
    "msp": DetectorEntry("pytorch_ood.detector:MaxSoftmax", "logits", (CE_KIND.name,), _LOGITS),
    "energy": DetectorEntry("pytorch_ood.detector:EnergyBased", "logits", (CE_KIND.name,), _LOGITS),
    "maxlogit": DetectorEntry("pytorch_ood.detector:MaxLogit", "logits", (CE_KIND.name,), _LOGITS),
    "odin": DetectorEntry("pytorch_ood.detector:ODIN", "inputs", (CE_KIND.name,),
                          f"{_LOGITS} (it perturbs the images through the classifier)"),
    "mahalanobis": DetectorEntry("models.baselines:MahalanobisDetector", "h", _BOTH),
    "knn": DetectorEntry("models.baselines:KNNDetector", "h", _BOTH),
    "vim": DetectorEntry("models.baselines:ViMDetector", "h", (CE_KIND.name,), f"{_LOGITS} and linear head",
                         head=True),
    "vmdls_latent": DetectorEntry("models.baselines:LatentGaussians", "mu", (VMDLS_KIND.name,),
                                  "a VMDLS checkpoint's latent mu"),
}
KIND_WORDS = {name: kind.title for name, kind in KINDS.items()}


def default_detectors(kind: str) -> list[str]:
    """The paper's score for a VMDLS checkpoint; MSP for a cross-entropy one."""
    return [PAPER_DETECTOR] if kind == VMDLS_KIND.name else ["msp"]
