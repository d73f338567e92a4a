"""``AutoEncoder``, the LightningModule that mnist_ae.py and train_resnet_ae.py train.

It wraps one of the networks of ``build_autoencoder`` as ``net``. Given a
``batch_transform`` by the code that trains it (experiments.autoencoders passes the data's
``datasets.BatchTransform``), it normalises (and, while training, augments) each batch
itself in ``on_after_batch_transfer``, so the data loaders yield raw [0, 1] images, while
``AutoEncoder(...)(x)`` outside a Trainer maps a normalised batch to its normalised
reconstruction.
"""
from __future__ import annotations

import argparse
from typing import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import UserError

from .archs import build_autoencoder

__all__ = ["AutoEncoder"]


class AutoEncoder(pl.LightningModule):
    """An MSE autoencoder of normalised images; the model behind test.py's autoencoder checkpoint.

    ``forward(x)`` takes a normalised batch (N, in_channels, input_height, input_height)
    and returns its reconstruction in the same normalised space. ``data_transforms`` records
    the normalisation (and training augmentation) of the batches it learns from;
    ``batch_transform(train)`` builds the module that applies it, which
    ``on_after_batch_transfer`` runs on each batch of [0, 1] images during fitting (its
    training form in train mode). Without one, batches are used as they come. It is not a
    hyperparameter: checkpoints record ``data_transforms`` only.
    """

    def __init__(self, arch: str = "mnist", input_height: int = 28, in_channels: int = 1,
                 latent_dim: int = 256, lr: float = 1e-4, data_transforms: str | None = "mnist",
                 batch_transform: Callable[[bool], nn.Module] | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["batch_transform"])
        if in_channels < 1:
            raise UserError(f"in_channels must be positive, not {in_channels}", setting="in_channels")
        if latent_dim < 1:
            raise UserError(f"latent_dim must be positive, not {latent_dim}", setting="latent_dim")
        if not lr > 0:
            raise UserError(f"lr must be positive, not {lr}", setting="lr")
        self.net = build_autoencoder(arch, input_height, in_channels, latent_dim)
        self.image_shape = (in_channels, input_height, input_height)
        self._make_batch_transform = batch_transform
        self._batch_transforms: dict = {}  # built lazily, deliberately not a submodule (not in checkpoints)

    @classmethod
    def from_args(cls, args: argparse.Namespace, arch: str, input_height: int, in_channels: int,
                  batch_transform: Callable[[bool], nn.Module] | None = None) -> "AutoEncoder":
        """Build from parsed flags (``args.latent_dim``, ``args.lr``, ``args.data_transforms``)
        for ``arch`` and the known dataset's image side and channels."""
        return cls(arch=arch, input_height=input_height, in_channels=in_channels, latent_dim=args.latent_dim,
                   lr=args.lr, data_transforms=args.data_transforms, batch_transform=batch_transform)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise UserError(f"the autoencoder was trained on images of shape {self.image_shape} but got a batch "
                            f"of shape {tuple(x.shape)}; use an ae_checkpoint trained on the known dataset",
                            setting="ae_checkpoint")
        return self.net(x)

    # --- data: normalise / augment on the device
    def _batch_transform(self, train: bool, device: torch.device) -> nn.Module:
        key = (train, str(device))
        if key not in self._batch_transforms:
            self._batch_transforms[key] = self._make_batch_transform(train).to(device).train(train)
        return self._batch_transforms[key]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self._make_batch_transform is None:
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
