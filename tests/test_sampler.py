"""BalancedBatchSampler: balance, no repeats, exact length, epochs, seeds, DDP split."""

from collections import Counter

import numpy as np
import pytest
import torch

from datasets import BalancedBatchSampler
from utils.errors import UserError


def _labels(counts, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
    rng.shuffle(labels)
    return torch.from_numpy(labels)


UNEVEN = [50, 37, 12, 80, 5, 23, 41, 16]


@pytest.mark.parametrize("batch_classes, sample_count", [(3, 4), (1, 7), (8, 2), (5, 5)])
def test_batches_are_balanced_and_unique(batch_classes, sample_count):
    labels = _labels(UNEVEN)
    s = BalancedBatchSampler(labels, batch_classes, sample_count, seed=1)
    batches = list(s)
    assert len(batches) == len(s) > 0
    seen = []
    for b in batches:
        assert len(b) == batch_classes * sample_count
        per_class = Counter(labels[b].tolist())
        assert len(per_class) == batch_classes
        assert set(per_class.values()) == {sample_count}
        seen += b
    assert len(seen) == len(set(seen))  # no image twice within an epoch


def test_length_is_exact_and_deterministic_over_many_shapes():
    rng = np.random.default_rng(0)
    for trial in range(40):
        counts = rng.integers(0, 60, size=rng.integers(2, 12)).tolist()
        s_count = int(rng.integers(1, 6))
        eligible = sum(c >= s_count for c in counts)
        if eligible == 0:
            continue
        b_classes = int(rng.integers(1, eligible + 1))
        s = BalancedBatchSampler(_labels(counts, trial), b_classes, s_count, seed=trial)
        lens = set()
        for epoch in range(3):
            s.set_epoch(epoch)
            lens.add(len(list(s)))
        assert lens == {len(s)}
        # the greedy schedule uses every class's chunks when batch_classes == 1
        if b_classes == 1:
            assert len(s) == sum(c // s_count for c in counts)


def test_uses_most_of_the_data_on_balanced_classes():
    s = BalancedBatchSampler(_labels([100] * 10), 10, 16)
    assert len(s) == 6  # 100 // 16 chunks per class, 10 classes per batch
    s = BalancedBatchSampler(_labels([100] * 10), 4, 10)
    assert len(s) == 25  # 100 chunks over batches of 4 classes


def test_set_epoch_and_seed():
    labels = _labels(UNEVEN)
    a = BalancedBatchSampler(labels, 3, 4, seed=5)
    b = BalancedBatchSampler(labels, 3, 4, seed=5)
    c = BalancedBatchSampler(labels, 3, 4, seed=6)
    e0 = list(a)
    assert e0 == list(b) == list(a)  # same (seed, epoch): same batches
    assert e0 != list(c)
    a.set_epoch(1)
    e1 = list(a)
    assert e1 != e0 and len(e1) == len(e0)
    b.set_epoch(1)
    assert list(b) == e1
    a.set_epoch(0)
    assert list(a) == e0
    # Lightning calls set_epoch on batch_sampler.sampler
    a.sampler.set_epoch(1)
    assert a.epoch == 1 and list(a) == e1
    assert list(a.sampler) == [i for batch in e1 for i in batch]
    assert len(a.sampler) == len(a) * 12


def test_ddp_split():
    labels = _labels(UNEVEN)
    full = BalancedBatchSampler(labels, 2, 3, seed=2, num_replicas=1, rank=0)
    full.set_epoch(4)
    global_batches = [tuple(b) for b in full]
    ranks = [BalancedBatchSampler(labels, 2, 3, seed=2, num_replicas=2, rank=r) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(4)
    got = [[tuple(b) for b in r] for r in ranks]
    assert len(got[0]) == len(got[1]) == len(ranks[0]) == len(ranks[1]) == len(global_batches) // 2
    assert set(got[0]).isdisjoint(got[1])
    assert set(got[0]) | set(got[1]) <= set(global_batches)
    idx0 = {i for b in got[0] for i in b}
    idx1 = {i for b in got[1] for i in b}
    assert idx0.isdisjoint(idx1)
    three = [BalancedBatchSampler(labels, 2, 3, seed=2, num_replicas=3, rank=r) for r in range(3)]
    assert len({len(list(r)) for r in three}) == 1


def test_validation_errors():
    labels = _labels([10, 10, 3])
    with pytest.raises(UserError) as err:
        BalancedBatchSampler(labels, 3, 5)
    msg = str(err.value)
    assert "batch_classes" in msg and "sample_count" in msg and "\n" not in msg
    BalancedBatchSampler(labels, 2, 5)  # two classes have 5 images: fine
    with pytest.raises(UserError, match="sample_count"):
        BalancedBatchSampler(labels, 1, 11)
    with pytest.raises(UserError, match="batch_classes"):
        BalancedBatchSampler(labels, 0, 2)
    with pytest.raises(UserError, match="processes"):
        BalancedBatchSampler(_labels([4, 4]), 2, 4, num_replicas=2, rank=1)


def test_accepts_lists_and_arrays():
    a = BalancedBatchSampler([0, 1, 0, 1, 2, 2], 3, 2, seed=0)
    b = BalancedBatchSampler(np.array([0, 1, 0, 1, 2, 2]), 3, 2, seed=0)
    assert list(a) == list(b) and len(a) == 1
    assert sorted(list(a)[0]) == list(range(6))


def test_errors_name_the_setting_not_the_flag():
    labels = _labels([10, 10, 3])
    for args, setting in (((labels, 0, 2), "batch_classes"), ((labels, 2, 0), "sample_count"),
                          ((labels, 3, 5), "batch_classes"), ((labels, 1, 11), "sample_count")):
        with pytest.raises(UserError) as err:
            BalancedBatchSampler(*args)
        msg = str(err.value)
        assert "--" not in msg and "\n" not in msg and setting in msg, msg
        assert err.value.setting == setting
        line = err.value.for_command_line()
        assert line.rstrip(").").endswith(f"--{setting}") and line.count(f"--{setting}") == 1, line
    with pytest.raises(UserError) as err:
        BalancedBatchSampler(_labels([4, 4]), 2, 4, num_replicas=2, rank=1)
    assert "--" not in str(err.value) and err.value.setting is None  # several settings could fix it
