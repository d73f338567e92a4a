"""Train VMDLS: a backbone plus a variational latent head with triplet, distancing and KL losses.

    python main.py --enc_type mnist-conv --latent_dim 32 --enc_out_dim 500 ... (benchmarks/readme_original_commands.txt)

With --objective ce it trains the baseline instead: the same backbone with a linear head and
cross-entropy, on shuffled batches of B_c x B_s images, with the same data and schedule.

--checkpoint_path resumes a run exactly (its settings cannot change); --warm_start starts a
new run from a trained model's weights with the command line's settings, as the original's
--checkpoint_path did between the stages of its training.

Everything the run writes goes under --output_dir: checkpoints/last.ckpt, metrics.csv,
hparams.yaml and args.json. The last line printed names the last checkpoint.
"""
from __future__ import annotations

import argparse

from experiments.training import build_training_parser, train
from utils.cli import run_main
from utils.flags import explicit_flags


def build_parser() -> argparse.ArgumentParser:
    return build_training_parser(__doc__)


def main(argv: list[str] | None = None) -> str:
    """Parse the command line and train (experiments.training.train); returns the last checkpoint's path."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return train(args, explicit_flags(parser, argv), argv)


if __name__ == "__main__":
    run_main(main)
