"""Class statistics under DDP: two real processes (gloo), all-reduced sums equal numpy's."""
import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models.gaussians import ClassStatistics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, data, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        stats = ClassStatistics(3, 2)
        x, y = data[rank]
        stats.update(torch.tensor(x), torch.tensor(y))
        stats.all_reduce()
        results[rank] = (stats.means().numpy(), stats.covariances().numpy(), stats.count.numpy())
    finally:
        dist.destroy_process_group()


def test_all_reduced_statistics_equal_single_process_numpy():
    rng = np.random.default_rng(0)
    data = [(rng.normal(size=(9, 2)), rng.integers(0, 3, 9)), (rng.normal(size=(7, 2)), np.array([0, 0, 1, 1, 2, 2, 3]))]
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), data, results), nprocs=2, join=True)
    x = np.concatenate([d[0] for d in data])
    y = np.concatenate([d[1] for d in data])
    for rank in range(2):
        means, covs, counts = results[rank]
        for c in range(3):
            np.testing.assert_allclose(means[c], x[y == c].mean(0), rtol=1e-12)
            np.testing.assert_allclose(covs[c], np.cov(x[y == c].T, bias=True), rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(counts, [np.sum(y == c) for c in range(3)])
