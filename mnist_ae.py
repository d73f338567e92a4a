"""Train the conv autoencoder used for the reconstruction weight on a grey known dataset.

    python mnist_ae.py --known_dataset mnist --max_epochs 50 --gpus "0,"

The last line printed is the checkpoint to pass to test.py as --ae_checkpoint.
"""
from __future__ import annotations

import argparse

from utils.autoencoder_training import add_autoencoder_args, announce_checkpoint, train_autoencoder
from utils.cli import add_trainer_args, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the small conv autoencoder (the original's MNIST_AE) with MSE on the known "
                    "training classes; images of any square size that is a multiple of 4 work.")
    add_autoencoder_args(parser, known_dataset="mnist", data_transforms="mnist", latent_dim=32)
    add_trainer_args(parser, max_epochs=50)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    announce_checkpoint(train_autoencoder(args, arch="mnist"))


if __name__ == "__main__":
    run_main(main)
