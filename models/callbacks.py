"""Training schedules as Lightning callbacks: the margin M_d, fine-tuning, per-epoch seeding,
the trainer settings recorded in each checkpoint; and the run's safety: divergence stops
training (DivergenceGuard). Checkpoint files are written by models.checkpoints.AtomicCheckpointIO."""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import seed_everything
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info

from models.checkpoints import TrainingDiverged, describe_tensor, divergence_message, non_finite_kind, non_finite_state
from models.run_settings import TRAINER_SETTINGS_KEY


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


class RecordTrainerSettings(Callback):
    """Write the run's trainer settings (models.run_settings.TRAINER_SETTINGS: batches per
    epoch, precision) into every checkpoint, so that a resumed run restores them, or refuses
    other ones (models.run_settings.resume_trainer_settings)."""

    def __init__(self, settings: dict):
        self.settings = dict(settings)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[TRAINER_SETTINGS_KEY] = dict(self.settings)


# ------------------------------------------------------------------------------ divergence

def _learning_rate(trainer: pl.Trainer) -> float | None:
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            return float(group["lr"])
    return None


def _lr_flag(pl_module: pl.LightningModule) -> str:
    head_only = getattr(pl_module, "in_head_only_phase", None)
    return "finetune_lr" if callable(head_only) and head_only() else "lr"


def _overflowed_kl_coefficient(pl_module: pl.LightningModule) -> float | None:
    """--kl_coeff when the step's non-finite loss comes from the KL term alone (its metric
    term finite), else None. VMDLS adds each step's [metric, KL] terms to ``_loss_sums``
    in training_step, so they hold this step's terms when on_before_backward runs."""
    sums = getattr(pl_module, "_loss_sums", None)
    coefficient = getattr(pl_module, "hparams", {}).get("kl_coeff")
    if not isinstance(sums, torch.Tensor) or sums.numel() != 2 or coefficient is None:
        return None
    sums = sums.detach()
    return float(coefficient) if non_finite_kind(sums[1:]) and not non_finite_kind(sums[:1]) else None


class DivergenceGuard(Callback):
    """Stop training at the first NaN or infinite loss, before its backward pass and
    optimiser step, and before validating or starting an epoch with non-finite weights or
    class statistics: a TrainingDiverged naming the epoch, the step and the learning rate.
    Raised inside the fit, it ends it before any later checkpoint is saved (the checkpoints
    already written stay as they were); under DDP every process agrees on the decision."""

    def _agreed(self, trainer: pl.Trainer, bad: bool) -> bool:
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        return bad

    def _stop(self, trainer: pl.Trainer, pl_module: pl.LightningModule, what: str, kind: str) -> None:
        raise TrainingDiverged(divergence_message(what, kind, trainer.current_epoch, trainer.global_step,
                                                  _learning_rate(trainer), _lr_flag(pl_module)))

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        kind = non_finite_kind(loss.detach())
        if self._agreed(trainer, kind is not None):
            coefficient = _overflowed_kl_coefficient(pl_module)
            if coefficient is not None:  # the KL term alone: its coefficient is named, not only the learning rate
                rate = _learning_rate(trainer)
                raise TrainingDiverged(
                    f"training diverged: the loss's KL term (`kl_coeff` {coefficient:g} times the class KL) is "
                    f"{kind or 'nan'} at epoch {trainer.current_epoch}, step {trainer.global_step}"
                    f"{f' (learning rate {rate:g})' if rate is not None else ''}; lower `kl_coeff` (or "
                    f"`{_lr_flag(pl_module)}`, if the KL grew with the weights) (the run stopped there, and no "
                    "checkpoint of the diverged model was written)")
            self._stop(trainer, pl_module, "the loss", kind or "nan")

    def _check_state(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        found = non_finite_state((*pl_module.named_parameters(), *pl_module.named_buffers()))
        if self._agreed(trainer, found is not None):
            name, kind = found or ("weights", "nan")
            self._stop(trainer, pl_module, describe_tensor(name), kind)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_state(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check_state(trainer, pl_module)
