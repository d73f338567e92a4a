"""The work of each kind of step: experiments' training, autoencoder-training and evaluation
functions, called with the settings the step's flags parse to through the scripts' own parsers
(experiments.training / evaluation / autoencoders build them for the scripts too). A UserError
of a step reaches the harness's entry point as it is (one line, exit status 2)."""
from __future__ import annotations

from utils.flags import explicit_flags


def train_step(argv: list[str]) -> str:
    """main.py's run: VMDLS or the cross-entropy model; returns the last checkpoint's path."""
    from experiments.training import build_training_parser, train

    parser = build_training_parser("main.py's run, for the benchmark")
    return train(parser.parse_args(argv), explicit_flags(parser, argv), argv)


def train_autoencoder_step(script: str, argv: list[str]) -> str:
    """mnist_ae.py's or train_resnet_ae.py's run; returns the last checkpoint's path."""
    from experiments.autoencoders import build_mnist_ae_parser, build_resnet_ae_parser, resnet_arch, train_autoencoder

    if script == "mnist_ae.py":
        return train_autoencoder(build_mnist_ae_parser().parse_args(argv), arch="mnist")
    args = build_resnet_ae_parser().parse_args(argv)
    return train_autoencoder(args, arch=resnet_arch(args))


def evaluate_step(argv: list[str]):
    """test.py's run; returns its experiments.evaluation.CheckpointEvaluation (.table: summary.csv's rows)."""
    from experiments.evaluation import build_evaluation_parser, evaluate_checkpoint

    parser = build_evaluation_parser("test.py's run, for the benchmark")
    return evaluate_checkpoint(parser.parse_args(argv), explicit_flags(parser, argv))
