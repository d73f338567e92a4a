"""The original README's commands (benchmarks/readme_original_commands.txt), the names of the
authors' released files, and the flag-list helpers the profiles build commands with."""
from __future__ import annotations

import os
import shlex

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ORIGINAL_COMMANDS = os.path.join(ROOT, "benchmarks", "readme_original_commands.txt")

# The settings of the paper's tables, in their order, named by the checkpoint file the
# original README gives each (cnn_mnist.ckpt, cifar10_vgg.ckpt, ...).
PAPER_ORDER = ("cnn_mnist", "cifar10_vgg", "cifar10_resnet", "cifar10_densenet", "cifar10_wresnet",
               "cifar100_densenet")
MNIST_UNKNOWN = ("omniglot", "mnist_noise", "noise")
ODIN_UNKNOWN = ("imagenet-crop", "imagenet-resize", "lsun-crop", "lsun-resize")

# The released autoencoders, by known set: the original README's ae_mnist.ckpt and
# ae_cifar100.ckpt; CIFAR-10 used pl_bolts' pretrained AE, which the README does not
# release (a file of that name in the folder is used all the same).
RELEASED_AUTOENCODERS = {"mnist": "ae_mnist.ckpt", "cifar_known": "ae_cifar10.ckpt",
                         "cifar100_known": "ae_cifar100.ckpt"}


def flag_value(flags: list[str], name: str, default=None):
    return flags[flags.index(name) + 1] if name in flags else default


def drop_flags(flags: list[str], names_with_value=(), names_alone=()) -> list[str]:
    """``flags`` without the flags ``names_with_value`` (and the value after each) and ``names_alone``."""
    out, skip = [], False
    for token in flags:
        if skip:
            skip = False
            continue
        if token in names_with_value:
            skip = True
            continue
        if token in names_alone:
            continue
        out.append(token)
    return out


def set_flag(flags: list[str], name: str, value) -> list[str]:
    """``flags`` with ``name`` given ``value`` once, at the end."""
    flags = drop_flags(flags, names_with_value=(name,))
    return flags + [name, str(value)]


def _read_lines(kind: str, script: str, path: str) -> list[tuple[str, list[str]]]:
    """(checkpoint file, the script's flags) of each ``kind`` line ("train" or "test")."""
    lines = []
    with open(path) as handle:
        for line in handle:
            if not line.startswith(f"{kind} "):
                continue
            _, checkpoint, rest = line.split(" ", 2)
            tokens = shlex.split(rest)
            lines.append((checkpoint, tokens[tokens.index(script) + 1:]))
    return lines


def read_original_training_lines(path: str = ORIGINAL_COMMANDS) -> dict[str, list[str]]:
    """{checkpoint stem: main.py flags} from the original README's training lines."""
    return {checkpoint.removesuffix(".ckpt"): flags for checkpoint, flags in _read_lines("train", "main.py", path)}


def read_original_test_lines(path: str = ORIGINAL_COMMANDS) -> dict[str, list[str]]:
    """{checkpoint stem: test.py flags} from the original README's test lines, keyed by the
    checkpoint each evaluates (its --checkpoint_path)."""
    lines = {}
    for _, flags in _read_lines("test", "test.py", path):
        lines[os.path.basename(flag_value(flags, "--checkpoint_path")).removesuffix(".ckpt")] = flags
    return lines
