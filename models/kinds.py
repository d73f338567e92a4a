"""The kinds of model this project trains, by name: the LightningModule of each, what it is
called in sentences, and the weight that tells a checkpoint of it (models.checkpoints.checkpoint_kind).

A kind's name is what main.py's --objective takes, what results.json calls a checkpoint's
kind (``checkpoint_kind``) and what the detectors list as the models they can score.
Importing this module imports no torch: the model class is imported when first asked for.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelKind:
    name: str
    title: str  # the kind in a sentence: "a {title} checkpoint"
    class_path: str  # "module:Class" of the LightningModule
    head: str  # a weight that only this kind's model holds

    @property
    def model_class(self) -> type:
        module, name = self.class_path.split(":")
        return getattr(importlib.import_module(module), name)


VMDLS_KIND = ModelKind("vmdls", "VMDLS", "models.vmdls:VMDLS", "fc_mu.weight")
CE_KIND = ModelKind("ce", "cross-entropy", "models.classifier:CrossEntropyClassifier", "fc.weight")

KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (VMDLS_KIND, CE_KIND)}


def model_class(kind: str) -> type:
    """The LightningModule of the model kind called ``kind``."""
    return KINDS[kind].model_class
