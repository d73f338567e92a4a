"""Reading files written by torch.save, with one-sentence errors for the user.

Checkpoints from the original implementation were pickled with classes of Lightning 1.1
and pl_bolts that no longer exist. Only their tensors and plain values matter here, so
a missing class is replaced by a placeholder instead of failing the whole load.
"""
from __future__ import annotations

import os
import pickle
import types
from argparse import Namespace

import torch

from utils.errors import UserError


class _MissingClass(dict):
    """Stands in, while unpickling an old checkpoint, for a class that no longer exists."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        self.__dict__["_pickled_state"] = state


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_MissingClass,), {"__module__": "vmdls_missing." + module})


def _lenient_pickle_module() -> types.ModuleType:
    module = types.ModuleType("vmdls_lenient_pickle")
    module.__dict__.update({k: v for k, v in pickle.__dict__.items() if not k.startswith("__")})
    module.Unpickler = _LenientUnpickler
    module.load = lambda file, **kw: _LenientUnpickler(file, **kw).load()
    return module


def _load(path: str, map_location):
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (ImportError, AttributeError):
        return torch.load(path, map_location=map_location, weights_only=False,
                          pickle_module=_lenient_pickle_module())


def read_torch_file(path: str | None, label: str, remedy: str, map_location="cpu", setting: str | None = None):
    """torch.load ``path``; a missing or unreadable file is a UserError naming it by
    ``label`` (what the file is) and ending with ``remedy`` (what to give instead);
    ``setting`` is the parameter the path came from."""
    if not path or not os.path.isfile(path):
        raise UserError(f"{label} {path!r} does not exist; {remedy}", setting=setting)
    try:
        return _load(path, map_location)
    except Exception as error:
        raise UserError(f"{label} {path!r} could not be read ({type(error).__name__}); {remedy}",
                        setting=setting) from None


def as_plain_dict(value) -> dict:
    """A checkpoint's saved hyperparameters as a plain dict: Lightning 2 saves a dict, the
    original's Lightning 1.1 checkpoints an argparse Namespace; anything else is empty."""
    if isinstance(value, Namespace):
        value = vars(value)
    try:
        return dict(value or {})
    except (TypeError, ValueError):
        return {}
