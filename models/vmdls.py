"""The VMDLS LightningModule: backbone + variational heads, trained with the metric and KL losses.

Dinari & Freifeld, "Variational- and Metric-based Deep Latent Space for Out-of-Distribution
Detection", UAI 2022. docs/method.md section 2 states the training step by step.
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytorch_lightning as pl
import torch
from sklearn.metrics import f1_score

from models.backbones import build_encoder
from models.class_statistics import ClassStatistics, LabelLayout, quantile_bounds
from models.gaussians import ClassGaussians
from models.heads import make_heads, reparameterise
from models.losses import TripletDistancingLoss, class_kl_loss
from models.optimisation import check_optimiser, paper_optimisation
from models.speed import ChannelsLast
from utils.errors import UserError

PRIOR_STD = 0.1
INITIAL_MARGIN = 0.15
TRIPLET_MARGIN = 0.1


class VMDLS(ChannelsLast, pl.LightningModule):
    """Backbone ``encoder`` + heads ``fc_mu`` / ``fc_var`` (the original's names).

    Training (docs/method.md section 2): loss = triplet + distancing loss on z, plus from epoch
    ``generation_epoch`` on the class KL against the previous epoch's class means of z
    (of mu with ``kl_prior_means="mu"``).
    Each epoch accumulates, per class and in float64 (all-reduced under DDP), the count,
    sum and outer-product sum of z (the KL prior, ``class_means`` / ``class_covs``) and of
    the evaluation embedding mu (``latent_means`` / ``latent_covs``). The validation
    diagnostics classify with the Gaussians of mu and the ``lower_bound`` quantile
    "bounds" of the training images' mu; each epoch also logs the latent's health
    (:meth:`latent_health`). All of it lives in buffers, so checkpoints carry it; M_d is
    saved beside the weights.
    """

    def __init__(
        self,
        input_height: int = 28,
        enc_type: str = "resnet18",
        first_conv: bool = False,
        maxpool1: bool = False,
        enc_out_dim: int = 512,
        kl_coeff: float = 0.1,
        latent_dim: int = 256,
        lr: float = 1e-4,
        class_num: int = 10,
        generation_epoch: int = 20,
        lower_bound: float = 0.05,
        step_size: int = 100,
        step_gamma: float = 0.1,
        opt: str = "sgd",
        finetune: bool = False,
        finetune_lr: float = 1e-4,
        finetune_epochs: int = 20,
        in_channels: int | None = None,
        kl_prior_means: str = "z",
        initial_sampling_std: float | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if kl_prior_means not in ("z", "mu"):
            raise UserError(f"kl_prior_means {kl_prior_means!r} is not known; use z or mu", setting="kl_prior_means")
        check_optimiser(opt)
        self.encoder = build_encoder(enc_type, enc_out_dim, in_channels=in_channels, input_height=input_height,
                                     first_conv=first_conv, maxpool1=maxpool1, class_num=class_num)
        if initial_sampling_std is not None and not initial_sampling_std > 0:
            raise UserError(f"initial_sampling_std must be positive (got {initial_sampling_std}); e.g. 0.14",
                            setting="initial_sampling_std")
        self.fc_mu, self.fc_var = make_heads(enc_out_dim, latent_dim, initial_sampling_std)
        self.metric_loss = TripletDistancingLoss(margin=TRIPLET_MARGIN, neg_margin=INITIAL_MARGIN)
        self.epoch_stats = ClassStatistics(class_num, latent_dim)
        self.latent_stats = ClassStatistics(class_num, latent_dim)
        self.register_buffer("class_means", torch.zeros(class_num, latent_dim, dtype=torch.float64))
        self.register_buffer("class_covs", torch.zeros(class_num, latent_dim, latent_dim, dtype=torch.float64))
        self.register_buffer("latent_means", torch.zeros(class_num, latent_dim, dtype=torch.float64))
        self.register_buffer("latent_covs", torch.zeros(class_num, latent_dim, latent_dim, dtype=torch.float64))
        # The sum of the sampling std exp(log_var / 2) over the epoch's samples and dimensions.
        self.register_buffer("sampling_std_sum", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("class_bounds", torch.full((class_num,), -math.inf, dtype=torch.float64))
        self.register_buffer("finished_epochs", torch.zeros((), dtype=torch.long))
        self._gaussians: ClassGaussians | None = None
        self._epoch_log_likelihoods: list[torch.Tensor] = []
        self._epoch_labels: list[torch.Tensor] = []
        self._latent_health: dict[str, float] = {}
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._resumed_whole_network = False  # resumed from a checkpoint whose optimiser holds every weight
        self._statistics_ready = False  # mirrors finished_epochs > 0 without a device sync
        # The epoch's sums of the metric and KL terms times the batch size, and the images seen.
        self._loss_sums = torch.zeros(2)
        self._loss_count = 0

    def setup(self, stage: str) -> None:
        # DDP copies rank 0's buffers to every process before each forward pass; the
        # epoch's running sums are each process's own until finish_epoch_statistics
        # all-reduces them, so DDP must leave them alone.
        own_sums = [name for name, _ in self.named_buffers()
                    if name.startswith(("epoch_stats.", "latent_stats.")) or name == "sampling_std_sum"]
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, own_sums)

    @classmethod
    def hyperparameter_names(cls) -> tuple[str, ...]:
        """The names __init__ takes: what a checkpoint's hyperparameters may set."""
        return tuple(name for name in inspect.signature(cls.__init__).parameters if name != "self")

    # ----------------------------------------------------------------- forward passes
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The evaluation embedding: mu."""
        h, _ = self.encoder(self.in_memory_format(x))
        return self.fc_mu(h)

    def embed(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Feature h, the three taps, mu and log-variance, from one backbone pass."""
        h, taps = self.encoder(self.in_memory_format(x))
        return {"h": h, "taps": taps, "mu": self.fc_mu(h), "log_var": self.fc_var(h)}

    @property
    def margin_distance(self) -> float:
        return float(self.metric_loss.neg_margin)

    @property
    def has_class_statistics(self) -> bool:
        return self._statistics_ready

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._statistics_ready = int(self.finished_epochs) > 0
        self._gaussians = None
        return result

    def latent_gaussians(self) -> ClassGaussians:
        """The class Gaussians of mu over the last finished epoch's training images (cached
        until the next epoch): the classifier of the validation diagnostics."""
        if self._gaussians is None or self._gaussians.means.device != self.latent_means.device:
            self._gaussians = ClassGaussians.fit(self.latent_means, self.latent_covs)
        return self._gaussians

    # ----------------------------------------------------------------------- training
    def training_step(self, batch, batch_idx):
        x, y = batch
        h, _ = self.encoder(self.in_memory_format(x))
        mu, log_var = self.fc_mu(h), self.fc_var(h)
        # The losses and statistics in float32 (float64 for the statistics) whatever the
        # precision of the backbone (--precision bf16-mixed autocasts it).
        with torch.autocast(x.device.type, enabled=False):
            mu, log_var = mu.float(), log_var.float()
            sampling_std = torch.exp(0.5 * log_var)
            z = reparameterise(mu, sampling_std)
            layout = LabelLayout.of(y, self.hparams.class_num) if y.device.type == "cpu" else None
            metric = self.metric_loss(z, y)
            if self.current_epoch >= self.hparams.generation_epoch:
                prior_means = self.class_means if self.hparams.kl_prior_means == "z" else self.latent_means
                kl = self.hparams.kl_coeff * class_kl_loss(z, mu, log_var, y, prior_means, PRIOR_STD, layout=layout)
            else:
                kl = torch.zeros((), device=z.device)
            self._accumulate(z.detach(), y, mu.detach(), sampling_std.detach(), layout)
            loss = metric + kl
        # Per step, only what the progress bar shows; the terms are summed here and logged
        # per epoch (on_train_epoch_end), as Lightning's epoch mean would give them.
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        if self._loss_sums.device != loss.device:  # a step outside Lightning's epoch hooks
            self._loss_sums = torch.zeros(2, device=loss.device)
        self._loss_sums = self._loss_sums + torch.stack([metric.detach(), kl.detach()]) * len(y)
        self._loss_count += len(y)
        return loss

    def _accumulate(self, z: torch.Tensor, y: torch.Tensor, mu: torch.Tensor, sampling_std: torch.Tensor,
                    layout: LabelLayout | None = None) -> None:
        """Add a batch to the epoch's statistics: of z (the KL prior), of mu (the validation
        Gaussians), the sampling std, and mu's log-likelihood under its own class's
        Gaussian of the previous epoch (for the bounds). ``layout``: the labels' grouping,
        shared by both statistics (made here for labels on the CPU when not given)."""
        if layout is None and y.device.type == "cpu":
            layout = LabelLayout.of(y, self.hparams.class_num)
        self.epoch_stats.update(z, y, layout)
        self.latent_stats.update(mu, y, layout)
        self.sampling_std_sum += sampling_std.double().sum()
        if self.has_class_statistics:
            log_likelihood = self.latent_gaussians().log_prob(mu)
            self._epoch_log_likelihoods.append(log_likelihood.gather(1, y.view(-1, 1)).squeeze(1))
            self._epoch_labels.append(y)

    def on_train_epoch_start(self):
        self._loss_sums = torch.zeros(2, device=self.device)
        self._loss_count = 0

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # Finish the statistics on the epoch's last batch: validation and checkpointing
        # both run before on_train_epoch_end, and both need this epoch's statistics.
        if batch_idx + 1 >= self.trainer.num_training_batches:
            self.finish_epoch_statistics()

    def on_train_epoch_end(self):
        self.finish_epoch_statistics()  # an epoch cut short (max_steps) still counts
        if self._latent_health:
            self.log_dict(self._latent_health, on_step=False, on_epoch=True, sync_dist=False)
        if self._loss_count:
            means = self._loss_sums / torch.tensor(self._loss_count, device=self._loss_sums.device)
            self.log_dict({"train_triplet_loss_epoch": means[0], "train_kl_epoch": means[1]}, on_step=False,
                          on_epoch=True, batch_size=1)
        self.log("margin_distance", self.margin_distance, on_step=False, on_epoch=True, batch_size=1)

    def finish_epoch_statistics(self) -> None:
        """Turn the epoch's sums into class means, covariances and bounds; reset the sums."""
        self.epoch_stats.all_reduce()
        self.latent_stats.all_reduce()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.sampling_std_sum)
        present = self.epoch_stats.present()
        if not bool(present.any()):
            return
        self.class_means[present] = self.epoch_stats.means()[present]
        self.class_covs[present] = self.epoch_stats.covariances()[present]
        self.latent_means[present] = self.latent_stats.means()[present]
        self.latent_covs[present] = self.latent_stats.covariances()[present]
        self._latent_health = self.latent_health(present)
        if self._epoch_log_likelihoods:
            log_likelihoods = self._gather(torch.cat(self._epoch_log_likelihoods))
            labels = self._gather(torch.cat(self._epoch_labels))
            bounds = quantile_bounds(log_likelihoods, labels, self.hparams.class_num, self.hparams.lower_bound)
            bounds = bounds.to(self.class_bounds)
            self.class_bounds.copy_(torch.where(torch.isfinite(bounds), bounds, self.class_bounds))
        self.finished_epochs += 1
        self._statistics_ready = True
        self._gaussians = None
        self.epoch_stats.reset()
        self.latent_stats.reset()
        self.sampling_std_sum.zero_()
        self._epoch_log_likelihoods.clear()
        self._epoch_labels.clear()

    def latent_health(self, present: torch.Tensor) -> dict[str, float]:
        """The epoch's latent, in three numbers (classes without samples left out):

        - ``latent_sampling_std``: the mean of exp(log_var / 2) over samples and dimensions;
        - ``latent_class_separation``: the mean distance between two classes' means of mu;
        - ``latent_within_class_spread``: the mean per-dimension std of mu within a class.
        The latent serves the classes when the separation clearly exceeds both others.
        """
        means = self.latent_means[present]
        pairs = torch.triu_indices(len(means), len(means), offset=1, device=means.device)
        distances = (means[pairs[0]] - means[pairs[1]]).norm(dim=1)
        variances = torch.diagonal(self.latent_covs[present], dim1=1, dim2=2).clamp(min=0)
        values = float(self.latent_stats.count.sum()) * self.hparams.latent_dim  # samples x dimensions
        return {
            "latent_sampling_std": float(self.sampling_std_sum) / values if values else float("nan"),
            "latent_class_separation": float(distances.mean()) if len(distances) else float("nan"),
            "latent_within_class_spread": float(variances.sqrt().mean()),
        }

    def _gather(self, values: torch.Tensor) -> torch.Tensor:
        if self._trainer is None or self._trainer.world_size == 1:
            return values
        return self.all_gather(values).reshape(-1)

    # --------------------------------------------------------------------- validation
    def validation_step(self, batch, batch_idx):
        x, y = batch
        self._val_outputs.append((self(x).detach(), y.detach()))

    def on_validation_epoch_end(self):
        outputs, self._val_outputs = self._val_outputs, []
        if self.trainer.sanity_checking or not outputs or not self.has_class_statistics:
            return
        mu = torch.cat([o[0] for o in outputs])
        labels = torch.cat([o[1] for o in outputs]).cpu().numpy()
        predictions = self.predict_with_bounds(mu).cpu().numpy()
        known = labels < self.hparams.class_num
        metrics = {
            "val_f1_macro": float(f1_score(labels, predictions, average="macro", zero_division=0)),
            "val_accuracy_known": float(np.mean(predictions[known] == labels[known])) if known.any() else 0.0,
        }
        # Every process evaluates the whole validation set (no distributed sampler), so the
        # values agree across processes and need no reduction.
        self.log_dict(metrics, prog_bar=True, sync_dist=False)

    def predict_with_bounds(self, mu: torch.Tensor) -> torch.Tensor:
        """The mid-training classifier: the most likely class among those whose bound mu
        clears, "unknown" (label K) when it clears none; as the original classified."""
        log_likelihood = self.latent_gaussians().log_prob(mu)
        bounds = self.class_bounds.to(log_likelihood)
        masked = torch.where(log_likelihood >= bounds, log_likelihood, torch.full_like(log_likelihood, -math.inf))
        best, predictions = masked.max(dim=1)
        predictions[torch.isinf(best)] = self.hparams.class_num
        return predictions

    # ------------------------------------------------------------------ optimisation
    def in_head_only_phase(self) -> bool:
        # A resumed run builds its optimiser while current_epoch is still 0 (before its loops are
        # restored), then loads the checkpoint's optimiser state into it: a checkpoint whose
        # optimiser holds the whole network is past the heads-only phase. One of that phase gets
        # the heads' optimiser, and FinetuneSchedule rebuilds it at epoch finetune_epochs, as in
        # an uninterrupted run.
        return (bool(self.hparams.finetune) and not self._resumed_whole_network
                and self.current_epoch < self.hparams.finetune_epochs)

    def configure_optimizers(self):
        if self.in_head_only_phase():
            params = list(self.fc_mu.parameters()) + list(self.fc_var.parameters())
            lr = self.hparams.finetune_lr
        else:
            params = list(self.parameters())
            lr = self.hparams.lr
        return paper_optimisation(params, self.hparams.opt, lr, self.hparams.step_size, self.hparams.step_gamma)

    # ------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint):
        checkpoint["margin_distance"] = self.margin_distance

    def on_load_checkpoint(self, checkpoint):
        # Checkpoints written before the statistics of mu were kept: start those from zero.
        state = checkpoint.get("state_dict", {})
        for name, value in self.state_dict().items():
            if name.startswith(("latent_", "latent_stats.")) and name not in state:
                state[name] = torch.zeros_like(value)
        if "margin_distance" in checkpoint:
            self.metric_loss.neg_margin = float(checkpoint["margin_distance"])
        self._resumed_whole_network = self._optimises_whole_network(checkpoint)
        self._gaussians = None

    def _optimises_whole_network(self, checkpoint: dict) -> bool:
        """Whether the checkpoint's optimiser is the whole network's, not the heads' alone (the
        first phase of --finetune). Read off the parameters it holds, since the epoch can mislead:
        the last.ckpt that main.py rewrites after a resumed run with nothing left to train names
        the next epoch and holds the previous one's optimiser. Without a saved optimiser, whether
        the epoch is past the heads-only phase."""
        states = checkpoint.get("optimizer_states") or [{}]
        groups = states[0].get("param_groups") if isinstance(states[0], dict) else None
        if groups:
            heads = len(list(self.fc_mu.parameters())) + len(list(self.fc_var.parameters()))
            return sum(len(group["params"]) for group in groups) != heads
        return int(checkpoint.get("epoch", 0)) >= self.hparams.finetune_epochs
