"""The Lightning loggers of ``--logger`` that are the project's own (utils.loggers builds them).

``RunCSVLogger``: Lightning's CSV logger for a claimed output folder, whose files join the
run's record and which keeps the earlier rows of a run resumed into its own folder.
``NeptuneRunLogger``: Neptune was sunset and Lightning 2.6 dropped its NeptuneLogger, so a
small Logger over the ``neptune`` client stands in for it. They import Lightning, so
utils.loggers imports this module only when it builds the loggers.
"""
from __future__ import annotations

import csv
import os
from argparse import Namespace
from typing import Any

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities import rank_zero_only

from utils.run_folder import atomic_path, record_output


class NeptuneRunLogger(Logger):
    """Logs metrics, hyperparameters and files to one Neptune run."""

    def __init__(self, project: str | None, offline: bool, tags: list[str] | None = None):
        import neptune

        super().__init__()
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

    # Each file joins the run's record (utils.run_folder.record_output) before it is first written.
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
