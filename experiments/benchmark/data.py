"""The data step of a plan: IDX subsets of the known and unknown sets, and the embedded
digits set, written once under OUT/data/ before the first run reads them."""
from __future__ import annotations

import gzip
import os
import struct

from utils.errors import UserError

from .plan import Plan
from .profiles import how_many


def write_idx(path: str, array) -> str:
    """An IDX file (gzipped) of a uint8 array: images N x H x W or labels N."""
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "i" * array.ndim, *array.shape)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with gzip.open(tmp, "wb") as handle:
        handle.write(header + array.tobytes())
    os.replace(tmp, path)
    return path


def write_idx_split(folder: str, split: str, images, labels) -> None:
    """images: N x 1 x H x W (or N x H x W) floats in [0, 1] or uint8; split 'train' or 't10k'."""
    import numpy as np
    import torch

    images = torch.as_tensor(images)
    if images.dim() == 4:
        if images.shape[1] != 1:
            raise UserError(f"IDX subsets hold grey images and {folder} would get {images.shape[1]} channels: "
                            "give --train_images, --test_images and --unknown_images 0 with this setting")
        images = images[:, 0]
    if images.dtype != torch.uint8:
        images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
    write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"), np.asarray(labels, dtype=np.uint8))
    write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"), images.numpy())


def write_digits_set(folder: str) -> str:
    """All 1,797 scikit-learn digits (8x8, every class) at 28x28 as an IDX test split: an
    unknown set that needs no download (use it as idx:FOLDER)."""
    import torch

    from datasets.sources import load_digits_split

    (train_x, train_y), (test_x, test_y) = load_digits_split(True), load_digits_split(False)
    write_idx_split(folder, "t10k", torch.cat([train_x, test_x]), torch.cat([train_y, test_y]).tolist())
    return folder


def _first(dataset, count: int):
    """The first ``count`` items (0: all) as (N x C x H x W tensor, labels)."""
    import torch

    count = len(dataset) if count == 0 else min(count, len(dataset))
    items = [dataset[i] for i in range(count)]
    return torch.stack([x for x, _ in items]), [int(y) for _, y in items]


def _grey(shape, name: str, flags: str) -> None:
    if shape[0] != 1:
        raise UserError(f"{flags} write grey IDX subsets and {name} has {shape[0]}-channel images: "
                        f"give {flags} 0 with this setting")


def _written(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "t10k-images-idx3-ubyte.gz"))


def materialise(plan: Plan, data_dir: str, log) -> None:
    """Write the IDX subsets the plan reads (once: existing folders are kept). Each unknown
    subset is written at the image shape of its known set, whether that set is read as it
    is (--train_images 0 --test_images 0) or from its own IDX subset. Every check comes
    before the first write."""
    from datasets.registry import get_known_dataset, get_unknown_dataset

    folders = {name: folder for name, _, folder, _, _ in plan.data["known"]}
    shapes: dict[str, tuple] = {}

    def shape_of(known: str, class_num: int) -> tuple:
        if known not in shapes:
            folder = folders.get(known)
            dataset = get_known_dataset(f"idx:{folder}", data_dir, class_num, False) if folder and _written(folder) \
                else get_known_dataset(known, data_dir, class_num, True)
            shapes[known] = tuple(dataset.image_shape)
        return shapes[known]

    for name, class_num, _, _, _ in plan.data["known"]:
        _grey(shape_of(name, class_num), name, "--train_images/--test_images")
    for _, known, class_num, _, _ in plan.data["unknown"]:  # also when written: perhaps for another setting
        _grey(shape_of(known, class_num), known, "--unknown_images")
    for folder in plan.data.get("embedded", []):
        if not _written(folder):
            write_digits_set(folder)
            log(f"wrote all 1,797 scikit-learn digits to {folder}")
    for name, class_num, folder, train_n, test_n in plan.data["known"]:
        if _written(folder):
            continue
        for split, train, count in (("train", True, train_n), ("t10k", False, test_n)):
            images, labels = _first(get_known_dataset(name, data_dir, class_num, train), count)
            write_idx_split(folder, split, images, labels)
        log(f"wrote {how_many(train_n)} training and {how_many(test_n)} test images of {name} to {folder}")
    for name, known, class_num, folder, count in plan.data["unknown"]:
        if _written(folder):
            continue
        dataset = get_unknown_dataset(name, data_dir, class_num, shapes[known], train=False, seed=0)
        images, _ = _first(dataset, count)
        write_idx_split(folder, "t10k", images, [0] * len(images))
        log(f"wrote the first {len(images)} images of {name} to {folder}")


