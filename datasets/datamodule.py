"""The Lightning data module: class-balanced training batches, known + unknown test sets."""

from __future__ import annotations

import os
from typing import Optional

import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, ConcatDataset, DataLoader, Dataset, DistributedSampler

from utils.errors import UserError
from utils.names import split_names

from .registry import get_known_dataset, get_unknown_dataset
from .sampler import BalancedBatchSampler
from .transforms import BatchTransform, normalization_for


class KnownUnknownDataModule(pl.LightningDataModule):
    """Known training set with class-balanced batches; known + unknown test set.

    * ``train_dataloader``: :class:`BalancedBatchSampler` batches of ``batch_classes``
      classes x ``sample_count`` images of the known training set; with
      ``shuffled_batches=True`` (the cross-entropy baseline, ``--objective ce``) ordinary
      shuffled batches of ``batch_classes * sample_count`` images instead.
    * ``val_dataloader`` / ``test_dataloader``: the known test set (labels
      ``0..class_num-1``) followed by the unknown set (label ``class_num``), in order.
      ``unknown_dataset`` may name several sets (comma-separated): these two loaders use
      the first; ``known_test_dataloader`` and ``unknown_test_dataloader(name)`` give the
      known test set and each unknown set alone.
    * ``fit_dataloader``: the known training set in order, without augmentation (to fit
      the class Gaussians).

    Items are un-normalised ``[0, 1]`` images; :meth:`on_after_batch_transfer` augments
    (training only) and normalises whole batches on the device with
    :class:`BatchTransform`. Scripts with their own loops call :meth:`preprocess`.
    The LightningModule must not override ``on_after_batch_transfer`` itself.

    The known images keep their own size: ``input_height`` is only recorded (the
    caller checks it against :attr:`image_shape`). The unknown sets are brought to the
    known set's shape.

    The training sampler shards batches across DDP processes itself (the shuffled one
    through a :class:`DistributedSampler`), so the Trainer must be built with
    ``use_distributed_sampler=False``.
    """

    @classmethod
    def from_args(cls, args) -> "KnownUnknownDataModule":
        """Build from the parsed flags of main.py / test.py (utils.flags.add_data_args)."""
        return cls(
            known_dataset=args.known_dataset, unknown_dataset=args.unknown_dataset, data_dir=args.data_dir,
            class_num=args.class_num, data_transforms=args.data_transforms, input_height=args.input_height,
            batch_classes=args.batch_classes, sample_count=args.sample_count, batch_size=args.batch_size,
            num_workers=args.num_workers, seed=args.seed,
            shuffled_batches=getattr(args, "objective", "vmdls") == "ce",
        )

    def __init__(
        self,
        known_dataset: str = "mnist",
        unknown_dataset: str = "omniglot",
        data_dir: str = ".",
        class_num: int = 10,
        data_transforms: str = "mnist",
        input_height: int = 28,
        batch_classes: int = 10,
        sample_count: int = 40,
        batch_size: int = 256,
        num_workers: int = min(8, os.cpu_count() or 1),
        seed: int = 0,
        download: bool = True,
        shuffled_batches: bool = False,
    ):
        super().__init__()
        # Lightning writes these into every checkpoint (datamodule_hyper_parameters), so
        # test.py can rebuild the data a model was trained on.
        self.save_hyperparameters()
        normalization_for(data_transforms, 1)  # validates the name early
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(
                f"batch_size must be a positive whole number (got {batch_size!r}): set batch_size to e.g. 256.",
                setting="batch_size",
            )
        if num_workers < 0:
            raise UserError(
                f"num_workers must be 0 or more (got {num_workers}): set num_workers to e.g. 4.",
                setting="num_workers",
            )
        self.known_dataset = known_dataset
        self.unknown_dataset = unknown_dataset
        self.unknown_names = split_names(unknown_dataset)
        if not self.unknown_names:
            raise UserError("unknown_dataset names no dataset: give at least one name, e.g. noise",
                            setting="unknown_dataset")
        self.data_dir = data_dir
        self.class_num = class_num
        self.data_transforms = data_transforms
        self.input_height = input_height
        self.batch_classes = batch_classes
        self.sample_count = sample_count
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.download = download
        self.shuffled_batches = shuffled_batches

        self.train_set: Optional[Dataset] = None
        self.known_test_set: Optional[Dataset] = None
        self.unknown_test_sets: dict[str, Dataset] = {}
        self.test_set: Optional[ConcatDataset] = None
        self.train_transform: Optional[BatchTransform] = None
        self.eval_transform: Optional[BatchTransform] = None

    # ------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.class_num

    @property
    def image_shape(self) -> tuple[int, int, int]:
        if self.train_set is None:
            self.setup()
        return self.train_set.image_shape  # type: ignore[union-attr]

    def prepare_data(self) -> None:
        """Download what is missing (on one process); loading happens in :meth:`setup`."""
        if self.download:
            self.setup()

    def setup(self, stage: Optional[str] = None) -> None:
        """Build the datasets and transforms once (later calls do nothing)."""
        if self.train_set is not None:
            return
        train = get_known_dataset(self.known_dataset, self.data_dir, self.class_num, True, self.download)
        known_test = get_known_dataset(self.known_dataset, self.data_dir, self.class_num, False, self.download)
        shape = tuple(train.image_shape)
        self.unknown_test_sets = {
            name: get_unknown_dataset(name, self.data_dir, self.class_num, shape, train=False, seed=self.seed,
                                      download=self.download)
            for name in self.unknown_names
        }
        unknown = self.unknown_test_sets[self.unknown_names[0]]
        self.train_transform = BatchTransform(self.data_transforms, shape, train=True)
        self.eval_transform = BatchTransform(self.data_transforms, shape, train=False)
        self.known_test_set = known_test
        self.test_set = ConcatDataset([known_test, unknown])
        self.train_set = train  # last: marks setup as done

    # ------------------------------------------------------------------
    def _loader_kwargs(self, persistent: bool = True) -> dict:
        kw = dict(num_workers=self.num_workers, pin_memory=torch.cuda.is_available())
        if self.num_workers > 0 and persistent:
            kw["persistent_workers"] = True
        return kw

    def train_sampler(self) -> BalancedBatchSampler:
        self.setup()
        return BalancedBatchSampler(
            self.train_set.targets, self.batch_classes, self.sample_count, seed=self.seed  # type: ignore[union-attr]
        )

    def shuffled_train_sampler(self) -> BatchSampler:
        """``shuffled_batches``: batches of ``batch_classes * sample_count`` images drawn
        without regard to class, each image at most once per epoch (the last, incomplete
        batch is dropped). The order is a permutation seeded by ``(seed, epoch)``
        (Lightning calls ``set_epoch`` on ``batch_sampler.sampler``), so a resumed run
        draws the same batches; under DDP each process takes its own share of it."""
        self.setup()
        batch_size = self.batch_classes * self.sample_count
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            replicas, rank = dist.get_world_size(), dist.get_rank()
        else:
            replicas, rank = 1, 0
        images = len(self.train_set)  # type: ignore[arg-type]
        if images // replicas < batch_size:
            raise UserError(
                f"The training set's {images} images give no batch of batch_classes x sample_count = {batch_size} "
                f"images{' per process' if replicas > 1 else ''}: lower sample_count or batch_classes.",
                setting="sample_count",
            )
        sampler = DistributedSampler(self.train_set, num_replicas=replicas, rank=rank, shuffle=True,  # type: ignore[arg-type]
                                     seed=self.seed, drop_last=True)
        return BatchSampler(sampler, batch_size, drop_last=True)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        # A private generator: creating the iterator then draws no number from the global
        # RNG, so the z samples and augmentations after a resume match an uninterrupted run.
        generator = torch.Generator().manual_seed(self.seed)
        batch_sampler = self.shuffled_train_sampler() if self.shuffled_batches else self.train_sampler()
        return DataLoader(self.train_set, batch_sampler=batch_sampler, generator=generator,
                          **self._loader_kwargs())

    def _sequential(self, dataset: Dataset, persistent: bool = True) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.batch_size, shuffle=False, drop_last=False, **self._loader_kwargs(persistent)
        )

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._sequential(self.test_set)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._sequential(self.test_set)

    def known_test_dataloader(self) -> DataLoader:
        """The known test set alone, in order (labels 0..class_num-1)."""
        self.setup()
        return self._sequential(self.known_test_set, persistent=False)

    def unknown_test_dataloader(self, name: str) -> DataLoader:
        """One unknown set alone, in order (every label class_num)."""
        self.setup()
        return self._sequential(self.unknown_test_sets[name], persistent=False)

    def fit_dataloader(self) -> DataLoader:
        """The known training set in order, un-augmented (batches still go through eval preprocessing)."""
        self.setup()
        return self._sequential(self.train_set, persistent=False)

    # ------------------------------------------------------------------
    def preprocess(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        """Augment (if ``train``) and normalise a batch of [0, 1] images, on its device."""
        self.setup()
        transform = self.train_transform if train else self.eval_transform
        return transform.to(x.device)(x)  # type: ignore[union-attr]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        trainer = getattr(self, "trainer", None)
        training = bool(getattr(trainer, "training", False)) if trainer is not None else False
        if isinstance(batch, (list, tuple)) and len(batch) >= 1 and isinstance(batch[0], torch.Tensor):
            x = self.preprocess(batch[0], train=training)
            return (x, *batch[1:]) if isinstance(batch, tuple) else [x, *batch[1:]]
        if isinstance(batch, torch.Tensor):
            return self.preprocess(batch, train=training)
        return batch
