"""Shared test helpers: tiny files in every on-disk format the code reads, and one torch thread."""

import gzip
import os
import pickle
import struct
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image


@contextmanager
def one_torch_thread():
    """One intra-op thread for the block: small networks on a shared CPU run much faster so
    (threads spin-waiting on each other cost more than they save), and reductions are summed
    in the same order on any core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_idx(path, arr, gz=False):
    """Write ``arr`` (uint8 images N x H x W or labels N) as an IDX file."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    raw = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(">" + "i" * arr.ndim, *arr.shape)
    raw += arr.tobytes()
    if gz:
        path = str(path) + ".gz"
        raw = gzip.compress(raw)
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(raw)
    return path


def make_mnist_arrays(seed, per_class, classes=10, size=28):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes, dtype=np.uint8), per_class)
    rng.shuffle(labels)
    images = rng.integers(0, 256, size=(labels.size, size, size), dtype=np.uint8)
    return images, labels


def write_idx_folder(folder, gz, train=True, test=True, seed=0, names=None):
    """An MNIST-style folder; returns {'train': (images, labels), 'test': ...} as written."""
    names = names or {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    out = {}
    for split, per_class, on in (("train", 3, train), ("test", 2, test)):
        if not on:
            continue
        images, labels = make_mnist_arrays(seed + (split == "test"), per_class)
        write_idx(os.path.join(folder, names[split][0]), images, gz)
        write_idx(os.path.join(folder, names[split][1]), labels, gz)
        out[split] = (images, labels)
    return out


def write_cifar(root, classes, seed=0, per_class_train=2, per_class_test=1):
    """Tiny CIFAR-10 (classes=10) or CIFAR-100 (classes=100) pickles; returns what was written."""
    rng = np.random.default_rng(seed)
    out = {}
    if classes == 10:
        folder = os.path.join(root, "cifar-10-batches-py")
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        key = b"labels"
    else:
        folder = os.path.join(root, "cifar-100-python")
        files = {"train": ["train"], "test": ["test"]}
        key = b"fine_labels"
    os.makedirs(folder, exist_ok=True)
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        labels = np.tile(np.arange(classes), per_class)
        data = rng.integers(0, 256, size=(labels.size, 3072), dtype=np.uint8)
        out[split] = (data, labels)
        parts = np.array_split(np.arange(labels.size), len(files[split]))
        for name, idx in zip(files[split], parts):
            with open(os.path.join(folder, name), "wb") as f:
                pickle.dump({b"data": data[idx], key: labels[idx].tolist(), b"batch_label": b"x"}, f)
    return out


def write_images(folder, count, size=(32, 32), mode="RGB", seed=0, ext=".png"):
    """``count`` random images (size = (width, height)) under ``folder``; returns their arrays."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    arrays = []
    for i in range(count):
        shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
        arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
        Image.fromarray(arr).save(os.path.join(folder, f"img_{i:03d}{ext}"))
        arrays.append(arr)
    return arrays


@pytest.fixture
def mnist_root(tmp_path):
    """data_dir with MNIST (gzipped), FashionMNIST (raw) and KMNIST (gzipped) IDX files."""
    written = {
        "mnist": write_idx_folder(tmp_path / "MNIST" / "raw", gz=True, seed=0),
        "fashion_mnist": write_idx_folder(tmp_path / "FashionMNIST" / "raw", gz=False, seed=10),
        "kmnist": write_idx_folder(tmp_path / "KMNIST" / "raw", gz=True, seed=20),
    }
    return tmp_path, written


def refused(capsys, call) -> str:
    """Run ``call`` as a script does (utils.cli.run_main): exit status 2 and exactly one line on
    stderr, an error sentence with no traceback; returns that line."""
    from utils.cli import run_main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(call)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in lines[0], lines
    return lines[0]
