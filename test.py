"""Evaluate a VMDLS checkpoint as an out-of-distribution detector (docs/method.md section 3).

    python test.py --checkpoint_path run/checkpoints/last.ckpt --known_dataset mnist \
        --unknown_dataset omniglot --data_dir ./data --ae_features --ae_checkpoint ae.ckpt

Fits per-class Gaussians of the feature ensemble on the known training set, scores the
known test set and the unknown set, and writes under --output_dir: results.json,
thresholds.csv, roc.png, f1_threshold.png, score_histogram.png (and tsne.png with
--log_tsne). Accepts every flag of the original README's test commands
(benchmarks/readme_original_commands.txt).
"""
from __future__ import annotations

import argparse
import os
import time

from utils.cli import run_main
from utils.errors import UserError
from utils.flags import (add_common_args, add_data_args, add_model_args, add_trainer_args, add_training_args,
                         explicit_flags, new_parser)

# Settings that describe the trained model: a checkpoint's own values are used unless given.
MODEL_FLAGS = ("enc_type", "first_conv", "maxpool1", "enc_out_dim", "latent_dim", "class_num", "input_height")

# The file names the original README gave the autoencoder checkpoints under models/.
ORIGINAL_AE_NAMES = {"mnist": "mnist", "cifar_known": "cifar10", "cifar100_known": "cifar100"}

RESULT_ROWS = (
    ("AUROC", "auroc"), ("AUPR-In", "aupr_in"), ("AUPR-Out", "aupr_out"),
    ("FPR at 95% TPR", "fpr_at_95_tpr"), ("TNR at 95% TPR", "tnr_at_95_tpr"),
    ("Detection accuracy", "detection_accuracy"), ("Closed-set accuracy", "closed_set_accuracy"),
    ("Macro-F1 at 95% TPR", "f1_macro_at_95_tpr"), ("Best macro-F1", "f1_macro_best"),
)


def build_parser() -> argparse.ArgumentParser:
    """test.py's own flags; the training flags are accepted silently (the original's test
    commands repeat them) but not listed by --help."""
    parser = new_parser(__doc__)
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
    group.add_argument("--compare_untrained", action="store_true",
                       help="also evaluate the same architecture at its initialisation (the checkpoint run's "
                            "seed) with the same detector, as a reference")
    return parser


def resolve_settings(args: argparse.Namespace, given: set[str], checkpoint: dict) -> argparse.Namespace:
    """Flags given on the command line win; otherwise the checkpoint's values (the model's
    hyperparameters, then the data module's settings); otherwise the defaults."""
    from models.checkpoints import DATA_SETTINGS, checkpoint_data_settings, checkpoint_hparams

    recorded = {**{k: v for k, v in checkpoint_data_settings(checkpoint).items() if k in DATA_SETTINGS},
                **{k: v for k, v in checkpoint_hparams(checkpoint).items() if k in MODEL_FLAGS}}
    for name, value in recorded.items():
        if name not in given:
            setattr(args, name, value)
    return args


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
        return load_autoencoder(args.ae_checkpoint)
    return None


def build_detector(model, autoencoder, datamodule, device):
    from models.detector import FeatureEnsembleDetector

    return FeatureEnsembleDetector(model, autoencoder, preprocess=datamodule.preprocess, device=device)


def write_outputs(args, output_dir: str, evaluation, metrics: dict, class_num: int) -> dict[str, str]:
    from utils import metrics as M
    from utils.loggers import atomic_path
    from utils.plots import plot_f1_curve, plot_roc, plot_score_histograms, plot_tsne

    scores = evaluation.scores.numpy()
    labels = evaluation.labels.numpy()
    predictions = evaluation.predictions.numpy()
    known = labels < class_num
    table = M.threshold_table(scores, known, predictions, labels, class_num)
    files = {"thresholds": os.path.join(output_dir, "thresholds.csv")}
    with atomic_path(files["thresholds"]) as tmp:
        table.to_csv(tmp, index=False)
    fpr, tpr, _ = M.roc_points(scores, known)
    files["roc"] = plot_roc(fpr, tpr, metrics["auroc"], os.path.join(output_dir, "roc.png"))
    files["f1_threshold"] = plot_f1_curve(table["threshold"].to_numpy(), table["f1_macro"].to_numpy(),
                                          os.path.join(output_dir, "f1_threshold.png"),
                                          threshold_95=metrics["threshold_at_95_tpr"])
    files["score_histogram"] = plot_score_histograms(scores[known], scores[~known],
                                                     os.path.join(output_dir, "score_histogram.png"),
                                                     threshold=metrics["threshold_at_95_tpr"])
    if args.log_tsne:
        files["tsne"] = plot_tsne(evaluation.features.numpy(), labels, class_num,
                                  os.path.join(output_dir, "tsne.png"), seed=args.seed,
                                  title="t-SNE of the feature ensemble f(x) (test images)")
    if args.thresholding:
        near = table.iloc[(table["tpr"] - 0.95).abs().argsort()[:5]].sort_values("threshold", ascending=False)
        print("thresholds around 95% TPR:")
        print(near.to_string(index=False))
    return files


def format_results(results: dict) -> str:
    """The printed table; with --compare_untrained, a column for the untrained reference."""
    width = max(len(name) for name, _ in RESULT_ROWS)
    untrained = results.get("untrained")
    lines = [f"{results['known_dataset']} (known, {results['n_known']}) vs "
             f"{results['unknown_dataset']} (unknown, {results['n_unknown']}), {results['enc_type']}"
             f"{', reconstruction-weighted' if results['ae_features'] else ''}"]
    if untrained is None:
        lines.append("-" * (width + 12))
        lines += [f"{name:<{width}}  {100 * results[key]:8.2f} %" for name, key in RESULT_ROWS]
        return "\n".join(lines)
    lines += [f"{'':<{width}}  {'trained':>10}  {'untrained':>10}", "-" * (width + 24)]
    lines += [f"{name:<{width}}  {100 * results[key]:8.2f} %  {100 * untrained[key]:8.2f} %"
              for name, key in RESULT_ROWS]
    return "\n".join(lines)


def evaluate(args, detector, datamodule, keep_features: bool = False):
    """Fit the class Gaussians, then score the known test set and the unknown set: with M
    and r_max of the evaluated images (the paper's set-level step) or of the training set."""
    from models.detector import score_set

    train_mode = args.score_stats == "train"
    detector.fit(progress(datamodule.fit_dataloader(), "fitting class Gaussians"), score_statistics=False)
    if train_mode:
        detector.fit_score_statistics(progress(datamodule.fit_dataloader(), "training-set score statistics"))
    evaluation = detector.evaluate(progress(datamodule.test_dataloader(), "scoring"), keep_features=keep_features)
    return detector.score(evaluation) if train_mode else score_set(evaluation)


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import pytorch_lightning as pl

    from datasets import KnownUnknownDataModule
    from models.checkpoints import checkpoint_hparams, checkpoint_seed, load_vmdls, read_checkpoint, untrained_vmdls
    from utils import metrics as M
    from utils.cli import ensure_output_dir
    from utils.loggers import build_loggers, log_files, write_json

    checkpoint = read_checkpoint(args.checkpoint_path)
    args = resolve_settings(args, explicit_flags(parser, argv), checkpoint)
    output_dir = ensure_output_dir(args.output_dir or os.path.join(
        "outputs", "test", f"{args.known_dataset}-vs-{args.unknown_dataset}-{time.strftime('%Y%m%d-%H%M%S')}"))
    pl.seed_everything(args.seed, verbose=False)
    device = pick_device(args)

    datamodule = KnownUnknownDataModule.from_args(args)
    datamodule.setup("test")
    overrides = {name: getattr(args, name) for name in MODEL_FLAGS}
    overrides["in_channels"] = checkpoint_hparams(checkpoint).get("in_channels") or datamodule.image_shape[0]
    model, missing = load_vmdls(checkpoint, overrides)
    if missing:
        raise UserError(f"the checkpoint lacks {len(missing)} weights of the model (e.g. {missing[0]}); "
                        "pass the checkpoint of a trained VMDLS model")

    autoencoder = load_reconstruction_autoencoder(args)
    detector = build_detector(model, autoencoder, datamodule, device)
    evaluation = evaluate(args, detector, datamodule, keep_features=args.log_tsne)

    class_num = args.class_num

    def metrics_of(evaluation) -> dict:
        metrics = M.ood_metrics(evaluation.scores.numpy(), evaluation.predictions.numpy(),
                                evaluation.labels.numpy(), class_num)
        return {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in metrics.items()}

    metrics = metrics_of(evaluation)
    results = {
        **metrics,
        "known_dataset": args.known_dataset, "unknown_dataset": args.unknown_dataset,
        "enc_type": args.enc_type, "checkpoint": os.path.abspath(args.checkpoint_path),
        "ae_features": bool(args.ae_features), "ae_checkpoint": args.ae_checkpoint,
        "score_stats": args.score_stats, "jitter": detector.gaussians.jitter,
    }
    if args.compare_untrained:
        seed = checkpoint_seed(checkpoint, default=args.seed)
        reference = build_detector(untrained_vmdls(checkpoint, overrides, seed), autoencoder, datamodule, device)
        untrained = evaluate(args, reference, datamodule)
        results["untrained"] = {**metrics_of(untrained), "jitter": reference.gaussians.jitter, "seed": seed}
    files = write_outputs(args, output_dir, evaluation, metrics, class_num)
    files["results"] = os.path.join(output_dir, "results.json")
    write_json(files["results"], results)
    loggers = build_loggers(output_dir, args.logger, args.offline, project=args.neptune_project,
                            tags=[f"known:{args.known_dataset}", f"unknown:{args.unknown_dataset}", "test"])
    logged = {k: v for k, v in results.items() if isinstance(v, float)}
    logged.update({f"untrained_{k}": v for k, v in results.get("untrained", {}).items() if isinstance(v, float)})
    for logger in loggers:
        logger.log_metrics(logged)
        logger.save()
    log_files(loggers, files)
    print(format_results(results))
    print(f"results: {files['results']}")
    return results


if __name__ == "__main__":
    run_main(main)
