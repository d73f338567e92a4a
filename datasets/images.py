"""Dataset classes and image conversions shared by every dataset in the registry.

Every dataset here yields ``(image, label)`` where ``image`` is a float32 tensor
``C x H x W`` with values in ``[0, 1]`` (neither normalised nor augmented: that is
done on whole batches by :class:`datasets.transforms.BatchTransform`) and ``label``
is a Python ``int``.

Each dataset also carries ``targets`` (a 1-D ``LongTensor`` with the label of every
item), ``image_shape`` (``(C, H, W)`` of the images it yields) and ``num_classes``.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from datasets.sources import not_regular_reason, open_regular, os_error_words
from utils.errors import UserError

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
    ".ppm", ".pgm", ".pbm", ".pnm",
)

# PIL modes holding one channel (everything else is read as RGB).
_GREY_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_WIDE_GREY_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}

# ITU-R 601-2 luma, the weights PIL's convert("L") uses too.
_LUMA = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------------------
# Shapes and conversions
# --------------------------------------------------------------------------------------
def check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    """Validate ``(C, H, W)`` with C in {1, 3} and positive sides; return it as a tuple."""
    try:
        shape = tuple(int(s) for s in image_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or shape[0] not in (1, 3) or shape[1] < 1 or shape[2] < 1:
        raise UserError(
            f"Image shape {image_shape!r} is not valid: give (channels, height, width) with 1 or 3 channels "
            "and positive sides."
        )
    return shape  # type: ignore[return-value]


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Bring a float image ``C x H x W`` to ``channels`` channels.

    Grey to RGB repeats the channel; RGB to grey uses the luminance
    0.299 R + 0.587 G + 0.114 B.
    """
    c = x.shape[0]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x * w).sum(dim=0, keepdim=True)
    raise ValueError(f"cannot convert {c} channels to {channels}")


def resize_image(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a float image ``C x H x W`` (the whole image) to ``height x width``, bilinearly."""
    if x.shape[-2:] == (height, width):
        return x
    y = F.interpolate(
        x.unsqueeze(0), size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )
    return y.squeeze(0).clamp_(0.0, 1.0)


def fit_to_shape(x: torch.Tensor, image_shape: Optional[Sequence[int]]) -> torch.Tensor:
    """Channel conversion then a bilinear resize, so that ``x`` has shape ``image_shape``."""
    if image_shape is None:
        return x
    c, h, w = image_shape
    return resize_image(convert_channels(x, c), h, w)


def pil_to_tensor(
    img: Image.Image, channels: Optional[int] = None, size: Optional[tuple[int, int]] = None
) -> torch.Tensor:
    """A PIL image of any mode as a float tensor ``C x H x W`` in ``[0, 1]``.

    ``channels`` (1 or 3) converts the channels (luminance for RGB to grey, repetition
    for grey to RGB); ``None`` keeps grey images grey and reads everything else as RGB.
    ``size`` is ``(height, width)``: the whole image is resized bilinearly to it.
    """
    mode = img.mode
    if channels is None:
        channels = 1 if mode in _GREY_MODES else 3
    if mode in _WIDE_GREY_MODES:
        # 16/32-bit integer or float grey images: scale to [0, 1] by hand, PIL would clip.
        arr = np.asarray(img, dtype=np.float32)
        if mode == "F":
            peak = 1.0 if arr.size == 0 or arr.max() <= 1.0 else 255.0
        elif mode == "I":
            peak = 255.0 if arr.size == 0 or arr.max() <= 255 else 65535.0
        else:
            peak = 65535.0
        x = torch.from_numpy(np.clip(arr / peak, 0.0, 1.0)).unsqueeze(0)
        x = convert_channels(x, channels)
        if size is not None:
            x = resize_image(x, *size)
        return x.contiguous()
    if channels == 1:
        if mode != "L":
            img = img.convert("L") if mode in ("1", "LA", "La", "RGB", "RGBA", "P") else img.convert(
                "RGB"
            ).convert("L")
    else:
        if mode != "RGB":
            img = img.convert("RGB")
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    x = torch.from_numpy(arr.copy())
    x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
    return x.float().div_(255.0)


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _unreadable(path: str, exc: Exception) -> UserError:
    """The sentence for an image that cannot be read: truncated, empty, not an image, a
    decompression bomb (PIL's DecompressionBombError), not a regular file, ..."""
    if isinstance(exc, UnidentifiedImageError):  # its text names the file object, not the path
        reason = "an empty file" if _size(path) == 0 else "not an image format PIL can read"
    elif isinstance(exc, OSError):
        reason = os_error_words(exc)
    else:
        reason = " ".join(str(exc).split()).rstrip(". ")
    return UserError(f"Cannot read the image {path} ({reason or type(exc).__name__}): remove or replace that file.")


def pil_shape(path: str) -> tuple[int, int, int]:
    """``(C, H, W)`` that :func:`pil_to_tensor` gives for the image at ``path`` (header only)."""
    try:
        with open_regular(path) as f, Image.open(f) as img:
            c = 1 if img.mode in _GREY_MODES else 3
            w, h = img.size
    except Exception as exc:  # any failure to decode the file is the file's fault
        raise _unreadable(path, exc) from None
    return (c, h, w)


def open_image(path: str) -> Image.Image:
    """Open and fully load an image file, as a UserError if it is unreadable (never opens
    anything but a regular file, so a named pipe cannot block the reader)."""
    try:
        with open_regular(path) as f, Image.open(f) as img:
            img.load()
            return img
    except Exception as exc:  # any failure to decode the file is the file's fault
        raise _unreadable(path, exc) from None


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def list_images(root: str) -> list[str]:
    """Every image file under ``root`` (recursively), in sorted path order, each file once.

    Symbolic links are followed, except a link to a folder already walked or to one that
    holds the folder it sits in (a loop); two names of one file (by its real path) count
    once, the first in sorted order. An entry with an image's name that is not a regular
    file (a named pipe, socket, device or broken link) is refused with a UserError naming
    it, without being opened (reading a named pipe would wait for ever); a folder with an
    image's name is walked as a folder."""
    found, walked, files = [], set(), set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in walked:
            dirnames[:] = []
            continue
        walked.add(real)
        dirnames[:] = [d for d in sorted(dirnames) if not d.startswith(".")
                       and not _inside(real, os.path.realpath(os.path.join(dirpath, d)))]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                path = os.path.join(dirpath, name)
                kind = not_regular_reason(path)
                if kind is not None:
                    raise UserError(f"{path} in the image folder {root} is {kind}, not an image file: remove it or "
                                    "replace it with an image.")
                found.append(path)
    found.sort(key=lambda p: os.path.relpath(p, root).split(os.sep))
    unique = []
    for path in found:
        real = os.path.realpath(path)
        if real not in files:
            files.add(real)
            unique.append(path)
    return unique


# --------------------------------------------------------------------------------------
# Per-index random streams
# --------------------------------------------------------------------------------------
def item_generator(seed: int, index: int, stream: int = 0) -> torch.Generator:
    """A ``torch.Generator`` that depends only on ``(seed, index, stream)``.

    Never touches the global RNG, so an item is the same whichever DataLoader worker
    (or process) reads it.
    """
    state = np.random.SeedSequence([int(seed) % (1 << 63), int(index), int(stream)]).generate_state(
        2, dtype=np.uint32
    )
    g = torch.Generator()
    g.manual_seed((int(state[0]) << 32) | int(state[1]))
    return g


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------
class ImageDataset(Dataset):
    """Common attributes: ``targets``, ``image_shape``, ``num_classes``."""

    targets: torch.Tensor
    image_shape: tuple[int, int, int]
    num_classes: int

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={getattr(self, 'name', '?')!r}, len={len(self)}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes})"
        )


class TensorImageDataset(ImageDataset):
    """Images held in memory as ``N x C x H x W`` (uint8 0..255, or float in [0, 1]).

    ``image_shape`` (optional) converts every item to that shape on the fly. With
    ``noise_scale > 0`` every item gets ``noise_scale * U(0, 1)`` pixel noise, drawn from
    a generator seeded by ``(seed, index)``, and is clamped to ``[0, 1]``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        num_classes: int,
        image_shape: Optional[Sequence[int]] = None,
        noise_scale: float = 0.0,
        seed: int = 0,
        noise_stream: int = 0,
        name: str = "",
    ):
        if images.ndim != 4:
            raise ValueError("images must be N x C x H x W")
        self.images = images
        self.targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
        if self.targets.shape[0] != images.shape[0]:
            raise ValueError("images and targets differ in length")
        self.num_classes = int(num_classes)
        self._native_shape = tuple(int(s) for s in images.shape[1:])
        self._target_shape = None if image_shape is None else check_image_shape(image_shape)
        if self._target_shape == self._native_shape:
            self._target_shape = None
        self.image_shape = self._target_shape or self._native_shape  # type: ignore[assignment]
        self.noise_scale = float(noise_scale)
        self.seed = int(seed)
        self.noise_stream = int(noise_stream)
        self.name = name

    def __getitem__(self, index: int):
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        x = self.images[index]
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.to(torch.float32, copy=True)
        x = fit_to_shape(x, self._target_shape)
        if self.noise_scale > 0:
            g = item_generator(self.seed, index, self.noise_stream)
            x = (x + self.noise_scale * torch.rand(x.shape, generator=g)).clamp_(0.0, 1.0)
        return x, int(self.targets[index])


class FileImageDataset(ImageDataset):
    """Images read lazily from files with PIL and brought to ``image_shape``.

    ``preprocess`` (optional) is applied to the PIL image first (e.g. Omniglot's
    inversion and 28x28 resize).
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: Sequence[int] | torch.Tensor,
        num_classes: int,
        image_shape: Sequence[int],
        preprocess: Optional[Callable[[Image.Image], Image.Image]] = None,
        name: str = "",
    ):
        self.paths = list(paths)
        self.targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
        if self.targets.shape[0] != len(self.paths):
            raise ValueError("paths and targets differ in length")
        self.num_classes = int(num_classes)
        self.image_shape = check_image_shape(image_shape)
        self.preprocess = preprocess
        self.name = name

    def __getitem__(self, index: int):
        img = open_image(self.paths[index])
        if self.preprocess is not None:
            img = self.preprocess(img)
        c, h, w = self.image_shape
        return pil_to_tensor(img, channels=c, size=(h, w)), int(self.targets[index])


class UniformNoiseDataset(ImageDataset):
    """``length`` images of U(0, 1) pixels; item ``i`` depends only on ``(seed, i)``."""

    def __init__(
        self,
        length: int,
        image_shape: Sequence[int],
        label: int,
        seed: int = 0,
        stream: int = 0,
        name: str = "noise",
    ):
        self.image_shape = check_image_shape(image_shape)
        self.targets = torch.full((int(length),), int(label), dtype=torch.long)
        self.num_classes = int(label)
        self.seed = int(seed)
        self.stream = int(stream)
        self.name = name

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        g = item_generator(self.seed, index, self.stream)
        return torch.rand(self.image_shape, generator=g), int(self.targets[index])


def dataset_paths(dataset) -> list[str] | None:
    """The file of each image, in index order, for sets read from files; None for sets held
    as tensors (looks through views such as the data module's resized one)."""
    while dataset is not None:
        paths = getattr(dataset, "paths", None)
        if paths is not None:
            return list(paths)
        dataset = getattr(dataset, "base", None)
    return None
