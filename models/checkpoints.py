"""Checkpoints: reading them (ours, the original implementation's of Lightning 1.1, and the
cross-entropy baseline's), writing them (:class:`AtomicCheckpointIO`), and the model one
holds: :func:`checkpoint_kind`, :func:`load_model`, :func:`untrained_model`, and
:func:`build_model`, which builds every model of a run, trained, loaded or untrained.

A checkpoint holds the model's own hyperparameters (``hyper_parameters``) and, since the
data module records its settings, the data settings (``datamodule_hyper_parameters``).
Older checkpoints (the original's, and this project's before the data module recorded
them) carry the whole command line in ``hyper_parameters`` instead: the data settings are
read from there, and keys the model does not take are ignored.
"""
from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from models.kinds import CE_KIND, KINDS, VMDLS_KIND, model_class
from utils.errors import UserError
from utils.torch_files import as_plain_dict, read_torch_file

if TYPE_CHECKING:
    from models.classifier import CrossEntropyClassifier
    from models.vmdls import VMDLS

    Model = VMDLS | CrossEntropyClassifier

# Keys of the original's checkpoints that this implementation does not hold: the CIFAR-10
# autoencoder it always embedded (the autoencoder is a separate checkpoint here) and the
# kornia SIFT descriptor it built but never used for the score (``sift.pk.weight``).
_FOREIGN_PREFIXES = ("ae.", "sift.")


def read_checkpoint(path: str | None, trust: bool = False, setting: str = "checkpoint_path") -> dict:
    """A Lightning checkpoint (ours or the original's) as a dict, read without running code
    from it unless ``trust`` (--trust_checkpoint): see utils.torch_files. ``setting``: the
    flag the path came from, named by the errors."""
    if not path:
        raise UserError("no model to evaluate: give the checkpoint of a trained model (main.py prints the path "
                        "of the one it writes)", setting=setting)
    checkpoint = read_torch_file(path, "checkpoint", "give one written by main.py", setting=setting, trust=trust)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f"checkpoint {path!r} is not a Lightning checkpoint; give one written by main.py",
                        setting=setting)
    found = non_finite_state(checkpoint["state_dict"].items())
    if found:  # main.py never writes one (AtomicCheckpointIO): the file was made or changed elsewhere
        name, kind = found
        raise UserError(f"checkpoint {path!r} holds {'NaN' if kind == 'nan' else 'infinite'} values (in "
                        f"{name}), so its model cannot be used; give a checkpoint of finite weights, such as an "
                        "earlier one of the same run", setting=setting)
    return checkpoint


def check_optimizer_states(checkpoint: dict, path: str, setting: str = "checkpoint_path") -> None:
    """A resume continues the optimiser too: a NaN or infinite value in its saved state (the
    momentum, Adam's moments) is a UserError naming the file, rather than a divergence blamed
    on the learning rate after the first step."""
    def tensors(value, where):
        if isinstance(value, torch.Tensor):
            yield where, value
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from tensors(item, f"{where}.{key}")
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                yield from tensors(item, f"{where}.{index}")

    for where, tensor in tensors(checkpoint.get("optimizer_states") or [], "optimizer_states"):
        kind = non_finite_kind(tensor)
        if kind:
            raise UserError(f"checkpoint {path!r} holds {'NaN' if kind == 'nan' else 'infinite'} values in its "
                            f"optimiser state ({where}), so the run cannot be resumed from it; give a checkpoint of "
                            "finite values, such as an earlier one of the same run", setting=setting)


# ------------------------------------------------------------------ non-finite values

def non_finite_kind(tensor) -> str | None:
    """"nan" or "inf" when ``tensor`` holds one (NaN first), else None."""
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.numel() == 0:
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
        kind = non_finite_kind(tensor)
        if kind:
            return name, kind
    return None


class TrainingDiverged(UserError):
    """A NaN or infinite loss, weight or class statistic: the run stops, in one sentence."""


def divergence_message(what: str, kind: str, epoch: int, step: int, lr: float | None,
                       lr_flag: str = "lr") -> str:
    rate = f" (learning rate {lr:g})" if lr is not None else ""
    return (f"training diverged: {what} is {kind} at epoch {epoch}, step {step}{rate}; lower `{lr_flag}` (the run "
            "stopped there, and no checkpoint of the diverged model was written)")


def describe_tensor(name: str) -> str:
    """How a divergence sentence names a tensor of the model's state."""
    statistic = name.startswith(("class_", "latent_", "epoch_stats", "latent_stats"))
    return f"the class statistic {name}" if statistic else f"the weight {name}"


# ------------------------------------------------------------------ checkpoint files

class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader for resuming (main.py --checkpoint_path): reads through
    utils.torch_files like every other checkpoint, so a resumed file runs no code unless
    ``trust`` (--trust_checkpoint), whatever torch.load's default for weights_only."""

    def __init__(self, trust: bool = False):
        super().__init__()
        self.trust = trust

    def load_checkpoint(self, path, map_location=None, weights_only=None, **kwargs) -> dict:
        # Lightning also reads its own temporary files here (ddp_spawn hands the trained
        # weights back to the main process as a bare state_dict): no layout check.
        return read_torch_file(str(path), "checkpoint", "give one written by main.py", setting="checkpoint_path",
                               trust=self.trust, map_location=map_location)


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
        from utils.run_folder import atomic_path

        found = non_finite_state((checkpoint.get("state_dict") or {}).items())
        if found:
            name, kind = found
            lr = None
            for state in checkpoint.get("optimizer_states") or []:
                groups = state.get("param_groups") if isinstance(state, dict) else None
                if groups:
                    lr = float(groups[0].get("lr", math.nan))
                    break
            raise TrainingDiverged(divergence_message(describe_tensor(name), kind, int(checkpoint.get("epoch", 0)),
                                                      int(checkpoint.get("global_step", 0)), lr))
        path = str(path)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot save the checkpoint {path} ({error.strerror or error}); pick a writable "
                            "`output_dir`", setting="output_dir")
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options=storage_options)
        self._written.add(os.path.abspath(path))

    def wrote(self, path: str) -> bool:
        if not os.path.isfile(path):
            return False
        return os.path.abspath(path) in self._written or os.stat(path).st_mtime_ns >= self._since_ns


# ------------------------------------------------------------------ what a checkpoint records

# The data settings test.py takes from a checkpoint unless given on its command line.
DATA_SETTINGS = ("known_dataset", "unknown_dataset", "data_transforms", "data_dir")


def checkpoint_hparams(checkpoint: dict) -> dict:
    """The hyperparameters saved with the model (for old checkpoints, the whole command line)."""
    return as_plain_dict(checkpoint.get("hyper_parameters"))


def checkpoint_data_settings(checkpoint: dict) -> dict:
    """The data module's settings: Lightning's ``datamodule_hyper_parameters``, or, for a
    checkpoint without them, the data flags its ``hyper_parameters`` carried."""
    recorded = as_plain_dict(checkpoint.get("datamodule_hyper_parameters"))
    if recorded:
        return recorded
    hparams = checkpoint_hparams(checkpoint)
    return {name: hparams[name] for name in DATA_SETTINGS if name in hparams}


def checkpoint_seed(checkpoint: dict, default: int = 0) -> int:
    """The --seed of the run that wrote the checkpoint (``default`` when it was not kept)."""
    for record in (checkpoint_data_settings(checkpoint), checkpoint_hparams(checkpoint)):
        if isinstance(record.get("seed"), int):
            return record["seed"]
    return default


# ------------------------------------------------------------------ the model of a checkpoint

def checkpoint_kind(checkpoint: dict, setting: str = "checkpoint_path") -> str:
    """Which kind of model (models.kinds) a checkpoint holds.

    "ce" when the hyperparameters say ``objective: ce``, or when the weights hold the
    classifier's head and not VMDLS's; "vmdls" when the weights hold VMDLS's head or the
    hyperparameters name no objective (the original's checkpoints, and ours before the
    baseline existed). Anything else is a UserError (``setting``: the setting that gave it).
    """
    hparams = checkpoint_hparams(checkpoint)
    state = checkpoint.get("state_dict") or {}
    if "arch" in hparams and any(key.startswith("net.decoder.") for key in state):
        raise UserError("the checkpoint is an autoencoder's (from mnist_ae.py or train_resnet_ae.py), not a trained "
                        "model; pass it to test.py as `ae_checkpoint`, and give the model main.py wrote",
                        setting=setting)
    objective = hparams.get("objective")
    if objective == CE_KIND.name or (CE_KIND.head in state and VMDLS_KIND.head not in state):
        return CE_KIND.name
    if VMDLS_KIND.head in state or objective is None or objective == VMDLS_KIND.name:
        return VMDLS_KIND.name
    raise UserError(f"the checkpoint's objective {objective!r} is not one this project trains "
                    f"({', '.join(KINDS)}); give a checkpoint written by main.py", setting=setting)


def build_model(kind: str, hparams: dict, overrides: dict | None = None, seed: int | None = None) -> Model:
    """A freshly initialised model of ``kind`` (models.kinds) with the hyperparameters
    ``hparams`` (``overrides`` win; names the model does not take, such as the rest of a
    command line, are ignored). With ``seed``, every generator is seeded with it first, as
    main.py seeds them before it builds the model."""
    import pytorch_lightning as pl

    cls = model_class(kind)
    own = set(cls.hyperparameter_names()) - {"objective"}  # the classifier's objective is its own constant
    settings = {k: v for k, v in {**hparams, **(overrides or {})}.items() if k in own}
    if seed is not None:
        pl.seed_everything(seed, verbose=False)
    return cls(**settings)


def untrained_model(checkpoint: dict, overrides: dict | None = None, seed: int | None = None) -> Model:
    """The checkpoint's architecture at its initialisation, in eval mode: the weights its run
    started from. main.py seeds every generator with --seed and then builds the model, so
    seeding the same way (``seed``: the run's, by default) rebuilds the same weights."""
    seed = checkpoint_seed(checkpoint) if seed is None else seed
    return build_model(checkpoint_kind(checkpoint), checkpoint_hparams(checkpoint), overrides, seed).eval()


def load_model(checkpoint: dict, overrides: dict | None = None) -> Model:
    """The trained model of a checkpoint (ours or the original's), in eval mode: built from its
    hyperparameters (``overrides`` win) with its weights loaded. Weights that do not fit,
    or that the checkpoint lacks, are a UserError naming the setting to change.

    VMDLS's ``forward(x)`` gives the latent mean mu; the classifier's gives the logits and
    its ``features_and_logits(x)`` the feature h and the logits; both take a batch already
    preprocessed by the data module's ``preprocess``."""
    kind = checkpoint_kind(checkpoint)
    model = build_model(kind, checkpoint_hparams(checkpoint), overrides)
    if kind == CE_KIND.name:
        _load_classifier_weights(model, checkpoint)
    else:
        _load_vmdls_weights(model, checkpoint)
    return model.eval()


def _size_mismatch(own: dict, saved: dict) -> tuple[str, str] | None:
    """(setting, sentence) when the checkpoint's class count, latent size or feature size
    differs from the model's, read off the tensors that carry them."""
    checks = (("class_means", 0, "class_num", "classes"), ("fc.weight", 0, "class_num", "classes"),
              ("fc_mu.weight", 0, "latent_dim", "latent dimensions"),
              ("fc_mu.weight", 1, "enc_out_dim", "backbone features"),
              ("fc.weight", 1, "enc_out_dim", "backbone features"))
    for key, axis, setting, what in checks:
        if key in own and key in saved and saved[key].dim() > axis and own[key].shape[axis] != saved[key].shape[axis]:
            return setting, (f"the checkpoint was trained with {saved[key].shape[axis]} {what}, not "
                             f"{own[key].shape[axis]}; set {setting} to {saved[key].shape[axis]} or leave it out")
    return None


def _first_detail(error: RuntimeError) -> str:
    """The first line of load_state_dict's error that names a tensor (the line under its header)."""
    return next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))


def _load_vmdls_weights(model: VMDLS, checkpoint: dict) -> None:
    """Load a VMDLS checkpoint's weights (ours or the original's) into ``model``, and its
    margin M_d. The original's checkpoints lack the class statistics and buffers ours carry:
    only a missing weight is refused."""
    enc_type = model.hparams.get("enc_type")
    state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(_FOREIGN_PREFIXES)}
    mismatch = _size_mismatch(model.state_dict(), state)
    if mismatch:
        raise UserError(mismatch[1], setting=mismatch[0])
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise UserError(f"the checkpoint's weights do not fit a {enc_type} model with these sizes "
                        f"({_first_detail(error)}); give the enc_type, enc_out_dim and latent_dim it was trained with",
                        setting="enc_type")
    if result.unexpected_keys:
        raise UserError(f"the checkpoint holds weights this {enc_type} model lacks "
                        f"(e.g. {result.unexpected_keys[0]}); give the enc_type and sizes it was trained with",
                        setting="enc_type")
    own_buffers = {name for name, _ in model.named_buffers()}
    missing = [k for k in result.missing_keys if k not in own_buffers and not k.startswith("metric_loss.")]
    if missing:
        raise UserError(f"the checkpoint lacks {len(missing)} weights of the model (e.g. {missing[0]}); "
                        "pass the checkpoint of a trained VMDLS model")
    if "margin_distance" in checkpoint:
        model.metric_loss.neg_margin = float(checkpoint["margin_distance"])


def _load_classifier_weights(model: CrossEntropyClassifier, checkpoint: dict) -> None:
    """Load a cross-entropy checkpoint's weights into ``model``, every one strictly."""
    mismatch = _size_mismatch(model.state_dict(), checkpoint["state_dict"])
    if mismatch:
        raise UserError(mismatch[1], setting=mismatch[0])
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        raise UserError(f"the checkpoint's weights do not fit a {model.hparams.get('enc_type')} classifier with these "
                        f"sizes ({_first_detail(error)}); give the enc_type, enc_out_dim and class_num it was trained "
                        "with", setting="enc_type")


# The trained network of a checkpoint: the backbone and the heads (VMDLS's fc_mu and fc_var, the
# classifier's fc). The rest (class statistics, their running sums) describes the run that wrote
# it: a warm start (main.py --warm_start) begins without it, as the original zeroed its class means.
NETWORK_MODULES = ("encoder", "fc_mu", "fc_var", "fc")


def load_network_weights(model: Model, checkpoint: dict) -> int:
    """Load a checkpoint's backbone and head weights into ``model``, built with the same
    architecture, and leave the rest of it as built. Every network tensor of the model must
    come from the checkpoint: weights that do not fit are a UserError naming the setting to
    change. Returns the number of tensors loaded."""
    prefixes = tuple(f"{name}." for name in NETWORK_MODULES)
    state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(_FOREIGN_PREFIXES)}
    mismatch = _size_mismatch(model.state_dict(), state)  # the statistics' shapes too: they carry class_num
    if mismatch:
        raise UserError(mismatch[1], setting=mismatch[0])
    weights = {k: v for k, v in state.items() if k.startswith(prefixes)}
    own = {k for k in model.state_dict() if k.startswith(prefixes)}
    missing, unexpected = sorted(own - weights.keys()), sorted(weights.keys() - own)
    enc_type = model.hparams.get("enc_type")
    if missing or unexpected:
        what = (f"lacks weights this {enc_type} model has (e.g. {missing[0]})" if missing
                else f"holds weights this {enc_type} model lacks (e.g. {unexpected[0]})")
        raise UserError(f"the checkpoint {what}; give the enc_type, first_conv and maxpool1 it was trained with",
                        setting="enc_type")
    try:
        model.load_state_dict(weights, strict=False)
    except RuntimeError as error:  # a shape the size checks above do not read
        first = _first_detail(error)
        raise UserError(f"the checkpoint's weights do not fit a {enc_type} model with these sizes ({first}); "
                        "give the enc_type, enc_out_dim and latent_dim it was trained with", setting="enc_type")
    return len(weights)


