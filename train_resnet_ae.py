"""Train the ResNet autoencoder used for the reconstruction weight on CIFAR.

    python train_resnet_ae.py --known_dataset cifar_known --max_epochs 100 --gpus "0,"
    python train_resnet_ae.py --known_dataset cifar100_known --class_num 100 --gpus "0,"

--enc_type defaults to resnet18 (enc_out_dim 512), or resnet50 (2048) for cifar100_known,
as in the original. The last line printed is the checkpoint to pass to test.py as
--ae_checkpoint.
"""
from __future__ import annotations

import argparse

from experiments.autoencoders import announce_checkpoint, build_resnet_ae_parser, resnet_arch, train_autoencoder
from utils.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    return build_resnet_ae_parser(__doc__)


def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    checkpoint = train_autoencoder(args, arch=resnet_arch(args))
    announce_checkpoint(checkpoint)
    return checkpoint


if __name__ == "__main__":
    run_main(main)
