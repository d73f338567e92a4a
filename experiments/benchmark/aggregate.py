"""The rows of the table: one per (seed, setting, method, unknown set) from the evaluations'
tables, then aggregated over the seeds."""
from __future__ import annotations

import math
import os

from .plan import METHODS, Plan, Step, display_name
from .runner import recorded_seconds

METRICS = ("auroc", "fpr_at_95_tpr", "aupr_in", "aupr_out", "f1_macro_at_95_tpr", "closed_set_accuracy")
REQUIRED_KEYS = ("method", "unknown", "unknown_set", "auroc", "auroc_std", "fpr_at_95_tpr", "aupr_in", "aupr_out",
                 "f1_macro_at_95_tpr", "closed_set_accuracy", "train_seconds", "eval_seconds", "seeds")


def evaluation_table(step: Step, tables: dict):
    """The rows of an evaluation step: its table from this run, else its summary.csv (a step
    done before; read exactly as written), else None (not run yet)."""
    import pandas as pd

    if step.output_dir in tables:
        return tables[step.output_dir]
    if os.path.isfile(step.done_file):
        return pd.read_csv(step.done_file, float_precision="round_trip")
    return None


def train_seconds(step: Step, trained_by: tuple[str, ...] | None) -> float:
    """Seconds of the trainings a row's model took (nan: trained elsewhere)."""
    if trained_by is None:
        return float("nan")
    return sum((recorded_seconds(step.sources[name]) for name in trained_by), 0.0)


def per_seed_rows(plan: Plan, tables: dict | None = None) -> list[dict]:
    """Every (seed, setting, method, unknown set) row of the finished evaluations; ``tables``:
    the tables of the evaluations this run made, by output folder."""
    rows = []
    for step in plan.steps:
        frame = evaluation_table(step, tables or {}) if step.kind == "test" else None
        if frame is None:
            continue
        frame = frame[frame["unknown"] != "mean"]
        for _, record in frame.iterrows():
            method, unknown = step.methods.get(record["method"]), str(record["unknown"])
            if method is None or unknown not in step.unknown:
                continue
            rows.append({"seed": step.seed, "setting": step.setting, "method": method.name,
                         "unknown": plan.names.get(unknown, display_name(unknown)),
                         "unknown_set": plan.specs.get(unknown, unknown),
                         **{k: float(record[k]) for k in METRICS},
                         "train_seconds": train_seconds(step, method.trained_by),
                         "eval_seconds": recorded_seconds(step)})
    order = {m: i for i, m in enumerate(METHODS)}
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    rows.sort(key=lambda r: (settings.index(r["setting"]), order.get(r["method"], len(order)), r["seed"]))
    return rows


def _clean(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def aggregate(rows: list[dict]) -> list[dict]:
    """Per-seed rows -> one row per (setting, method, unknown): means over the seeds, the
    SAMPLE std (ddof=1; 0.0 for a single seed) of each metric (``<metric>_std``) and its
    per-seed values (``<metric>_per_seed``).

    Each input row has ``method``, ``unknown``, ``seed``, the METRICS, ``train_seconds``,
    ``eval_seconds`` and optionally ``setting`` and ``unknown_set`` (the set as given, which
    keys the groups: two sets shown alike are never taken for seeds of one); the output
    keeps the rows' first order."""
    import numpy as np

    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row.get("setting", ""), row["method"], row.get("unknown_set", row["unknown"])),
                          []).append(row)
    out = []
    for (setting, method, unknown_set), members in groups.items():
        members = sorted(members, key=lambda r: r["seed"])
        result = {"setting": setting, "method": method, "unknown": members[0]["unknown"], "unknown_set": unknown_set}
        for key in (*METRICS, "train_seconds", "eval_seconds"):
            values = np.array([float(m[key]) for m in members], dtype=float)
            result[key] = float(values.mean())
            if key in METRICS:
                result[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        result["seeds"] = [int(m["seed"]) for m in members]
        for key in METRICS:
            result[f"{key}_per_seed"] = [float(m[key]) for m in members]
        out.append({k: _clean(v) for k, v in result.items()})
    return out


