"""Datasets, class-balanced sampling, batch transforms and the Lightning data module.

See :mod:`datasets.registry` for the dataset names and on-disk layouts.
``KnownUnknownDataModule`` is imported on first use, so that code needing only the
datasets does not pay for importing PyTorch Lightning.
"""

from .registry import available_datasets, get_known_dataset, get_unknown_dataset
from .sampler import BalancedBatchSampler
from .transforms import BatchTransform, normalization_for

__all__ = [
    "available_datasets",
    "get_known_dataset",
    "get_unknown_dataset",
    "BalancedBatchSampler",
    "KnownUnknownDataModule",
    "BatchTransform",
    "normalization_for",
]


def __getattr__(name):
    if name == "KnownUnknownDataModule":
        from .datamodule import KnownUnknownDataModule

        return KnownUnknownDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
