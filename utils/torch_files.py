"""Reading files written by torch.save safely, with one-sentence errors for the user.

Unpickling can run any Python callable a file names, so by default nothing from a file is
called unless it is on an allow-list of plain types (``ALLOWED``):

1. ``torch.load(..., weights_only=True)``, with the allow-list's plain types added for the
   duration of the call (``torch.serialization.safe_globals``): torch's own restricted
   unpickler, which reads every checkpoint this project writes.
2. When that refuses the file (the original implementation's checkpoints pickle classes
   of Lightning 1.1 and pl_bolts, or dict subclasses such as Lightning's AttributeDict,
   which torch's unpickler cannot build), a restricted unpickler of our own
   (``_SafeUnpickler``) reads it: a global on the allow-list is the real object; a class
   of the frameworks the original pickled (``STAND_IN_PACKAGES``) or of a module that is
   not installed becomes an inert placeholder (``_MissingClass``), whose construction
   ignores its arguments and stores its pickled state as data; anything else (os.system,
   builtins.eval, any other callable) refuses the file with a UserError naming the
   ``trust_checkpoint`` setting.

With ``trust=True`` (--trust_checkpoint) a file is read with ``weights_only=False``: it
may run code, so only for files one trusts. Missing classes still become placeholders.

Data files that are pickles (the CIFAR batches) are read by ``load_data_pickle``, whose
allow-list is narrower still: plain containers, numbers, strings, bytes and numpy's array
rebuild, with no placeholders and no way to trust more.
"""
from __future__ import annotations

import _compat_pickle
import collections
import contextlib
import functools
import importlib.util
import os
import pathlib
import pickle
import sys
import types
from argparse import Namespace

import torch

from utils.errors import UserError

# Top-level packages whose pickled classes and functions are replaced by inert placeholders
# instead of being imported: the frameworks the original implementation's checkpoints
# pickle (Lightning 1.1 callbacks, pl_bolts, OmegaConf, Neptune) and the original
# repository's own packages. Nothing of these is needed to read weights and settings.
STAND_IN_PACKAGES = frozenset({
    "pytorch_lightning", "lightning", "lightning_fabric", "pl_bolts", "omegaconf", "neptune", "neptunecontrib",
    "models", "losses", "data",
})


def _numpy_globals() -> dict[str, object]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a requirement
        return {}
    core = getattr(np, "_core", None) or np.core
    out = {"numpy.dtype": np.dtype, "numpy.ndarray": np.ndarray}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x and 2.x pickles
        out[f"{module}.scalar"] = core.multiarray.scalar
        out[f"{module}._reconstruct"] = core.multiarray._reconstruct
    return out


def _attribute_dict_globals() -> dict[str, object]:
    """Lightning's AttributeDict (a plain dict subclass; hparams of Lightning 1.x), imported
    by us, not at the file's request. Lightning is a requirement of every script."""
    try:
        from pytorch_lightning.utilities.parsing import AttributeDict
    except ImportError:  # pragma: no cover
        return {}
    names = ("pytorch_lightning.utilities.parsing.AttributeDict", "lightning_fabric.utilities.data.AttributeDict",
             "lightning.fabric.utilities.data.AttributeDict", "lightning.pytorch.utilities.parsing.AttributeDict")
    return {name: AttributeDict for name in names}


# The plain types a checkpoint or weights file may hold besides tensors, by pickled name.
# Each builds a value from its arguments and runs nothing else. torch's own list (tensors,
# storages, dtypes, OrderedDict, Counter, torch.Size, torch.device, the tensor rebuild
# functions, _codecs.encode, set, bytearray, complex) is added in _allowed().
_PLAIN: dict[str, object] = {
    "argparse.Namespace": Namespace,
    "collections.OrderedDict": collections.OrderedDict,
    "collections.defaultdict": collections.defaultdict,
    "collections.Counter": collections.Counter,
    **{f"builtins.{t.__name__}": t for t in (list, dict, tuple, set, frozenset, int, float, complex, str, bool,
                                             bytearray)},
    **{f"{module}.{cls.__name__}": cls for module in ("pathlib", "pathlib._local")
       for cls in (pathlib.PosixPath, pathlib.PurePosixPath, pathlib.PureWindowsPath)},
    "torch.torch_version.TorchVersion": torch.torch_version.TorchVersion,
}


@functools.lru_cache(maxsize=1)
def _allowed() -> dict[str, object]:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals
        torch_own = dict(_get_allowed_globals())
    except (ImportError, AttributeError):  # pragma: no cover - torch < 1.13
        torch_own = {}
    return {**torch_own, **_PLAIN, **_numpy_globals(), **_attribute_dict_globals()}


def allowed_names() -> list[str]:
    """The allow-list: the pickled names a file may use without --trust_checkpoint."""
    return sorted(_allowed())


class _MissingClass(dict):
    """An inert stand-in for a pickled class or function that is not loaded: building it
    ignores its arguments, and its pickled state and items are kept as data. Being a dict,
    it reads as an empty set of hyperparameters where one stood for them."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        self.__dict__["_pickled_state"] = state

    def append(self, item):
        self.__dict__.setdefault("_pickled_items", []).append(item)

    def extend(self, items):
        for item in items:
            self.append(item)


@functools.lru_cache(maxsize=None)
def _placeholder(module: str, name: str) -> type:
    return type(name, (_MissingClass,), {"__module__": "vmdls_missing." + module})


class UntrustedGlobal(pickle.UnpicklingError):
    """The file names a global outside the allow-list, which only running it could rebuild."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _python2_name(module: str, name: str) -> tuple[str, str]:
    """Protocol-2 pickles written by Python 2 name __builtin__, copy_reg...: Python 3's
    names, as pickle's own find_class maps them."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _installed(top: str) -> bool:
    """Whether top-level module ``top`` can be imported; looks it up without importing it."""
    if top in sys.modules:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


class _AllowListUnpickler(pickle.Unpickler):
    """Resolves a global only from an allow-list (:meth:`allowed`, by pickled name) or by
    :meth:`unlisted`, which by default refuses it with UntrustedGlobal before anything is
    called. Every callable a pickle can invoke (REDUCE, NEWOBJ, BUILD's __setstate__, INST,
    OBJ) comes from find_class, so the file can call what these return and nothing else."""

    def allowed(self) -> dict[str, object]:
        raise NotImplementedError

    def unlisted(self, module: str, name: str):
        raise UntrustedGlobal(f"{module}.{name}")

    def find_class(self, module, name):
        module, name = _python2_name(module, name)
        allowed = self.allowed()
        full = f"{module}.{name}"
        if full in allowed:
            return allowed[full]
        return self.unlisted(module, name)


class _SafeUnpickler(_AllowListUnpickler):
    """The checkpoints' allow-list, and placeholders for the classes of the frameworks the
    original pickled or of modules that are not installed (see the module doc)."""

    def allowed(self) -> dict[str, object]:
        return _allowed()

    def unlisted(self, module: str, name: str):
        top = module.partition(".")[0]
        if top.isidentifier() and (top in STAND_IN_PACKAGES or not _installed(top)):
            return _placeholder(module, name)
        return super().unlisted(module, name)


class _LenientUnpickler(pickle.Unpickler):
    """--trust_checkpoint: any global, and a placeholder where it no longer exists."""

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _placeholder(module, name)


def _pickle_module(unpickler: type) -> types.ModuleType:
    module = types.ModuleType(f"vmdls_{unpickler.__name__.strip('_').lower()}")
    module.__dict__.update({k: v for k, v in pickle.__dict__.items() if not k.startswith("__")})
    module.Unpickler = unpickler
    module.load = lambda file, **kw: unpickler(file, **kw).load()
    return module


def _weights_only_context():
    """The plain types added to torch's weights_only allow-list for one load (scoped)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5: its default list
        return contextlib.nullcontext()
    plain = [obj for name, obj in _PLAIN.items() if name == f"{obj.__module__}.{obj.__qualname__}"]
    return safe_globals(plain)


def load_torch_file(path: str, map_location="cpu", trust: bool = False):
    """torch.load ``path`` without running code from it (see the module doc); with ``trust``,
    as torch.load(weights_only=False) does. Raises UntrustedGlobal for a file that needs
    more than the allow-list."""
    if trust:
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except (ImportError, AttributeError):
            return torch.load(path, map_location=map_location, weights_only=False,
                              pickle_module=_pickle_module(_LenientUnpickler))
    try:
        with _weights_only_context():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        pass  # beyond torch's unpickler: ours decides, with placeholders for the original's classes
    # weights_only=False only because torch refuses a pickle_module with weights_only=True:
    # _SafeUnpickler is the restriction.
    return torch.load(path, map_location=map_location, weights_only=False,
                      pickle_module=_pickle_module(_SafeUnpickler))


def damaged_member(path: str) -> str | None:
    """The integrity check of a file written by torch.save: its zip format keeps a CRC-32 of
    every member (the pickle, each tensor's bytes), which torch.load does not verify, so a
    damaged member would load as other weights. Returns what is wrong (the first member
    whose bytes do not match their CRC-32, or the damage that stops the zip being read),
    or None when the file is intact or in the legacy (pre-1.6, non-zip) format, which
    keeps no checksums."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as error:
        return f"its zip structure is damaged: {error}"
    except OSError:
        return None  # unreadable: torch.load's own error says so
    except Exception as error:  # zlib and struct errors of a damaged member header
        return f"its zip structure is damaged: {type(error).__name__}"
    return f"its part {bad} does not match the checksum saved with it" if bad else None


def read_torch_file(path: str | None, label: str, remedy: str, map_location="cpu", setting: str | None = None,
                    trust: bool = False):
    """torch.load ``path`` (see :func:`load_torch_file`); a missing, unreadable or untrusted
    file, a directory, or a file that fails its integrity check (:func:`damaged_member`) is
    a UserError naming it by ``label`` (what the file is) and ending with ``remedy`` (what
    to give instead); ``setting`` is the parameter the path came from."""
    if path and os.path.isdir(path):
        raise UserError(f"{label} {path!r} is a directory, not a file; {remedy}", setting=setting)
    if not path or not os.path.isfile(path):
        raise UserError(f"{label} {path!r} does not exist; {remedy}", setting=setting)
    damaged = damaged_member(path)
    if damaged:
        raise UserError(f"{label} {path!r} is corrupted: {damaged}; use an intact copy of the file", setting=setting)
    try:
        return load_torch_file(path, map_location, trust)
    except UntrustedGlobal as refused:
        raise UserError(f"{label} {path!r} holds Python objects beyond plain tensors and settings ({refused.name}), "
                        "and loading them would run code from the file; pass `trust_checkpoint` to load it anyway, "
                        "only if you trust the file", setting="trust_checkpoint") from None
    except Exception as error:
        raise UserError(f"{label} {path!r} could not be read ({type(error).__name__}); {remedy}",
                        setting=setting) from None


# --------------------------------------------------------------------------------------
# Data pickles (CIFAR batches): plain containers and numpy arrays, nothing else
# --------------------------------------------------------------------------------------
def _numpy_frombuffer_globals() -> dict[str, object]:
    """numpy's protocol-5 array rebuild (``_frombuffer(buffer, dtype, shape, order)``)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a requirement
        return {}
    core = getattr(np, "_core", None) or np.core
    frombuffer = getattr(core.numeric, "_frombuffer", None)
    if frombuffer is None:  # pragma: no cover - numpy < 1.16
        return {}
    return {f"{module}._frombuffer": frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")}


@functools.lru_cache(maxsize=1)
def _data_allowed() -> dict[str, object]:
    """What a data pickle may name: plain containers and scalars (most need no global at
    all), the bytes of Python 3's protocol-2 pickles (``_codecs.encode``) and numpy's
    array, dtype and scalar rebuilds. Nothing of torch, no placeholders."""
    import _codecs

    plain = {f"builtins.{t.__name__}": t for t in (list, dict, tuple, set, frozenset, int, float, complex, str,
                                                   bytes, bytearray, bool)}
    return {**plain, "collections.OrderedDict": collections.OrderedDict, "_codecs.encode": _codecs.encode,
            **_numpy_globals(), **_numpy_frombuffer_globals()}


class _DataUnpickler(_AllowListUnpickler):
    """Resolves globals only from :func:`_data_allowed`; any other (os.system, eval, a
    class) raises UntrustedGlobal before anything is called."""

    def allowed(self) -> dict[str, object]:
        return _data_allowed()


def load_data_pickle(file, encoding: str = "bytes"):
    """Unpickle a data file (an open binary file) that may hold only plain containers,
    numbers, strings, bytes and numpy arrays; runs nothing the file names. Raises
    UntrustedGlobal for anything else, and pickle's own errors for a damaged file."""
    return _DataUnpickler(file, encoding=encoding).load()


def as_plain_dict(value) -> dict:
    """A checkpoint's saved hyperparameters as a plain dict: Lightning 2 saves a dict, the
    original's Lightning 1.1 checkpoints an argparse Namespace; anything else is empty."""
    if isinstance(value, Namespace):
        value = vars(value)
    try:
        return dict(value or {})
    except (TypeError, ValueError):
        return {}
