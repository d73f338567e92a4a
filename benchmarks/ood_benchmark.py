"""One OOD table: VMDLS against the standard detectors, over seeds and unknown sets.

    python benchmarks/ood_benchmark.py --profile quick --data_dir ../shared/data \
        --output_dir outputs/ood_quick --unknown mnist noise mnist_noise --seeds 3 --accelerator cpu
    python benchmarks/ood_benchmark.py --profile paper --data_dir ./data --output_dir outputs/ood_paper \
        --seeds 3 --accelerator gpu                     # every table setting of the original README
    python benchmarks/ood_benchmark.py --profile paper --dry_run    # the commands, nothing run
    python benchmarks/ood_benchmark.py --profile standard --data_dir ../shared/data \
        --output_dir outputs/ood_standard --seeds 1 --accelerator cpu  # every model trained (~80 min)
    python benchmarks/ood_benchmark.py --profile standard --settings near ...      # Fashion-MNIST 0-5 vs 6-9

For each seed and setting it trains (a) the VMDLS model (main.py), (b) the known set's
autoencoder (mnist_ae.py for 28x28 grey sets, train_resnet_ae.py for CIFAR) and (c) the
cross-entropy model (main.py --objective ce: same backbone, data, flags and schedule), then
runs test.py three times, each call fitting once and scoring every unknown set:

| test.py call                                            | rows (methods)                      |
|---------------------------------------------------------|-------------------------------------|
| VMDLS checkpoint, --detector vmdls vmdls_latent,         | vmdls, vmdls_latent, untrained      |
|   --compare_untrained                                   |                                     |
| VMDLS checkpoint, --detector vmdls, --ae_features        | vmdls_ae                            |
| ce checkpoint, --detector msp energy maxlogit            | msp, energy, maxlogit, mahalanobis, |
|   mahalanobis knn vim                                   | knn, vim                            |

"untrained" is the paper's detector on the network at its initialisation (the seed's).
Unknown sets are registry names (mnist, noise, mnist_noise, omniglot, lsun-crop, ...) or
idx:PATH / folder:PATH; they go to test.py as given, except that with --unknown_images M
(the quick profile) the first M test images of each set are written as an IDX folder
under OUT/data/unknown/ and that folder is scored (8-bit grey, the known set's shape). The
rows are keyed by the set as given (``unknown_set``) and show it by a short name
(``unknown``): registry names as they are, idx:/folder: sets by their folder's name, with as
many parent folders as it takes to tell two sets apart.

Budget flags combine freely: --train_images N / --test_images M write the first N training
and M test images of the known set as an IDX folder under OUT/data/known/ (0: that split
whole; both 0: the known set is read as it is, no folder), and --unknown_images K writes
each unknown set's first K images at the known set's image shape (0: the sets as they
are). IDX subsets are grey: settings with colour images (the CIFAR ones) take 0 for all
three. --max_epochs, --ae_epochs, --limit_train_batches and --lr replace the profile's
values (0: the profile's). A negative value is refused with one line (exit status 2).

Writes OUT/results.json: one row per (setting, method, unknown set) with ``method``,
``unknown``, ``unknown_set``, ``setting``, ``auroc``, ``fpr_at_95_tpr``, ``aupr_in``, ``aupr_out``,
``f1_macro_at_95_tpr``, ``closed_set_accuracy`` (each with ``<metric>_std`` and
``<metric>_per_seed``), ``train_seconds``, ``eval_seconds`` and ``seeds``. Values are means
over the seeds; the ``*_std`` values are SAMPLE standard deviations over the seeds (ddof=1;
0 with one seed).
``train_seconds`` is the training time of the model(s) the method uses (vmdls_ae: VMDLS plus
the autoencoder; untrained: 0); ``eval_seconds`` the wall time of the test.py call that
produced the row. A step resumed after an interruption counts only its last run's time.
Also OUT/results.md: the budget (and the standard profile's deviations from the paper), a
summary table per method (AUROC and FPR at 95% TPR per set and their means, macro-F1 at
95% TPR per set for an open-set setting, closed-set accuracy, training and evaluation
seconds; mean ± sample std over the seeds when there are several), a table per method and
unknown set with every metric (AUROC, FPR95, AUPR-In, AUPR-Out, macro-F1 at 95% TPR,
closed-set accuracy, seconds) and a mean line per method, and the time of each step per
seed and setting; and OUT/auroc.png (AUROC by method and set; with several settings
one bar group per setting, plus OUT/auroc_<setting>.png).

Resumable: every run lives under OUT/seed<k>/<setting>/ (vmdls/, ce/, eval_vmdls/,
eval_vmdls_ae/, eval_ce/; the autoencoder under OUT/seed<k>/ae_<known set>/). A training
with its done.json is not repeated (one interrupted after an epoch resumes from its
last.ckpt through main.py --checkpoint_path; the autoencoder restarts); a test.py call whose
summary.csv holds every requested set is not repeated. OUT/config.json records the budget:
a rerun with another budget into the same OUT stops; another setting of the same profile
and budget joins it (standard: --settings far near after --settings far reruns nothing of
far, and the report holds both).

Profiles
--------
quick (2 CPU cores, about 20 minutes for 3 seeds and four unknown sets): Fashion-MNIST
(all 10 classes) known: the first 1,000 training and the first 500 test images, written as
IDX under OUT/data/known/ and read as idx:PATH; 500 images of each unknown set (default
sets: mnist noise; the registry's mnist reads the MNIST test split alone, which is all it
needs). Backbone mnist-conv, latent 32, and the paper's MNIST command otherwise (Adam,
--kl_coeff 0.1, B_c x B_s = 10 x 16, --margins_epoch 1, --margin_jump 1,
--margin_max_distance 32, --lower_bound 0.05, --step_size 100) EXCEPT --generation_epoch 1
instead of 0 (BENCHMARKS.md, "kl_prior": a KL term started while the prior's class means
are still zeros collapses the latent on this budget) and --lr 1e-3 instead of 1e-4 (in
18 steps, 1e-4 leaves the cross-entropy model at 17 % closed-set accuracy; 1e-3 at 63 %).
Schedule: 3 epochs of 6 batches (18 steps of 160 images, no validation pass); the
autoencoder 2 epochs of 6 batches of 160; test.py with --data_transforms blob (the paper's
test transform). Measured: 677 s (11 min) for 3 seeds and the four sets mnist noise
mnist_noise idx:<digits> on the 2 cores shared with another job (per seed about 2 min of
training and 1.5 min of test.py, the reconstruction-weighted call the dearest: the
autoencoder and a second backbone pass per image). This is far from convergence: the
table compares the methods on equal, small budgets, not the paper's numbers. A fourth unknown set that needs
no download: ``write_digits_set(FOLDER)`` below (all scikit-learn digits as IDX), scored as
idx:FOLDER.

paper (a GPU machine with the data in place): every table setting of the original README
(benchmarks/readme_original_commands.txt, its training lines verbatim except --gpus,
--data_dir and --unknown_dataset): MNIST with mnist-conv against omniglot, mnist_noise and
noise; CIFAR-10 with vgg, resnet18, densenet and wresnet, and CIFAR-100 with densenet,
against imagenet-crop, imagenet-resize, lsun-crop and lsun-resize. --weights files
(checkpoint_100.pth.tar, finetuning_wideresnet.tar) are looked up in --weights_dir
(default: --data_dir); the cross-entropy baseline keeps --weights and drops --finetune.
Autoencoders: mnist_ae.py (50 epochs) for MNIST, train_resnet_ae.py (100 epochs; resnet18
for CIFAR-10, resnet50 for CIFAR-100), one per known set and seed. test.py with the paper's
test transforms (blob, cifar_test) and batch size 2,500. --settings picks some settings;
--unknown replaces every setting's sets (the trainings keep the README's --unknown_dataset,
used for validation only); --max_epochs / --limit_train_batches / --ae_epochs shorten every
training (for a smoke test). --lr overrides the learning rate of every profile's VMDLS and
ce trainings.

standard (2 CPU cores, about 80 minutes a seed for the far setting; issue 17): every model
trained as people train them, on all of Fashion-MNIST. Two settings, picked with
--settings (default: far alone, so that one seed stays within 90 minutes on 2 cores):
- far (setting name fashion_mnist): all 60,000 training and 10,000 test images, all 10
  classes known, the registry's fashion_mnist read as it is (no IDX subset of the known
  set); unknown sets mnist mnist_noise noise digits (digits: the embedded set below), each
  its first 2,000 images (--unknown_images; 0: the sets whole), or the sets of --unknown.
- near (setting name fashion_mnist_near): the open-set split the paper uses for CIFAR:
  Fashion-MNIST classes 0-5 known (fashion_mnist_known, 36,000 training and 6,000 test
  images), classes 6-9 unknown (fashion_mnist_unknown: all 4,000 of its test images, whole
  whatever --unknown_images and --unknown say); the table adds the paper's macro-F1 at
  95% TPR per method.
Each setting and seed: VMDLS with the paper's MNIST command (mnist-conv, latent 32,
enc_out_dim 500, --kl_coeff 0.1, Adam, B_c x B_s = 10 x 16, the margin schedule), its
autoencoder (mnist_ae.py), the cross-entropy model on the same backbone, augmentation,
optimiser, epochs and batches, the untrained reference and every detector. Budget: 3
epochs of 375 balanced batches (one pass over the training set per epoch) for VMDLS and
the cross-entropy model, 3 epochs of 375 batches for the autoencoder, --lr 1e-3. Measured
once (issue 17, far setting, one seed, 2-core Xeon shared with another job): 80 min
(VMDLS 34, autoencoder 21, cross-entropy 13, evaluation 11), the cross-entropy model at
90.12 % closed-set accuracy. Every difference from the paper's MNIST command is listed
in STANDARD_DEVIATIONS / standard_deviations(), which the dry run and results.md print.

Progress: before each step the harness prints ``[step k/N]`` with the elapsed time and an
estimate of what is left: the recorded seconds of the steps timed so far (this run's and
those done before), per kind of step and setting where one of that kind is timed, else
their mean; no estimate before the first step is timed. results.md ends with each seed's
and setting's time per step.

The unknown-set name ``digits`` (any profile) is the embedded set: all 1,797 scikit-learn
digits of every class at 28x28, written by write_digits_set to OUT/data/sets/digits and
scored as idx: there (the registry's digits is a known set only; digits_unknown is its
held-out classes).

tiny (the tests): the embedded digits, classes 0-5 known (60 training and 30 test images),
30 images of digits_unknown, one epoch of two 6 x 4 batches: seconds, meaningless numbers.
"""
from __future__ import annotations

import argparse
import gc
import gzip
import json
import math
import os
import re
import shlex
import struct
import sys
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.errors import UserError  # noqa: E402  (after the path: the script runs from benchmarks/)

ORIGINAL_COMMANDS = os.path.join(ROOT, "benchmarks", "readme_original_commands.txt")

# The rows of the table, in order, and the test.py call each comes from.
METHODS = ("vmdls", "vmdls_ae", "vmdls_latent", "untrained", "msp", "energy", "maxlogit", "mahalanobis", "knn",
           "vim")
VMDLS_DETECTORS = ("vmdls", "vmdls_latent")
CE_DETECTORS = ("msp", "energy", "maxlogit", "mahalanobis", "knn", "vim")
METRICS = ("auroc", "fpr_at_95_tpr", "aupr_in", "aupr_out", "f1_macro_at_95_tpr", "closed_set_accuracy")
REQUIRED_KEYS = ("method", "unknown", "unknown_set", "auroc", "auroc_std", "fpr_at_95_tpr", "aupr_in", "aupr_out",
                 "f1_macro_at_95_tpr", "closed_set_accuracy", "train_seconds", "eval_seconds", "seeds")

MNIST_UNKNOWN = ("omniglot", "mnist_noise", "noise")
ODIN_UNKNOWN = ("imagenet-crop", "imagenet-resize", "lsun-crop", "lsun-resize")
# Training lines of the original README, in the order of the paper's tables.
PAPER_ORDER = ("cnn_mnist", "cifar10_vgg", "cifar10_resnet", "cifar10_densenet", "cifar10_wresnet",
               "cifar100_densenet")


# --------------------------------------------------------------------------------------
# Settings and steps
# --------------------------------------------------------------------------------------
@dataclass
class Setting:
    """One trained configuration: a known set and a backbone with its flags."""

    name: str
    known: str                    # --known_dataset as the runs get it
    class_num: int
    train_flags: list[str]        # main.py flags shared by VMDLS and ce (not data_dir/seed/output/devices)
    ae_script: str                # mnist_ae.py or train_resnet_ae.py
    ae_flags: list[str]
    test_flags: list[str]
    unknown: list[str]            # the sets as given
    ae_key: str = ""              # settings with the same key share the autoencoder
    ce_drop: tuple = ("--finetune",)  # VMDLS-only flags the ce run leaves out
    train_unknown: str = ""       # the training runs' --unknown_dataset (validation only); default: the first
    ae_eval_flags: list = field(default_factory=list)  # extra test.py flags of the reconstruction-weighted call
    unknown_images: int | None = None  # images per unknown set; None: --unknown_images
    open_set: bool = False        # the unknown set is the known set's held-out classes: the table adds macro-F1
    passed_known: str = ""        # filled by build_plan: what main.py/test.py get (idx:... for subsets)
    passed_unknown: list[str] = field(default_factory=list)


@dataclass
class Step:
    kind: str                     # "train", "ae" or "test"
    script: str
    argv: list[str]
    output_dir: str
    label: str
    seed: int
    setting: str = ""
    done_file: str = ""           # train/ae: done.json; test: summary.csv
    unknown: list[str] = field(default_factory=list)  # test: the names passed to test.py
    sources: dict = field(default_factory=dict)        # test: {"vmdls", "ce", "ae"}: the training steps

    def command(self) -> str:
        return f"python {self.script} {shlex.join(self.argv)}"


def _flag_value(flags: list[str], name: str, default=None):
    return flags[flags.index(name) + 1] if name in flags else default


def _drop(flags: list[str], names_with_value=(), names_alone=()) -> list[str]:
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


def _set(flags: list[str], name: str, value) -> list[str]:
    flags = _drop(flags, names_with_value=(name,))
    return flags + [name, str(value)]


MNIST_TRAIN = ["--enc_type", "mnist-conv", "--latent_dim", "32", "--enc_out_dim", "500", "--lower_bound", "0.05",
               "--step_size", "100", "--margin_max_distance", "32", "--data_transforms", "mnist", "--input_height",
               "28", "--kl_coeff", "0.1", "--lr", "0.0001", "--opt", "adam", "--margin_jump", "1.0",
               "--margins_epoch", "1", "--batch_classes", "10", "--sample_count", "16", "--batch_size", "400"]


def _short_schedule(train: list[str], epochs: int, batches: int, ae_epochs: int,
                    ae_batch_size: int) -> tuple[list[str], list[str]]:
    """main.py's flags ``train`` and mnist_ae.py's, for a short run: epochs of ``batches``
    batches each, no validation."""
    limits = ["--limit_train_batches", str(batches), "--limit_val_batches", "0"]
    ae = ["--data_transforms", "mnist", "--latent_dim", "32", "--batch_size", str(ae_batch_size),
          "--max_epochs", str(ae_epochs)]
    return train + ["--max_epochs", str(epochs), *limits], ae + limits


def quick_settings(args) -> list[Setting]:
    # --lr 1e-3, not the paper's 1e-4: in 18 steps 1e-4 leaves the cross-entropy model at
    # 17 % accuracy (BENCHMARKS.md, "OOD benchmark").
    train = _set(_set(MNIST_TRAIN, "--generation_epoch", 1), "--lr", args.lr or 0.001)
    train, ae = _short_schedule(train, args.max_epochs or 3, args.limit_train_batches or 6, args.ae_epochs or 2, 160)
    return [Setting("fashion_mnist", "fashion_mnist", 10, train, "mnist_ae.py", ae,
                    ["--data_transforms", "blob", "--batch_size", "500"], list(args.unknown or ["mnist", "noise"]),
                    ae_key="fashion_mnist")]


def tiny_settings(args) -> list[Setting]:
    train = _set(_set(MNIST_TRAIN, "--batch_classes", 6), "--sample_count", 4)
    train = _set(_set(train, "--generation_epoch", 1), "--lr", args.lr or 0.001)
    train, ae = _short_schedule(train, args.max_epochs or 1, args.limit_train_batches or 2, args.ae_epochs or 1, 24)
    return [Setting("digits", "digits", 6, train, "mnist_ae.py", ae, ["--data_transforms", "blob", "--batch_size", "256"],
                    list(args.unknown or ["digits_unknown"]), ae_key="digits")]


# The demo's setting (make demo): digits 0-5 known, mnist-conv, 8 epochs of 6 x 16 batches
# with the sampling std starting at 0.14 (docs/method.md section 2).
DEMO_TRAIN = ["--enc_type", "mnist-conv", "--enc_out_dim", "500", "--latent_dim", "32", "--data_transforms", "mnist",
              "--input_height", "28", "--batch_classes", "6", "--sample_count", "16", "--batch_size", "512",
              "--opt", "adam", "--lr", "0.001", "--kl_coeff", "0.1", "--generation_epoch", "1", "--margins_epoch", "1",
              "--margin_jump", "1.0", "--margin_max_distance", "32", "--lower_bound", "0.05",
              "--initial_sampling_std", "0.14", "--max_epochs", "8"]


def demo_settings(args) -> list[Setting]:
    train = _set(DEMO_TRAIN, "--max_epochs", args.max_epochs) if args.max_epochs else DEMO_TRAIN
    if args.lr:
        train = _set(train, "--lr", args.lr)
    ae = ["--max_epochs", str(args.ae_epochs or 8)]
    if args.limit_train_batches:
        train = _set(train, "--limit_train_batches", args.limit_train_batches)
        ae += ["--limit_train_batches", str(args.limit_train_batches)]
    return [Setting("digits", "digits", 6, train, "mnist_ae.py", ae,
                    ["--data_transforms", "blob", "--batch_size", "512"], list(args.unknown or ["digits_unknown"]),
                    ae_key="digits", ae_eval_flags=["--log_tsne"])]


def read_original_training_lines(path: str = ORIGINAL_COMMANDS) -> dict[str, list[str]]:
    """{checkpoint stem: main.py flags} from the original README's training lines."""
    lines = {}
    with open(path) as handle:
        for line in handle:
            if not line.startswith("train "):
                continue
            _, checkpoint, rest = line.split(" ", 2)
            tokens = shlex.split(rest)
            start = tokens.index("main.py") + 1
            lines[checkpoint.removesuffix(".ckpt")] = tokens[start:]
    return lines


def paper_settings(args) -> list[Setting]:
    lines = read_original_training_lines()
    weights_dir = args.weights_dir or args.data_dir
    settings = []
    for name in PAPER_ORDER:
        flags = _drop(lines[name], names_with_value=("--gpus", "--data_dir"))
        train_unknown = _flag_value(flags, "--unknown_dataset", "")
        flags = _drop(flags, names_with_value=("--unknown_dataset",))
        known = _flag_value(flags, "--known_dataset")
        class_num = int(_flag_value(flags, "--class_num", 10))
        flags = _drop(flags, names_with_value=("--known_dataset", "--class_num"))
        weights = _flag_value(flags, "--weights")
        if weights and not os.path.isabs(weights):
            flags = _set(flags, "--weights", os.path.join(weights_dir, weights))
        if args.max_epochs:
            flags = _set(flags, "--max_epochs", args.max_epochs)
        if args.lr:
            flags = _set(flags, "--lr", args.lr)
        if args.limit_train_batches:
            flags = _set(flags, "--limit_train_batches", args.limit_train_batches)
        mnist = known == "mnist"
        if mnist:
            ae_script, ae = "mnist_ae.py", ["--data_transforms", "mnist", "--max_epochs", str(args.ae_epochs or 50)]
        else:
            ae_script = "train_resnet_ae.py"
            ae = ["--data_transforms", "cifar", "--max_epochs", str(args.ae_epochs or 100)]
        if args.limit_train_batches:
            ae += ["--limit_train_batches", str(args.limit_train_batches)]
        test = ["--data_transforms", "blob" if mnist else "cifar_test", "--batch_size", "2500"]
        unknown = list(args.unknown or (MNIST_UNKNOWN if mnist else ODIN_UNKNOWN))
        settings.append(Setting(name, known, class_num, flags, ae_script, ae, test, unknown, ae_key=known,
                                train_unknown=train_unknown))
    if args.settings:
        missing = [s for s in args.settings if s not in PAPER_ORDER]
        if missing:
            raise SystemExit(f"unknown setting {missing[0]!r}: choose from {', '.join(PAPER_ORDER)}")
        settings = [s for s in settings if s.name in args.settings]
    return settings


# The standard profile (issue 17): its settings, the default unknown sets of the far one,
# and the budget at which it was measured.
STANDARD_SETTINGS = {"far": "fashion_mnist", "near": "fashion_mnist_near"}
STANDARD_UNKNOWN = ("mnist", "mnist_noise", "noise", "digits")
STANDARD_BUDGET = {"max_epochs": 3, "limit_train_batches": 375, "ae_epochs": 3, "lr": 0.001}
NEAR_CLASSES = 6  # Fashion-MNIST classes 0-5 known, 6-9 unknown


def _standard_names(args) -> list[str]:
    chosen = list(args.settings or ["far"])
    wrong = [s for s in chosen if s not in STANDARD_SETTINGS and s not in STANDARD_SETTINGS.values()]
    if wrong:
        raise SystemExit(f"unknown setting {wrong[0]!r} for --profile standard: choose from far, near")
    names = {STANDARD_SETTINGS.get(s, s) for s in chosen}
    return [name for name in STANDARD_SETTINGS.values() if name in names]


def standard_settings(args) -> list[Setting]:
    """far: all of Fashion-MNIST known against four sets; near: classes 0-5 known, 6-9
    unknown. The paper's MNIST command with the deviations of standard_deviations()."""
    budget = {k: getattr(args, k) or v for k, v in STANDARD_BUDGET.items()}
    train = _set(_set(MNIST_TRAIN, "--generation_epoch", 1), "--lr", budget["lr"])
    test = ["--data_transforms", "blob", "--batch_size", "500"]
    settings = []
    for name in _standard_names(args):
        if name == STANDARD_SETTINGS["far"]:
            flags, ae = _short_schedule(train, budget["max_epochs"], budget["limit_train_batches"],
                                        budget["ae_epochs"], 160)
            settings.append(Setting(name, "fashion_mnist", 10, flags, "mnist_ae.py", ae, list(test),
                                    list(args.unknown or STANDARD_UNKNOWN), ae_key="fashion_mnist"))
        else:  # B_c = the 6 known classes: 375 batches of 6 x 16 are the 36,000 training images
            flags, ae = _short_schedule(_set(train, "--batch_classes", NEAR_CLASSES), budget["max_epochs"],
                                        budget["limit_train_batches"], budget["ae_epochs"], NEAR_CLASSES * 16)
            settings.append(Setting(name, "fashion_mnist_known", NEAR_CLASSES, flags, "mnist_ae.py", ae, list(test),
                                    ["fashion_mnist_unknown"], ae_key="fashion_mnist_known", unknown_images=0,
                                    open_set=True))
    return settings


def standard_deviations(args, settings: list[Setting]) -> list[str]:
    """Every difference between the standard profile's runs and the paper's MNIST command
    (benchmarks/readme_original_commands.txt, cnn_mnist; mnist_ae.py's defaults for the
    autoencoder; the paper's MNIST test command), with the values this run uses."""
    budget = {k: getattr(args, k) or v for k, v in STANDARD_BUDGET.items()}
    names = [s.name for s in settings]
    far = next((s for s in settings if s.name == STANDARD_SETTINGS["far"]), None)
    if args.train_images or args.test_images:
        known = (f"known set Fashion-MNIST (paper: MNIST): {_how_many(args.train_images)} training and "
                 f"{_how_many(args.test_images)} test images, written as IDX (--train_images / --test_images)")
    else:
        known = "known set Fashion-MNIST (paper: MNIST), read as it is: all 60,000 training and 10,000 test images"
    lines = [
        known,
        "--generation_epoch 1 (paper: 0): a KL term started while the prior's class means are still zeros "
        "collapses the latent (BENCHMARKS.md, the KL-prior study)",
        f"--lr {budget['lr']:g} (paper: 0.0001), for VMDLS and the cross-entropy model" +
        (": the rate at which this budget was measured (cross-entropy 90.12 % closed-set accuracy, issue 17)"
         if budget["lr"] == STANDARD_BUDGET["lr"] else " (--lr)"),
        f"--max_epochs {budget['max_epochs']} with --limit_train_batches {budget['limit_train_batches']} "
        "(paper: 500 epochs; 375 balanced batches are one pass over the training set), so --step_size 100 "
        "never decays the learning rate",
        "--limit_val_batches 0: no validation pass (the paper's run validated on its --unknown_dataset each "
        "epoch; the trainings here get the first unknown set as --unknown_dataset, unused)",
        f"autoencoder (mnist_ae.py): {budget['ae_epochs']} epoch(s) of {budget['limit_train_batches']} batches of "
        "160 images (the original README's mnist_ae.py command: 50 epochs, with the script's batches of 256; its "
        "--lr 1e-4 kept)",
        "test.py: --data_transforms blob as the paper's test command, --batch_size 500 (paper: 2500; memory "
        "only)",
    ]
    if far is not None:
        sets = ", ".join(far.unknown)
        lines.append(f"far setting: unknown sets {sets} (paper: omniglot, mnist_noise, noise); digits is all "
                     "1,797 scikit-learn digits at 28x28" if "digits" in far.unknown else
                     f"far setting: unknown sets {sets} (paper: omniglot, mnist_noise, noise)")
        lines.append(f"far setting: each unknown set its first {args.unknown_images} test images "
                     "(--unknown_images; mnist, mnist_noise and noise have 10,000; digits, 1,797, is scored whole)"
                     if args.unknown_images else
                     "far setting: each unknown set whole (--unknown_images 0)")
    if STANDARD_SETTINGS["near"] in names:
        lines.append(f"near setting: classes 0-{NEAR_CLASSES - 1} known (--class_num {NEAR_CLASSES}, "
                     f"--batch_classes {NEAR_CLASSES}: 6 x 16 balanced batches; the autoencoder's batches of 96), "
                     f"classes {NEAR_CLASSES}-9 unknown, all 4,000 of their test images (the paper's MNIST table "
                     "has no open-set split; its CIFAR one does)")
    return lines


PROFILES = {"quick": quick_settings, "paper": paper_settings, "tiny": tiny_settings, "demo": demo_settings,
            "standard": standard_settings}
# (training images, test images, images per unknown set) written as IDX; 0: the sets as they are.
SUBSETS = {"quick": (1000, 500, 500), "tiny": (60, 30, 30), "paper": (0, 0, 0), "demo": (0, 0, 0),
           "standard": (0, 0, 2000)}
DEFAULT_WORKERS = {"quick": 0, "tiny": 0, "paper": 4, "demo": 0, "standard": 0}
# The embedded unknown set of any profile: all scikit-learn digits (write_digits_set).
EMBEDDED_DIGITS = "digits"
DIGITS_IMAGES = 1797  # scored whole when --unknown_images is at least this


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace(os.sep, "_")).strip("._") or "set"


def display_name(name: str) -> str:
    """A set's name in the table: registry names as they are, idx:/folder: by their folder."""
    for prefix in ("idx:", "folder:"):
        if name.startswith(prefix):
            return os.path.basename(os.path.normpath(name[len(prefix):])) or name
    return name


def display_names(names: list[str]) -> dict[str, str]:
    """A short name for each set that no other of ``names`` gets: registry names as they
    are; idx:/folder: sets by their folder's name, extended by parent folders while two sets
    read alike (same1/digits and same2/digits), and with the short hash of the whole name
    (utils.cli.folder_name) where even the whole path does not tell them apart."""
    import hashlib
    from collections import Counter

    def parts(name: str) -> list[str] | None:
        for prefix in ("idx:", "folder:"):
            if name.startswith(prefix):
                return [p for p in os.path.normpath(name[len(prefix):]).split(os.sep) if p] or [name]
        return None

    names = list(dict.fromkeys(names))
    split = {name: parts(name) for name in names}
    shown = {name: display_name(name) if split[name] is None else split[name][-1] for name in names}
    depth = 1
    while True:
        alike = {text for text, count in Counter(shown.values()).items() if count > 1}
        longer = [name for name in names if shown[name] in alike and split[name] and depth < len(split[name])]
        if not alike or not longer:
            break
        depth += 1
        for name in longer:
            shown[name] = "/".join(split[name][-depth:])
    alike = {text for text, count in Counter(shown.values()).items() if count > 1}
    for name in names:
        if shown[name] in alike and split[name] is not None:
            shown[name] += "~" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return shown


@dataclass
class Plan:
    """Everything a run does: where the data goes, and each seed's steps."""

    steps: list[Step]
    names: dict[str, str]          # name passed to test.py -> the name shown in the rows (unique)
    settings: list[Setting]
    data: dict                     # what to materialise: {"known": (...), "unknown": [...]}
    specs: dict[str, str] = field(default_factory=dict)  # name passed to test.py -> the set as given


def setting_unknown_images(args, setting: Setting) -> int:
    """Images per unknown set of ``setting`` (0: the sets whole)."""
    return args.unknown_images if setting.unknown_images is None else setting.unknown_images


def build_plan(args, settings: list[Setting]) -> Plan:
    from utils.cli import folder_name

    out = os.path.abspath(args.output_dir)
    train_n, test_n = args.train_images, args.test_images
    data = {"known": [], "unknown": [], "embedded": []}
    names: dict[str, str] = {}
    specs: dict[str, str] = {}
    shown = display_names([name for setting in settings for name in setting.unknown])
    steps: list[Step] = []
    devices = ["--accelerator", args.accelerator, "--num_workers", str(args.num_workers)]
    logging = ["--logger", "csv", "--offline"]
    for setting in settings:
        known = setting.known
        if train_n or test_n:  # one of the two may be 0: that split whole
            folder = os.path.join(out, "data", "known",
                                  f"{slug(setting.known)}-train{train_n or 'all'}-test{test_n or 'all'}")
            data["known"].append((setting.known, setting.class_num, folder, train_n, test_n))
            known = f"idx:{folder}"
        passed = []
        count = setting_unknown_images(args, setting)
        for name in setting.unknown:
            source, subset = name, count
            if name == EMBEDDED_DIGITS:  # all scikit-learn digits, written once under data/sets/
                embedded = os.path.join(out, "data", "sets", "digits")
                if embedded not in data["embedded"]:
                    data["embedded"].append(embedded)
                source, subset = f"idx:{embedded}", count if count < DIGITS_IMAGES else 0
            if subset:
                folder = os.path.join(out, "data", "unknown", f"{folder_name(name)}-{count}")  # one per set
                data["unknown"].append((source, setting.known, setting.class_num, folder, count))
                target = f"idx:{folder}"
            else:
                target = source
            names[target], specs[target] = shown[name], name
            passed.append(target)
        setting.passed_known, setting.passed_unknown = known, passed
    for seed in range(args.seeds):
        seed_dir = os.path.join(out, f"seed{seed}")
        common = ["--data_dir", args.data_dir, "--seed", str(seed), *devices, *logging]
        made_ae: dict[str, Step] = {}
        for setting in settings:
            known, passed = setting.passed_known, setting.passed_unknown
            base = os.path.join(seed_dir, setting.name)
            data_flags = ["--known_dataset", known, "--class_num", str(setting.class_num)]
            train_unknown = setting.train_unknown if setting.train_unknown in setting.unknown and \
                not setting_unknown_images(args, setting) else passed[0]
            train = data_flags + ["--unknown_dataset", train_unknown, *setting.train_flags, *common]
            vmdls_dir, ce_dir = os.path.join(base, "vmdls"), os.path.join(base, "ce")
            ae_dir = os.path.join(seed_dir, f"ae_{slug(setting.ae_key or setting.name)}")
            sources = {"vmdls": Step("train", "main.py", train + ["--objective", "vmdls", "--output_dir", vmdls_dir],
                                     vmdls_dir, "train VMDLS", seed, setting.name,
                                     os.path.join(vmdls_dir, "done.json"))}
            steps.append(sources["vmdls"])
            if ae_dir not in made_ae:
                made_ae[ae_dir] = Step("ae", setting.ae_script, data_flags + setting.ae_flags + common +
                                       ["--output_dir", ae_dir], ae_dir, "train autoencoder", seed, setting.name,
                                       os.path.join(ae_dir, "done.json"))
                steps.append(made_ae[ae_dir])
            sources["ae"] = made_ae[ae_dir]
            ce_train = _drop(train, names_alone=setting.ce_drop)
            sources["ce"] = Step("train", "main.py", ce_train + ["--objective", "ce", "--output_dir", ce_dir],
                                 ce_dir, "train cross-entropy", seed, setting.name, os.path.join(ce_dir, "done.json"))
            steps.append(sources["ce"])
            test = data_flags + ["--unknown_dataset", *passed, *setting.test_flags, *common]
            vmdls_ckpt = os.path.join(vmdls_dir, "checkpoints", "last.ckpt")
            for label, folder, extra in (
                    ("evaluate VMDLS (+ untrained)", "eval_vmdls",
                     ["--checkpoint_path", vmdls_ckpt, "--detector", *VMDLS_DETECTORS, "--compare_untrained"]),
                    ("evaluate VMDLS, reconstruction-weighted", "eval_vmdls_ae",
                     ["--checkpoint_path", vmdls_ckpt, "--detector", "vmdls", "--ae_features", "--ae_checkpoint",
                      os.path.join(ae_dir, "last.ckpt"), *setting.ae_eval_flags]),
                    ("evaluate cross-entropy baselines", "eval_ce",
                     ["--checkpoint_path", os.path.join(ce_dir, "checkpoints", "last.ckpt"), "--detector",
                      *CE_DETECTORS])):
                eval_dir = os.path.join(base, folder)
                steps.append(Step("test", "test.py", test + extra + ["--output_dir", eval_dir], eval_dir, label, seed,
                                  setting.name, os.path.join(eval_dir, "summary.csv"), list(passed), sources))
    return Plan(steps, names, settings, data, specs)


# --------------------------------------------------------------------------------------
# Data subsets (IDX)
# --------------------------------------------------------------------------------------
def write_idx(path: str, array) -> str:
    """An IDX file (gzipped) of a uint8 array: images N x H x W or labels N."""
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "i" * array.ndim, *array.shape)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with gzip.open(tmp, "wb") as handle:
        handle.write(header + array.tobytes())
    os.replace(tmp, path)
    return path


def write_idx_split(folder: str, split: str, images, labels) -> None:
    """images: N x 1 x H x W (or N x H x W) floats in [0, 1] or uint8; split 'train' or 't10k'."""
    import numpy as np
    import torch

    images = torch.as_tensor(images)
    if images.dim() == 4:
        if images.shape[1] != 1:
            raise UserError(f"IDX subsets hold grey images and {folder} would get {images.shape[1]} channels: "
                            "give --train_images, --test_images and --unknown_images 0 with this setting")
        images = images[:, 0]
    if images.dtype != torch.uint8:
        images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
    write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"), np.asarray(labels, dtype=np.uint8))
    write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"), images.numpy())


def write_digits_set(folder: str) -> str:
    """All 1,797 scikit-learn digits (8x8, every class) at 28x28 as an IDX test split: an
    unknown set that needs no download (use it as idx:FOLDER)."""
    import torch

    from datasets.sources import load_digits_split

    (train_x, train_y), (test_x, test_y) = load_digits_split(True), load_digits_split(False)
    write_idx_split(folder, "t10k", torch.cat([train_x, test_x]), torch.cat([train_y, test_y]).tolist())
    return folder


def _first(dataset, count: int):
    """The first ``count`` items (0: all) as (N x C x H x W tensor, labels)."""
    import torch

    count = len(dataset) if count == 0 else min(count, len(dataset))
    items = [dataset[i] for i in range(count)]
    return torch.stack([x for x, _ in items]), [int(y) for _, y in items]


def _how_many(count: int) -> str:
    return "all" if count == 0 else f"the first {count}"


def _grey(shape, name: str, flags: str) -> None:
    if shape[0] != 1:
        raise UserError(f"{flags} write grey IDX subsets and {name} has {shape[0]}-channel images: "
                        f"give {flags} 0 with this setting")


def _written(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "t10k-images-idx3-ubyte.gz"))


def materialise(plan: Plan, data_dir: str, log) -> None:
    """Write the IDX subsets the plan reads (once: existing folders are kept). Each unknown
    subset is written at the image shape of its known set, whether that set is read as it
    is (--train_images 0 --test_images 0) or from its own IDX subset. Every check comes
    before the first write."""
    from datasets.registry import get_known_dataset, get_unknown_dataset

    folders = {name: folder for name, _, folder, _, _ in plan.data["known"]}
    shapes: dict[str, tuple] = {}

    def shape_of(known: str, class_num: int) -> tuple:
        if known not in shapes:
            folder = folders.get(known)
            dataset = get_known_dataset(f"idx:{folder}", data_dir, class_num, False) if folder and _written(folder) \
                else get_known_dataset(known, data_dir, class_num, True)
            shapes[known] = tuple(dataset.image_shape)
        return shapes[known]

    for name, class_num, _, _, _ in plan.data["known"]:
        _grey(shape_of(name, class_num), name, "--train_images/--test_images")
    for _, known, class_num, _, _ in plan.data["unknown"]:  # also when written: perhaps for another setting
        _grey(shape_of(known, class_num), known, "--unknown_images")
    for folder in plan.data.get("embedded", []):
        if not _written(folder):
            write_digits_set(folder)
            log(f"wrote all 1,797 scikit-learn digits to {folder}")
    for name, class_num, folder, train_n, test_n in plan.data["known"]:
        if _written(folder):
            continue
        for split, train, count in (("train", True, train_n), ("t10k", False, test_n)):
            images, labels = _first(get_known_dataset(name, data_dir, class_num, train), count)
            write_idx_split(folder, split, images, labels)
        log(f"wrote {_how_many(train_n)} training and {_how_many(test_n)} test images of {name} to {folder}")
    for name, known, class_num, folder, count in plan.data["unknown"]:
        if _written(folder):
            continue
        dataset = get_unknown_dataset(name, data_dir, class_num, shapes[known], train=False, seed=0)
        images, _ = _first(dataset, count)
        write_idx_split(folder, "t10k", images, [0] * len(images))
        log(f"wrote the first {len(images)} images of {name} to {folder}")


# --------------------------------------------------------------------------------------
# Running the steps
# --------------------------------------------------------------------------------------
def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Clock:
    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, message: str) -> None:
        print(f"[ood_benchmark {_clock(self.elapsed())}] {message}", flush=True)


def estimate_left(steps: list[Step], timed: dict[tuple, list[float]]) -> float | None:
    """Seconds ``steps`` should take, from the seconds of the steps timed so far: a step
    takes the mean of those of its setting and kind (label), else of its kind, else of all
    of them. None while nothing is timed."""
    every = [v for values in timed.values() for v in values]
    if not every:
        return None
    total = 0.0
    for step in steps:
        same = timed.get((step.setting, step.label)) or \
            [v for (_, label), values in timed.items() if label == step.label for v in values] or every
        total += sum(same) / len(same)
    return total


def progress_line(index: int, total: int, elapsed: float, left: float | None, timed_count: int, what: str) -> str:
    if left is None:
        estimate = "estimate: none yet (no step timed)"
    else:
        amount = f"~{left / 60:.0f} min" if left >= 90 else f"~{left:.0f} s"
        estimate = f"estimate: {amount} left (from {timed_count} step{'s' if timed_count != 1 else ''} timed)"
    return f"[step {index}/{total}] elapsed {_clock(elapsed)}, {estimate} · {what}"


def read_json(path: str):
    with open(path) as handle:
        return json.load(handle)


def write_json(path: str, value) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(value, handle, indent=2, allow_nan=False)
        handle.write("\n")
    os.replace(tmp, path)


def summary_unknowns(path: str) -> set[str]:
    import pandas as pd

    return set(pd.read_csv(path)["unknown"].astype(str))


def step_done(step: Step) -> bool:
    if not os.path.isfile(step.done_file):
        return False
    if step.kind == "test":
        return set(step.unknown) <= summary_unknowns(step.done_file)
    return True


def _started(folder: str) -> bool:
    return os.path.isdir(folder) and any(not name.startswith(".") for name in os.listdir(folder))


def run_training(step: Step) -> str:
    """main.py or an autoencoder script in this process; returns the checkpoint path. An
    interrupted main.py run resumes from its last checkpoint; anything else a step left
    unfinished is replaced (--overwrite)."""
    argv = list(step.argv)
    if step.script == "main.py":
        import main as train_script

        last = os.path.join(step.output_dir, "checkpoints", "last.ckpt")
        if os.path.isfile(last):  # interrupted after an epoch: resume
            argv += ["--checkpoint_path", last]
        elif _started(step.output_dir):
            argv += ["--overwrite"]
        return train_script.main(argv)
    from utils.autoencoder_training import train_autoencoder

    if _started(step.output_dir):
        argv += ["--overwrite"]
    if step.script == "mnist_ae.py":
        import mnist_ae

        return train_autoencoder(mnist_ae.build_parser().parse_args(argv), arch="mnist")
    import train_resnet_ae

    args = train_resnet_ae.build_parser().parse_args(argv)
    enc_type = args.enc_type or ("resnet50" if args.known_dataset == "cifar100_known" else "resnet18")
    return train_autoencoder(args, arch=enc_type)


def run_step(step: Step) -> float:
    """Run one step (unless done); returns its recorded seconds."""
    timing = os.path.join(step.output_dir, "timing.json")
    start = time.perf_counter()
    if step.kind == "test":
        import test as test_script

        test_script.main(step.argv + (["--overwrite"] if _started(step.output_dir) else []))
        seconds = time.perf_counter() - start
        write_json(timing, {"seconds": seconds})
    else:
        checkpoint = run_training(step)
        seconds = time.perf_counter() - start
        if step.kind == "ae" and os.path.abspath(checkpoint) != os.path.join(step.output_dir, "last.ckpt"):
            import shutil

            shutil.copyfile(checkpoint, os.path.join(step.output_dir, "last.ckpt"))
        write_json(step.done_file, {"seconds": seconds, "checkpoint": checkpoint})
    gc.collect()
    return seconds


def recorded_seconds(step: Step) -> float:
    path = step.done_file if step.kind != "test" else os.path.join(step.output_dir, "timing.json")
    try:
        return float(read_json(path)["seconds"])
    except (OSError, KeyError, ValueError):
        return float("nan")


# --------------------------------------------------------------------------------------
# Rows: per seed, then aggregated
# --------------------------------------------------------------------------------------
def per_seed_rows(plan: Plan) -> list[dict]:
    """Every (seed, setting, method, unknown set) row of the finished test.py calls."""
    import pandas as pd

    rows = []
    for step in plan.steps:
        if step.kind != "test" or not os.path.isfile(step.done_file):
            continue
        seconds = {name: recorded_seconds(source) for name, source in step.sources.items()}
        folder = os.path.basename(step.output_dir)
        frame = pd.read_csv(step.done_file)
        frame = frame[frame["unknown"] != "mean"]
        for _, record in frame.iterrows():
            method = record["method"]
            if folder == "eval_vmdls_ae":
                if method != "vmdls":
                    continue
                method, train_s = "vmdls_ae", seconds["vmdls"] + seconds["ae"]
            elif folder == "eval_vmdls":
                if method not in ("vmdls", "vmdls_latent", "untrained"):
                    continue
                train_s = 0.0 if method == "untrained" else seconds["vmdls"]
            else:
                train_s = seconds["ce"]
            unknown = str(record["unknown"])
            if unknown not in step.unknown:
                continue
            rows.append({"seed": step.seed, "setting": step.setting, "method": method,
                         "unknown": plan.names.get(unknown, display_name(unknown)),
                         "unknown_set": plan.specs.get(unknown, unknown),
                         **{k: float(record[k]) for k in METRICS},
                         "train_seconds": train_s, "eval_seconds": recorded_seconds(step)})
    order = {m: i for i, m in enumerate(METHODS)}
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    rows.sort(key=lambda r: (settings.index(r["setting"]), order.get(r["method"], len(order)), r["seed"]))
    return rows


def _clean(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def aggregate(rows: list[dict]) -> list[dict]:
    """Per-seed rows -> one row per (setting, method, unknown): means over the seeds, the
    SAMPLE std (ddof=1; 0.0 for a single seed) of each metric (``<metric>_std``) and its
    per-seed values (``<metric>_per_seed``).

    Each input row has ``method``, ``unknown``, ``seed``, the METRICS, ``train_seconds``,
    ``eval_seconds`` and optionally ``setting`` and ``unknown_set`` (the set as given, which
    keys the groups: two sets shown alike are never taken for seeds of one); the output
    keeps the rows' first order."""
    import numpy as np

    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row.get("setting", ""), row["method"], row.get("unknown_set", row["unknown"])),
                          []).append(row)
    out = []
    for (setting, method, unknown_set), members in groups.items():
        members = sorted(members, key=lambda r: r["seed"])
        result = {"setting": setting, "method": method, "unknown": members[0]["unknown"], "unknown_set": unknown_set}
        for key in (*METRICS, "train_seconds", "eval_seconds"):
            values = np.array([float(m[key]) for m in members], dtype=float)
            result[key] = float(values.mean())
            if key in METRICS:
                result[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        result["seeds"] = [int(m["seed"]) for m in members]
        for key in METRICS:
            result[f"{key}_per_seed"] = [float(m[key]) for m in members]
        out.append({k: _clean(v) for k, v in result.items()})
    return out


# --------------------------------------------------------------------------------------
# Report: Markdown table and bar chart
# --------------------------------------------------------------------------------------
def _pct(mean, std=None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _mean_over_sets(members: list[dict], key: str = "auroc") -> tuple[float, float]:
    """Mean of ``key`` over the sets, and its sample std over the seeds (from the per-seed
    values; nan when the sets have different seeds)."""
    import numpy as np

    per_seed = [m.get(f"{key}_per_seed") or [m[key]] for m in members]
    if len({len(p) for p in per_seed}) == 1:
        values = np.mean(np.array(per_seed, dtype=float), axis=0)
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(np.mean([m[key] for m in members])), float("nan")


def _several_seeds(rows: list[dict]) -> bool:
    return any(len(r.get("seeds", [])) > 1 for r in rows)


def _cell(row: dict, key: str, with_std: bool) -> str:
    return _pct(row[key], row.get(f"{key}_std") if with_std else None)


def _mean_cell(members: list[dict], key: str, with_std: bool) -> str:
    if not members:
        return "-"
    mean, std = _mean_over_sets(members, key)
    return _pct(mean, std if with_std and not math.isnan(std) else None)


def _seconds(members: list[dict], key: str) -> str:
    values = [r[key] for r in members if r.get(key) is not None and not math.isnan(r[key])]
    return f"{sum(values) / len(values):.0f}" if values else "-"


def _tables(rows: list[dict]) -> dict[tuple, list[str]]:
    """{unknown sets: the settings with those sets}, in the rows' order."""
    tables: dict[tuple, list[str]] = {}
    for setting in dict.fromkeys(r.get("setting", "") for r in rows):
        sets = tuple(dict.fromkeys(r["unknown"] for r in rows if r.get("setting", "") == setting))
        tables.setdefault(sets, []).append(setting)
    return tables


def markdown_table(rows: list[dict], open_set=()) -> str:
    """Rows = methods (setting / method with several settings), columns = AUROC per set and
    their mean, FPR at 95% TPR per set and their mean (with macro-F1 at 95% TPR per set for
    the settings in ``open_set``), closed-set accuracy, training and evaluation seconds;
    metrics in %, mean ± sample std over the seeds when there are several. Settings with
    different unknown sets get one table each."""
    several = len({r.get("setting", "") for r in rows}) > 1
    with_std = _several_seeds(rows)
    parts = []
    for sets, members in _tables(rows).items():
        f1 = any(m in open_set for m in members)
        head = (["setting"] if several else []) + ["method"] + [f"AUROC {s}" for s in sets] + ["AUROC mean"] + \
               [f"FPR95 {s}" for s in sets] + ["FPR95 mean"] + \
               ([f"F1@95TPR {s}" for s in sets] + (["F1@95TPR mean"] if len(sets) > 1 else []) if f1 else []) + \
               ["closed-set acc.", "train s", "eval s"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for setting in members:
            methods = list(dict.fromkeys(r["method"] for r in rows if r.get("setting", "") == setting))
            for method in methods:
                cells = {r["unknown"]: r for r in rows if r.get("setting", "") == setting and r["method"] == method}
                present = [cells[s] for s in sets if s in cells]
                line = ([setting] if several else []) + [method]
                for key, mean in (("auroc", True), ("fpr_at_95_tpr", True), ("f1_macro_at_95_tpr", len(sets) > 1)):
                    if key == "f1_macro_at_95_tpr" and not f1:
                        continue
                    line += [_cell(cells[s], key, with_std) if s in cells else "-" for s in sets]
                    line += [_mean_cell(present, key, with_std)] if mean else []
                line += [_mean_cell(present, "closed_set_accuracy", with_std), _seconds(present, "train_seconds"),
                         _seconds(present, "eval_seconds")]
                lines.append("| " + " | ".join(line) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


DETAIL_COLUMNS = (("AUROC", "auroc"), ("FPR95", "fpr_at_95_tpr"), ("AUPR-In", "aupr_in"), ("AUPR-Out", "aupr_out"),
                  ("macro-F1@95TPR", "f1_macro_at_95_tpr"), ("closed-set acc.", "closed_set_accuracy"))


def detail_table(rows: list[dict]) -> str:
    """One line per (setting, method, unknown set) with every metric, and per method a
    ``mean`` line over its sets (its std over the seeds of the per-seed means)."""
    several = len({r.get("setting", "") for r in rows}) > 1
    with_std = _several_seeds(rows)
    head = (["setting"] if several else []) + ["method", "unknown"] + [name for name, _ in DETAIL_COLUMNS] + \
        ["train s", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting in dict.fromkeys(r.get("setting", "") for r in rows):
        mine = [r for r in rows if r.get("setting", "") == setting]
        for method in dict.fromkeys(r["method"] for r in mine):
            members = [r for r in mine if r["method"] == method]
            for row in members:
                line = ([setting] if several else []) + [method, row["unknown"]]
                line += [_cell(row, key, with_std) for _, key in DETAIL_COLUMNS]
                line += [_seconds([row], "train_seconds"), _seconds([row], "eval_seconds")]
                lines.append("| " + " | ".join(line) + " |")
            if len(members) > 1:
                line = ([setting] if several else []) + [method, "mean"]
                line += [_mean_cell(members, key, with_std) for _, key in DETAIL_COLUMNS]
                line += [_seconds(members, "train_seconds"), _seconds(members, "eval_seconds")]
                lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines) + "\n"


def timing_table(plan: "Plan") -> str:
    """Each seed's and setting's recorded seconds per step, with its share of their total."""
    labels = list(dict.fromkeys(step.label for step in plan.steps))
    head = ["seed", "setting", *labels, "total"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple, dict[str, float]] = {}
    for step in plan.steps:
        seconds = recorded_seconds(step) if step_done(step) else float("nan")
        groups.setdefault((step.seed, step.setting), {})[step.label] = seconds
    for (seed, setting), times in groups.items():
        known = [v for v in times.values() if not math.isnan(v)]
        total = sum(known)
        cells = []
        for label in labels:
            value = times.get(label)
            cells.append("-" if value is None or math.isnan(value) else
                         f"{value:.0f} ({100 * value / total:.0f} %)" if total > 0 else f"{value:.0f}")
        lines.append("| " + " | ".join([str(seed), setting, *cells, f"{total:.0f} ({_clock(total)})"]) + " |")
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict], output_dir: str, header: str = "", open_set=(),
                 footer: str = "") -> dict[str, str]:
    """results.md (the summary table, the table per method and unknown set, then
    ``footer``) and auroc.png (plus auroc_<setting>.png with several settings). Settings
    in ``open_set`` get macro-F1 at 95% TPR columns in the summary table too."""
    from utils.plots import plot_grouped_bars

    os.makedirs(output_dir, exist_ok=True)
    seeds = sorted({s for r in rows for s in r.get("seeds", [])})
    files = {"md": os.path.join(output_dir, "results.md"), "png": os.path.join(output_dir, "auroc.png")}
    spread = f"mean ± sample std over seeds {seeds}" if len(seeds) > 1 else f"seed {seeds[0] if seeds else '-'}"
    text = (header.rstrip() + "\n\n" if header else "") + \
        f"Metrics in %, {spread}; closed-set accuracy of the model the method scores with; " \
        "train s: seconds of training the method's model(s) (untrained: 0); eval s: the test.py call that " \
        "scored it (every set at once). Mean columns: over the unknown sets.\n\n" + markdown_table(rows, open_set) + \
        "\n## Per method and unknown set\n\n" + detail_table(rows) + \
        ("\n" + footer.rstrip() + "\n" if footer else "")
    with open(files["md"], "w") as handle:
        handle.write(text)
    settings = list(dict.fromkeys(r.get("setting", "") for r in rows))

    def chart(members: list[dict], path: str, title: str) -> str:
        values: dict[str, dict[str, float]] = {}
        errors: dict[str, dict[str, float]] = {}
        for r in members:
            values.setdefault(r["unknown"], {})[r["method"]] = 100 * r["auroc"]
            errors.setdefault(r["unknown"], {})[r["method"]] = 100 * (r.get("auroc_std") or 0.0)
        methods = list(dict.fromkeys(r["method"] for r in members))
        if len(values) == 1:
            return plot_grouped_bars(values, path, ylabel="AUROC (%)", title=title, errors=errors)
        values["mean"], errors["mean"] = {}, {}
        for method in methods:
            mean, std = _mean_over_sets([r for r in members if r["method"] == method])
            values["mean"][method], errors["mean"][method] = 100 * mean, 0.0 if math.isnan(std) else 100 * std
        low = min(v for group in values.values() for v in group.values() if not math.isnan(v))
        return plot_grouped_bars(values, path, ylabel="AUROC (%)", title=title, errors=errors,
                                 ylim=(max(0.0, math.floor(low / 5) * 5 - 5), 100.5))

    if len(settings) == 1:
        chart(rows, files["png"], f"AUROC by method and unknown set ({settings[0]})")
    else:
        for setting in settings:
            chart([r for r in rows if r.get("setting", "") == setting],
                  os.path.join(output_dir, f"auroc_{slug(setting)}.png"), f"AUROC ({setting})")
        values = {}
        for setting in settings:
            members = [r for r in rows if r.get("setting", "") == setting]
            for method in dict.fromkeys(r["method"] for r in members):
                values.setdefault(setting, {})[method] = 100 * _mean_over_sets(
                    [r for r in members if r["method"] == method])[0]
        plot_grouped_bars(values, files["png"], ylabel="mean AUROC over the unknown sets (%)",
                          title="AUROC by setting and method")
    return files


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=tuple(PROFILES), default="quick",
                        help="demo, tiny, quick: smoke checks; standard: every model trained (issue 17); "
                             "paper: the original README's settings")
    parser.add_argument("--data_dir", default="./data", help="torchvision-style data folder")
    parser.add_argument("--output_dir", default=None, help="default: outputs/ood_<profile>")
    parser.add_argument("--unknown", nargs="+", default=None, metavar="NAME",
                        help="unknown sets: registry names or idx:PATH / folder:PATH (default: the profile's)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    parser.add_argument("--accelerator", choices=("cpu", "gpu", "auto"), default="auto")
    parser.add_argument("--num_workers", type=int, default=None, help="default: 0 (quick, tiny), 4 (paper)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands (and which are done); run none")
    budget = parser.add_argument_group("budget overrides (default: the profile's)")
    budget.add_argument("--train_images", type=int, default=None,
                        help="the first N known training images written as IDX (0: all of them; with "
                             "--test_images 0 too, the known set is read as it is)")
    budget.add_argument("--test_images", type=int, default=None,
                        help="the first N known test images written as IDX (0: all of them)")
    budget.add_argument("--unknown_images", type=int, default=None,
                        help="images of each unknown set written as IDX (0: the sets as they are)")
    budget.add_argument("--max_epochs", type=int, default=None, help="VMDLS and ce epochs (0: the profile's)")
    budget.add_argument("--ae_epochs", type=int, default=None, help="autoencoder epochs (0: the profile's)")
    budget.add_argument("--limit_train_batches", type=int, default=None,
                        help="batches per epoch, every training (0: the profile's)")
    budget.add_argument("--lr", type=float, default=None,
                        help="VMDLS and ce learning rate (default or 0: the profile's; the paper's command's, "
                             "1e-4 for MNIST)")
    paper = parser.add_argument_group("paper and standard profiles")
    paper.add_argument("--settings", nargs="+", default=None, metavar="NAME",
                       help=f"paper: some of {', '.join(PAPER_ORDER)} (default: all); standard: far and/or near "
                            "(default: far)")
    paper.add_argument("--weights_dir", default=None, help="where --weights files are (default: --data_dir)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    for name in ("train_images", "test_images", "unknown_images", "max_epochs", "ae_epochs", "limit_train_batches",
                 "num_workers"):
        value = getattr(args, name)
        if value is not None and value < 0:
            parser.error(f"--{name} must be 0 or more, not {value}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr >= 0):
        parser.error(f"--lr must be a positive number (0: the profile's), not {args.lr}")
    args.output_dir = args.output_dir or os.path.join("outputs", f"ood_{args.profile}")
    if args.num_workers is None:
        args.num_workers = DEFAULT_WORKERS[args.profile]
    defaults = SUBSETS[args.profile]
    for name, default in zip(("train_images", "test_images", "unknown_images"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def budget_of(args, settings: list[Setting]) -> dict:
    return {"profile": args.profile, "train_images": args.train_images, "test_images": args.test_images,
            "unknown_images": args.unknown_images,
            "settings": {s.name: {"known": s.known, "train": s.train_flags, "ae": [s.ae_script, *s.ae_flags],
                                  "test": s.test_flags} for s in settings}}


def budget_header(args, settings: list[Setting]) -> str:
    lines = [f"# OOD benchmark, profile {args.profile}", ""]
    if args.train_images or args.test_images:
        lines.append(f"Known set: {_how_many(args.train_images)} training and {_how_many(args.test_images)} test "
                     "images (IDX under data/).")
    if args.unknown_images:
        lines.append(f"Each unknown set: its first {args.unknown_images} test images (IDX under data/).")
    for s in settings:
        if s.unknown_images is not None and s.unknown_images != args.unknown_images:
            lines.append(f"{s.name}: its unknown sets " +
                         (f"{s.unknown_images} images each." if s.unknown_images else "whole."))
    for s in settings:
        lines.append(f"- {s.name}: known {s.known} ({s.class_num} classes); main.py {' '.join(s.train_flags)}; "
                     f"{s.ae_script} {' '.join(s.ae_flags)}; test.py {' '.join(s.test_flags)}")
    deviations = profile_deviations(args, settings)
    if deviations:
        lines += ["", "Deviations from the paper's MNIST command:"] + [f"- {d}" for d in deviations]
    return "\n".join(lines)


def profile_deviations(args, settings: list[Setting]) -> list[str]:
    """The profile's listed differences from the paper's command (the standard profile's)."""
    return standard_deviations(args, settings) if args.profile == "standard" else []


def main(argv=None) -> list[dict]:
    args = parse(argv)
    settings = PROFILES[args.profile](args)
    plan = build_plan(args, settings)
    log = Clock()
    if args.dry_run:
        print(f"# profile {args.profile}: settings {', '.join(s.name for s in settings)}; seeds 0..{args.seeds - 1}; "
              f"{len(plan.steps)} steps")
        deviations = profile_deviations(args, settings)
        if deviations:
            print("# deviations from the paper's MNIST command:")
            for line in deviations:
                print(f"#   - {line}")
        for folder in plan.data["embedded"]:
            print(f"# write all 1,797 scikit-learn digits to idx:{folder}")
        for name, class_num, folder, train_n, test_n in plan.data["known"]:
            print(f"# write {_how_many(train_n)} training / {_how_many(test_n)} test images of {name} "
                  f"to idx:{folder}")
        for name, _, _, folder, count in plan.data["unknown"]:
            print(f"# write the first {count} images of {name} to idx:{folder}")
        for index, step in enumerate(plan.steps, 1):
            status = "done" if step_done(step) else "todo"
            print(f"# step {index}/{len(plan.steps)} · seed {step.seed} · {step.setting} · {step.label} [{status}]")
            print(step.command())
        return []

    import matplotlib

    from utils.cli import check_writable

    matplotlib.use("Agg")
    out = os.path.abspath(args.output_dir)
    check_writable(out)  # created, or one sentence naming the folder
    config_path, budget = os.path.join(out, "config.json"), budget_of(args, settings)
    budget = json.loads(json.dumps(budget))
    if os.path.isfile(config_path):
        recorded = read_json(config_path)
        same = {k: v for k, v in recorded.items() if k != "settings"} == \
            {k: v for k, v in budget.items() if k != "settings"}
        shared = set(recorded.get("settings", {})) & set(budget["settings"])
        if not same or any(recorded["settings"][name] != budget["settings"][name] for name in shared):
            raise SystemExit(f"{out} holds runs of another budget (its config.json differs); give another "
                             "--output_dir or the same flags")
        # Another setting at the same budget (standard: near after far) joins the folder.
        budget["settings"] = {**recorded.get("settings", {}), **budget["settings"]}
    write_json(config_path, budget)
    log(f"profile {args.profile}: {len(settings)} setting(s) ({', '.join(s.name for s in settings)}), "
        f"seeds 0..{args.seeds - 1}, {len(plan.steps)} steps, output {out}")
    for line in profile_deviations(args, settings):
        log(f"deviation: {line}")
    materialise(plan, args.data_dir, log)
    total = len(plan.steps)
    timed: dict[tuple, list[float]] = {}  # (setting, label) -> seconds, of the steps done before and now
    for step in plan.steps:
        if step_done(step) and not math.isnan(recorded_seconds(step)):
            timed.setdefault((step.setting, step.label), []).append(recorded_seconds(step))
    for index, step in enumerate(plan.steps, 1):
        what = f"seed {step.seed} · {step.setting} · {step.label}"
        if step_done(step):
            print(f"[step {index}/{total}] {what}: done before, kept", flush=True)
            continue
        left = estimate_left([s for s in plan.steps[index - 1:] if s is step or not step_done(s)], timed)
        print(progress_line(index, total, log.elapsed(), left, sum(map(len, timed.values())), what), flush=True)
        seconds = run_step(step)
        timed.setdefault((step.setting, step.label), []).append(seconds)
        log(f"step {index}/{total} · {what}: finished in {seconds:.0f} s")
        rows = aggregate(per_seed_rows(plan))
        write_json(os.path.join(out, "results.json"), rows)  # partial results as the run goes
    rows = aggregate(per_seed_rows(plan))
    write_json(os.path.join(out, "results.json"), rows)
    files = write_report(rows, out, budget_header(args, settings), open_set=[s.name for s in settings if s.open_set],
                         footer="## Time per step (seconds, share of the seed's setting)\n\n" + timing_table(plan))
    with open(files["md"]) as handle:
        print(handle.read())
    log(f"results: {os.path.join(out, 'results.json')}, {files['md']}, {files['png']}")
    return rows


if __name__ == "__main__":
    from utils.cli import run_main

    run_main(main)
