"""Experiment loggers (``--logger``) and atomic writes of result files.

Lightning's own loggers serve ``csv``, ``tensorboard``, ``wandb`` and ``mlflow``. Neptune
was sunset and Lightning 2.6 dropped its NeptuneLogger, so a small Logger over the
``neptune`` client stands in for ``neptune``; it is optional, as are W&B and MLflow.
Whatever the loggers, the CSV metrics and every file are written under --output_dir.
"""
from __future__ import annotations

import importlib.util
import json
import os
from argparse import Namespace
from contextlib import contextmanager
from typing import Any

from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from utils.errors import UserError
from utils.flags import DEFAULT_LOGGERS, LOGGERS


def _neptune_module():
    try:
        import neptune  # noqa: F401
    except Exception:
        return None
    return neptune


class NeptuneRunLogger(Logger):
    """Logs metrics, hyperparameters and files to one Neptune run."""

    def __init__(self, project: str | None, offline: bool, tags: list[str] | None = None):
        super().__init__()
        neptune = _neptune_module()
        mode = "offline" if offline else "async"
        self._run = neptune.init_run(project=project, mode=mode, tags=tags or [])

    @property
    def name(self) -> str:
        return "neptune"

    @property
    def version(self) -> str:
        try:
            return str(self._run["sys/id"].fetch())
        except Exception:
            return "offline"

    @property
    def experiment(self):
        return self._run

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params)
        self._run["parameters"] = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                   for k, v in params.items()}

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self._run[f"metrics/{key}"].append(float(value), step=step)

    @rank_zero_only
    def log_file(self, key: str, path: str) -> None:
        self._run[key].upload(path)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._run.stop()


# The packages each optional logger can run on (any one of them will do).
_LOGGER_PACKAGES = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb",), "mlflow": ("mlflow",),
                    "neptune": ("neptune",)}


def _require(name: str) -> None:
    """One sentence naming the package to install when a chosen logger cannot run."""
    packages = _LOGGER_PACKAGES.get(name, ())
    if not packages or any(importlib.util.find_spec(package) for package in packages):
        return
    raise UserError(f"the {name} logger needs the {packages[0]} package, which is not installed: "
                    f"pip install {packages[0]}, or leave {name} out of --logger")


def _neptune_logger(offline: bool, tags: list[str], project: str | None, explicit: bool) -> Logger | None:
    """Neptune when asked for (--logger neptune), or for a run that names no logger (as the
    original commands, which logged to Neptune) when the client is installed and usable."""
    if _neptune_module() is None:
        if explicit:
            _require("neptune")
        return None
    project = project or os.environ.get("NEPTUNE_PROJECT")
    if not offline and not (os.environ.get("NEPTUNE_API_TOKEN") and project):
        if explicit:
            raise UserError("the neptune logger needs NEPTUNE_API_TOKEN and NEPTUNE_PROJECT (or --neptune_project); "
                            "set them, or add --offline for Neptune's offline mode")
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
                  versioned_csv: bool = False) -> list[Logger]:
    """Lightning's loggers for ``--logger NAMES``; ``names=None`` means the flag was not given.

    Lightning's CSV logger always comes first (``output_dir/metrics.csv`` and
    ``hparams.yaml`` are written whatever the loggers); ``tensorboard`` writes under
    ``output_dir/tensorboard``, ``mlflow`` into the local store ``output_dir/mlruns``,
    ``wandb`` under ``output_dir/wandb`` (offline with ``--offline``). Without the flag:
    CSV and TensorBoard, plus Neptune when its client is installed and configured.
    ``versioned_csv`` keeps Lightning's ``lightning_logs/version_N/metrics.csv`` layout
    (the autoencoder scripts' outputs) instead of ``output_dir/metrics.csv``.
    """
    from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

    explicit = names is not None
    wanted = list(dict.fromkeys(names if explicit else DEFAULT_LOGGERS))
    for name in wanted:
        if name not in LOGGERS:
            raise UserError(f"unknown logger {name!r}; use any of {', '.join(LOGGERS)}", setting="logger")
        if name != "neptune":
            _require(name)
    tags = tags or []
    csv = CSVLogger(save_dir=output_dir) if versioned_csv else CSVLogger(save_dir=output_dir, name="", version="")
    loggers: list[Logger] = [csv]
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
    for logger in loggers:
        if isinstance(logger, NeptuneRunLogger):
            for key, path in files.items():
                logger.log_file(key, path)


@contextmanager
def atomic_path(path: str):
    """Yield a temporary name to write; it replaces ``path`` only once writing succeeded,
    so a crash never leaves a half-written file behind."""
    tmp = f"{path}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, payload: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
