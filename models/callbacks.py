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

from models.checkpoints import SafeCheckpointIO
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


# ------------------------------------------------------------------------------ divergence

class TrainingDiverged(UserError):
    """A NaN or infinite loss, weight or class statistic: the run stops, in one sentence."""


def _non_finite(tensor: torch.Tensor) -> str | None:
    """"nan" or "inf" when ``tensor`` holds one (NaN first), else None."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return None
    if bool(torch.isnan(tensor).any()):
        return "nan"
    if bool(torch.isinf(tensor).any()):
        return "inf"
    return None


def _may_be_infinite(name: str) -> bool:
    """Buffers that hold -inf by design: the class bounds start at -inf."""
    return "bounds" in name


def non_finite_state(named_tensors) -> tuple[str, str] | None:
    """(name, "nan"/"inf") of the first unusable tensor of a model's state, else None. The
    class bounds may be -inf (their start), never NaN."""
    for name, tensor in named_tensors:
        if not isinstance(tensor, torch.Tensor):
            continue
        if _may_be_infinite(name):
            if tensor.is_floating_point() and bool(torch.isnan(tensor).any()):
                return name, "nan"
            continue
        kind = _non_finite(tensor)
        if kind:
            return name, kind
    return None


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
