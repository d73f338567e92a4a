"""Experiment loggers (``--logger``): which there are, and building them for a run.

Lightning's own loggers serve ``csv``, ``tensorboard``, ``wandb`` and ``mlflow``; the
project's CSV logger and its stand-in for Neptune's are in utils.lightning_loggers. Neptune,
W&B and MLflow are optional. Whatever the loggers, the CSV metrics and every file are written
under the output folder. This module imports Lightning only when it builds loggers, so the
flag definitions (utils.flags) can take the logger names from here.
"""
from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

from utils.errors import UserError
from utils.run_folder import record_output

if TYPE_CHECKING:
    from pytorch_lightning.loggers import Logger

LOGGERS = ("csv", "tensorboard", "wandb", "mlflow", "neptune")
DEFAULT_LOGGERS = ("csv", "tensorboard")

# The folder under the output folder that each logger writing one keeps its files in.
_LOGGER_TREES = (("tensorboard", "tensorboard"), ("mlflow", "mlruns"), ("wandb", "wandb"))


def logger_trees(names) -> tuple[str, ...]:
    """The folders under the output folder that the loggers ``names`` (None: the default
    ones) write into (:func:`build_loggers`)."""
    wanted = DEFAULT_LOGGERS if names is None else names
    return tuple(tree for name, tree in _LOGGER_TREES if name in wanted)


def _neptune_module():
    try:
        import neptune  # noqa: F401
    except Exception:
        return None
    return neptune


# The packages each optional logger can run on (any one of them will do).
_LOGGER_PACKAGES = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb",), "mlflow": ("mlflow",),
                    "neptune": ("neptune",)}


def _require(name: str) -> None:
    """One sentence naming the package to install when a chosen logger cannot run."""
    packages = _LOGGER_PACKAGES.get(name, ())
    if not packages or any(importlib.util.find_spec(package) for package in packages):
        return
    raise UserError(f"the {name} logger needs the {packages[0]} package, which is not installed: "
                    f"pip install {packages[0]}, or leave {name} out of `logger`", setting="logger")


def _neptune_logger(offline: bool, tags: list[str], project: str | None, explicit: bool) -> Logger | None:
    """Neptune when asked for (--logger neptune), or for a run that names no logger (as the
    original commands, which logged to Neptune) when the client is installed and usable."""
    from pytorch_lightning.utilities import rank_zero_info

    from utils.lightning_loggers import NeptuneRunLogger

    if _neptune_module() is None:
        if explicit:
            _require("neptune")
        return None
    project = project or os.environ.get("NEPTUNE_PROJECT")
    if not offline and not (os.environ.get("NEPTUNE_API_TOKEN") and project):
        if explicit:
            raise UserError("the neptune logger needs NEPTUNE_API_TOKEN and NEPTUNE_PROJECT (or `neptune_project`); "
                            "set them, or add `offline` for Neptune's offline mode", setting="logger")
        rank_zero_info("neptune is installed but NEPTUNE_API_TOKEN / NEPTUNE_PROJECT are not set: "
                       "logging locally only")
        return None
    try:
        return NeptuneRunLogger(project, offline, tags)
    except Exception as error:  # a bad token must not cost the local logs
        rank_zero_info(f"neptune logging disabled ({error}); logging locally only")
        return None


def build_loggers(output_dir: str, names: list[str] | None = None, offline: bool = False,
                  tags: list[str] | None = None, project: str | None = None,
                  versioned_csv: bool = False, keep_metrics: bool = False) -> list[Logger]:
    """Lightning's loggers for ``--logger NAMES``; ``names=None`` means the flag was not given.

    Lightning's CSV logger always comes first (``output_dir/metrics.csv`` and
    ``hparams.yaml`` are written whatever the loggers); ``tensorboard`` writes under
    ``output_dir/tensorboard``, ``mlflow`` into the local store ``output_dir/mlruns``,
    ``wandb`` under ``output_dir/wandb`` (offline with ``--offline``). Without the flag:
    CSV and TensorBoard, plus Neptune when its client is installed and configured.
    ``versioned_csv`` keeps Lightning's ``lightning_logs/version_N/metrics.csv`` layout
    (the autoencoder scripts' outputs) instead of ``output_dir/metrics.csv``. ``keep_metrics``
    (a run resumed into its own folder) appends to ``metrics.csv`` and keeps its earlier rows.
    """
    from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    from utils.lightning_loggers import RunCSVLogger

    explicit = names is not None
    wanted = list(dict.fromkeys(names if explicit else DEFAULT_LOGGERS))
    for name in wanted:
        if name not in LOGGERS:
            raise UserError(f"unknown logger {name!r}; use any of {', '.join(LOGGERS)}", setting="logger")
        if name != "neptune":
            _require(name)
    tags = tags or []
    # What the loggers write under output_dir joins the run's record before it is written.
    if versioned_csv:
        csv_logger = CSVLogger(save_dir=output_dir)
        if not os.path.isdir(csv_logger.root_dir):
            record_output(csv_logger.root_dir, "folders")
        record_output(csv_logger.log_dir, "trees")  # lightning_logs/version_N, the next free N
    else:  # metrics.csv and hparams.yaml join the record when written (_RunWriter)
        csv_logger = RunCSVLogger(save_dir=output_dir, name="", version="", keep_rows=keep_metrics)
    loggers: list[Logger] = [csv_logger]
    for tree in logger_trees(wanted):
        record_output(os.path.join(output_dir, tree), "trees")
    if "tensorboard" in wanted:
        loggers.append(TensorBoardLogger(save_dir=output_dir, name="tensorboard", version="",
                                         default_hp_metric=False))
    if "mlflow" in wanted:
        mlruns = os.path.abspath(os.path.join(output_dir, "mlruns"))
        loggers.append(MLFlowLogger(experiment_name="vmdls", tracking_uri=f"file:{mlruns}",
                                    tags={tag.split(":", 1)[0]: tag.split(":", 1)[-1] for tag in tags}))
    if "wandb" in wanted:
        loggers.append(WandbLogger(save_dir=output_dir, offline=offline, project="vmdls", tags=tags))
    if "neptune" in wanted or not explicit:
        neptune = _neptune_logger(offline, tags, project, explicit)
        if neptune is not None:
            loggers.append(neptune)
    return loggers


def log_files(loggers: list[Logger], files: dict[str, str]) -> None:
    """Upload result files (plots, tables) to the loggers that take files."""
    from utils.lightning_loggers import NeptuneRunLogger

    for logger in loggers:
        if isinstance(logger, NeptuneRunLogger):
            for key, path in files.items():
                logger.log_file(key, path)
