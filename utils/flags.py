"""The command-line flags of the four scripts, defined once.

Each group is a function adding one argparse group; every script picks the groups it
needs, so a flag means the same thing, with the same default, wherever it appears:

| group      | main.py | test.py | mnist_ae.py / train_resnet_ae.py |
|------------|---------|---------|----------------------------------|
| common     | yes     | yes     | yes                              |
| data       | yes     | yes     | the known-set flags              |
| model      | yes     | yes     | --latent_dim, --enc_out_dim      |
| training   | yes     | hidden  | --lr                             |
| trainer    | yes     | hidden  | yes                              |

"hidden" flags are accepted silently (so the original README's test commands, which
repeat the training flags, keep working) but not listed by ``--help``.

Both spellings are accepted where the original README and the original code differ:
``--margin_jump`` / ``--margin_jumps`` and ``--margins_epoch`` / ``--margin_epochs``.
Defaults are the original code's. This module imports nothing heavy, so ``--help`` is fast.
"""
from __future__ import annotations

import argparse
import math
import os

from utils.cli import fast_dev_run_value, int_or_float
from utils.loggers import DEFAULT_LOGGERS, LOGGERS
from utils.names import split_names

# The names of models.backbones.BACKBONES, datasets.transforms.DATA_TRANSFORMS and models.kinds.KINDS,
# repeated here because utils imports neither (tests check they agree).
ENC_TYPES = ("mnist-conv", "vgg", "resnet18", "resnet50", "densenet", "wresnet")
DATA_TRANSFORMS = ("mnist", "cifar", "cifar_test", "blob")
OBJECTIVES = ("vmdls", "ce")
# Lightning 2's precision names (lightning_fabric.connector._PRECISION_INPUT), kept here so
# that --help and parsing need no Lightning import.
PRECISIONS = ("64", "32", "16", "bf16", "64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed",
              "transformer-engine", "transformer-engine-float16")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the scripts' docstrings as written and shows every flag's default."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):  # the help already says what the default means
            return action.help
        return super()._get_help_string(action)


def _adder(group: argparse._ArgumentGroup, hidden: bool):
    """group.add_argument, with the help suppressed when the group is hidden."""
    def add(*names, **kwargs):
        if hidden:
            kwargs["help"] = argparse.SUPPRESS
        return group.add_argument(*names, **kwargs)
    return add


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags every script takes: seed, devices, workers, output folder and loggers."""
    add = parser.add_argument_group("common (every script)").add_argument
    add("--seed", type=at_least(0, int, at_most=MAX_SEED), default=0,
        help=f"seed of every random generator, 0 to {MAX_SEED}")
    add("--output_dir", type=str, default=None,
        help="folder for everything the run writes (default: a new folder under outputs/)")
    add("--accelerator", type=str, default="auto", help="cpu, gpu, mps or auto; cpu overrides --gpus")
    add("--devices", type=str, default=None, help='"auto", a count, or a device list like "0,1"')
    add("--gpus", type=str, default=None, help='Lightning 1.x style: "0," uses GPU 0, "2" uses two GPUs')
    add("--num_workers", type=at_least(0, int), default=min(8, os.cpu_count() or 1), help="data-loading processes")
    add("--logger", nargs="+", choices=LOGGERS, default=None, metavar="NAME",
        help=f"experiment loggers, any of {', '.join(LOGGERS)} (default: {' '.join(DEFAULT_LOGGERS)}, plus "
             "neptune when its client is installed and configured); metrics.csv is written whatever they are")
    add("--offline", action="store_true", help="keep the loggers offline (Neptune's and W&B's offline modes)")
    add("--neptune_project", type=str, default=None, help="Neptune project (or the NEPTUNE_PROJECT variable)")
    add("--overwrite", action="store_true",
        help="remove the files the previous run recorded in --output_dir/.vmdls-run.json, and nothing else, before "
             "writing (without it, a folder that already holds a run is refused)")
    add("--trust_checkpoint", action="store_true",
        help="load checkpoint/weights files that need arbitrary Python objects (runs code from the file: only for "
             "files you trust)")


def add_known_data_args(group_or_parser, *, known_dataset: str = "mnist", data_transforms: str = "mnist",
                        class_num: int | None = 10, class_num_help: str = "known classes: classes 0..class_num-1",
                        batch_size_help: str = "evaluation batch size") -> None:
    """The known (in-distribution) dataset: shared by all four scripts."""
    add = group_or_parser.add_argument
    add("--known_dataset", default=known_dataset, type=str,
        help="known (in-distribution) dataset, e.g. mnist, cifar_known, cifar100_known, digits")
    add("--data_dir", default=".", type=str, help="folder holding every dataset")
    add("--data_transforms", default=data_transforms, choices=DATA_TRANSFORMS,
        help="augmentation while training and the normalisation")
    add("--class_num", type=positive(int), default=class_num, help=class_num_help)
    add("--batch_size", type=positive(int), default=256, help=batch_size_help)


class JoinNames(argparse.Action):
    """One or more names (each may hold commas) kept as one comma-separated string, so a
    single name is stored exactly as before (checkpoints and args.json included)."""

    def __call__(self, parser, namespace, values, option_string=None):
        names = split_names(values)
        if not names:
            parser.error(f"{option_string} needs at least one dataset name")
        setattr(namespace, self.dest, ",".join(names))


def add_data_args(parser: argparse.ArgumentParser, hide_training: bool = False) -> None:
    """main.py and test.py: the known and unknown datasets, and the balanced batches."""
    group = parser.add_argument_group("data")
    add_known_data_args(group)
    group.add_argument("--unknown_dataset", default="omniglot", nargs="+", action=JoinNames, metavar="NAME",
                       help="unknown dataset(s), e.g. omniglot, noise, lsun-resize, cifar_unknown, digits_unknown; "
                            "test.py scores each of several names (also comma-separated), training validates "
                            "on the first")
    group.add_argument("--input_height", type=positive(int), default=28, help="image side: 28 for MNIST, 32 for CIFAR")
    add = _adder(group, hide_training)
    add("--batch_classes", type=positive(int), default=10, help="B_c: classes per training batch")
    add("--sample_count", type=positive(int), default=40, help="B_s: images per class per training batch")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The architecture: what a checkpoint records, and test.py takes from it unless given."""
    add = parser.add_argument_group("model").add_argument
    add("--enc_type", choices=ENC_TYPES, default="resnet18", help="the backbone")
    add("--first_conv", action="store_true", help="ResNet: the 7x7 stride-2 stem")
    add("--maxpool1", action="store_true", help="ResNet: a max-pool after the stem")
    add("--enc_out_dim", type=positive(int), default=512,
        help="size of the backbone's feature h: the backbone's own width (another is refused, naming it)")
    add("--latent_dim", type=positive(int), default=256, help="size of the latent mu and z")


def add_training_args(parser: argparse.ArgumentParser, hidden: bool = False) -> None:
    """The objective, the losses, the optimiser, the margin schedule and fine-tuning (main.py)."""
    add = _adder(parser.add_argument_group("training"), hidden)
    add("--objective", choices=OBJECTIVES, default="vmdls",
        help="vmdls: the paper's losses; ce: a plain cross-entropy classifier on the same backbone, data and "
             "schedule, the baseline for test.py --detector msp/energy/...")
    add("--kl_coeff", type=at_least(0.0, float, at_most=FLOAT32_MAX), default=0.1,
        help="weight of the class KL loss, 0 or more (at most float32's largest number: the loss is float32)")
    add("--lr", type=positive(float), default=1e-4, help="learning rate")
    add("--opt", type=str, default="sgd", choices=["sgd", "adam"], help="optimiser (SGD: momentum 0.9, Nesterov)")
    add("--step_size", type=positive(int), default=100, help="StepLR period in epochs")
    add("--step_gamma", type=decay_factor, default=0.1,
        help="StepLR factor: the learning rate is multiplied by it every --step_size epochs (above 0, at most 1)")
    add("--generation_epoch", type=at_least(0, int), default=20, help="first epoch with the KL loss")
    add("--kl_prior_means", choices=("z", "mu"), default="z",
        help="the KL prior's class means: of the sampled z over the previous epoch (the original) or of mu")
    add("--initial_sampling_std", type=positive(float), default=None,
        help="start the sampling std exp(log_var / 2) near this value (fc_var's bias); default: PyTorch's "
             "initialisation, the original's, which starts it near 1")
    add("--lower_bound", type=at_least(0.0, float, at_most=1.0), default=0.05,
        help="quantile of the class bounds used by the validation diagnostics (0 to 1)")
    add("--margin_max_distance", type=at_least(0.0, float, at_most=FLOAT32_MAX), default=32,
        help="largest distancing margin M_d")
    add("--margin_jump", "--margin_jumps", dest="margin_jump", type=at_least(0.0, float, at_most=FLOAT32_MAX),
        default=1.0,
        help="M_d grows by this much each epoch")
    add("--margins_epoch", "--margin_epochs", dest="margins_epoch", type=at_least(0, int), default=0,
        help="first epoch at which M_d grows")
    add("--weights", default=None, type=str,
        help="backbone weights (a state_dict file) to start from; at least half of the backbone's tensors must load "
             "from it")
    add("--finetune", action="store_true", help="with --weights: train only the heads first")
    add("--finetune_lr", type=positive(float), default=1e-4, help="learning rate of the heads-only phase")
    add("--finetune_epochs", type=at_least(0, int), default=20, help="epochs of the heads-only phase (the paper: 20)")
    # Accepted for compatibility; the original parsed them but the method does not use them.
    for name, default in (("--cov_scaling", 5.0), ("--recon_weight", 0.1), ("--gen_weight", 0.5)):
        parser.add_argument(name, type=float, default=default, help=argparse.SUPPRESS)


def add_trainer_args(parser: argparse.ArgumentParser, max_epochs: int | None = None, hidden: bool = False) -> None:
    """Lightning's loop settings that the original README uses, plus the modern ones."""
    add = _adder(parser.add_argument_group("trainer"), hidden)
    add("--strategy", type=strategy_name, default="auto", help="auto, ddp, ... (Lightning's strategy registry)")
    add("--precision", choices=PRECISIONS, default="32-true", metavar="PRECISION",
        help="Lightning's precision: 32-true, 16-mixed, bf16-mixed, ...")
    add("--max_epochs", type=at_least(0, int, or_minus_one=True), default=max_epochs,
        help="epochs to train (-1: no limit)")
    add("--max_steps", type=at_least(0, int, or_minus_one=True), default=-1,
        help="stop after this many steps (-1: no limit)")
    add("--fast_dev_run", type=dev_run_batches, nargs="?", const=True, default=False,
        help="run N batches of train/val (1 if no N) as a smoke test")
    add("--limit_train_batches", type=batch_limit, default=None, help="batches per epoch (int) or a fraction")
    add("--limit_val_batches", type=batch_limit, default=None, help="validation batches (int) or a fraction")
    add("--num_nodes", type=positive(int), default=1, help="machines for DDP")


class OneLineParser(argparse.ArgumentParser):
    """An argument error is one line on stderr (what is wrong, and where to look) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def new_parser(description: str) -> argparse.ArgumentParser:
    return OneLineParser(description=description, formatter_class=HelpFormatter)


def positive(kind):
    """An argparse type: a number of ``kind`` above zero."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__} number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


# The largest seed: numpy takes seeds up to 2**32 - 1, and each epoch reseeds with the seed
# plus the epoch plus 100003 times the process's rank (models.callbacks.EpochSeed), so half
# the range is kept for those.
MAX_SEED = 2**31 - 1

# The largest float32 number: the losses are computed in float32, where a larger coefficient
# or margin is infinite (the loss would be inf or NaN at its first step).
FLOAT32_MAX = 3.4028234663852886e38


def _number(kind, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a{'n integer' if kind is int else ' number'}, got {text!r}") \
            from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _bound(value) -> str:
    if value == FLOAT32_MAX:
        return f"{value:.4g} (float32's largest number)"
    return str(value) if isinstance(value, int) else f"{value:g}"


def at_least(low, kind, at_most=None, or_minus_one: bool = False):
    """An argparse type: a number of ``kind`` from ``low`` up to ``at_most`` (when given), or
    -1 (meaning "no limit") when ``or_minus_one``; the refusal states the allowed range."""
    def parse(text: str):
        value = _number(kind, text)
        if or_minus_one and value == -1:
            return value
        if value < low or (at_most is not None and value > at_most):
            allowed = f"{low:g} or more" if at_most is None else f"from {low:g} to {_bound(at_most)}"
            raise argparse.ArgumentTypeError(f"must be {'-1 (no limit) or ' if or_minus_one else ''}{allowed}, "
                                             f"got {text}")
        return value
    parse.__name__ = f"{kind.__name__} from {low}"
    return parse


def decay_factor(text: str) -> float:
    """--step_gamma: the learning rate's factor every --step_size epochs, above 0 and at most 1
    (at 0 training would stop learning, below it the learning rate would turn negative, above
    1 it would grow without bound)."""
    value = _number(float, text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1 (a decay factor), got {text}")
    return value


def batch_limit(text: str) -> int | float:
    """--limit_train_batches / --limit_val_batches: Lightning's domain, a number of batches (an
    integer, 0 or more) or a fraction of them (from 0.0 to 1.0)."""
    value = int_or_float(text)
    if isinstance(value, int) and value < 0 or isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number of batches (0 or more) or a fraction from 0.0 to 1.0, "
                                         f"got {text}")
    return value


def dev_run_batches(text: str) -> int | bool:
    """--fast_dev_run N: a number of batches, 0 or more (or true / false)."""
    value = fast_dev_run_value(text)
    if not isinstance(value, bool) and value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of batches, 0 or more, got {text}")
    return value


def strategy_name(text: str) -> str:
    """A strategy of Lightning's registry (or auto / ddp / ...), checked without importing
    Lightning for the default."""
    if text == "auto":
        return text
    from pytorch_lightning.strategies import StrategyRegistry

    known = ("auto", "single_device", "dp", "ddp", "ddp_spawn", "fsdp", "deepspeed",
             *StrategyRegistry.available_strategies())
    if text not in known:
        raise argparse.ArgumentTypeError(f"{text!r} is not a strategy; use auto, ddp, ddp_spawn, fsdp or another "
                                         "name of Lightning's strategy registry")
    return text


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
