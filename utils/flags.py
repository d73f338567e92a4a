"""The original's command-line flags, shared by main.py and test.py.

Both spellings are accepted where README-original and the original code differ:
``--margin_jump`` / ``--margin_jumps`` and ``--margins_epoch`` / ``--margin_epochs``.
Defaults are the original code's.
"""
from __future__ import annotations

import argparse
import os

from utils.cli import add_trainer_args


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--known_dataset", default="mnist", type=str,
                       help="known (in-distribution) dataset, e.g. mnist, cifar_known, cifar100_known, digits")
    group.add_argument("--unknown_dataset", default="omniglot", type=str,
                       help="unknown dataset, e.g. omniglot, noise, lsun-resize, cifar_unknown, digits_unknown")
    group.add_argument("--data_dir", default=".", type=str, help="folder holding every dataset")
    group.add_argument("--data_transforms", default="mnist", type=str, help="mnist, cifar, cifar_test or blob")
    group.add_argument("--input_height", type=int, default=28, help="image size: 28 for MNIST, 32 for CIFAR")
    group.add_argument("--class_num", type=int, default=10, help="known classes: classes 0..class_num-1")
    group.add_argument("--batch_classes", type=int, default=10, help="B_c: classes per training batch")
    group.add_argument("--sample_count", type=int, default=40, help="B_s: images per class per batch")
    group.add_argument("--batch_size", type=int, default=256, help="evaluation batch size")
    group.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1))


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--enc_type", type=str, default="resnet18",
                       help="mnist-conv, vgg, resnet18, resnet50, densenet or wresnet")
    group.add_argument("--first_conv", action="store_true", help="ResNet: 7x7 stride-2 stem")
    group.add_argument("--maxpool1", action="store_true", help="ResNet: max-pool after the stem")
    group.add_argument("--enc_out_dim", type=int, default=512,
                       help="backbone feature size: 500/1024/512/2048/342/640 for mnist-conv/vgg/resnet18/resnet50/densenet/wresnet")
    group.add_argument("--latent_dim", type=int, default=256)
    group.add_argument("--kl_coeff", type=float, default=0.1)
    group.add_argument("--lr", type=float, default=1e-4)
    group.add_argument("--opt", type=str, default="sgd", choices=["sgd", "adam"])
    group.add_argument("--step_size", type=int, default=100, help="StepLR period in epochs")
    group.add_argument("--step_gamma", type=float, default=0.1)
    group.add_argument("--generation_epoch", type=int, default=20, help="first epoch with the KL loss")
    group.add_argument("--lower_bound", type=float, default=0.05,
                       help="quantile of the class bounds used by the validation diagnostics")
    group.add_argument("--margin_max_distance", type=float, default=32, help="largest M_d")
    group.add_argument("--margin_jump", "--margin_jumps", dest="margin_jump", type=float, default=1.0,
                       help="M_d grows by this much each epoch")
    group.add_argument("--margins_epoch", "--margin_epochs", dest="margins_epoch", type=int, default=0,
                       help="first epoch at which M_d grows")
    group.add_argument("--weights", default=None, type=str, help="backbone weights (a state_dict) to start from")
    group.add_argument("--finetune", action="store_true", help="train only the heads for 20 epochs first")
    group.add_argument("--finetune_lr", type=float, default=1e-4)
    group.add_argument("--finetune_epochs", type=int, default=20,
                       help="with --finetune: epochs that train only the heads (the paper: 20)")
    group.add_argument("--checkpoint_path", default=None, type=str)
    group.add_argument("--log_tsne", action="store_true")
    group.add_argument("--ae_features", action="store_true", help="weight scores by autoencoder reconstruction")
    # Accepted for compatibility; the original parsed them but the method does not use them.
    for name, default in (("--cov_scaling", 5.0), ("--recon_weight", 0.1), ("--gen_weight", 0.5)):
        group.add_argument(name, type=float, default=default, help=argparse.SUPPRESS)


def add_run_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--output_dir", type=str, default=None, help="where everything of this run is written")
    group.add_argument("--offline", action="store_true", help="no Neptune upload (offline mode if installed)")
    group.add_argument("--neptune_project", type=str, default=None, help="Neptune project (or NEPTUNE_PROJECT)")


def script_parser(description: str) -> argparse.ArgumentParser:
    """The flags main.py and test.py share: data, model, run and trainer."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_args(parser)
    add_model_args(parser)
    add_run_args(parser)
    add_trainer_args(parser)
    return parser


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The dest names of the flags actually given on the command line."""
    shadow = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        kwargs = {"dest": action.dest, "default": argparse.SUPPRESS}
        if action.nargs == 0:
            shadow.add_argument(*action.option_strings, action="store_const", const=True, **kwargs)
        else:
            shadow.add_argument(*action.option_strings, nargs=action.nargs, **kwargs)
    given, _ = shadow.parse_known_args(argv)
    return set(vars(given))
