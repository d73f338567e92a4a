"""Running a plan's steps: done-files (resume), timing, progress lines and estimates."""
from __future__ import annotations

import gc
import json
import math
import os
import time

from .plan import Plan, Step


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Clock:
    """The harness's log: each line with the time since the run started."""

    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, message: str) -> None:
        print(f"[ood_benchmark {clock(self.elapsed())}] {message}", flush=True)
def estimate_left(steps: list[Step], timed: dict[tuple, list[float]]) -> float | None:
    """Seconds ``steps`` should take, from the seconds of the steps timed so far: a step
    takes the mean of those of its setting and kind (label), else of its kind, else of all
    of them. None while nothing is timed."""
    every = [v for values in timed.values() for v in values]
    if not every:
        return None
    total = 0.0
    for step in steps:
        same = timed.get((step.setting, step.label)) or \
            [v for (_, label), values in timed.items() if label == step.label for v in values] or every
        total += sum(same) / len(same)
    return total


def progress_line(index: int, total: int, elapsed: float, left: float | None, timed_count: int, what: str) -> str:
    if left is None:
        estimate = "estimate: none yet (no step timed)"
    else:
        amount = f"~{left / 60:.0f} min" if left >= 90 else f"~{left:.0f} s"
        estimate = f"estimate: {amount} left (from {timed_count} step{'s' if timed_count != 1 else ''} timed)"
    return f"[step {index}/{total}] elapsed {clock(elapsed)}, {estimate} · {what}"


def read_json(path: str):
    with open(path) as handle:
        return json.load(handle)


def write_json(path: str, value) -> None:
    """The harness's files (rows, timings, done-files): strict JSON (no NaN), written atomically."""
    from utils.files import atomic_replace

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_replace(path) as tmp, open(tmp, "w") as handle:
        json.dump(value, handle, indent=2, allow_nan=False)
        handle.write("\n")


def summary_unknowns(path: str) -> set[str]:
    import pandas as pd

    return set(pd.read_csv(path)["unknown"].astype(str))


def step_done(step: Step) -> bool:
    if not os.path.isfile(step.done_file):
        return False
    if step.kind == "test":
        return set(step.unknown) <= summary_unknowns(step.done_file)
    return True


def _started(folder: str) -> bool:
    return os.path.isdir(folder) and any(not name.startswith(".") for name in os.listdir(folder))


def run_training(step: Step) -> str:
    """A VMDLS / cross-entropy or autoencoder training; returns the checkpoint path. An
    interrupted main.py run resumes from its last checkpoint; anything else a step left
    unfinished is replaced (--overwrite)."""
    from .calls import train_autoencoder_step, train_step

    argv = list(step.argv)
    if step.script == "main.py":
        last = os.path.join(step.output_dir, "checkpoints", "last.ckpt")
        if os.path.isfile(last):  # interrupted after an epoch: resume
            argv += ["--checkpoint_path", last]
        elif _started(step.output_dir):
            argv += ["--overwrite"]
        return train_step(argv)
    if _started(step.output_dir):
        argv += ["--overwrite"]
    return train_autoencoder_step(step.script, argv)


def run_step(step: Step, tables: dict | None = None) -> float:
    """Run one step (unless done); returns its recorded seconds. An evaluation's table
    (summary.csv's rows) goes to ``tables[step.output_dir]``."""
    from .calls import evaluate_step

    timing = os.path.join(step.output_dir, "timing.json")
    start = time.perf_counter()
    if step.kind == "test":
        evaluation = evaluate_step(step.argv + (["--overwrite"] if _started(step.output_dir) else []))
        seconds = time.perf_counter() - start
        write_json(timing, {"seconds": seconds})
        if tables is not None:
            tables[step.output_dir] = evaluation.table
    else:
        checkpoint = run_training(step)
        seconds = time.perf_counter() - start
        if step.kind == "ae" and os.path.abspath(checkpoint) != os.path.join(step.output_dir, "last.ckpt"):
            import shutil

            shutil.copyfile(checkpoint, os.path.join(step.output_dir, "last.ckpt"))
        write_json(step.done_file, {"seconds": seconds, "checkpoint": checkpoint})
    gc.collect()
    return seconds


def recorded_seconds(step: Step) -> float:
    path = step.done_file if step.kind != "test" else os.path.join(step.output_dir, "timing.json")
    try:
        return float(read_json(path)["seconds"])
    except (OSError, KeyError, ValueError):
        return float("nan")


def run_plan(plan: Plan, log: Clock, on_step) -> dict:
    """Every step not done before, in order, each announced with a progress line; after
    each, ``on_step(tables)`` with the tables of the evaluations run so far (by output folder)."""
    total = len(plan.steps)
    tables: dict = {}
    timed: dict[tuple, list[float]] = {}  # (setting, label) -> seconds, of the steps done before and now
    for step in plan.steps:
        if step_done(step) and not math.isnan(recorded_seconds(step)):
            timed.setdefault((step.setting, step.label), []).append(recorded_seconds(step))
    for index, step in enumerate(plan.steps, 1):
        what = f"seed {step.seed} · {step.setting} · {step.label}"
        if step_done(step):
            print(f"[step {index}/{total}] {what}: done before, kept", flush=True)
            continue
        left = estimate_left([s for s in plan.steps[index - 1:] if s is step or not step_done(s)], timed)
        print(progress_line(index, total, log.elapsed(), left, sum(map(len, timed.values())), what), flush=True)
        seconds = run_step(step, tables)
        timed.setdefault((step.setting, step.label), []).append(seconds)
        log(f"step {index}/{total} · {what}: finished in {seconds:.0f} s")
        on_step(tables)
    return tables
