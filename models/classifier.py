"""The cross-entropy baseline (``main.py --objective ce``): the same backbone, a linear head.

A plain softmax classifier trained on the same backbone registry, data path (augmentation
and normalisation of the data module), optimiser flags and schedule as :class:`VMDLS`,
but on ordinary shuffled batches of B_c x B_s images and with cross-entropy only. It is
the model the post-hoc detectors (maximum softmax probability, energy, ...) are usually
measured on, so it is the baseline VMDLS is compared against. docs/method.md, "Baseline:
the cross-entropy classifier", describes it.

The input of :meth:`forward` and :meth:`features_and_logits` is an already preprocessed
batch: the data module's ``preprocess`` (normalisation) or, in training, its
``on_after_batch_transfer``.
"""
from __future__ import annotations

import inspect

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import build_encoder
from models.kinds import CE_KIND
from models.optimisation import check_optimiser, paper_optimisation
from models.speed import ChannelsLast
from utils.errors import UserError


class CrossEntropyClassifier(ChannelsLast, pl.LightningModule):
    """Backbone ``encoder`` (named as in VMDLS, so ``--weights`` and key prefixes match) and
    a linear head ``fc``: ``logits = fc(h)``, trained with cross-entropy.

    ``objective`` is always ``"ce"``: it is saved with the hyperparameters so that a
    checkpoint says which kind of model it holds (``models.checkpoints.checkpoint_kind``).
    Validation logs ``val_accuracy_known``, the argmax accuracy on the known test images
    (the unknown images of the validation set, label ``class_num``, are not scored).
    """

    def __init__(
        self,
        input_height: int = 28,
        enc_type: str = "resnet18",
        first_conv: bool = False,
        maxpool1: bool = False,
        enc_out_dim: int = 512,
        lr: float = 1e-4,
        class_num: int = 10,
        step_size: int = 100,
        step_gamma: float = 0.1,
        opt: str = "sgd",
        in_channels: int | None = None,
        objective: str = CE_KIND.name,
    ):
        super().__init__()
        self.save_hyperparameters()
        if objective != CE_KIND.name:
            raise UserError(f"objective {objective!r} is not the cross-entropy classifier's; use {CE_KIND.name}",
                            setting="objective")
        check_optimiser(opt)
        self.encoder = build_encoder(enc_type, enc_out_dim, in_channels=in_channels, input_height=input_height,
                                     first_conv=first_conv, maxpool1=maxpool1, class_num=class_num)
        self.fc = nn.Linear(enc_out_dim, class_num)
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._correct, self._seen = torch.zeros((), dtype=torch.long), 0  # the epoch's training accuracy

    @classmethod
    def hyperparameter_names(cls) -> tuple[str, ...]:
        """The names __init__ takes: what a checkpoint's hyperparameters may set."""
        return tuple(name for name in inspect.signature(cls.__init__).parameters if name != "self")

    # ----------------------------------------------------------------- forward passes
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The class logits (N x class_num) of a preprocessed batch."""
        h, _ = self.encoder(self.in_memory_format(x))
        return self.fc(h)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone feature h (N x enc_out_dim) and the logits ``fc(h)``, from one pass."""
        h, _ = self.encoder(self.in_memory_format(x))
        return h, self.fc(h)

    # ----------------------------------------------------------------------- training
    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        # Per step only what the progress bar shows (each self.log call costs about a
        # millisecond of host time); the accuracy is counted here and logged per epoch.
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        if self._correct.device != y.device:  # a step outside Lightning's epoch hooks
            self._correct = torch.zeros((), dtype=torch.long, device=y.device)
        self._correct = self._correct + (logits.detach().argmax(dim=1) == y).sum()
        self._seen += len(y)
        return loss

    def on_train_epoch_start(self):
        self._correct, self._seen = torch.zeros((), dtype=torch.long, device=self.device), 0

    def on_train_epoch_end(self):
        if self._seen:
            self.log("train_accuracy", self._correct.float() / self._seen, on_step=False, on_epoch=True, batch_size=1)

    # --------------------------------------------------------------------- validation
    def validation_step(self, batch, batch_idx):
        x, y = batch
        known = y < self.hparams.class_num
        if bool(known.any()):
            predictions = self(x[known]).argmax(dim=1)
            self._val_outputs.append((predictions.detach(), y[known].detach()))

    def on_validation_epoch_start(self):
        self._val_outputs = []

    def on_validation_epoch_end(self):
        outputs, self._val_outputs = self._val_outputs, []
        if self.trainer.sanity_checking or not outputs:
            return
        predictions = torch.cat([o[0] for o in outputs])
        labels = torch.cat([o[1] for o in outputs])
        accuracy = float((predictions == labels).float().mean())
        # Every process evaluates the whole validation set (no distributed sampler), so the
        # value agrees across processes and needs no reduction.
        self.log("val_accuracy_known", accuracy, prog_bar=True, sync_dist=False)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        return paper_optimisation(self.parameters(), hp.opt, hp.lr, hp.step_size, hp.step_gamma)
