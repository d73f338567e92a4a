"""Command-line plumbing shared by main.py, test.py and the autoencoder scripts."""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable

from utils.errors import UserError


def run_main(main: Callable[[], object]) -> None:
    """Run a script's main; a UserError becomes one line on stderr and exit status 2."""
    try:
        main()
    except UserError as error:
        print(f"error: {error.for_command_line()}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def int_or_float(text: str) -> int | float:
    """Lightning's limit_* flags: an int counts batches, a float is a fraction."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of batches or a fraction, got {text!r}")


def fast_dev_run_value(text: str) -> int | bool:
    if text.lower() in ("true", "yes"):
        return True
    if text.lower() in ("false", "no"):
        return False
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fast_dev_run takes a number of batches, got {text!r}")


def parse_gpus(text: str | None) -> list[int] | int | None:
    """Lightning 1.x's --gpus: "0," or "0,1" names devices, "2" counts them, "-1" is all."""
    if text is None or text.strip() == "":
        return None
    text = text.strip()
    try:
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip() != ""]
        return int(text)
    except ValueError:
        raise UserError(f'--gpus {text!r} is not a device list like "0," or "0,1" or a count like "2"')


def _parse_devices(text: str | None):
    if text is None:
        return None
    if text == "auto":
        return "auto"
    return parse_gpus(text)


def resolve_devices(args: argparse.Namespace) -> tuple[str, object]:
    """Turn --gpus / --accelerator / --devices into Lightning's (accelerator, devices)."""
    accelerator = args.accelerator
    devices = _parse_devices(args.devices)
    gpus = parse_gpus(args.gpus)
    if accelerator == "cpu":
        return "cpu", devices if devices is not None else 1
    if gpus is not None and devices is None:
        if gpus == 0 or gpus == []:
            return "cpu", 1
        accelerator = "gpu"
        devices = gpus
    if accelerator == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise UserError("a GPU was asked for (--gpus or --accelerator gpu) but none is visible; "
                            "add --accelerator cpu to run on the CPU")
        count = torch.cuda.device_count()
        wanted = devices if isinstance(devices, list) else []
        if any(index >= count for index in wanted) or (isinstance(devices, int) and devices > count):
            raise UserError(f"--gpus/--devices {devices} asks for GPUs this machine lacks (it has {count}: "
                            f"{list(range(count))}); pass for example --gpus \"0,\"")
    return accelerator, devices if devices is not None else "auto"


def trainer_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments for pl.Trainer from the flags of utils.flags (common and trainer groups)."""
    accelerator, devices = resolve_devices(args)
    kwargs = dict(
        accelerator=accelerator,
        devices=devices,
        strategy=args.strategy,
        precision=args.precision,
        num_nodes=args.num_nodes,
        max_epochs=args.max_epochs,
        max_steps=args.max_steps if args.max_steps is not None else -1,
        fast_dev_run=args.fast_dev_run,
    )
    if args.limit_train_batches is not None:
        kwargs["limit_train_batches"] = args.limit_train_batches
    if args.limit_val_batches is not None:
        kwargs["limit_val_batches"] = args.limit_val_batches
    return kwargs


# ------------------------------------------------------------------------------ output folders

@dataclass(frozen=True)
class RunLayout:
    """What one kind of run writes into its --output_dir (glob patterns, relative to it).

    ``markers``: their presence means the folder already holds such a run; ``first``: what
    ``--overwrite`` removes before anything else (the files whose presence marks a finished
    run), then ``others``; ``foreign``: another kind of run's files, which even
    ``--overwrite`` does not replace; ``subfolders``: folders the run writes into.
    """

    what: str
    markers: tuple[str, ...]
    first: tuple[str, ...] = ()
    others: tuple[str, ...] = ()
    foreign: tuple[str, ...] = ()
    foreign_what: str = ""
    subfolders: tuple[str, ...] = ()


_TEMPORARY = (".*.tmp", "*/.*.tmp")

TRAINING_RUN = RunLayout(
    what="a training run",
    markers=("args.json", "checkpoints/*.ckpt", "metrics.csv", "hparams.yaml", "tensorboard/*"),
    first=("checkpoints/*.ckpt",),
    others=("args.json", "metrics.csv", "hparams.yaml", "tensorboard", "tsne_latent.png", *_TEMPORARY),
    subfolders=("checkpoints",),
)

AUTOENCODER_RUN = RunLayout(
    what="an autoencoder run",
    markers=("*.ckpt", "lightning_logs/*", "tensorboard/*"),
    first=("*.ckpt",),
    others=("lightning_logs", "tensorboard", *_TEMPORARY),
)

_EVALUATION_FILES = ("scores*.csv", "thresholds.csv", "roc.png", "f1_threshold.png", "score_histogram.png", "tsne.png")
EVALUATION = RunLayout(
    what="an evaluation",
    markers=("results.json", "*/results.json", "summary.csv", "summary.md", *_EVALUATION_FILES,
             *(f"*/{name}" for name in _EVALUATION_FILES), "metrics.csv", "hparams.yaml", "tensorboard/*"),
    first=("results.json", "*/results.json"),  # gone before anything new is written
    others=("summary.csv", "summary.md", *_EVALUATION_FILES, *(f"*/{name}" for name in _EVALUATION_FILES),
            "metrics.csv", "hparams.yaml", "tensorboard", *_TEMPORARY),
    foreign=("args.json", "checkpoints/*.ckpt", "*.ckpt"),
    foreign_what="a training run",
)


def is_worker_process() -> bool:
    """A process of a multi-process run other than the first: Lightning starts the other DDP
    processes by running the script again (LOCAL_RANK set), launchers set RANK / NODE_RANK.
    Only the first one claims the output folder."""
    for name in ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) != 0:
            return True
    return False


def _found(folder: str, patterns: tuple[str, ...]) -> list[str]:
    hits = []
    for pattern in patterns:
        hits += sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))
    return list(dict.fromkeys(hits))


def _remove(paths: list[str]) -> None:
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def check_writable(folder: str) -> None:
    """Create ``folder`` and write (then remove) a probe file in it; a UserError otherwise."""
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise UserError(f"{folder} is a file, not a folder, so the run cannot write into it; remove it or pick "
                        "another --output_dir")
    try:
        os.makedirs(folder, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".probe.", suffix=".tmp")
        try:
            os.write(handle, b"probe")
        finally:
            os.close(handle)
            os.remove(probe)
    except OSError as error:
        raise UserError(f"cannot write into {folder} ({error.strerror or error}), so the run could not save its "
                        "results; pick a writable --output_dir or fix the folder's permissions")


class OutputFolder:
    """A run's --output_dir, claimed for writing: an exclusive lock on ``OUTPUT_DIR/.lock``
    held until :meth:`release` (or the end of a ``with`` block), so a second run into the
    same folder is refused while this one writes."""

    LOCK_NAME = ".lock"

    def __init__(self, path: str, resumed_here: bool = False):
        self.path = path
        self.resumed_here = resumed_here
        self._handle = None

    def lock(self) -> "OutputFolder":
        try:
            import fcntl
        except ImportError:  # no flock (Windows): nothing to hold
            return self
        lock_path = os.path.join(self.path, self.LOCK_NAME)
        try:
            handle = open(lock_path, "a+")
        except OSError as error:
            raise UserError(f"cannot write into {self.path} ({error.strerror or error}); pick a writable "
                            "--output_dir")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise UserError(f"another run is writing into {self.path}; wait for it to finish, or pick another "
                            "--output_dir")
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the flock
            self._handle = None

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def is_inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def claim_output_dir(path: str, layout: RunLayout, overwrite: bool = False,
                     resume_from: str | None = None) -> OutputFolder:
    """Make ``path`` this run's output folder before any work starts.

    It (and ``layout.subfolders``) is created and checked by writing a probe file, then
    locked (:class:`OutputFolder`). A folder that already holds such a run is refused in
    one sentence naming --overwrite (and, for training, --checkpoint_path), unless the run
    resumes from a checkpoint inside it; with ``overwrite`` the previous run's files are
    removed, its "finished" files (``layout.first``) before any other. Another kind of
    run's folder (``layout.foreign``) is always refused. Processes other than the first of
    a multi-process run only create the folders.
    """
    for folder in (path, *(os.path.join(path, sub) for sub in layout.subfolders)):
        check_writable(folder)
    resumed_here = bool(resume_from) and is_inside(resume_from, path)
    claimed = OutputFolder(path, resumed_here=resumed_here)
    if is_worker_process():
        return claimed
    claimed.lock()
    try:
        foreign = _found(path, layout.foreign)
        if foreign:
            raise UserError(f"{path} holds {layout.foreign_what} ({os.path.relpath(foreign[0], path)}), whose "
                            "files this run would overwrite; pick another --output_dir")
        if resumed_here:
            if overwrite:
                raise UserError(f"--overwrite would delete the run being resumed from {resume_from}; drop "
                                f"--overwrite to resume into {path}, or pick another --output_dir")
            return claimed
        previous = _found(path, layout.markers)
        if previous and not overwrite:
            resume = (f", --checkpoint_path {os.path.join(path, 'checkpoints', 'last.ckpt')} to resume it"
                      if layout is TRAINING_RUN else "")
            raise UserError(f"{path} already holds {layout.what} ({os.path.relpath(previous[0], path)}); pass "
                            f"--overwrite to replace its files{resume}, or pick another --output_dir")
        if previous:
            try:
                _remove(_found(path, layout.first))
                _remove(_found(path, layout.others))
            except OSError as error:
                raise UserError(f"--overwrite could not remove the previous run's files in {path} "
                                f"({error.strerror or error}); remove them by hand or pick another --output_dir")
    except BaseException:
        claimed.release()
        raise
    return claimed


# ------------------------------------------------------------------------------ resuming

# Recorded settings that a resumed run may change: where the data is read from and how.
RESUME_MAY_CHANGE = ("data_dir", "num_workers")


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def resume_settings(args: argparse.Namespace, given: set[str], checkpoint: dict) -> list[str]:
    """main.py --checkpoint_path: a resumed run continues with the settings it was trained
    with. The checkpoint's model hyperparameters and data module settings fill the flags not
    given; a given flag that differs is a UserError naming it (Lightning would restore the
    optimiser, scheduler and weights of the old settings and silently ignore the new one).
    Returns the names taken from the checkpoint."""
    from models.checkpoints import checkpoint_data_settings, checkpoint_hparams, checkpoint_kind
    from models.classifier import CrossEntropyClassifier
    from models.vmdls import VMDLS

    model_class = CrossEntropyClassifier if checkpoint_kind(checkpoint) == "ce" else VMDLS
    own = set(model_class.hyperparameter_names())
    recorded = {k: v for k, v in checkpoint_hparams(checkpoint).items() if k in own}
    recorded.update(checkpoint_data_settings(checkpoint))
    taken = []
    for name, value in recorded.items():
        if not hasattr(args, name) or name in RESUME_MAY_CHANGE and name in given:
            continue
        current = getattr(args, name)
        if name in given:
            same = current == value or (isinstance(current, float) and isinstance(value, (int, float))
                                        and abs(current - value) <= 1e-12 * max(abs(current), abs(value)))
            if not same:
                raise UserError(f"--{name} {_shown(current)} differs from the {_shown(value)} that "
                                f"{args.checkpoint_path} was trained with, and a resumed run cannot change it; drop "
                                f"--{name}, or start a new run without --checkpoint_path")
        elif current != value:
            setattr(args, name, value)
            taken.append(name)
    return taken


# ------------------------------------------------------------------------------ warm starts

# The settings that shape a network's weights. The input height and channels follow the data.
ARCHITECTURE = ("enc_type", "first_conv", "maxpool1", "enc_out_dim", "latent_dim", "class_num")


def warm_start_settings(args: argparse.Namespace, given: set[str], checkpoint: dict) -> list[str]:
    """main.py --warm_start: a new run on a trained model's weights keeps the architecture
    they fit. The checkpoint's architecture settings fill the flags not given; a given one
    that differs is a UserError naming it. Every other setting (batches, learning rate,
    epochs, margins, data) is the command line's. Returns the names taken from the checkpoint."""
    from models.checkpoints import checkpoint_hparams

    recorded = checkpoint_hparams(checkpoint)
    taken = []
    for name in ARCHITECTURE:
        if name not in recorded or not hasattr(args, name):  # the classifier records no latent_dim
            continue
        current, value = getattr(args, name), recorded[name]
        if name in given and current != value:
            raise UserError(f"--{name} {_shown(current)} differs from the {_shown(value)} that {args.warm_start} was "
                            f"trained with, and its weights fit only that; drop --{name} to take the checkpoint's")
        if current != value:
            setattr(args, name, value)
            taken.append(name)
    return taken
