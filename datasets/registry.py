"""The dataset registry: every ``--known_dataset`` / ``--unknown_dataset`` name in one dict.

``get_known_dataset`` gives a known set with labels ``0..class_num-1``;
``get_unknown_dataset`` gives an out-of-distribution set whose every label is
``class_num``, with its images brought to the known set's ``(C, H, W)``.
Every item is ``(float32 C x H x W image in [0, 1], int label)``; see
:mod:`datasets.images`.

Besides the fixed names there are two generic forms, usable as known or unknown set:
``idx:PATH`` (a folder of IDX files, gzipped or not) and ``folder:PATH`` (a folder of
images of any size and mode, searched recursively).

Fixes relative to the original code: the ODIN folders are read under ``data_dir``
(the original hard-coded ``data/openset``); Omniglot's 10,000 images are the first in
sorted path order (the original took the file system's listing order); noise items
are drawn from a generator seeded by ``(seed, index)`` instead of the global RNG, so
they are reproducible and identical in every DataLoader worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from utils.errors import UserError

from . import sources
from .images import (
    FileImageDataset,
    ImageDataset,
    TensorImageDataset,
    UniformNoiseDataset,
    check_image_shape,
    list_images,
    pil_shape,
)

IDX_PREFIX = "idx:"
FOLDER_PREFIX = "folder:"

# Sizes of the generated sets (the original's NOISE: 10,000 test / 50,000 train).
NOISE_TEST_SIZE = 10_000
NOISE_TRAIN_SIZE = 50_000
OMNIGLOT_SIZE = 10_000

# The original added U(0, 1) noise AFTER normalising with std 0.5, i.e. 0.5 * U(0, 1)
# in the [0, 1] pixel units the datasets here yield.
MNIST_NOISE_SCALE = 0.5

# Independent random streams of the generated sets (see images.item_generator).
_STREAM_NOISE_TEST, _STREAM_NOISE_TRAIN = 11, 12
_STREAM_MNIST_NOISE_TEST, _STREAM_MNIST_NOISE_TRAIN = 21, 22


@dataclass(frozen=True)
class DatasetEntry:
    """How to build a named dataset as a known set and/or as an unknown set.

    ``known(data_dir, class_num, train, download)`` and
    ``unknown(data_dir, class_num, image_shape, train, seed, download)``; either may be
    None when the name cannot play that role.
    """

    known: Optional[Callable[..., ImageDataset]]
    unknown: Optional[Callable[..., ImageDataset]]
    description: str


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def _check_class_num(class_num) -> int:
    if isinstance(class_num, bool) or not isinstance(class_num, (int, np.integer)) or class_num < 1:
        raise UserError(
            f"class_num must be a positive whole number (got {class_num!r}): set class_num to e.g. 10.",
            setting="class_num",
        )
    return int(class_num)


def _restrict_known(
    images: torch.Tensor, labels: torch.Tensor, class_num: int, total: int, display: str, train: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep classes < class_num, checking that each of them has images."""
    if class_num > total:
        raise UserError(
            f"class_num {class_num} is more than the {total} classes of {display}: "
            f"lower class_num to at most {total}.",
            setting="class_num",
        )
    keep = labels < class_num
    labels = labels[keep]
    counts = torch.bincount(labels, minlength=class_num)
    missing = [c for c in range(class_num) if counts[c] == 0]
    if missing:
        split = "training" if train else "test"
        shown = ", ".join(str(c) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise UserError(
            f"The {split} split of {display} has no images of class {shown}: "
            f"lower class_num to {missing[0]} or add images of the missing classes.",
            setting="class_num",
        )
    return images[keep], labels


def _split_unknown(
    images: torch.Tensor, labels: torch.Tensor, class_num: int, total: int, display: str
) -> torch.Tensor:
    """Images of classes >= class_num (the held-out classes of a partial dataset)."""
    if class_num >= total:
        raise UserError(
            f"{display} has {total} classes, so with class_num {class_num} no class is left as unknown: "
            f"lower class_num below {total} or pick another unknown dataset.",
            setting="class_num",
        )
    keep = labels >= class_num
    if not bool(keep.any()):
        raise UserError(
            f"{display} has no images of classes {class_num}..{total - 1}: lower class_num or pick another "
            "unknown dataset.",
            setting="class_num",
        )
    return images[keep]


def _as_unknown(images: torch.Tensor, class_num: int, image_shape, name: str, **kw) -> TensorImageDataset:
    return TensorImageDataset(
        images,
        torch.full((images.shape[0],), class_num, dtype=torch.long),
        num_classes=class_num,
        image_shape=image_shape,
        name=name,
        **kw,
    )


def _resolve_path(path: str, data_dir: str, form: str, role: str) -> str:
    """A PATH of ``idx:PATH`` / ``folder:PATH``: as given, else relative to data_dir.

    ``role`` is the setting that named it: ``"known_dataset"`` or ``"unknown_dataset"``.
    """
    if not path:
        raise UserError(f"{form}PATH needs a path after the colon: e.g. {form}./my_images.", setting=role)
    path = os.path.expanduser(path)
    if not os.path.exists(path) and not os.path.isabs(path):
        alt = os.path.join(data_dir, path)
        if os.path.exists(alt):
            return alt
    return path


# --------------------------------------------------------------------------------------
# MNIST-likes, CIFAR, digits
# --------------------------------------------------------------------------------------
_DISPLAY = {"mnist": "MNIST", "kmnist": "KMNIST", "fashion_mnist": "Fashion-MNIST"}


def _mnist_like_known(source: str, name: str):
    def build(data_dir, class_num, train, download):
        images, labels = sources.load_mnist_like(source, data_dir, train, download)
        images, labels = _restrict_known(images, labels, class_num, 10, _DISPLAY[source], train)
        return TensorImageDataset(images, labels, class_num, name=name)

    return build


def _mnist_like_unknown(source: str, name: str):
    def build(data_dir, class_num, image_shape, train, seed, download):
        images, _ = sources.load_mnist_like(source, data_dir, train, download)
        return _as_unknown(images, class_num, image_shape, name)

    return build


def _mnist_like_partial_unknown(source: str, name: str):
    def build(data_dir, class_num, image_shape, train, seed, download):
        images, labels = sources.load_mnist_like(source, data_dir, train, download)
        images = _split_unknown(images, labels, class_num, 10, _DISPLAY[source])
        return _as_unknown(images, class_num, image_shape, name)

    return build


def _mnist_noise_unknown(data_dir, class_num, image_shape, train, seed, download):
    images, _ = sources.load_mnist_like("mnist", data_dir, train, download)
    return _as_unknown(
        images,
        class_num,
        image_shape,
        "mnist_noise",
        noise_scale=MNIST_NOISE_SCALE,
        seed=seed,
        noise_stream=_STREAM_MNIST_NOISE_TRAIN if train else _STREAM_MNIST_NOISE_TEST,
    )


def _noise_unknown(data_dir, class_num, image_shape, train, seed, download):
    return UniformNoiseDataset(
        NOISE_TRAIN_SIZE if train else NOISE_TEST_SIZE,
        image_shape,
        label=class_num,
        seed=seed,
        stream=_STREAM_NOISE_TRAIN if train else _STREAM_NOISE_TEST,
        name="noise",
    )


def _cifar_known(classes: int, name: str):
    def build(data_dir, class_num, train, download):
        images, labels = sources.load_cifar(classes, data_dir, train, download)
        images, labels = _restrict_known(images, labels, class_num, classes, f"CIFAR-{classes}", train)
        return TensorImageDataset(images, labels, class_num, name=name)

    return build


def _cifar_unknown(classes: int, name: str):
    def build(data_dir, class_num, image_shape, train, seed, download):
        images, labels = sources.load_cifar(classes, data_dir, train, download)
        images = _split_unknown(images, labels, class_num, classes, f"CIFAR-{classes}")
        return _as_unknown(images, class_num, image_shape, name)

    return build


def _digits_known(data_dir, class_num, train, download):
    images, labels = sources.load_digits_split(train)
    images, labels = _restrict_known(images, labels, class_num, 10, "the scikit-learn digits", train)
    return TensorImageDataset(images, labels, class_num, name="digits")


def _digits_unknown(data_dir, class_num, image_shape, train, seed, download):
    images, labels = sources.load_digits_split(train)
    images = _split_unknown(images, labels, class_num, 10, "the scikit-learn digits")
    return _as_unknown(images, class_num, image_shape, "digits_unknown")


# --------------------------------------------------------------------------------------
# Omniglot and ODIN image folders
# --------------------------------------------------------------------------------------
def _omniglot_preprocess(img: Image.Image) -> Image.Image:
    """Omniglot strokes are black on white: invert to white on black (like MNIST), 28x28."""
    return ImageOps.invert(img.convert("L")).resize((28, 28), Image.BILINEAR)


def _omniglot_unknown(data_dir, class_num, image_shape, train, seed, download):
    folder = sources.omniglot_folder(data_dir, train, download)
    paths = [p for p in list_images(folder) if p.lower().endswith(".png")][:OMNIGLOT_SIZE]
    if not paths:
        raise UserError(
            f"The Omniglot folder {folder} holds no .png images: unzip the Omniglot images "
            "(<alphabet>/<character>/*.png) there.",
            setting="data_dir",
        )
    return FileImageDataset(
        paths, [class_num] * len(paths), class_num, image_shape, preprocess=_omniglot_preprocess, name="omniglot"
    )


def _odin_unknown(name: str):
    def build(data_dir, class_num, image_shape, train, seed, download):
        folder, display, archive = sources.odin_folder(name, data_dir)
        paths = list_images(folder) if os.path.isdir(folder) else []
        if not paths:
            raise UserError(
                f"{display} images not found: download {archive} from the ODIN repository "
                f"(https://github.com/facebookresearch/odin) and extract it to {folder}.",
                setting="data_dir",
            )
        return FileImageDataset(paths, [class_num] * len(paths), class_num, image_shape, name=name)

    return build


# --------------------------------------------------------------------------------------
# idx:PATH and folder:PATH
# --------------------------------------------------------------------------------------
def _idx_known(path: str, data_dir: str, class_num: int, train: bool) -> ImageDataset:
    path = _resolve_path(path, data_dir, IDX_PREFIX, "known_dataset")
    images, labels = sources.load_idx_folder(path, train, setting="known_dataset")
    total = int(labels.max()) + 1 if labels.numel() else 0
    images, labels = _restrict_known(images, labels, class_num, total, f"the IDX set {path}", train)
    return TensorImageDataset(images, labels, class_num, name=IDX_PREFIX + path)


def _idx_unknown(path, data_dir, class_num, image_shape, train) -> ImageDataset:
    path = _resolve_path(path, data_dir, IDX_PREFIX, "unknown_dataset")
    images, _ = sources.load_idx_folder(path, train, setting="unknown_dataset")
    if images.shape[0] == 0:
        raise UserError(
            f"The IDX set {path} holds no images: point idx: at a folder of non-empty IDX files.",
            setting="unknown_dataset",
        )
    return _as_unknown(images, class_num, image_shape, IDX_PREFIX + path)


def _check_folder(path: str, role: str) -> None:
    if not os.path.isdir(path):
        raise UserError(
            f"The image folder {path} does not exist: give folder: an existing folder of images.", setting=role
        )


def _class_dirs(root: str) -> list[str]:
    return sorted(
        d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d))
    )


def _folder_known(path: str, data_dir: str, class_num: int, train: bool) -> ImageDataset:
    """Class subfolders in sorted order (like ImageFolder), classes < class_num.

    If PATH has ``train`` and ``test`` (or ``val``) subfolders, each holds the class
    subfolders of that split; otherwise each class's images are split 80/20 with a
    fixed seeded stratified split. The image shape is that of the first image.
    """
    from sklearn.model_selection import train_test_split

    path = _resolve_path(path, data_dir, FOLDER_PREFIX, "known_dataset")
    _check_folder(path, "known_dataset")
    top = _class_dirs(path)
    test_dir = "test" if "test" in top else ("val" if "val" in top else None)
    presplit = "train" in top and test_dir is not None
    shape_root = os.path.join(path, "train") if presplit else path
    split_root = os.path.join(path, "train" if train else test_dir) if presplit else path

    classes = _class_dirs(shape_root)
    if not classes:
        raise UserError(
            f"The image folder {shape_root} has no class subfolders: put each class's images in its own "
            "subfolder (e.g. cat/*.png, dog/*.png), or use it as the unknown dataset.",
            setting="known_dataset",
        )
    if class_num > len(classes):
        raise UserError(
            f"class_num {class_num} is more than the {len(classes)} class subfolders of {shape_root}: "
            f"lower class_num to at most {len(classes)}.",
            setting="class_num",
        )
    classes = classes[:class_num]

    def gather(root: str) -> tuple[list[str], list[int]]:
        paths, labels, owner = [], [], {}
        for c, cls in enumerate(classes):
            found = list_images(os.path.join(root, cls)) if os.path.isdir(os.path.join(root, cls)) else []
            for image in found:
                real = os.path.realpath(image)
                if real in owner:
                    raise UserError(
                        f"The image {real} is in two classes of {root} ('{classes[owner[real]]}' and '{cls}', "
                        "through a symbolic link): keep each image in one class folder.", setting="known_dataset")
                owner[real] = c
            paths += found
            labels += [c] * len(found)
        return paths, labels

    if presplit:
        shared = {os.path.realpath(p) for p in gather(shape_root)[0]} & {
            os.path.realpath(p) for p in gather(os.path.join(path, test_dir))[0]}
        if shared:
            raise UserError(f"The image {sorted(shared)[0]} is in both the train and the {test_dir} split of {path} "
                            "(through a symbolic link): keep each image in one split.", setting="known_dataset")
    first, _ = gather(shape_root)
    if not first:
        raise UserError(
            f"The class subfolders of {shape_root} hold no images (png, jpg, ...): put image files in them.",
            setting="known_dataset",
        )
    image_shape = pil_shape(first[0])
    paths, labels = gather(split_root)
    if not presplit and paths:
        try:
            tr, te = train_test_split(
                np.arange(len(paths)), test_size=0.2, random_state=0, stratify=np.asarray(labels)
            )
        except ValueError as exc:
            raise UserError(
                f"The images of {path} cannot be split 80/20 by class ({exc}): give every class at least "
                "5 images, or provide train/ and test/ subfolders.",
                setting="known_dataset",
            ) from None
        keep = np.sort(tr if train else te)
        paths = [paths[i] for i in keep]
        labels = [labels[i] for i in keep]
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=class_num)
    missing = [c for c in range(class_num) if counts[c] == 0]
    if missing:
        split = "training" if train else "test"
        raise UserError(
            f"Class {missing[0]} ('{classes[missing[0]]}') has no {split} images in {split_root}: "
            f"add images to it or lower class_num to {missing[0]}.",
            setting="class_num",
        )
    return FileImageDataset(paths, labels, class_num, image_shape, name=FOLDER_PREFIX + path)


def _folder_unknown(path, data_dir, class_num, image_shape, train) -> ImageDataset:
    """Every image under PATH (recursively), whatever its subfolder; there is no split."""
    path = _resolve_path(path, data_dir, FOLDER_PREFIX, "unknown_dataset")
    _check_folder(path, "unknown_dataset")
    paths = list_images(path)
    if not paths:
        raise UserError(
            f"The image folder {path} holds no images (png, jpg, ...): put image files in it.",
            setting="unknown_dataset",
        )
    return FileImageDataset(paths, [class_num] * len(paths), class_num, image_shape, name=FOLDER_PREFIX + path)


# --------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------
REGISTRY: dict[str, DatasetEntry] = {
    "mnist": DatasetEntry(
        _mnist_like_known("mnist", "mnist"), _mnist_like_unknown("mnist", "mnist"),
        "MNIST (known: classes < K; unknown: the whole test split)",
    ),
    "kmnist": DatasetEntry(
        _mnist_like_known("kmnist", "kmnist"), _mnist_like_unknown("kmnist", "kmnist"),
        "KMNIST (known: classes < K; unknown: the whole test split)",
    ),
    "fashion_mnist": DatasetEntry(
        _mnist_like_known("fashion_mnist", "fashion_mnist"),
        _mnist_like_unknown("fashion_mnist", "fashion_mnist"),
        "Fashion-MNIST (known: classes < K; unknown: the whole test split)",
    ),
    "fashion_mnist_known": DatasetEntry(
        _mnist_like_known("fashion_mnist", "fashion_mnist_known"), None, "Fashion-MNIST classes < K",
    ),
    "fashion_mnist_unknown": DatasetEntry(
        None, _mnist_like_partial_unknown("fashion_mnist", "fashion_mnist_unknown"),
        "Fashion-MNIST test classes >= K",
    ),
    "omniglot": DatasetEntry(None, _omniglot_unknown, "Omniglot evaluation set, inverted, 10,000 images"),
    "mnist_noise": DatasetEntry(None, _mnist_noise_unknown, "MNIST test images plus uniform pixel noise"),
    "noise": DatasetEntry(None, _noise_unknown, "10,000 U(0,1) images"),
    "cifar_known": DatasetEntry(_cifar_known(10, "cifar_known"), None, "CIFAR-10 classes < K"),
    "cifar_unknown": DatasetEntry(None, _cifar_unknown(10, "cifar_unknown"), "CIFAR-10 test classes >= K"),
    "cifar100_known": DatasetEntry(_cifar_known(100, "cifar100_known"), None, "CIFAR-100 classes < K"),
    "cifar100_unknown": DatasetEntry(
        None, _cifar_unknown(100, "cifar100_unknown"), "CIFAR-100 test classes >= K"
    ),
    "imagenet-crop": DatasetEntry(None, _odin_unknown("imagenet-crop"), "ODIN Tiny-ImageNet crop"),
    "imagenet-resize": DatasetEntry(None, _odin_unknown("imagenet-resize"), "ODIN Tiny-ImageNet resize"),
    "lsun-crop": DatasetEntry(None, _odin_unknown("lsun-crop"), "ODIN LSUN crop"),
    "lsun-resize": DatasetEntry(None, _odin_unknown("lsun-resize"), "ODIN LSUN resize"),
    "digits": DatasetEntry(_digits_known, None, "scikit-learn digits at 28x28, classes < K (bundled)"),
    "digits_unknown": DatasetEntry(None, _digits_unknown, "scikit-learn digits test classes >= K"),
}

GENERIC_FORMS = (IDX_PREFIX + "PATH", FOLDER_PREFIX + "PATH")


def available_datasets() -> list[str]:
    """Every dataset name, the generic ``idx:PATH`` and ``folder:PATH`` forms last."""
    return list(REGISTRY) + list(GENERIC_FORMS)


def known_dataset_names() -> list[str]:
    return [n for n, e in REGISTRY.items() if e.known is not None] + list(GENERIC_FORMS)


def unknown_dataset_names() -> list[str]:
    return [n for n, e in REGISTRY.items() if e.unknown is not None] + list(GENERIC_FORMS)


_PARTNERS = {
    "cifar_known": "cifar_unknown",
    "cifar100_known": "cifar100_unknown",
    "fashion_mnist_known": "fashion_mnist_unknown",
    "digits": "digits_unknown",
}
_PARTNERS.update({v: k for k, v in list(_PARTNERS.items())})


def _partner_hint(name: str) -> str:
    return f" (did you mean {_PARTNERS[name]}?)" if name in _PARTNERS else ""


def _entry(name, role: str) -> DatasetEntry:
    """The registry entry of ``name``; ``role`` is the setting that named it."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise UserError(
            f"Unknown dataset {name!r}: choose one of {', '.join(available_datasets())}.", setting=role
        )
    return REGISTRY[name]


def get_known_dataset(
    name: str, data_dir: str, class_num: int, train: bool, download: bool = True
) -> ImageDataset:
    """The known (in-distribution) dataset ``name``, restricted to classes ``0..class_num-1``.

    The result has ``targets`` (LongTensor), ``image_shape`` (C, H, W) and
    ``num_classes`` (= class_num); items are ``(float32 image in [0, 1], int label)``.
    """
    class_num = _check_class_num(class_num)
    data_dir = os.path.expanduser(data_dir)
    if isinstance(name, str) and name.startswith(IDX_PREFIX):
        return _idx_known(name[len(IDX_PREFIX):], data_dir, class_num, train)
    if isinstance(name, str) and name.startswith(FOLDER_PREFIX):
        return _folder_known(name[len(FOLDER_PREFIX):], data_dir, class_num, train)
    entry = _entry(name, "known_dataset")
    if entry.known is None:
        raise UserError(
            f"{name!r} cannot be the known dataset{_partner_hint(name)}: choose one of "
            f"{', '.join(known_dataset_names())}.",
            setting="known_dataset",
        )
    return entry.known(data_dir, class_num, train, download)


def get_unknown_dataset(
    name: str,
    data_dir: str,
    class_num: int,
    image_shape: Sequence[int],
    train: bool = False,
    seed: int = 0,
    download: bool = True,
) -> ImageDataset:
    """The unknown (out-of-distribution) dataset ``name``: every label is ``class_num``.

    Its test split (its training split when ``train`` and it has one; sets without a
    split always give all their images), images converted to ``image_shape`` (C, H, W):
    grey to RGB by repetition, RGB to grey by luminance, then a bilinear resize of the
    whole image.
    """
    class_num = _check_class_num(class_num)
    image_shape = check_image_shape(image_shape)
    data_dir = os.path.expanduser(data_dir)
    if isinstance(name, str) and name.startswith(IDX_PREFIX):
        return _idx_unknown(name[len(IDX_PREFIX):], data_dir, class_num, image_shape, train)
    if isinstance(name, str) and name.startswith(FOLDER_PREFIX):
        return _folder_unknown(name[len(FOLDER_PREFIX):], data_dir, class_num, image_shape, train)
    entry = _entry(name, "unknown_dataset")
    if entry.unknown is None:
        raise UserError(
            f"{name!r} cannot be the unknown dataset{_partner_hint(name)}: choose one of "
            f"{', '.join(unknown_dataset_names())}.",
            setting="unknown_dataset",
        )
    return entry.unknown(data_dir, class_num, image_shape, train, seed, download)
