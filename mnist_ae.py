"""Train the conv autoencoder used for the reconstruction weight on a grey known dataset.

    python mnist_ae.py --known_dataset mnist --max_epochs 50 --gpus "0,"

The original's MNIST_AE: a small conv autoencoder trained with MSE on the known training
classes; images of any square size that is a multiple of 4 work.
The last line printed is the checkpoint to pass to test.py as --ae_checkpoint.
"""
from __future__ import annotations

import argparse

from experiments.autoencoders import announce_checkpoint, build_mnist_ae_parser, train_autoencoder
from utils.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    return build_mnist_ae_parser(__doc__)


def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    checkpoint = train_autoencoder(args, arch="mnist")
    announce_checkpoint(checkpoint)
    return checkpoint


if __name__ == "__main__":
    run_main(main)
