"""Train the ResNet autoencoder used for the reconstruction weight on CIFAR.

    python train_resnet_ae.py --known_dataset cifar_known --max_epochs 100 --gpus "0,"
    python train_resnet_ae.py --known_dataset cifar100_known --class_num 100 --gpus "0,"

--enc_type defaults to resnet18 (enc_out_dim 512), or resnet50 (2048) for cifar100_known,
as in the original. The last line printed is the checkpoint to pass to test.py as
--ae_checkpoint.
"""
from __future__ import annotations

import argparse

from utils.autoencoder_training import announce_checkpoint, build_autoencoder_parser, train_autoencoder
from utils.cli import run_main
from utils.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = build_autoencoder_parser(__doc__, known_dataset="cifar_known", data_transforms="cifar",
                                      latent_dim=256, max_epochs=100)
    parser.add_argument_group("autoencoder").add_argument(
        "--enc_type", default=None, help="resnet18 or resnet50 (default: resnet50 for cifar100_known, else resnet18)")
    return parser


def main(argv: list[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    enc_type = args.enc_type or ("resnet50" if args.known_dataset == "cifar100_known" else "resnet18")
    if enc_type not in ("resnet18", "resnet50"):
        raise UserError(f"--enc_type {enc_type!r} is not supported here; use resnet18 or resnet50")
    checkpoint = train_autoencoder(args, arch=enc_type)
    announce_checkpoint(checkpoint)
    return checkpoint


if __name__ == "__main__":
    run_main(main)
