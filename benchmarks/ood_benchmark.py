"""The OOD benchmark's entry point from benchmarks/: the same flags and main as
``python -m experiments.benchmark`` (experiments/benchmark/ holds the harness)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.benchmark.cli import main  # noqa: E402  (after the path: the script runs from benchmarks/)
from utils.cli import run_main  # noqa: E402

if __name__ == "__main__":
    run_main(main)
