"""The packages form layers, and no module imports from a layer above its own.

    utils/  <  datasets/, models/  <  experiments/  <  the scripts and benchmarks/

(the scripts: main.py, test.py, mnist_ae.py, train_resnet_ae.py). datasets/ and models/ do
not import each other: the wiring layer, experiments/, joins them. Besides, datasets/ does not
import the flag definitions (utils/flags.py), and no other module of utils/ does either (the
flags are built from the utils below them). Every import counts, those inside functions and
under ``if TYPE_CHECKING`` included, as do ``importlib.import_module`` calls with a literal name.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

LAYERS = ("utils", "datasets", "models", "experiments", "scripts")
SCRIPTS = ("main", "test", "mnist_ae", "train_resnet_ae", "benchmarks")
FLAGS = "utils.flags"

# What each layer may not import: those above it, and its sibling.
FORBIDDEN = {
    "utils": {"datasets", "models", "experiments", "scripts"},
    "datasets": {"models", "experiments", "scripts"},
    "models": {"datasets", "experiments", "scripts"},
    "experiments": {"scripts"},
    "scripts": set(),
}


def layer_of(module: str) -> str | None:
    """The layer a dotted module name belongs to; None outside the project (torch, os...)."""
    top = module.split(".")[0]
    if top in SCRIPTS:
        return "scripts"
    return top if top in LAYERS else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    """Whether a dotted name is a module or package of the tree."""
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The module a ``from ... import`` reads from, relative imports resolved."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[:len(parts) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import in ``source``, the code of ``module``:
    at the top, inside functions and classes, relative ones resolved, ``from P import M`` of
    a module M of the tree as ``P.M``, and importlib.import_module("literal")."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = _absolute(node, package)
            for alias in node.names:
                inner = f"{origin}.{alias.name}" if origin else alias.name
                found.append((node.lineno, inner if _is_module(inner) else origin))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and _calls_import_module(node.func):
            found.append((node.lineno, node.args[0].value))
    return found


def _calls_import_module(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in ("import_module", "__import__")


def upward(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported``, or None when it may."""
    low, high = layer_of(importer), layer_of(imported)
    if low is None or high is None:
        return None
    if high in FORBIDDEN[low]:
        return f"{low} may not import {high}"
    is_flags = imported == FLAGS or imported.startswith(FLAGS + ".")
    if is_flags and low == "datasets":
        return "datasets does not use the flag definitions"
    if is_flags and low == "utils" and importer != FLAGS:
        return "the flag definitions are built from the rest of utils, not the other way round"
    return None


def library_files() -> list[Path]:
    """The modules of every layer below the scripts (which may import anything)."""
    return sorted(path for layer in LAYERS[:-1] for path in (REPO / layer).rglob("*.py")
                  if "__pycache__" not in path.parts)


def violations() -> list[str]:
    found = []
    for path in library_files():
        importer = module_name(path)
        for line, imported in sorted(imports(path.read_text(), importer, path.name == "__init__.py")):
            reason = upward(importer, imported)
            if reason:
                found.append(f"{path.relative_to(REPO)}:{line}: imports {imported} ({reason})")
    return found


def test_no_module_imports_from_a_layer_above_its_own():
    found = violations()
    assert not found, "upward imports:\n" + "\n".join(found)


def test_every_library_package_is_checked():
    checked = {path.relative_to(REPO).parts[0] for path in library_files()}
    assert {"utils", "datasets", "models"} <= checked


# --------------------------------------------------------------------------- the checker itself

SOURCE = '''
import os
import models.vmdls
from utils import flags
from .registry import get_known_dataset
from . import sampler


def late():
    from experiments.autoencoders import train_autoencoder
    import importlib
    importlib.import_module("test")


class Lazy:
    def method(self):
        from ..utils.errors import UserError
'''


def test_imports_are_found_everywhere_and_resolved():
    found = imports(SOURCE, "datasets.datamodule")
    assert sorted(found) == [(2, "os"), (3, "models.vmdls"), (4, "utils.flags"), (5, "datasets.registry"),
                             (6, "datasets.sampler"), (10, "experiments.autoencoders"), (11, "importlib"),
                             (12, "test"), (17, "utils.errors")]


def test_a_package_init_resolves_relative_imports_inside_itself():
    assert imports("from .registry import available_datasets\n", "datasets", is_package=True) == \
        [(1, "datasets.registry")]


@pytest.mark.parametrize("importer,imported,allowed", [
    ("utils.cli", "models.checkpoints", False),
    ("utils.loggers", "utils.flags", False),
    ("utils.flags", "utils.loggers", True),
    ("datasets.datamodule", "utils.flags", False),
    ("datasets.datamodule", "utils.names", True),
    ("models.autoencoders.module", "datasets", False),
    ("datasets.registry", "models.backbones", False),
    ("models.checkpoints", "utils.torch_files", True),
    ("experiments.training", "models.vmdls", True),
    ("experiments.evaluation", "test", False),
    ("experiments.benchmark.calls", "main", False),
    ("test", "experiments.evaluation", True),
    ("models.vmdls", "torch", True),
])
def test_the_layer_rule(importer, imported, allowed):
    assert (upward(importer, imported) is None) == allowed
