"""Reading VMDLS checkpoints: ours, and the original implementation's (Lightning 1.1);
and the cross-entropy baseline's (``main.py --objective ce``, :func:`checkpoint_kind`).

A checkpoint holds the model's own hyperparameters (``hyper_parameters``) and, since the
data module records its settings, the data settings (``datamodule_hyper_parameters``).
Older checkpoints (the original's, and this project's before the data module recorded
them) carry the whole command line in ``hyper_parameters`` instead: the data settings are
read from there, and keys the model does not take are ignored.
"""
from __future__ import annotations

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from models.classifier import CrossEntropyClassifier
from models.vmdls import VMDLS
from utils.errors import UserError
from utils.torch_files import as_plain_dict, read_torch_file

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
        kind = _non_finite(tensor)
        if kind:
            raise UserError(f"checkpoint {path!r} holds {'NaN' if kind == 'nan' else 'infinite'} values in its "
                            f"optimiser state ({where}), so the run cannot be resumed from it; give a checkpoint of "
                            "finite values, such as an earlier one of the same run", setting=setting)


# ------------------------------------------------------------------ non-finite values

def _non_finite(tensor) -> str | None:
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
        kind = _non_finite(tensor)
        if kind:
            return name, kind
    return None


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


# The trainer flags that define the epochs a run trains: how many training and validation
# batches each epoch has, and the arithmetic. A resumed run keeps them (utils.cli.resume_settings:
# restored when not given, refused when given otherwise); --max_epochs and --max_steps may grow
# to train longer, and the devices, workers and strategy follow the machine.
TRAINER_SETTINGS = ("limit_train_batches", "limit_val_batches", "precision")
TRAINER_SETTINGS_KEY = "trainer_settings"  # where main.py's checkpoints record them (models.callbacks)

# Lightning's short precision names and the full ones they stand for.
_PRECISION_ALIASES = {"64": "64-true", "32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}


def normal_trainer_setting(name: str, value):
    """A trainer setting in one spelling, so that equal settings compare equal: a batch limit
    not given (None) is Lightning's 1.0 (every batch); a precision is its full name."""
    if name.startswith("limit_"):
        return 1.0 if value is None else value
    if name == "precision":
        text = str(value)
        return _PRECISION_ALIASES.get(text, text)
    return value


def trainer_settings(args) -> dict:
    """The run's :data:`TRAINER_SETTINGS` (parsed flags), as a checkpoint records them."""
    return {name: normal_trainer_setting(name, getattr(args, name, None)) for name in TRAINER_SETTINGS}


def checkpoint_trainer_settings(checkpoint: dict, path: str | None = None) -> dict:
    """The trainer settings of the run that wrote ``checkpoint``: its record, or, for a
    checkpoint of main.py written before it recorded them, the args.json that main.py wrote
    beside its ``checkpoints/`` folder; empty when neither is there (the original's files)."""
    recorded = checkpoint.get(TRAINER_SETTINGS_KEY)
    if not isinstance(recorded, dict) and path:
        import os

        from utils.loggers import read_json

        folder = os.path.dirname(os.path.abspath(path))
        if os.path.basename(folder) == "checkpoints":
            recorded = read_json(os.path.join(os.path.dirname(folder), "args.json"))
    if not isinstance(recorded, dict):
        return {}
    return {name: normal_trainer_setting(name, recorded[name]) for name in TRAINER_SETTINGS if name in recorded}


def checkpoint_seed(checkpoint: dict, default: int = 0) -> int:
    """The --seed of the run that wrote the checkpoint (``default`` when it was not kept)."""
    for record in (checkpoint_data_settings(checkpoint), checkpoint_hparams(checkpoint)):
        if isinstance(record.get("seed"), int):
            return record["seed"]
    return default


def build_vmdls(checkpoint: dict, overrides: dict | None = None) -> VMDLS:
    """The model a checkpoint's hyperparameters describe (``overrides`` win), freshly initialised."""
    own = VMDLS.hyperparameter_names()
    hparams = {k: v for k, v in {**checkpoint_hparams(checkpoint), **(overrides or {})}.items() if k in own}
    return VMDLS(**hparams)


def untrained_vmdls(checkpoint: dict, overrides: dict | None = None, seed: int | None = None) -> VMDLS:
    """The checkpoint's architecture at its initialisation: the weights its run started
    from. main.py seeds every generator with --seed and then builds the model, so seeding
    the same way (``seed``: the run's, by default) rebuilds the same weights."""
    import pytorch_lightning as pl

    pl.seed_everything(checkpoint_seed(checkpoint) if seed is None else seed, verbose=False)
    return build_vmdls(checkpoint, overrides).eval()


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


def load_vmdls(checkpoint: dict, overrides: dict | None = None) -> tuple[VMDLS, list[str]]:
    """Build the model from a checkpoint's hyperparameters (``overrides`` win) and load its
    weights. Returns the model and the names of the weights the checkpoint lacked, other
    than the training statistics that only our checkpoints carry."""
    model = build_vmdls(checkpoint, overrides)
    hparams = dict(model.hparams)
    state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(_FOREIGN_PREFIXES)}
    mismatch = _size_mismatch(model.state_dict(), state)
    if mismatch:
        raise UserError(mismatch[1], setting=mismatch[0])
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        first = str(error).split("\n")[1].strip() if "\n" in str(error) else str(error)
        raise UserError(f"the checkpoint's weights do not fit a {hparams.get('enc_type')} model with these sizes "
                        f"({first}); give the enc_type, enc_out_dim and latent_dim it was trained with",
                        setting="enc_type")
    if result.unexpected_keys:
        raise UserError(f"the checkpoint holds weights this {hparams.get('enc_type')} model lacks "
                        f"(e.g. {result.unexpected_keys[0]}); give the enc_type and sizes it was trained with",
                        setting="enc_type")
    own_buffers = {name for name, _ in model.named_buffers()}
    missing = [k for k in result.missing_keys if k not in own_buffers and not k.startswith("metric_loss.")]
    if "margin_distance" in checkpoint:
        model.metric_loss.neg_margin = float(checkpoint["margin_distance"])
    return model, missing


def _first_detail(error: RuntimeError) -> str:
    """The first line of load_state_dict's error that names a tensor (the line under its header)."""
    return next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))


# The trained network of a checkpoint: the backbone and the heads (VMDLS's fc_mu and fc_var, the
# classifier's fc). The rest (class statistics, their running sums) describes the run that wrote
# it: a warm start (main.py --warm_start) begins without it, as the original zeroed its class means.
NETWORK_MODULES = ("encoder", "fc_mu", "fc_var", "fc")


def load_network_weights(model: VMDLS | CrossEntropyClassifier, checkpoint: dict) -> int:
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


# ------------------------------------------------------------------ the cross-entropy baseline
KINDS = ("vmdls", "ce")


def checkpoint_kind(checkpoint: dict, setting: str = "checkpoint_path") -> str:
    """Which model a checkpoint holds: ``"ce"`` (the cross-entropy classifier of
    ``main.py --objective ce``) or ``"vmdls"``.

    "ce" when the hyperparameters say ``objective: ce``, or when the weights hold the
    classifier's head ``fc`` and no ``fc_mu``; "vmdls" when the weights hold ``fc_mu`` or
    the hyperparameters name no objective (the original's checkpoints, and ours before
    the baseline existed). Anything else is a UserError (``setting``: the flag that gave it).
    """
    hparams = checkpoint_hparams(checkpoint)
    state = checkpoint.get("state_dict") or {}
    if "arch" in hparams and any(key.startswith("net.decoder.") for key in state):
        raise UserError("the checkpoint is an autoencoder's (from mnist_ae.py or train_resnet_ae.py), not a trained "
                        "model; pass it to test.py --ae_checkpoint, and give the model main.py wrote",
                        setting=setting)
    objective = hparams.get("objective")
    if objective == "ce" or ("fc.weight" in state and "fc_mu.weight" not in state):
        return "ce"
    if "fc_mu.weight" in state or objective is None or objective == "vmdls":
        return "vmdls"
    raise UserError(f"the checkpoint's objective {objective!r} is not one this project trains ({', '.join(KINDS)}); "
                    "give a checkpoint written by main.py", setting=setting)


def build_classifier(checkpoint: dict, overrides: dict | None = None) -> CrossEntropyClassifier:
    """The classifier a checkpoint's hyperparameters describe (``overrides`` win for the
    model flags; flags it does not take, such as latent_dim, are ignored), freshly initialised."""
    own = set(CrossEntropyClassifier.hyperparameter_names()) - {"objective"}
    hparams = {k: v for k, v in {**checkpoint_hparams(checkpoint), **(overrides or {})}.items() if k in own}
    return CrossEntropyClassifier(**hparams)


def untrained_classifier(checkpoint: dict, overrides: dict | None = None,
                         seed: int | None = None) -> CrossEntropyClassifier:
    """The classifier's architecture at its initialisation, seeded as :func:`untrained_vmdls`
    seeds (``seed``: the run's, by default), in eval mode."""
    import pytorch_lightning as pl

    pl.seed_everything(checkpoint_seed(checkpoint) if seed is None else seed, verbose=False)
    return build_classifier(checkpoint, overrides).eval()


def load_classifier(checkpoint: dict, overrides: dict | None = None) -> CrossEntropyClassifier:
    """The trained cross-entropy classifier of a checkpoint, in eval mode: built from its
    hyperparameters (``overrides`` win) with every weight loaded strictly.

    Its ``forward(x)`` gives the logits and ``features_and_logits(x)`` the feature h and
    the logits, for a batch already preprocessed by the data module's ``preprocess``."""
    if checkpoint_kind(checkpoint) != "ce":
        raise UserError("the checkpoint holds a VMDLS model, not the cross-entropy classifier; give one written "
                        "by main.py --objective ce", setting="checkpoint_path")
    model = build_classifier(checkpoint, overrides)
    hparams = dict(model.hparams)
    mismatch = _size_mismatch(model.state_dict(), checkpoint["state_dict"])
    if mismatch:
        raise UserError(mismatch[1], setting=mismatch[0])
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        first = _first_detail(error)
        raise UserError(f"the checkpoint's weights do not fit a {hparams.get('enc_type')} classifier with these "
                        f"sizes ({first}); give the enc_type, enc_out_dim and class_num it was trained with",
                        setting="enc_type")
    return model.eval()
