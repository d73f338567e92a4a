"""Loggers: Lightning's CSV logger always; Neptune as well when it is installed and usable.

Neptune is optional. Lightning 2.6 dropped its NeptuneLogger (Neptune was sunset), so a
small Logger over the ``neptune`` client stands in for it. With ``--offline`` and the
client installed, Neptune's offline mode is used; without the client or credentials,
everything is still written locally under --output_dir.
"""
from __future__ import annotations

import json
import os
from argparse import Namespace
from contextlib import contextmanager
from typing import Any

from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only


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


def build_loggers(output_dir: str, offline: bool, tags: list[str] | None = None,
                  project: str | None = None) -> list[Logger]:
    """CSV logger writing ``output_dir/metrics.csv`` and ``hparams.yaml``, plus Neptune
    when the client is installed and either --offline is set or credentials exist."""
    loggers: list[Logger] = [CSVLogger(save_dir=output_dir, name="", version="")]
    if _neptune_module() is None:
        return loggers
    project = project or os.environ.get("NEPTUNE_PROJECT")
    if not offline and not (os.environ.get("NEPTUNE_API_TOKEN") and project):
        rank_zero_info("neptune is installed but NEPTUNE_API_TOKEN / NEPTUNE_PROJECT are not set: "
                       "logging locally only")
        return loggers
    try:
        loggers.append(NeptuneRunLogger(project, offline, tags))
    except Exception as error:  # a bad token must not cost the local logs
        rank_zero_info(f"neptune logging disabled ({error}); logging locally only")
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
