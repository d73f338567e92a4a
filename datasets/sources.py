"""Readers for the on-disk formats (IDX, CIFAR pickles, image folders) and the bundled digits.

Layouts under ``data_dir`` are torchvision's: ``MNIST/raw``, ``FashionMNIST/raw``,
``KMNIST/raw`` (IDX files, gzipped or not), ``cifar-10-batches-py``,
``cifar-100-python``, ``omniglot-py/images_evaluation`` and the ODIN folders under
``openset/``. Checksums are never checked: files re-packed by a distribution differ
from the originals byte for byte but hold the same images. When files are missing,
torchvision's downloader is tried (if ``download``) and, when that fails too, a
:class:`UserError` says which files to put where.
"""

from __future__ import annotations

import functools
import gzip
import os
import stat
import struct
import zlib
from typing import Callable, Optional

import numpy as np
import torch

from utils.errors import UserError
from utils.torch_files import UntrustedGlobal, load_data_pickle

# IDX type codes -> numpy dtypes (big-endian on disk).
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.int16,
    0x0C: np.int32,
    0x0D: np.float32,
    0x0E: np.float64,
}

_STANDARD_IDX_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

_NOT_IDX_SUFFIXES = (
    ".txt", ".md", ".py", ".pt", ".pth", ".npz", ".npy", ".json", ".csv", ".png", ".jpg",
    ".jpeg", ".html", ".zip", ".tar", ".tgz", ".md5", ".pkl", ".pickle",
)


# --------------------------------------------------------------------------------------
# Opening files: regular files only
# --------------------------------------------------------------------------------------
class NotRegularFile(OSError):
    """The path is not a regular file (a named pipe, socket, device, folder or broken link):
    reading it could block for ever or never end, so it is never read."""

    def __init__(self, path: str, kind: str):
        super().__init__(f"{path} is {kind}, not a regular file")
        self.kind = kind


def _kind(mode: int) -> str:
    for test, words in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISDIR, "a folder")):
        if test(mode):
            return words
    return "not a regular file"


def not_regular_reason(path: str) -> Optional[str]:
    """None when ``path`` (links followed) is a regular file; otherwise what it is instead,
    in words ("a named pipe (FIFO)", "a broken symbolic link", ...). Never opens it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if os.path.islink(path):
            return "a broken symbolic link" if not os.path.exists(path) else f"unreadable ({exc.strerror})"
        return f"unreadable ({exc.strerror})"
    return None if stat.S_ISREG(mode) else _kind(mode)


def _regular_opener(path: str, flags: int) -> int:
    fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, _kind(mode))
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_regular(path: str):
    """``open(path, "rb")`` for a regular file only: a named pipe, socket, device or folder
    is refused with NotRegularFile before anything is read from it. The file is opened
    non-blocking and checked on the open descriptor, so even one swapped for a named pipe
    after a listing cannot make the reader wait for ever."""
    return open(path, "rb", opener=_regular_opener)


def _one_line(exc: BaseException) -> str:
    """An error's text on one line, without a closing full stop, at most 200 characters."""
    text = " ".join(str(exc).split()).rstrip(". ") or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def os_error_words(exc: OSError) -> str:
    """The reason an OSError gives, in a few words for a sentence."""
    if isinstance(exc, NotRegularFile):
        return f"{exc.kind}, not a regular file"
    if isinstance(exc, IsADirectoryError):
        return "a folder, not a regular file"
    return _one_line(exc)


# --------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------
def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (gzipped or not, detected from its first bytes) into a numpy array."""
    try:
        with open_regular(path) as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        reason = os_error_words(exc) if isinstance(exc, OSError) else exc
        raise UserError(f"Cannot read the IDX file {path} ({reason}): replace it with a good copy.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(
            f"{path} is not an IDX file (bad magic number): replace it with a good copy of the "
            "IDX images or labels file."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise UserError(f"{path} is not a valid IDX file (bad header): replace it with a good copy.")
    dims = struct.unpack(">" + "i" * ndim, raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]]).newbyteorder(">")
    count = int(np.prod(dims, dtype=np.int64))
    if any(d < 0 for d in dims) or len(raw) - header < count * dtype.itemsize:
        raise UserError(f"{path} is truncated (the IDX header promises {dims}): replace it with a good copy.")
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _idx_role(name: str) -> Optional[tuple[str, str]]:
    """``(split, kind)`` a file name stands for (split train/test, kind images/labels), or None."""
    n = name.lower()
    if n.startswith(".") or n.endswith(_NOT_IDX_SUFFIXES):
        return None
    if "train" in n:
        split = "train"
    elif "t10k" in n or "test" in n:
        split = "test"
    else:
        return None
    if "image" in n or "idx3" in n:
        kind = "images"
    elif "label" in n or "idx1" in n:
        kind = "labels"
    else:
        return None
    return split, kind


def find_idx_files(folder: str, split: str) -> Optional[tuple[str, str]]:
    """Paths of the IDX images and labels files of ``split`` ('train'/'test') in ``folder``."""
    if not os.path.isdir(folder):
        return None
    found: dict[str, list[str]] = {"images": [], "labels": []}
    for name in os.listdir(folder):
        if not os.path.isfile(os.path.join(folder, name)):
            continue
        role = _idx_role(name)
        if role is not None and role[0] == split:
            found[role[1]].append(name)

    def preference(kind: str) -> Callable[[str], tuple]:
        standard = _STANDARD_IDX_NAMES[(split, kind)]

        def key(name: str) -> tuple:
            low = name.lower()
            stem = low[:-3] if low.endswith(".gz") else low
            return (stem != standard, not ("ubyte" in low or "idx" in low), low.endswith(".gz"), name)

        return key

    if not found["images"] or not found["labels"]:
        return None
    images = min(found["images"], key=preference("images"))
    labels = min(found["labels"], key=preference("labels"))
    return os.path.join(folder, images), os.path.join(folder, labels)


def load_idx_pair(images_path: str, labels_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """IDX images (``N x H x W`` uint8) and labels as a uint8 ``N x 1 x H x W`` tensor and a LongTensor."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise UserError(
            f"{images_path} holds an array of shape {images.shape}, not N x height x width images: "
            "point at an IDX images file."
        )
    if images.dtype != np.uint8:
        if np.issubdtype(images.dtype, np.floating) and images.size and images.max() <= 1.0:
            images = np.round(images * 255.0)
        images = np.clip(images, 0, 255).astype(np.uint8)
    labels = labels.reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{labels_path} does not hold integer labels: point at an IDX labels file.")
    if labels.shape[0] != images.shape[0]:
        raise UserError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels: "
            "use the matching pair of files."
        )
    if labels.size and labels.min() < 0:
        raise UserError(f"{labels_path} holds negative labels: labels must be 0, 1, 2, ...")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _try_download(make: Optional[Callable[[], object]]) -> Optional[str]:
    """Run a torchvision download; return None on success, or the reason it failed."""
    if make is None:
        return "no downloader for this dataset"
    try:
        make()
    except Exception as exc:  # no network, bad mirror, checksum mismatch, ...
        reason = " ".join(str(exc).split()).rstrip(":. ")
        if len(reason) > 200:
            reason = reason[:197] + "..."
        return reason or type(exc).__name__
    return None


_MNIST_LIKE = {
    # name: (folder under data_dir, display name, torchvision class name)
    "mnist": ("MNIST", "MNIST", "MNIST"),
    "kmnist": ("KMNIST", "KMNIST", "KMNIST"),
    "fashion_mnist": ("FashionMNIST", "Fashion-MNIST", "FashionMNIST"),
}


def load_mnist_like(name: str, data_dir: str, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of MNIST / KMNIST / Fashion-MNIST from ``data_dir/<Folder>/raw`` (or ``<Folder>``)."""
    folder, display, tv_class = _MNIST_LIKE[name]
    split = "train" if train else "test"
    raw = os.path.join(data_dir, folder, "raw")
    candidates = [raw, os.path.join(data_dir, folder)]

    def find():
        for c in candidates:
            pair = find_idx_files(c, split)
            if pair is not None:
                return pair
        return None

    pair = find()
    failure = None
    if pair is None and download:
        import torchvision.datasets as tvd

        failure = _try_download(lambda: getattr(tvd, tv_class)(data_dir, train=train, download=True))
        pair = find()
    if pair is None:
        prefix = "train" if train else "t10k"
        words = "training" if train else "test"
        tail = f" (the download failed: {failure})" if failure else " (or let torchvision download them)"
        raise UserError(
            f"{display} {words} files not found: put {prefix}-images-idx3-ubyte[.gz] and "
            f"{prefix}-labels-idx1-ubyte[.gz] under {raw}{tail}.",
            setting="data_dir",
        )
    return load_idx_pair(*pair)


def load_idx_folder(path: str, train: bool, setting: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of an ``idx:PATH`` folder; ``setting`` names the parameter that gave PATH."""
    split = "train" if train else "test"
    if not os.path.isdir(path):
        raise UserError(
            f"The IDX folder {path} does not exist: give idx: an existing folder of IDX files.", setting=setting
        )
    pair = find_idx_files(path, split)
    if pair is None:
        prefix = "train" if train else "t10k"
        raise UserError(
            f"No IDX {split} files in {path}: put {prefix}-images-idx3-ubyte[.gz] and "
            f"{prefix}-labels-idx1-ubyte[.gz] (or any names holding '{split if train else 't10k'}' "
            "and 'images'/'labels') there.",
            setting=setting,
        )
    return load_idx_pair(*pair)


# --------------------------------------------------------------------------------------
# CIFAR pickles
# --------------------------------------------------------------------------------------
_CIFAR = {
    # classes: (folder, train files, test files, label key, display, torchvision class)
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels",
         "CIFAR-10", "CIFAR10"),
    100: ("cifar-100-python", ["train"], ["test"], "fine_labels", "CIFAR-100", "CIFAR100"),
}


def _read_cifar_pickle(path: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch. The file is a pickle, read whatever its checksum but with the data
    unpickler (utils.torch_files.load_data_pickle): plain containers and numpy arrays only,
    so a planted file that would run code is refused before anything of it runs."""
    try:
        with open_regular(path) as f:
            entry = load_data_pickle(f, encoding="bytes")
    except UntrustedGlobal as refused:
        raise UserError(
            f"The CIFAR file {path} is not a plain CIFAR batch (it names {refused.name}, which would run code "
            "from the file, so it was not loaded): replace it with a good copy, or delete it to let torchvision "
            "download it."
        ) from None
    except OSError as exc:
        raise UserError(f"Cannot read the CIFAR file {path} ({os_error_words(exc)}): "
                        "replace it with a good copy.") from None
    except Exception as exc:
        raise UserError(f"Cannot read the CIFAR file {path} ({_one_line(exc)}): replace it with a good copy.") from None

    def get(key: str):
        for k in (key.encode(), key):
            if isinstance(entry, dict) and k in entry:
                return entry[k]
        raise UserError(f"The CIFAR file {path} has no '{key}' entry: replace it with a good copy.")

    data = np.asarray(get("data"), dtype=np.uint8)
    labels = np.asarray(get(label_key), dtype=np.int64).reshape(-1)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise UserError(
            f"The CIFAR file {path} holds data of shape {data.shape} for {labels.shape[0]} labels, "
            "not N x 3072: replace it with a good copy."
        )
    return data, labels


def load_cifar(classes: int, data_dir: str, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of CIFAR-10 (``classes=10``) or CIFAR-100 fine labels (``classes=100``)."""
    folder, train_files, test_files, label_key, display, tv_class = _CIFAR[classes]
    root = os.path.join(data_dir, folder)
    files = train_files if train else test_files

    def present():  # a named pipe or the like counts as present: it is refused when read, never downloaded over
        return all(os.path.lexists(os.path.join(root, f)) for f in files)

    failure = None
    if not present() and download:
        import torchvision.datasets as tvd

        failure = _try_download(lambda: getattr(tvd, tv_class)(data_dir, train=train, download=True))
    if not present():
        words = "training" if train else "test"
        names = " ".join(files) if len(files) < 3 else f"{files[0]} ... {files[-1]}"
        tail = f" (the download failed: {failure})" if failure else " (or let torchvision download them)"
        raise UserError(f"{display} {words} files not found: put {names} under {root}{tail}.", setting="data_dir")
    parts = [_read_cifar_pickle(os.path.join(root, f), label_key) for f in files]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels)


# --------------------------------------------------------------------------------------
# scikit-learn digits (bundled, no download)
# --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def load_digits_split(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as 1 x 28 x 28 float images in [0, 1].

    The split is a fixed stratified 80/20 split of all 1,797 images
    (``train_test_split(..., test_size=0.2, random_state=0, stratify=y)``), made before
    any class restriction so it is the same for every ``class_num``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # 1797 x 8 x 8, values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels
    )
    idx = np.sort(train_idx if train else test_idx)
    x = torch.from_numpy(images[idx] / 16.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    x = x.clamp_(0.0, 1.0).contiguous()
    return x, torch.from_numpy(labels[idx])


# --------------------------------------------------------------------------------------
# Omniglot and ODIN folders
# --------------------------------------------------------------------------------------
def omniglot_folder(data_dir: str, train: bool, download: bool) -> str:
    """``data_dir/omniglot-py/images_evaluation`` (``images_background`` when ``train``)."""
    sub = "images_background" if train else "images_evaluation"
    folder = os.path.join(data_dir, "omniglot-py", sub)
    failure = None
    if not os.path.isdir(folder) and download:
        import torchvision.datasets as tvd

        failure = _try_download(lambda: tvd.Omniglot(data_dir, background=train, download=True))
    if not os.path.isdir(folder):
        tail = f" (the download failed: {failure})" if failure else " (or let torchvision download it)"
        raise UserError(
            f"Omniglot images not found: unzip {sub}.zip from "
            f"https://github.com/brendenlake/omniglot/raw/master/python/{sub}.zip into {folder}{tail}.",
            setting="data_dir",
        )
    return folder


ODIN_FOLDERS = {
    "imagenet-crop": ("Imagenet", "Tiny-ImageNet (crop)", "Imagenet.tar.gz"),
    "imagenet-resize": ("Imagenet_resize", "Tiny-ImageNet (resize)", "Imagenet_resize.tar.gz"),
    "lsun-crop": ("LSUN", "LSUN (crop)", "LSUN.tar.gz"),
    "lsun-resize": ("LSUN_resize", "LSUN (resize)", "LSUN_resize.tar.gz"),
}


def odin_folder(name: str, data_dir: str) -> tuple[str, str, str]:
    """Folder, display name and archive name of an ODIN out-of-distribution set."""
    sub, display, archive = ODIN_FOLDERS[name]
    return os.path.join(data_dir, "openset", sub), display, archive
