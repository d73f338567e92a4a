"""Training schedules as Lightning callbacks: the margin M_d, fine-tuning, per-epoch seeding."""
from __future__ import annotations

import pytorch_lightning as pl
from lightning_fabric.utilities.seed import seed_everything
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info


class MarginSchedule(Callback):
    """Grow the distancing margin M_d by ``jump`` at the start of every epoch from
    ``start_epoch`` on, while it is at most ``max_distance`` (the original's UpdateMargin)."""

    def __init__(self, max_distance: float, jump: float, start_epoch: int):
        self.max_distance = max_distance
        self.jump = jump
        self.start_epoch = start_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = pl_module.metric_loss
        if trainer.current_epoch >= self.start_epoch and loss.neg_margin <= self.max_distance:
            loss.neg_margin += self.jump


class FinetuneSchedule(Callback):
    """Fine-tuning: for the first ``head_epochs`` epochs only the heads train (the module's
    optimiser then holds only them, at --finetune_lr); at epoch ``head_epochs`` the backbone
    is unfrozen and the optimiser rebuilt over everything at --lr."""

    def __init__(self, head_epochs: int = 20):
        self.head_epochs = head_epochs

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        train_backbone = trainer.current_epoch >= self.head_epochs
        for parameter in pl_module.encoder.parameters():
            parameter.requires_grad_(train_backbone)
        if trainer.current_epoch == self.head_epochs:
            rank_zero_info(f"fine-tuning: training the whole network from epoch {self.head_epochs}")
            trainer.strategy.setup_optimizers(trainer)


class EpochSeed(Callback):
    """Reseed every RNG at each epoch start from (seed, epoch), so a run resumed from a
    checkpoint draws the same z samples and augmentations as an uninterrupted one."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed_everything(self.seed + trainer.current_epoch + trainer.global_rank * 100_003, workers=True, verbose=False)
