"""How far float32 kernels of one CPU move the recorded numbers: the measurement behind the
tolerances of the recorded-number tests (tests/float_tolerance.py, AMPLIFIED in
tests/test_speed_equivalence.py).

For each kernel family this CPU offers (its own, AVX2, the baseline ones), in a fresh process:
- the short run of tests/test_speed_equivalence.py (training, autoencoder, two evaluations),
  compared with tests/fixtures/short_run_statistics.pt: normwise relative differences of the
  trained tensors and per-image columns, changed predictions, the largest metric moves;
- test.py on tests/fixtures/vmdls_v0_digits.ckpt, in float32 and (once) in float64: each
  family's largest per-image relative score error against float64, and its threshold.

    python benchmarks/kernel_spread.py [--output_dir outputs/kernel_spread]

Prints one table per part and writes OUT/kernel_spread.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "baseline": {"ATEN_CPU_CAPABILITY": "default"},
}
V0 = ["--checkpoint_path", os.path.join(ROOT, "tests", "fixtures", "vmdls_v0_digits.ckpt"), "--data_transforms",
      "blob", "--batch_size", "128", "--accelerator", "cpu", "--num_workers", "0", "--offline", "--logger", "csv"]
SHORT_RUN = """
import sys, torch
sys.path[:0] = [{root!r}, {tests!r}]
from test_speed_equivalence import kernel_fingerprint, short_run
record = short_run({folder!r})
record["_fingerprint"] = kernel_fingerprint()
torch.save(record, {folder!r} + ".pt")
"""


def run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: {' '.join(command[:3])} ... failed:\n{done.stderr[-2000:]}")


def short_run_spread(folder: str, env: dict[str, str]) -> dict:
    import torch

    run([sys.executable, "-c", SHORT_RUN.format(root=ROOT, tests=os.path.join(ROOT, "tests"), folder=folder)], env)
    actual = torch.load(folder + ".pt", weights_only=True)
    expected = torch.load(os.path.join(ROOT, "tests", "fixtures", "short_run_statistics.pt"), weights_only=True)
    row = {"fingerprint": actual.pop("_fingerprint"), "recorded_on": expected.pop("_fingerprint")}
    tensors, metrics = {}, {}
    for key, value in expected.items():
        got = actual[key]
        if isinstance(value, torch.Tensor) and key.endswith("prediction"):
            row[f"changed {key}"] = f"{int((got != value).sum())} of {len(value)}"
        elif isinstance(value, torch.Tensor):
            finite = torch.isfinite(value)
            difference = (got.double()[finite] - value.double()[finite]).norm()
            tensors[key] = float(difference / value.double()[finite].norm())
        else:
            metric = key.rsplit("/", 1)[-1]
            move = abs(got - value) / (abs(value) if metric.startswith("threshold") else 1.0)
            metrics[metric] = max(metrics.get(metric, 0.0), move if move == move else 0.0)
    row["normwise"] = tensors
    row["largest metric move (thresholds relative)"] = metrics
    return row


def v0_scores(folder: str, env: dict[str, str], precision: str = "32-true"):
    import pandas as pd

    run([sys.executable, "test.py", *V0, "--precision", precision, "--output_dir", folder], env)
    with open(os.path.join(folder, "results.json")) as handle:
        threshold = json.load(handle)["threshold_at_95_tpr"]
    return pd.read_csv(os.path.join(folder, "scores.csv"))["score"].to_numpy(), threshold


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/kernel_spread")
    args = parser.parse_args(argv)
    import numpy as np

    os.makedirs(args.output_dir, exist_ok=True)
    report = {"short_run": {}, "v0_evaluation": {}}
    with tempfile.TemporaryDirectory() as scratch:
        exact, exact_threshold = v0_scores(os.path.join(scratch, "v0-float64"), {}, "64-true")
        for name, env in FAMILIES.items():
            print(f"[{name}] short run ...", flush=True)
            report["short_run"][name] = short_run_spread(os.path.join(scratch, f"short-{name}"), env)
            scores, threshold = v0_scores(os.path.join(scratch, f"v0-{name}"), env)
            report["v0_evaluation"][name] = {
                "largest relative score error against float64": float(np.max(np.abs(scores - exact) / np.abs(exact))),
                "largest absolute score error against float64": float(np.max(np.abs(scores - exact))),
                "threshold_at_95_tpr": threshold, "float64 threshold": exact_threshold}
    for part, rows in report.items():
        print(f"\n{part}")
        for name, row in rows.items():
            print(f"  {name}: {json.dumps(row, indent=None)}")
    path = os.path.join(args.output_dir, "kernel_spread.json")
    with open(path, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
