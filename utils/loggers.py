"""Experiment loggers (``--logger``) and atomic writes of result files.

Lightning's own loggers serve ``csv``, ``tensorboard``, ``wandb`` and ``mlflow``. Neptune
was sunset and Lightning 2.6 dropped its NeptuneLogger, so a small Logger over the
``neptune`` client stands in for ``neptune``; it is optional, as are W&B and MLflow.
Whatever the loggers, the CSV metrics and every file are written under --output_dir.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import tempfile
from argparse import Namespace
from contextlib import contextmanager
from typing import Any

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from utils.cli import record_output
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


class _RunWriter(ExperimentWriter):
    """Lightning's CSV writer for a folder the script has already claimed (its previous
    run's files are gone, or it is being resumed), so without Lightning's warning. With
    ``keep_rows`` it keeps the rows metrics.csv already holds (the earlier epochs of a run
    resumed into its own folder) and appends after them, where Lightning's writer deletes
    the file; a header change rewrites the file atomically."""

    def __init__(self, log_dir: str, keep_rows: bool = False) -> None:
        self._keep_rows = keep_rows
        super().__init__(log_dir)
        if keep_rows and os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as handle:
                self.metrics_keys = list(csv.DictReader(handle).fieldnames or [])

    def _check_log_dir_exists(self) -> None:
        if not self._keep_rows and os.path.isfile(self.metrics_file_path):
            os.remove(self.metrics_file_path)

    # Each file joins the run's record (utils.cli.record_output) before it is first written.
    def log_hparams(self, params: dict[str, Any]) -> None:
        record_output(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE))
        super().log_hparams(params)

    def save(self) -> None:
        if self.metrics:
            record_output(self.metrics_file_path)
        super().save()

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with open(self.metrics_file_path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        with atomic_path(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)


class RunCSVLogger(CSVLogger):
    """Lightning's CSVLogger; with ``keep_rows`` (a resumed run writing into its own
    folder) the new rows are appended to the existing metrics.csv instead of replacing it."""

    def __init__(self, *args, keep_rows: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self._keep_rows = keep_rows

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _RunWriter(log_dir=self.log_dir, keep_rows=self._keep_rows)
        return self._experiment


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
    from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

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
    for name, tree in (("tensorboard", "tensorboard"), ("mlflow", "mlruns"), ("wandb", "wandb")):
        if name in wanted:
            record_output(os.path.join(output_dir, tree), "trees")  # as utils.cli.logger_trees says
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextmanager
def atomic_path(path: str):
    """Yield a temporary name to write; it replaces ``path`` only once writing succeeded.

    The temporary file is unique (``.NAME.XXXX.tmp`` beside ``path``), so two writers of
    one path never share it, and a crash or a failed write leaves ``path`` as it was
    (the previous file, or none). A write that fails is a UserError naming the file.
    In a claimed output folder, ``path`` joins the run's record before it is written
    (utils.cli.record_output), so --overwrite knows it as the run's.
    """
    record_output(str(path))
    folder = os.path.dirname(os.path.abspath(path))
    try:
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as error:
        raise UserError(f"cannot write {path} ({error.strerror or error}); pick a writable --output_dir")
    os.close(handle)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make results private
        os.replace(tmp, path)
    except OSError as error:
        raise UserError(f"cannot write {path} ({error.strerror or error}); the previous file, if any, is "
                        "unchanged; free some space or pick a writable --output_dir")
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def write_json(path: str, payload: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")


def read_json(path: str):
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_run_record(output_dir: str, args: Namespace, argv: list[str] | None, resumed: bool) -> str:
    """``args.json``: the command line and the values the run used. A run resumed into its
    own folder keeps the earlier runs' records under ``previous_runs``. Only the first
    process of a multi-process run writes it."""
    import sys

    from utils.cli import is_worker_process

    path = os.path.join(output_dir, "args.json")
    if is_worker_process():
        return path
    record = {"argv": sys.argv if argv is None else list(argv), **vars(args)}
    previous = read_json(path) if resumed else None
    if isinstance(previous, dict):
        history = previous.pop("previous_runs", [])
        record["previous_runs"] = [*(history if isinstance(history, list) else []), previous]
    write_json(path, record)
    return path
