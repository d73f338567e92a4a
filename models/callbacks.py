"""Training schedules as Lightning callbacks: the margin M_d, fine-tuning, per-epoch seeding;
and the run's safety: divergence stops training (DivergenceGuard), checkpoints are written
atomically and never hold NaN weights (AtomicCheckpointIO)."""
from __future__ import annotations

import math
import os
import time

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import seed_everything
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info

from models.checkpoints import TRAINER_SETTINGS_KEY, SafeCheckpointIO, _non_finite, non_finite_state
from utils.errors import UserError


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
    """Write the run's trainer settings (models.checkpoints.TRAINER_SETTINGS: batches per
    epoch, precision) into every checkpoint, so that a resumed run restores them, or refuses
    other ones (utils.cli.resume_trainer_settings)."""

    def __init__(self, settings: dict):
        self.settings = dict(settings)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[TRAINER_SETTINGS_KEY] = dict(self.settings)


# ------------------------------------------------------------------------------ divergence

class TrainingDiverged(UserError):
    """A NaN or infinite loss, weight or class statistic: the run stops, in one sentence."""


def divergence_message(what: str, kind: str, epoch: int, step: int, lr: float | None,
                       lr_flag: str = "lr") -> str:
    rate = f" (learning rate {lr:g})" if lr is not None else ""
    return (f"training diverged: {what} is {kind} at epoch {epoch}, step {step}{rate}; lower --{lr_flag} (the run "
            "stopped there, and no checkpoint of the diverged model was written)")


def _describe(name: str) -> str:
    statistic = name.startswith(("class_", "latent_", "epoch_stats", "latent_stats"))
    return f"the class statistic {name}" if statistic else f"the weight {name}"


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
    return float(coefficient) if _non_finite(sums[1:]) and not _non_finite(sums[:1]) else None


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
        kind = _non_finite(loss.detach())
        if self._agreed(trainer, kind is not None):
            coefficient = _overflowed_kl_coefficient(pl_module)
            if coefficient is not None:  # the KL term alone: its coefficient is named, not only the learning rate
                rate = _learning_rate(trainer)
                raise TrainingDiverged(
                    f"training diverged: the loss's KL term (--kl_coeff {coefficient:g} times the class KL) is "
                    f"{kind or 'nan'} at epoch {trainer.current_epoch}, step {trainer.global_step}"
                    f"{f' (learning rate {rate:g})' if rate is not None else ''}; lower --kl_coeff (or "
                    f"--{_lr_flag(pl_module)}, if the KL grew with the weights) (the run stopped there, and no "
                    "checkpoint of the diverged model was written)")
            self._stop(trainer, pl_module, "the loss", kind or "nan")

    def _check_state(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        found = non_finite_state((*pl_module.named_parameters(), *pl_module.named_buffers()))
        if self._agreed(trainer, found is not None):
            name, kind = found or ("weights", "nan")
            self._stop(trainer, pl_module, _describe(name), kind)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_state(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check_state(trainer, pl_module)


# ------------------------------------------------------------------------------ checkpoint files

class AtomicCheckpointIO(SafeCheckpointIO):
    """The scripts' checkpoint reader and writer. Reading is SafeCheckpointIO's (no code runs
    from the file unless trusted). Writing goes to a unique temporary file beside the target
    that replaces it only once complete, so a killed run leaves the previous checkpoint
    readable; a checkpoint whose weights or statistics are NaN or infinite is never written
    (TrainingDiverged); a failed write is a UserError. ``wrote(path)`` says whether this
    run wrote ``path`` since the object was made (in this process, or in the processes
    ddp_spawn starts, which write from a copy of it)."""

    def __init__(self, trust: bool = False):
        super().__init__(trust)
        self._written: set[str] = set()
        self._since_ns = time.time_ns()

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        from utils.loggers import atomic_path

        found = non_finite_state((checkpoint.get("state_dict") or {}).items())
        if found:
            name, kind = found
            lr = None
            for state in checkpoint.get("optimizer_states") or []:
                groups = state.get("param_groups") if isinstance(state, dict) else None
                if groups:
                    lr = float(groups[0].get("lr", math.nan))
                    break
            raise TrainingDiverged(divergence_message(_describe(name), kind, int(checkpoint.get("epoch", 0)),
                                                      int(checkpoint.get("global_step", 0)), lr))
        path = str(path)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot save the checkpoint {path} ({error.strerror or error}); pick a writable "
                            "--output_dir")
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options=storage_options)
        self._written.add(os.path.abspath(path))

    def wrote(self, path: str) -> bool:
        if not os.path.isfile(path):
            return False
        return os.path.abspath(path) in self._written or os.stat(path).st_mtime_ns >= self._since_ns
