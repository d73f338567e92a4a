"""python -m experiments.benchmark: the OOD benchmark (experiments/benchmark/__init__.py says what it does)."""
from utils.cli import run_main

from .cli import main

run_main(main)
