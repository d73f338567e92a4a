"""Evaluate a checkpoint as an out-of-distribution detector (docs/method.md section 3).

    python test.py --checkpoint_path run/checkpoints/last.ckpt --known_dataset mnist \
        --unknown_dataset omniglot --data_dir ./data --ae_features --ae_checkpoint ae.ckpt

Fits the detectors on the known training set (for the paper's: per-class Gaussians of
the feature ensemble), scores the known test set and each unknown set, and writes under
--output_dir: results.json, scores.csv, thresholds.csv, roc.png, f1_threshold.png,
score_histogram.png (and tsne.png with --log_tsne), plus summary.csv and summary.md.
With several unknown sets each set's files go to OUTPUT_DIR/<set>/ (the set's name, or for a
path its readable part and a short hash: utils.run_folder.folder_name) and roc.png holds a curve
per set. OUTPUT_DIR/.vmdls-run.json records the files the run wrote (--overwrite removes
those and nothing else). Accepts every flag of the original README's test commands
(benchmarks/readme_original_commands.txt).
"""
from __future__ import annotations

import argparse

from experiments.evaluation import build_evaluation_parser, evaluate_checkpoint
from experiments.reporting import console_report
from utils.cli import run_main
from utils.flags import explicit_flags


def build_parser() -> argparse.ArgumentParser:
    return build_evaluation_parser(__doc__)


def main(argv: list[str] | None = None) -> dict:
    """Evaluate, print the table, and return the results (a set's results.json, or for
    several sets {"sets": ..., "summary": path})."""
    parser = build_parser()
    args = parser.parse_args(argv)
    evaluation = evaluate_checkpoint(args, explicit_flags(parser, argv))
    print(console_report(evaluation.results, evaluation.table, evaluation.output_dir))
    return evaluation.results


if __name__ == "__main__":
    run_main(main)
