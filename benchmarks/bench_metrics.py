"""Speed of the exact, vectorised metrics against the original's threshold-grid loops.

Baseline: the original's log_test_statistics style, a Python loop that calls scikit-learn's
f1_score at each threshold of a fixed grid (1,000 thresholds here; the original also
looped over 100,000 for the ROC). Ours: every metric and the full table (one row per
distinct score), exactly, in one run on the same data.

    python benchmarks/bench_metrics.py --n 20000 --classes 10
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from sklearn.metrics import f1_score

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.metrics import ood_metrics, threshold_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--grid", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, args.classes + 1, size=args.n)
    known = labels < args.classes
    scores = rng.normal(size=args.n) + known
    pred = np.where(rng.random(args.n) < 0.9, np.minimum(labels, args.classes - 1),
                    rng.integers(0, args.classes, args.n))

    start = time.perf_counter()
    ood_metrics(scores, pred, labels, args.classes)
    table = threshold_table(scores, known, pred, labels, args.classes)
    ours = time.perf_counter() - start

    start = time.perf_counter()
    for t in np.linspace(scores.min(), scores.max(), args.grid):
        f1_score(labels, np.where(scores >= t, pred, args.classes), average="macro")
    grid = time.perf_counter() - start
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "n": args.n, "classes": args.classes,
                      "ours_all_metrics_and_table_s": round(ours, 4), "table_rows": len(table),
                      "grid_f1_loop_s": round(grid, 3), "grid_thresholds": args.grid,
                      "speedup": round(grid / ours, 1)}))


if __name__ == "__main__":
    main()
