"""Autoencoders for the reconstruction weight r(x) (METHOD.md section 3 step 3, section 4).

Two plain MSE autoencoders, both working in the *normalised* image space (the space the
classifier sees): the input is a normalised batch, the output is a reconstruction in the
same space, with no final sigmoid.

- ``MnistAE``: the original's small conv autoencoder for 28x28 grey images (five 3x3 convs
  of 100 channels with three max-pools, linear 900 -> 500 -> latent -> 500 -> 900, then
  2x2 transposed convs back to the image). It also takes other square sizes that are a
  multiple of 4 (at least 8) and any number of input channels.
- ``ResNetAE``: pl_bolts' ``AE``: a CIFAR-style ResNet-18 (enc_out_dim 512) or ResNet-50
  (2048) encoder, a linear layer to the latent (256), and a mirrored ResNet decoder made
  of upsample + conv blocks. The decoder works on multiples of 8 pixels: for an input
  whose side is not a multiple of 8 (28x28 digits) it decodes to the next multiple
  (32x32) and resizes the result bilinearly to the input size.

The parameter names follow the original modules (``encoder``, ``fc``, ``decoder`` and
their children), so the original's checkpoints (``ae_mnist.ckpt``, ``ae_cifar100.ckpt``,
pl_bolts' CIFAR-10 AE) load with ``load_autoencoder`` as well as the ones the scripts
``mnist_ae.py`` and ``train_resnet_ae.py`` write.

``AutoEncoder`` is the LightningModule the scripts train. It normalises (and, while
training, augments) each batch itself in ``on_after_batch_transfer`` with
``datasets.BatchTransform(data_transforms, ...)``, so the data loaders yield raw [0, 1]
images, while ``AutoEncoder(...)(x)`` outside a Trainer maps a normalised batch to its
normalised reconstruction.
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

from models.backbones.resnet import BasicBlock, Bottleneck, conv1x1
from utils.errors import UserError
from utils.torch_files import read_torch_file

ARCHS = ("mnist", "resnet18", "resnet50")
ENC_OUT_DIM = {"mnist": 500, "resnet18": 512, "resnet50": 2048}
_TRAIN_HINT = ("train one with mnist_ae.py (28x28 grey sets) or train_resnet_ae.py (CIFAR) "
               "and pass the path of its last.ckpt")


# --------------------------------------------------------------------------- MNIST AE

def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)


class MnistConvEncoder(nn.Module):
    """28x28 -> 14 -> 7 -> 3 feature map of 100 channels, then a linear layer to 500."""

    def __init__(self, in_channels: int = 1, input_height: int = 28, width: int = 100, out_dim: int = 500):
        super().__init__()
        self.bottom = input_height // 8
        self.width = width
        self.encoder = nn.Sequential(
            _conv3x3(in_channels, width), nn.ReLU(),
            _conv3x3(width, width), nn.ReLU(),
            nn.MaxPool2d(2, 2),
            _conv3x3(width, width), nn.ReLU(),
            _conv3x3(width, width), nn.ReLU(),
            nn.MaxPool2d(2, 2),
            _conv3x3(width, width), nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        self.dec_layer = nn.Linear(width * self.bottom * self.bottom, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec_layer(torch.flatten(self.encoder(x), 1))


class MnistConvDecoder(nn.Module):
    """latent -> 500 -> 100x3x3, four 2x2 stride-1 transposed convs (3 -> 7), two 2x2
    stride-2 ones (7 -> 14 -> 28), then a 1x1 conv to the image channels.

    For a side H (multiple of 4) the stride-1 part grows H//8 to H//4 one pixel at a time.
    """

    def __init__(self, latent_dim: int, input_height: int = 28, out_channels: int = 1,
                 width: int = 100, hidden: int = 500):
        super().__init__()
        self.bottom = input_height // 8
        self.width = width
        self.latent = nn.Linear(latent_dim, hidden)
        self.enc_layer = nn.Linear(hidden, width * self.bottom * self.bottom)
        layers: list[nn.Module] = []
        for _ in range(input_height // 4 - self.bottom):
            layers += [nn.ConvTranspose2d(width, width, 2, 1, 0), nn.ReLU()]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(width, width, 2, 2, 0), nn.ReLU()]
        layers.append(nn.Conv2d(width, out_channels, 1, 1, 0))
        self.decoder = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.enc_layer(self.latent(z))
        return self.decoder(x.view(-1, self.width, self.bottom, self.bottom))


class MnistAE(nn.Module):
    """The original's conv autoencoder (its MNIST_AE with enc_type 'mnist').

    As in the original there is no non-linearity between the encoder's last linear layer,
    ``fc`` and the decoder's first two linear layers.
    """

    def __init__(self, input_height: int = 28, in_channels: int = 1, latent_dim: int = 32,
                 enc_out_dim: int = 500):
        super().__init__()
        if input_height < 8 or input_height % 4 != 0:
            raise UserError(f"the MNIST autoencoder needs square images whose side is a multiple of 4 "
                            f"and at least 8, not {input_height}; use train_resnet_ae.py for other sizes")
        self.input_height = input_height
        self.encoder = MnistConvEncoder(in_channels, input_height, out_dim=enc_out_dim)
        self.fc = nn.Linear(enc_out_dim, latent_dim)
        self.decoder = MnistConvDecoder(latent_dim, input_height, in_channels, hidden=enc_out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.fc(self.encoder(x)))


# --------------------------------------------------------------------------- ResNet AE

class Interpolate(nn.Module):
    """Nearest-neighbour resize by a factor or to a size (no parameters)."""

    def __init__(self, size: int | None = None, scale_factor: float | None = None):
        super().__init__()
        self.size = size
        self.scale_factor = scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and x.shape[-1] == self.size and x.shape[-2] == self.size:
            return x
        if self.size is None and self.scale_factor == 1:
            return x
        return F.interpolate(x, size=self.size, scale_factor=self.scale_factor)


def _up_conv(in_ch: int, out_ch: int, kernel: int, scale: int) -> nn.Module:
    """A conv, preceded by a nearest upsampling when scale > 1 (avoids checkerboards)."""
    conv = _conv3x3(in_ch, out_ch, bias=False) if kernel == 3 else conv1x1(in_ch, out_ch)
    return conv if scale == 1 else nn.Sequential(Interpolate(scale_factor=scale), conv)


class UpBasicBlock(nn.Module):
    """Decoder basic block: a 3x3 conv, then an (upsample +) 3x3 conv that changes channels."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, scale: int = 1, upsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _up_conv(in_ch, in_ch, 3, 1)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _up_conv(in_ch, planes, 3, scale)
        self.bn2 = nn.BatchNorm2d(planes)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.upsample is None else self.upsample(x)
        return self.relu(out + shortcut)


class UpBottleneck(nn.Module):
    """Decoder bottleneck: 1x1 reduce, (upsample +) 3x3, 1x1 expand by 4."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, scale: int = 1, upsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _up_conv(in_ch, planes, 1, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _up_conv(planes, planes, 3, scale)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.upsample is None else self.upsample(x)
        return self.relu(out + shortcut)


_RESNET_LAYOUT = {
    "resnet18": (BasicBlock, UpBasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, UpBottleneck, (3, 4, 6, 3)),
}


class ResNetEncoder(nn.Module):
    """CIFAR-style ResNet (3x3 stride-1 stem, no max-pool) ending in global average pooling."""

    def __init__(self, block: type, layers: Sequence[int], in_channels: int = 3):
        super().__init__()
        self._in = 64
        self.conv1 = _conv3x3(in_channels, 64, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=1, stride=1)  # identity, as pl_bolts without maxpool1
        self.layer1 = self._stage(block, 64, layers[0], 1)
        self.layer2 = self._stage(block, 128, layers[1], 2)
        self.layer3 = self._stage(block, 256, layers[2], 2)
        self.layer4 = self._stage(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def _stage(self, block: type, planes: int, count: int, stride: int) -> nn.Sequential:
        out = planes * block.expansion
        downsample = None
        if stride != 1 or self._in != out:
            downsample = nn.Sequential(conv1x1(self._in, out, stride), nn.BatchNorm2d(out))
        blocks = [block(self._in, planes, stride, downsample)]
        self._in = out
        blocks += [block(out, planes) for _ in range(1, count)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class ResNetDecoder(nn.Module):
    """Mirror of ResNetEncoder: linear to a (512*expansion)x4x4 map, three x2 stages, a
    final stage at full width, and a 3x3 conv to the image channels.

    It decodes to side 8 * ceil(input_height / 8); ResNetAE resizes that to the input size.
    """

    def __init__(self, block: type, layers: Sequence[int], latent_dim: int, input_height: int = 32,
                 out_channels: int = 3):
        super().__init__()
        self.expansion = block.expansion
        self._in = 512 * block.expansion
        self.decoded_height = 8 * math.ceil(input_height / 8)
        self.linear = nn.Linear(latent_dim, self._in * 4 * 4)
        self.upscale1 = Interpolate(size=self.decoded_height // 8)
        self.layer1 = self._stage(block, 256, layers[0], 2)
        self.layer2 = self._stage(block, 128, layers[1], 2)
        self.layer3 = self._stage(block, 64, layers[2], 2)
        self.layer4 = self._stage(block, 64, layers[3], 1)
        self.upscale = Interpolate(scale_factor=1)
        self.conv1 = nn.Conv2d(64 * block.expansion, out_channels, kernel_size=3, stride=1, padding=1, bias=False)

    def _stage(self, block: type, planes: int, count: int, scale: int) -> nn.Sequential:
        out = planes * block.expansion
        upsample = None
        if scale != 1 or self._in != out:
            upsample = nn.Sequential(_up_conv(self._in, out, 1, scale), nn.BatchNorm2d(out))
        blocks = [block(self._in, planes, scale, upsample)]
        self._in = out
        blocks += [block(out, planes) for _ in range(1, count)]
        return nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.linear(z).view(z.shape[0], 512 * self.expansion, 4, 4)
        x = self.upscale1(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.conv1(self.upscale(x))


class ResNetAE(nn.Module):
    """pl_bolts' AE: ResNet encoder -> Linear(enc_out_dim, latent_dim) -> ResNet decoder."""

    def __init__(self, enc_type: str = "resnet18", input_height: int = 32, in_channels: int = 3,
                 latent_dim: int = 256):
        super().__init__()
        if enc_type not in _RESNET_LAYOUT:
            raise UserError(f"--enc_type {enc_type!r} is not a ResNet autoencoder; use resnet18 or resnet50")
        if input_height < 1:
            raise UserError(f"the image side must be positive, not {input_height}")
        enc_block, dec_block, layers = _RESNET_LAYOUT[enc_type]
        self.input_height = input_height
        self.encoder = ResNetEncoder(enc_block, layers, in_channels)
        self.fc = nn.Linear(ENC_OUT_DIM[enc_type], latent_dim)
        self.decoder = ResNetDecoder(dec_block, layers, latent_dim, input_height, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_hat = self.decoder(self.fc(self.encoder(x)))
        if x_hat.shape[-2:] != x.shape[-2:]:
            x_hat = F.interpolate(x_hat, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
        return x_hat


def build_autoencoder(arch: str, input_height: int, in_channels: int, latent_dim: int) -> nn.Module:
    if arch == "mnist":
        return MnistAE(input_height, in_channels, latent_dim)
    if arch in _RESNET_LAYOUT:
        return ResNetAE(arch, input_height, in_channels, latent_dim)
    raise UserError(f"autoencoder architecture {arch!r} is unknown; use one of {', '.join(ARCHS)}")


# --------------------------------------------------------------------------- Lightning module

class AutoEncoder(pl.LightningModule):
    """An MSE autoencoder of normalised images; the model behind --ae_checkpoint.

    ``forward(x)`` takes a normalised batch (N, in_channels, input_height, input_height)
    and returns its reconstruction in the same normalised space. During fitting the
    loaders yield [0, 1] images and ``on_after_batch_transfer`` applies
    ``BatchTransform(data_transforms, ...)`` (augmenting in train mode); with
    ``data_transforms=None`` batches are used as they come.
    """

    def __init__(self, arch: str = "mnist", input_height: int = 28, in_channels: int = 1,
                 latent_dim: int = 256, lr: float = 1e-4, data_transforms: str | None = "mnist"):
        super().__init__()
        self.save_hyperparameters()
        if in_channels < 1 or latent_dim < 1:
            raise UserError(f"in_channels ({in_channels}) and --latent_dim ({latent_dim}) must be positive")
        if not lr > 0:
            raise UserError(f"--lr must be positive, not {lr}")
        self.net = build_autoencoder(arch, input_height, in_channels, latent_dim)
        self.image_shape = (in_channels, input_height, input_height)
        self._batch_transforms: dict = {}  # built lazily, deliberately not a submodule (not in checkpoints)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise UserError(f"the autoencoder was trained on images of shape {self.image_shape} but got a batch "
                            f"of shape {tuple(x.shape)}; pass an --ae_checkpoint trained on the known dataset")
        return self.net(x)

    # --- data: normalise / augment on the device
    def _batch_transform(self, train: bool, device: torch.device) -> nn.Module:
        key = (train, str(device))
        if key not in self._batch_transforms:
            from datasets import BatchTransform

            transform = BatchTransform(self.hparams.data_transforms, self.image_shape, train=train)
            self._batch_transforms[key] = transform.to(device).train(train)
        return self._batch_transforms[key]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if not self.hparams.data_transforms:
            return batch
        x, *rest = batch
        x = self._batch_transform(self.training, x.device)(x)
        return [x, *rest]

    # --- optimisation
    def reconstruction_loss(self, x: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self(x), x)

    @staticmethod
    def _images(batch) -> torch.Tensor:
        return batch if torch.is_tensor(batch) else batch[0]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.reconstruction_loss(self._images(batch))
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.reconstruction_loss(self._images(batch))
        self.log("val_loss", loss, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


# --------------------------------------------------------------------------- loading

def _hparams_of(checkpoint: dict) -> dict:
    hparams = checkpoint.get("hyper_parameters") or checkpoint.get("hparams") or {}
    if isinstance(hparams, argparse.Namespace):
        hparams = vars(hparams)
    try:
        return dict(hparams)
    except (TypeError, ValueError):
        return {}


def _from_vmdls_checkpoint(state: dict, hparams: dict) -> AutoEncoder | None:
    if "arch" not in hparams or not any(key.startswith("net.") for key in state):
        return None
    names = ("arch", "input_height", "in_channels", "latent_dim", "lr", "data_transforms")
    return AutoEncoder(**{name: hparams[name] for name in names if name in hparams})


def _from_original_checkpoint(state: dict, hparams: dict) -> AutoEncoder | None:
    """The original's MNIST_AE or pl_bolts' AE: same parameter names, without the 'net.' prefix."""
    if "fc.weight" not in state:
        return None
    latent_dim = state["fc.weight"].shape[0]
    if "encoder.encoder.0.weight" in state and "decoder.enc_layer.weight" in state:
        arch, in_channels = "mnist", state["encoder.encoder.0.weight"].shape[1]
        stride1 = sum(1 for key, v in state.items()
                      if key.startswith("decoder.decoder.") and key.endswith(".weight") and v.dim() == 4) - 3
        bottom = int(round(math.sqrt(state["decoder.enc_layer.weight"].shape[0] / 100)))
        input_height, transforms = 4 * (bottom + stride1), "mnist"
    elif "encoder.conv1.weight" in state and "decoder.linear.weight" in state:
        arch = "resnet50" if "encoder.layer1.0.conv3.weight" in state else "resnet18"
        in_channels = state["encoder.conv1.weight"].shape[1]
        input_height, transforms = int(hparams.get("input_height", 32)), "cifar"
    else:
        return None
    return AutoEncoder(arch=arch, input_height=input_height, in_channels=in_channels,
                       latent_dim=latent_dim, data_transforms=transforms)


def load_autoencoder(path: str, map_location="cpu") -> AutoEncoder:
    """Load an autoencoder checkpoint (ours, or the original's) in eval mode with frozen weights."""
    checkpoint = read_torch_file(path, "--ae_checkpoint", _TRAIN_HINT, map_location)
    not_ae = f"--ae_checkpoint {path!r} is not an autoencoder checkpoint; {_TRAIN_HINT}"
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(not_ae)
    state, hparams = checkpoint["state_dict"], _hparams_of(checkpoint)
    try:
        model = _from_vmdls_checkpoint(state, hparams)
        if model is None:
            model = _from_original_checkpoint(state, hparams)
            if model is not None:
                state = {"net." + key: value for key, value in state.items()}
    except (TypeError, ValueError, KeyError, AttributeError):
        raise UserError(not_ae) from None
    if model is None:
        raise UserError(not_ae)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise UserError(f"--ae_checkpoint {path!r} does not match the autoencoder its settings describe "
                        f"(wrong or damaged file); {_TRAIN_HINT}") from None
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.eval()
    model.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- training scripts

def add_autoencoder_args(parser: argparse.ArgumentParser, *, known_dataset: str, data_transforms: str,
                         latent_dim: int) -> None:
    """Flags shared by mnist_ae.py and train_resnet_ae.py (the trainer flags come separately)."""
    parser.add_argument("--known_dataset", default=known_dataset,
                        help=f"known (in-distribution) dataset to train on (default {known_dataset})")
    parser.add_argument("--data_dir", default="./data", help="where the datasets live (default ./data)")
    parser.add_argument("--class_num", type=int, default=None,
                        help="train on classes < class_num like the classifier (default 10; 100 for cifar100_known)")
    parser.add_argument("--data_transforms", default=data_transforms,
                        help=f"mnist, cifar, cifar_test or blob: augmentation while training, and the "
                             f"normalisation the AE expects, which must match test.py's (default {data_transforms})")
    parser.add_argument("--latent_dim", type=int, default=latent_dim, help=f"latent size (default {latent_dim})")
    parser.add_argument("--enc_out_dim", type=int, default=None,
                        help="accepted for the original's command lines; must equal the encoder's output size")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    parser.add_argument("--num_workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="seed for pl.seed_everything (default 0)")
    parser.add_argument("--output_dir", default=None,
                        help="folder for checkpoints and the CSV log (default outputs/ae_<known_dataset>)")


@rank_zero_only
def announce_checkpoint(path: str) -> None:
    """Print the checkpoint path as the script's last line (once, on the main process)."""
    print(f"last checkpoint: {path}", flush=True)


def train_autoencoder(args: argparse.Namespace, arch: str) -> str:
    """Train an AutoEncoder from parsed flags; returns the path of the last checkpoint."""
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from datasets import BatchTransform, get_known_dataset
    from utils.cli import ensure_output_dir, trainer_kwargs

    if args.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, not {args.batch_size}")
    if args.num_workers < 0:
        raise UserError(f"--num_workers must be 0 or more, not {args.num_workers}")
    if args.enc_out_dim is not None and args.enc_out_dim != ENC_OUT_DIM[arch]:
        raise UserError(f"--enc_out_dim {args.enc_out_dim} does not match the {arch} encoder, whose output "
                        f"size is {ENC_OUT_DIM[arch]}; drop the flag or set it to {ENC_OUT_DIM[arch]}")
    class_num = args.class_num
    if class_num is None:
        class_num = 100 if args.known_dataset == "cifar100_known" else 10
    kwargs = trainer_kwargs(args)
    output_dir = ensure_output_dir(args.output_dir or os.path.join("outputs", f"ae_{args.known_dataset}"))
    if args.seed is not None:
        pl.seed_everything(args.seed, workers=True)

    train_set = get_known_dataset(args.known_dataset, args.data_dir, class_num, train=True)
    val_set = get_known_dataset(args.known_dataset, args.data_dir, class_num, train=False)
    channels, height, width = train_set.image_shape
    if height != width:
        raise UserError(f"the autoencoders take square images but {args.known_dataset} has {height}x{width}; "
                        f"pick a square known dataset")
    BatchTransform(args.data_transforms, train_set.image_shape, train=True)  # fail early on a bad name

    model = AutoEncoder(arch=arch, input_height=height, in_channels=channels, latent_dim=args.latent_dim,
                        lr=args.lr, data_transforms=args.data_transforms)
    loader_kwargs = dict(batch_size=args.batch_size, num_workers=args.num_workers,
                         persistent_workers=args.num_workers > 0)
    train_loader = DataLoader(train_set, shuffle=True, drop_last=len(train_set) > args.batch_size,
                              **loader_kwargs)
    val_loader = DataLoader(val_set, shuffle=False, **loader_kwargs)

    steps_per_epoch = len(train_loader)
    if isinstance(args.limit_train_batches, int):
        steps_per_epoch = min(steps_per_epoch, args.limit_train_batches)
    elif isinstance(args.limit_train_batches, float):
        steps_per_epoch = int(steps_per_epoch * args.limit_train_batches)
    checkpoint = ModelCheckpoint(dirpath=output_dir, save_last=True, enable_version_counter=False)
    trainer = pl.Trainer(callbacks=[checkpoint], logger=CSVLogger(save_dir=output_dir),
                         default_root_dir=output_dir, enable_progress_bar=True,
                         log_every_n_steps=max(1, min(50, steps_per_epoch)), **kwargs)
    trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=val_loader)

    last = checkpoint.last_model_path or os.path.join(output_dir, "last.ckpt")
    if not os.path.isfile(last):  # fast_dev_run turns checkpointing off
        last = os.path.join(output_dir, "last.ckpt")
        trainer.save_checkpoint(last)
    return last
