"""The settings of the run that wrote a checkpoint (:func:`recorded_settings`), and how a
later run takes them: an evaluation where its command line is silent
(:func:`evaluation_settings`), a resumed run all of them, refusing a given one that differs
(:func:`resume_settings`), a warm start the architecture its weights fit
(:func:`warm_start_settings`).

``args`` is the run's parsed settings (an ``argparse.Namespace``) and ``given`` the names
set explicitly (utils.flags.explicit_flags): those are never replaced.
"""
from __future__ import annotations

import argparse
import os
from typing import Callable

from models.checkpoints import DATA_SETTINGS, checkpoint_data_settings, checkpoint_hparams, checkpoint_kind
from models.kinds import model_class
from utils.errors import UserError
from utils.files import read_json

# The settings that shape a network's weights. The input height and channels follow the data.
ARCHITECTURE = ("enc_type", "first_conv", "maxpool1", "enc_out_dim", "latent_dim", "class_num")
# The model settings an evaluation takes from the checkpoint: the architecture and the image size it was built for.
MODEL_SETTINGS = (*ARCHITECTURE, "input_height")
# Recorded settings that a resumed run may change: where the data is read from and how.
RESUME_MAY_CHANGE = ("data_dir", "num_workers")


def recorded_settings(checkpoint: dict) -> dict:
    """The settings of the run that wrote ``checkpoint``, by name: the hyperparameters its
    model takes (an old checkpoint's hyperparameters are its whole command line) and its
    data module's settings."""
    own = set(model_class(checkpoint_kind(checkpoint)).hyperparameter_names())
    recorded = {k: v for k, v in checkpoint_hparams(checkpoint).items() if k in own}
    recorded.update(checkpoint_data_settings(checkpoint))
    return recorded


def _identical(current, value) -> bool:
    return current == value and type(current) is type(value)


def _close(current, value) -> bool:
    """Equal, or floats equal to rounding (a float flag given again as text)."""
    return current == value or (isinstance(current, float) and isinstance(value, (int, float))
                                and abs(current - value) <= 1e-12 * max(abs(current), abs(value)))


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _take_settings(args: argparse.Namespace, given: set[str], recorded: dict,
                  refusal: Callable[[str, object, object], str] | None = None,
                  same: Callable[[object, object], bool] = _identical,
                  current: Callable[[argparse.Namespace, str], object] = getattr) -> list[str]:
    """Set each ``recorded`` setting that ``args`` has and ``given`` does not name. A given
    one is kept; with ``refusal`` (name, given value, recorded value -> sentence), a given
    one that is not ``same`` as the recorded one is a UserError. Returns the names set."""
    taken = []
    for name, value in recorded.items():
        if not hasattr(args, name):
            continue
        now = current(args, name)
        if name in given:
            if refusal is not None and not same(now, value):
                raise UserError(refusal(name, now, value), setting=name)
        elif not _identical(now, value):
            setattr(args, name, value)
            taken.append(name)
    return taken


def evaluation_settings(args: argparse.Namespace, given: set[str], checkpoint: dict) -> argparse.Namespace:
    """test.py: the settings given win; otherwise the checkpoint's data and model settings
    (:data:`DATA_SETTINGS`, :data:`MODEL_SETTINGS`); otherwise the defaults."""
    recorded = recorded_settings(checkpoint)
    _take_settings(args, given, {name: recorded[name] for name in (*DATA_SETTINGS, *MODEL_SETTINGS)
                                if name in recorded})
    return args


def _resume_refusal(path: str) -> Callable[[str, object, object], str]:
    def refusal(name: str, current, value) -> str:
        return (f"`{name}` {_shown(current)} differs from the {_shown(value)} that {path} was trained with, and a "
                f"resumed run cannot change it; drop `{name}`, or start a new run without `checkpoint_path`")
    return refusal


def resume_settings(args: argparse.Namespace, given: set[str], checkpoint: dict) -> list[str]:
    """main.py --checkpoint_path: a resumed run continues with the settings it was trained
    with. The checkpoint's model hyperparameters and data module settings fill the settings
    not given; a given one that differs is a UserError naming it (Lightning would restore the
    optimiser, scheduler and weights of the old settings and silently ignore the new one),
    except :data:`RESUME_MAY_CHANGE`. Returns the names taken from the checkpoint."""
    recorded = {name: value for name, value in recorded_settings(checkpoint).items()
                if not (name in RESUME_MAY_CHANGE and name in given)}
    taken = _take_settings(args, given, recorded, _resume_refusal(args.checkpoint_path), same=_close)
    return taken + resume_trainer_settings(args, given, checkpoint)


def resume_trainer_settings(args: argparse.Namespace, given: set[str], checkpoint: dict) -> list[str]:
    """The trainer settings that define the resumed run's epochs (:data:`TRAINER_SETTINGS`:
    the batches per training and validation epoch, the precision) are restored from the
    checkpoint when not given, and a given one that differs is a UserError naming it, as for
    the model settings: otherwise a resume that leaves out limit_train_batches would train
    full epochs after limited ones. max_epochs and max_steps may change (to train longer).
    Returns the names taken from the checkpoint."""
    return _take_settings(args, given, checkpoint_trainer_settings(checkpoint, args.checkpoint_path),
                         _resume_refusal(args.checkpoint_path),
                         current=lambda settings, name: normal_trainer_setting(name, getattr(settings, name)))


def warm_start_settings(args: argparse.Namespace, given: set[str], checkpoint: dict) -> list[str]:
    """main.py --warm_start: a new run on a trained model's weights keeps the architecture
    they fit. The checkpoint's :data:`ARCHITECTURE` settings fill the settings not given; a
    given one that differs is a UserError naming it. Every other setting (batches, learning
    rate, epochs, margins, data) is the command line's. Returns the names taken from the
    checkpoint."""
    recorded = recorded_settings(checkpoint)  # the classifier records no latent_dim

    def refusal(name: str, current, value) -> str:
        return (f"`{name}` {_shown(current)} differs from the {_shown(value)} that {args.warm_start} was trained "
                f"with, and its weights fit only that; drop `{name}` to take the checkpoint's")

    return _take_settings(args, given, {name: recorded[name] for name in ARCHITECTURE if name in recorded}, refusal,
                         same=lambda current, value: current == value)


# ------------------------------------------------------------------ the trainer settings

# The trainer flags that define the epochs a run trains: how many training and validation
# batches each epoch has, and the arithmetic. A resumed run keeps them (:func:`resume_trainer_settings`:
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
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.basename(folder) == "checkpoints":
            recorded = read_json(os.path.join(os.path.dirname(folder), "args.json"))
    if not isinstance(recorded, dict):
        return {}
    return {name: normal_trainer_setting(name, recorded[name]) for name in TRAINER_SETTINGS if name in recorded}
