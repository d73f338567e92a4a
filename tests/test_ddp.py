"""Class statistics under DDP: two real processes (gloo), all-reduced sums equal numpy's."""
import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models.class_statistics import ClassStatistics


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
    data = [(rng.normal(size=(9, 2)), rng.integers(0, 3, 9)),
            (rng.normal(size=(7, 2)), np.array([0, 0, 1, 1, 2, 2, 3]))]
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


def test_two_processes_compute_what_one_process_computes(tmp_path):
    """main.py with 2 CPU processes (gloo; Lightning's ddp launcher starts the second) against
    1 process on the same data and seed. The weights are held still (lr 1e-12) and nothing
    is augmented, so every epoch both runs embed the same images with the same network:
    the class statistics of mu, the class bounds, the margin M_d and the validation figures
    must agree. (Training itself differs by design: the triplet loss pairs images within
    each process's batch, as any batch-dependent loss does under DDP.) The statistics of
    the sampled z are left out: each process draws its own noise."""
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    root = Path(__file__).resolve().parents[1]

    def run(out, *extra):
        command = [sys.executable, "main.py",
                   "--known_dataset", "digits", "--unknown_dataset", "digits_unknown", "--class_num", "4",
                   "--enc_type", "mnist-conv", "--enc_out_dim", "500", "--latent_dim", "4", "--data_transforms",
                   "blob", "--input_height", "28", "--batch_classes", "4", "--sample_count", "8", "--batch_size",
                   "256", "--opt", "adam", "--lr", "1e-12", "--max_epochs", "2", "--generation_epoch", "0",
                   "--margins_epoch", "1", "--accelerator", "cpu", "--num_workers", "0", "--offline", "--logger",
                   "csv", "--output_dir", str(out), *extra]
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
        frame = pd.read_csv(out / "metrics.csv")
        validation = frame.dropna(subset=["val_accuracy_known"])[["epoch", "val_accuracy_known", "val_f1_macro"]]
        return checkpoint, validation.reset_index(drop=True)

    # The balanced sampler deals the epoch's batches to the processes in turn: two
    # processes with 2 batches each see the batches the single process sees in 4.
    single, single_val = run(tmp_path / "one", "--devices", "1", "--limit_train_batches", "4")
    double, double_val = run(tmp_path / "two", "--devices", "2", "--strategy", "ddp", "--limit_train_batches", "2")
    assert double["epoch"] == single["epoch"] == 1
    for name in ("latent_means", "latent_covs", "class_bounds", "finished_epochs"):
        np.testing.assert_allclose(double["state_dict"][name].numpy(), single["state_dict"][name].numpy(),
                                   rtol=1e-5, atol=1e-9, err_msg=name)
    assert double["margin_distance"] == single["margin_distance"]
    assert len(single_val) == 2
    pd.testing.assert_frame_equal(double_val, single_val, rtol=1e-6)
