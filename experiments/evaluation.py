"""Checkpoint evaluation: turns test.py's parsed settings into a run. It reads the checkpoint,
takes the settings it records, locks the output folder, builds the data module, evaluates the
model (and with --compare_untrained the same architecture at its initialisation) through
models.evaluation.evaluate, and writes every file through experiments/reporting.py.
"""
from __future__ import annotations

import argparse
import os
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from experiments import reporting
from models.detector_registry import CLASSIFIERS, DETECTORS
from models.kinds import VMDLS_KIND
from utils.errors import UserError
from utils.flags import add_common_args, add_data_args, add_model_args, add_trainer_args, add_training_args, new_parser
from utils.names import split_names

if TYPE_CHECKING:  # the run imports it; importing this module (test.py --help) does not pay for it
    import pandas as pd

# The file names the original README gave the autoencoder checkpoints under models/.
ORIGINAL_AE_NAMES = {"mnist": "mnist", "cifar_known": "cifar10", "cifar100_known": "cifar100"}


class NameChoices(tuple):
    """argparse choices that also take several names in one comma-separated value."""

    def __contains__(self, value) -> bool:
        names = split_names(value)
        return bool(names) and all(tuple.__contains__(self, name) for name in names)


def build_evaluation_parser(description: str | None) -> argparse.ArgumentParser:
    """test.py's own flags (the harness parses its evaluation steps with them too); the
    training flags are accepted silently (the original's test commands repeat them) but not
    listed by --help."""
    parser = new_parser(description)
    add_common_args(parser)
    add_data_args(parser, hide_training=True)
    add_model_args(parser)
    add_training_args(parser, hidden=True)
    add_trainer_args(parser, hidden=True)
    group = parser.add_argument_group("evaluation")
    group.add_argument("--checkpoint_path", default=None, type=str,
                       help="the trained model (main.py prints its path); the model and data settings come from it")
    group.add_argument("--ae_features", action="store_true",
                       help="weight the scores by the autoencoder's reconstruction distance")
    group.add_argument("--ae_checkpoint", type=str, default=None,
                       help="autoencoder checkpoint for --ae_features (from mnist_ae.py or train_resnet_ae.py)")
    group.add_argument("--score_stats", choices=("test", "train"), default="test",
                       help="where M and the largest reconstruction distance come from (test: as in the paper)")
    group.add_argument("--thresholding", action="store_true",
                       help="also print the thresholds table around the 95%%-TPR operating point")
    group.add_argument("--log_tsne", action="store_true", help="write a t-SNE of the feature ensemble")
    group.add_argument("--detector", nargs="+", default=None, metavar="NAME", choices=NameChoices(DETECTORS),
                       help="the detectors to score with (also comma-separated), the first one leading the plots and "
                            "scores.csv: vmdls (the paper's score; the default for a VMDLS checkpoint), vmdls_latent, "
                            "and through pytorch-ood msp (the default for a cross-entropy checkpoint), energy, "
                            "maxlogit, odin, mahalanobis, knn, vim")
    group.add_argument("--classifier", choices=CLASSIFIERS, default="gaussians",
                       help="the closed-set prediction: gaussians (the paper's: each detector's own rule, the class "
                            "Gaussians for vmdls) or h_linear (a logistic regression on the backbone feature h, fitted "
                            "on the known training set; opt-in, not the paper's; the scores do not change)")
    group.add_argument("--compare_untrained", action="store_true",
                       help="also evaluate the same architecture at its initialisation (the checkpoint run's "
                            "seed) with the same detector, as a reference")
    return parser


@dataclass
class CheckpointEvaluation:
    """One test.py run: ``table`` holds what summary.csv holds (mean rows included),
    ``results`` what test.main returns (a set's results.json, or for several sets
    {"sets": {name: results}, "summary": path}), ``output_dir`` where the files are."""

    table: pd.DataFrame
    results: dict
    output_dir: str


def pick_device(args: argparse.Namespace):
    import torch

    from utils.cli import resolve_devices

    accelerator, devices = resolve_devices(args)
    if accelerator == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    index = devices[0] if isinstance(devices, list) and devices else 0
    return torch.device("cuda", index)


def progress(loader, description: str):
    from tqdm import tqdm

    return tqdm(loader, desc=description, leave=False, dynamic_ncols=True)


def default_ae_checkpoint(known_dataset: str) -> str:
    """Where the original README told users to put the autoencoders: models/ae_<name>.ckpt."""
    return os.path.join("models", f"ae_{ORIGINAL_AE_NAMES.get(known_dataset, known_dataset)}.ckpt")


def load_reconstruction_autoencoder(args):
    """--ae_features: the known dataset's autoencoder (None without the flag)."""
    from models.autoencoders import load_autoencoder

    if args.ae_features:
        if not args.ae_checkpoint and os.path.isfile(default_ae_checkpoint(args.known_dataset)):
            args.ae_checkpoint = default_ae_checkpoint(args.known_dataset)
        if not args.ae_checkpoint:
            raise UserError(f"--ae_features needs the known dataset's autoencoder: pass --ae_checkpoint FILE or put "
                            f"it at {default_ae_checkpoint(args.known_dataset)} (train one with mnist_ae.py for "
                            "28x28 grey sets or train_resnet_ae.py for CIFAR)")
        return load_autoencoder(args.ae_checkpoint, trust=args.trust_checkpoint)
    return None


def require_image_size(args, given: set[str], checkpoint: dict, height: int) -> None:
    """The network's size follows --input_height: a known set of another size would not fit the weights."""
    from models.checkpoints import checkpoint_hparams

    if height == args.input_height:
        return
    recorded = checkpoint_hparams(checkpoint).get("input_height")
    if "input_height" in given or recorded is None:
        fix = (f"drop --input_height (the checkpoint was trained on {height}x{height} images)" if recorded == height
               else f"pass --input_height {height}")
        raise UserError(f"--input_height {args.input_height} does not match {args.known_dataset}'s "
                        f"{height}x{height} images; {fix}")
    raise UserError(f"the checkpoint was trained on {recorded}x{recorded} images (its --input_height), and "
                    f"{args.known_dataset}'s are {height}x{height}; evaluate it on a known set of its image size")


def detector_names(args, kind: str) -> list[str]:
    from models.detector_registry import default_detectors
    from models.evaluation import check_detectors
    from utils.names import split_names

    return check_detectors(split_names(args.detector) if args.detector else default_detectors(kind), kind)


def set_results(args, kind: str, name: str, detectors: list[str], trained, untrained, seed) -> dict:
    """One unknown set's results.json: the leading detector's metrics and the run's settings,
    every detector's metrics when there are several, the untrained reference's beside them."""
    primary = detectors[0]

    def by_detector(result) -> dict[str, dict]:
        return {detector: result.metrics(detector, name) for detector in detectors}

    trained_metrics = by_detector(trained)
    results = {
        **trained_metrics[primary], "detector": primary,
        "known_dataset": args.known_dataset, "unknown_dataset": name,
        "enc_type": args.enc_type, "checkpoint": os.path.abspath(args.checkpoint_path), "checkpoint_kind": kind,
        "ae_features": bool(args.ae_features and kind == VMDLS_KIND.name), "ae_checkpoint": args.ae_checkpoint,
        "score_stats": args.score_stats, "jitter": trained.jitter, "classifier": args.classifier,
    }
    if len(detectors) > 1:
        results["detectors"] = trained_metrics
    if untrained is not None:
        untrained_metrics = by_detector(untrained)
        results["untrained"] = {**untrained_metrics[primary], "jitter": untrained.jitter, "seed": seed}
        if len(detectors) > 1:
            results["untrained"]["detectors"] = untrained_metrics
    return results


def evaluate_checkpoint(args: argparse.Namespace, given: set[str]) -> CheckpointEvaluation:
    """Evaluate ``args.checkpoint_path`` as test.py does; ``given`` = the flags given explicitly.
    The output folder stays locked (utils.run_folder.claim_output_dir) until the run ends."""
    with ExitStack() as cleanup:
        return _evaluate_checkpoint(args, given, cleanup)


def _evaluate_checkpoint(args: argparse.Namespace, given: set[str], cleanup: ExitStack) -> CheckpointEvaluation:
    import pytorch_lightning as pl

    from datasets import KnownUnknownDataModule
    from models.checkpoints import (
        checkpoint_hparams,
        checkpoint_kind,
        checkpoint_seed,
        load_model,
        read_checkpoint,
        untrained_model,
    )
    from models.evaluation import evaluate
    from models.run_settings import MODEL_SETTINGS, evaluation_settings
    from utils.loggers import build_loggers, log_files, logger_trees
    from utils.names import split_names
    from utils.run_folder import EVALUATION, claim_output_dir, write_json

    checkpoint = read_checkpoint(args.checkpoint_path, trust=args.trust_checkpoint)
    kind = checkpoint_kind(checkpoint)
    args = evaluation_settings(args, given, checkpoint)
    detectors = detector_names(args, kind)
    unknown_names = split_names(args.unknown_dataset)
    output_dir = args.output_dir or reporting.default_output_dir(args.known_dataset, unknown_names)
    # Created, checked for writing and locked before any work, with each set's folder. A previous evaluation there
    # is refused, or with --overwrite the files it recorded are removed, its results.json first: results.json is
    # written last, so it marks a complete run. Files in the way that no evaluation recorded are refused.
    declared_files, set_folders = reporting.declared_outputs(output_dir, unknown_names, detectors, args.log_tsne)
    cleanup.enter_context(claim_output_dir(output_dir, EVALUATION, args.overwrite, files=declared_files,
                                           trees=logger_trees(args.logger), folders=set_folders))
    pl.seed_everything(args.seed, verbose=False)
    device = pick_device(args)

    datamodule = KnownUnknownDataModule.from_args(args)
    datamodule.setup("test")
    require_image_size(args, given, checkpoint, datamodule.image_shape[1])
    overrides = {name: getattr(args, name) for name in MODEL_SETTINGS}
    overrides["in_channels"] = checkpoint_hparams(checkpoint).get("in_channels") or datamodule.image_shape[0]
    model = load_model(checkpoint, overrides)
    autoencoder = load_reconstruction_autoencoder(args) if kind == VMDLS_KIND.name else None
    if args.ae_features and kind != VMDLS_KIND.name:
        print("note: --ae_features weights the paper's score only; a cross-entropy checkpoint has none")

    def evaluated(network, keep_ensemble: bool):
        unknown_loaders = {name: partial(datamodule.unknown_test_dataloader, name) for name in unknown_names}
        return evaluate(network, kind, datamodule.fit_dataloader, datamodule.known_test_dataloader, unknown_loaders,
                        detectors, num_classes=args.class_num, autoencoder=autoencoder,
                        preprocess=datamodule.preprocess, device=device, precision=args.precision,
                        score_stats=args.score_stats, classifier=args.classifier, keep_ensemble=keep_ensemble,
                        progress=progress)

    trained = evaluated(model, keep_ensemble=args.log_tsne)
    untrained, seed = None, None
    if args.compare_untrained:
        seed = checkpoint_seed(checkpoint, default=args.seed)
        untrained = evaluated(untrained_model(checkpoint, overrides, seed), keep_ensemble=False)
    files, all_results, summary = _write_files(args, kind, datamodule, output_dir, unknown_names, detectors, trained,
                                               untrained, seed)

    several = len(unknown_names) > 1
    loggers = build_loggers(output_dir, args.logger, args.offline, project=args.neptune_project,
                            tags=[f"known:{args.known_dataset}", *(f"unknown:{n}" for n in unknown_names), "test"])
    for logger in loggers:
        logger.log_metrics(reporting.logged_metrics(summary, detectors[0], several))
        logger.save()
    for name in unknown_names:  # last: a results.json is never beside another run's (or a partial run's) files
        write_json(files[f"{name}/results" if several else "results"], all_results[name])
    log_files(loggers, files)
    results = {"sets": all_results, "summary": files["summary"]} if several else all_results[unknown_names[0]]
    return CheckpointEvaluation(summary, results, output_dir)


def _write_files(args, kind: str, datamodule, output_dir: str, unknown_names: list[str], detectors: list[str],
                 trained, untrained, seed) -> tuple[dict[str, str], dict[str, dict], pd.DataFrame]:
    """Every file but the results.json files (written last): per set thresholds.csv, the
    figures and the scores files; summary.csv, summary.md and with several sets the ROC of
    each. Returns the files by name, each set's results and the summary."""
    import torch

    from datasets.images import dataset_paths
    from utils import metrics as M
    from utils.plots import plot_roc_sets

    several = len(unknown_names) > 1
    primary = detectors[0]
    known_paths = dataset_paths(datamodule.known_test_set)
    files, summary_rows, all_results, curves = {}, [], {}, {}
    for name in unknown_names:
        folder = reporting.set_folder(output_dir, name, several)
        results = all_results[name] = set_results(args, kind, name, detectors, trained, untrained, seed)
        for result, is_untrained in ((trained, False), (untrained, True)):
            if result is not None:
                summary_rows += [{"method": reporting.method_name(d, is_untrained), "unknown": name,
                                  **result.metrics(d, name)} for d in detectors]
        scored = trained.scores[(primary, name)]
        ensemble = None if trained.known.ensemble is None else \
            torch.cat([trained.known.ensemble, trained.unknown[name].ensemble])
        set_files = reporting.write_pair_files(folder, scored, ensemble, results, args.class_num,
                                               thresholding=args.thresholding, seed=args.seed)
        paths = (known_paths, dataset_paths(datamodule.unknown_test_sets[name]))
        for detector in detectors:
            csv_name = "scores.csv" if detector == primary else f"scores_{detector}.csv"
            set_files[f"scores_{detector}"] = reporting.write_scores(
                os.path.join(folder, csv_name), trained.scores[(detector, name)], (args.known_dataset, name), paths,
                args.class_num)
        set_files["results"] = os.path.join(folder, "results.json")
        files.update({f"{name}/{k}" if several else k: v for k, v in set_files.items()})
        fpr, tpr, _ = M.roc_points(scored.scores.numpy(), scored.labels.numpy() < args.class_num)
        curves[name] = (fpr, tpr, results["auroc"])

    summary = reporting.summary_frame(summary_rows)
    files.update(reporting.write_summary(output_dir, summary))
    if several:
        files["roc_sets"] = plot_roc_sets(curves, os.path.join(output_dir, "roc.png"),
                                          title=f"ROC of {primary}: {args.known_dataset} vs each unknown set")
    return files, all_results, summary
