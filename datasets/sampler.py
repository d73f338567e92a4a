"""Class-balanced batches: ``batch_classes`` distinct classes x ``sample_count`` images each.

Replaces the original's sampler (global NumPy RNG, no ``__len__``, no DDP support,
images repeated within an epoch). Here an epoch is built as follows, from a generator
seeded by ``(seed, epoch)`` only:

1. each class's indices are shuffled and cut into chunks of ``sample_count``
   (the remainder, fewer than ``sample_count`` images, is left out this epoch);
2. while at least ``batch_classes`` classes have chunks left, a batch takes one chunk
   from each of the ``batch_classes`` classes with the most chunks left (ties broken
   at random), which gives the most batches possible;
3. the batch order is shuffled.

So no image appears twice in an epoch, and the number of batches depends only on the
class counts. Under DDP every process builds the same global list and process ``r``
takes batches ``r, r + R, r + 2R, ...`` of its first ``R * (len // R)`` batches.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Sampler

from utils.errors import UserError


def _as_label_array(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        arr = labels.detach().cpu().numpy()
    else:
        arr = np.asarray(labels)
    arr = arr.reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise UserError("The sampler's labels must be whole numbers: pass the dataset's integer targets.")
    return arr.astype(np.int64)


class _EpochForwarder(Sampler[int]):
    """``BalancedBatchSampler.sampler``: the item indices of this process's batches, flattened.

    Lightning calls ``set_epoch`` on ``dataloader.sampler`` and on
    ``dataloader.batch_sampler.sampler`` (not on the batch sampler itself), so this
    forwards ``set_epoch`` to the batch sampler that owns it.
    """

    def __init__(self, owner: "BalancedBatchSampler"):
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        for batch in self._owner:
            yield from batch

    def __len__(self) -> int:
        return len(self._owner) * self._owner.batch_size


class BalancedBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_classes`` distinct classes with ``sample_count`` images each.

    Args:
        labels: the label of every dataset item (tensor, array or list).
        batch_classes: classes per batch (``B_c``).
        sample_count: images per class per batch (``B_s``).
        seed: with the epoch (see :meth:`set_epoch`), fixes the batches.
        num_replicas, rank: DDP sharding; read from ``torch.distributed`` when it is
            initialised and they are not given, else 1 and 0.

    Pass it as ``DataLoader(dataset, batch_sampler=...)`` and run Lightning with
    ``use_distributed_sampler=False``: it shards itself. Lightning calls
    :meth:`set_epoch` every epoch, through the ``sampler`` attribute (Lightning looks
    for ``set_epoch`` on ``batch_sampler.sampler``).
    """

    def __init__(
        self,
        labels,
        batch_classes: int,
        sample_count: int,
        seed: int = 0,
        num_replicas: Optional[int] = None,
        rank: Optional[int] = None,
    ):
        for what, value in (("batch_classes", batch_classes), ("sample_count", sample_count)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise UserError(
                    f"{what} must be a positive whole number (got {value!r}): set {what} to e.g. 8.", setting=what
                )
        self.batch_classes = int(batch_classes)
        self.sample_count = int(sample_count)
        self.seed = int(seed)
        self.epoch = 0
        self.sampler = _EpochForwarder(self)

        if num_replicas is None or rank is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
                rank = dist.get_rank() if rank is None else rank
            else:
                num_replicas = 1 if num_replicas is None else num_replicas
                rank = 0 if rank is None else rank
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        if self.num_replicas < 1 or not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in [0, {self.num_replicas})")

        arr = _as_label_array(labels)
        classes, inverse = np.unique(arr, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(classes))
        bounds = np.concatenate([[0], np.cumsum(counts)])
        # indices of each class, ascending
        self._class_indices: list[np.ndarray] = [order[bounds[i]:bounds[i + 1]] for i in range(len(classes))]
        self.classes = classes

        chunks = counts // self.sample_count
        eligible = int((chunks > 0).sum())
        if self.batch_classes > eligible:
            if eligible:
                raise UserError(
                    f"Only {eligible} class(es) have at least sample_count={self.sample_count} training images, "
                    f"fewer than batch_classes={self.batch_classes}: lower batch_classes to at most "
                    f"{eligible} or lower sample_count.",
                    setting="batch_classes",
                )
            raise UserError(
                f"No class has sample_count={self.sample_count} training images: lower sample_count "
                f"to at most {int(counts.max()) if counts.size else 0}.",
                setting="sample_count",
            )
        self._chunks = chunks
        self._global_len = self._count_batches(chunks, self.batch_classes)
        if self._global_len < self.num_replicas:
            raise UserError(
                f"The training set gives only {self._global_len} batch(es) of {self.batch_classes} x "
                f"{self.sample_count} images, fewer than the {self.num_replicas} processes: lower "
                "sample_count or batch_classes, or use fewer devices."
            )

    # ------------------------------------------------------------------
    @staticmethod
    def _count_batches(chunks: np.ndarray, batch_classes: int) -> int:
        """Batches the greedy schedule yields for these chunk counts (no randomness)."""
        remaining = np.sort(chunks[chunks > 0])[::-1].copy()
        total = 0
        while remaining.size >= batch_classes:
            # Take a run of batches from the top classes at once: as long as the
            # top-``batch_classes`` set keeps more chunks than the rest, the greedy
            # choice does not change.
            top = remaining[:batch_classes]
            nxt = remaining[batch_classes] if remaining.size > batch_classes else 0
            step = int(top[-1] - nxt) if top[-1] > nxt else 1
            remaining[:batch_classes] -= step
            total += step
            remaining = np.sort(remaining[remaining > 0])[::-1].copy()
        return total

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of ``epoch`` (the same ``(seed, epoch)`` gives the same batches)."""
        self.epoch = int(epoch)

    def global_batches(self, epoch: Optional[int] = None) -> list[list[int]]:
        """Every process's batches of ``epoch`` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed % (1 << 63), epoch % (1 << 63), 0x5A3D])
        n_classes = len(self._class_indices)
        chunk_lists: list[np.ndarray] = []
        for idx, n in zip(self._class_indices, self._chunks):
            perm = idx[rng.permutation(idx.size)]
            chunk_lists.append(perm[: n * self.sample_count].reshape(int(n), self.sample_count))
        remaining = self._chunks.astype(np.int64).copy()
        used = np.zeros(n_classes, dtype=np.int64)
        batches: list[list[int]] = []
        while int((remaining > 0).sum()) >= self.batch_classes:
            tiebreak = rng.random(n_classes)
            # most chunks left first, random among equals; classes with none are last
            chosen = np.lexsort((tiebreak, -remaining))[: self.batch_classes]
            batch: list[int] = []
            for c in chosen:
                batch.extend(chunk_lists[c][used[c]].tolist())
                used[c] += 1
                remaining[c] -= 1
            batches.append(batch)
        order = rng.permutation(len(batches))
        out = [batches[i] for i in order]
        assert len(out) == self._global_len
        return out

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.global_batches()
        per_rank = len(self)
        yield from batches[self.rank : per_rank * self.num_replicas : self.num_replicas]

    def __len__(self) -> int:
        return self._global_len // self.num_replicas

    @property
    def batch_size(self) -> int:
        return self.batch_classes * self.sample_count
