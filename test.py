"""Evaluate a checkpoint as an out-of-distribution detector (docs/method.md section 3).

    python test.py --checkpoint_path run/checkpoints/last.ckpt --known_dataset mnist \
        --unknown_dataset omniglot --data_dir ./data --ae_features --ae_checkpoint ae.ckpt

Fits the detectors on the known training set (for the paper's: per-class Gaussians of
the feature ensemble), scores the known test set and each unknown set, and writes under
--output_dir: results.json, scores.csv, thresholds.csv, roc.png, f1_threshold.png,
score_histogram.png (and tsne.png with --log_tsne), plus summary.csv and summary.md.
With several unknown sets each set's files go to OUTPUT_DIR/<set>/ (the set's name, or for a
path its readable part and a short hash: utils.cli.folder_name) and roc.png holds a curve
per set. OUTPUT_DIR/.vmdls-run.json records the files the run wrote (--overwrite removes
those and nothing else). Accepts every flag of the original README's test commands
(benchmarks/readme_original_commands.txt).
"""
from __future__ import annotations

import argparse
import os
import time
from contextlib import ExitStack

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
    group.add_argument("--detector", nargs="+", default=None, metavar="NAME",
                       help="the detectors to score with, the first one leading the plots and scores.csv: vmdls "
                            "(the paper's score; the default for a VMDLS checkpoint), vmdls_latent, and through "
                            "pytorch-ood msp (the default for a cross-entropy checkpoint), energy, maxlogit, odin, "
                            "mahalanobis, knn, vim")
    group.add_argument("--classifier", choices=("gaussians", "h_linear"), default="gaussians",
                       help="the closed-set prediction: gaussians (the paper's: each detector's own rule, the class "
                            "Gaussians for vmdls) or h_linear (a logistic regression on the backbone feature h, fitted "
                            "on the known training set; opt-in, not the paper's; the scores do not change)")
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
        return load_autoencoder(args.ae_checkpoint, trust=args.trust_checkpoint)
    return None


def set_folder(output_dir: str, name: str, several: bool) -> str:
    """Where one unknown set's files go: the output folder itself for a single set (as
    before), a sub-folder named after the set when there are several: the name itself when
    it is a plain short name (digits_unknown), else its readable part and a short hash of
    the whole name (utils.cli.folder_name), so that no two sets share a folder and no name
    is too long for one."""
    from utils.cli import folder_name

    return os.path.join(output_dir, folder_name(name)) if several else output_dir


# What test.py writes for one unknown set (in its folder, set_folder), besides scores_<detector>.csv.
SET_FILES = ("results.json", "scores.csv", "thresholds.csv", "roc.png", "f1_threshold.png", "score_histogram.png",
             "tsne.png")


def declared_outputs(output_dir: str, unknown_names: list[str], detectors: list[str],
                     log_tsne: bool = False) -> tuple[list[str], list[str]]:
    """The files this evaluation would write besides utils.cli.EVALUATION's, and its set
    folders, relative to ``output_dir`` (claim_output_dir checks them before any work)."""
    several = len(unknown_names) > 1
    folders = [os.path.relpath(set_folder(output_dir, name, several), output_dir).replace(os.sep, "/")
               for name in unknown_names] if several else []
    if len(set(folders)) < len(folders):  # only were two names' hashes equal
        twins = [name for name in unknown_names if folders.count(folders[unknown_names.index(name)]) > 1]
        raise UserError(f"the unknown sets {twins[0]!r} and {twins[1]!r} would write into one folder; score them in "
                        "two runs")
    names = (*(name for name in SET_FILES if log_tsne or name != "tsne.png"),
             *(f"scores_{detector}.csv" for detector in detectors[1:]))
    files = [f"{folder}/{name}" for folder in folders for name in names] if several else list(names)
    return files, folders


def default_output_dir(known: str, unknown_names: list[str]) -> str:
    """outputs/test/<known>-vs-<sets>-<time>, the names made fit for a folder name."""
    from utils.cli import folder_name

    name = f"{folder_name(known)}-vs-{'+'.join(folder_name(n) for n in unknown_names)}"
    if len(name) > 120:
        name = folder_name(name)
    return os.path.join("outputs", "test", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def write_outputs(args, output_dir: str, scored, features, metrics: dict, class_num: int) -> dict[str, str]:
    """Everything one known/unknown pair gives: thresholds.csv and the figures."""
    from utils import metrics as M
    from utils.loggers import atomic_path
    from utils.plots import plot_f1_curve, plot_roc, plot_score_histograms, plot_tsne

    os.makedirs(output_dir, exist_ok=True)
    scores = scored.scores.numpy()
    labels = scored.labels.numpy()
    predictions = scored.predictions.numpy()
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
    if args.log_tsne and features is not None:
        files["tsne"] = plot_tsne(features.numpy(), labels, class_num,
                                  os.path.join(output_dir, "tsne.png"), seed=args.seed,
                                  title="t-SNE of the feature ensemble f(x) (test images)")
    if args.thresholding:
        near = table.iloc[(table["tpr"] - 0.95).abs().argsort()[:5]].sort_values("threshold", ascending=False)
        print("thresholds around 95% TPR:")
        print(near.to_string(index=False))
    return files


SCORE_COLUMNS = ("set", "index", "label", "prediction", "score", "max_log_likelihood", "reconstruction", "path")


def write_scores(path: str, scored, set_names: tuple[str, str], paths: tuple, class_num: int) -> str:
    """scores.csv: one row per image of the pair, known test images first; ``index`` is the
    image's position in its own set, ``path`` its file (empty for sets held as tensors)."""
    import numpy as np
    import pandas as pd

    from utils.loggers import atomic_path

    n_known = int((scored.labels < class_num).sum())
    sizes = (n_known, len(scored.labels) - n_known)
    frame = pd.DataFrame({
        "set": np.repeat(set_names, sizes),
        "index": np.concatenate([np.arange(n) for n in sizes]),
        "label": scored.labels.numpy(),
        "prediction": scored.predictions.numpy(),
        "score": scored.scores.numpy(),
        "max_log_likelihood": np.nan if scored.max_log_likelihood is None else scored.max_log_likelihood.numpy(),
        "reconstruction": np.nan if scored.reconstruction is None else scored.reconstruction.numpy(),
        "path": np.concatenate([np.asarray(p if p is not None else [""] * n, dtype=object)
                                for p, n in zip(paths, sizes)]),
    }, columns=list(SCORE_COLUMNS))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def format_results(results: dict) -> str:
    """The printed table; with --compare_untrained, a column for the untrained reference."""
    width = max(len(name) for name, _ in RESULT_ROWS)
    untrained = results.get("untrained")
    lines = [f"{results['known_dataset']} (known, {results['n_known']}) vs "
             f"{results['unknown_dataset']} (unknown, {results['n_unknown']}), {results['enc_type']}, "
             f"detector {results['detector']}{', reconstruction-weighted' if results['ae_features'] else ''}"]
    if untrained is None:
        lines.append("-" * (width + 12))
        lines += [f"{name:<{width}}  {100 * results[key]:8.2f} %" for name, key in RESULT_ROWS]
        return "\n".join(lines)
    lines += [f"{'':<{width}}  {'trained':>10}  {'untrained':>10}", "-" * (width + 24)]
    lines += [f"{name:<{width}}  {100 * results[key]:8.2f} %  {100 * untrained[key]:8.2f} %"
              for name, key in RESULT_ROWS]
    return "\n".join(lines)


SUMMARY_COLUMNS = ("method", "unknown", "auroc", "fpr_at_95_tpr", "aupr_in", "aupr_out", "auroc_ood_positive",
                   "fpr_at_95_tpr_ood_positive", "aupr_ood_positive", "cauroc", "closed_set_accuracy",
                   "f1_macro_at_95_tpr", "n_known", "n_unknown")


def summary_frame(rows: list[dict]):
    """One row per (method, unknown set) and, per method, a mean row over the sets."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    means = frame.groupby("method", sort=False).mean(numeric_only=True).reset_index()
    means["unknown"] = "mean"
    return pd.concat([frame, means[list(SUMMARY_COLUMNS)]], ignore_index=True)


def summary_markdown(frame) -> str:
    """The summary as a Markdown table, rates in percent."""
    shown = ("auroc", "fpr_at_95_tpr", "aupr_in", "aupr_out", "fpr_at_95_tpr_ood_positive", "cauroc",
             "closed_set_accuracy")
    lines = ["| method | unknown | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
    for _, row in frame.iterrows():
        lines.append(f"| {row['method']} | {row['unknown']} | "
                     + " | ".join(f"{100 * row[key]:.2f}" for key in shown) + " |")
    return "\n".join(lines) + "\n"


def method_name(detector: str, untrained: bool) -> str:
    """A summary row's method: the detector, or the untrained reference ("untrained" for
    the paper's detector, as the benchmark names it)."""
    if not untrained:
        return detector
    return "untrained" if detector == "vmdls" else f"untrained_{detector}"


def evaluate_sets(evaluator, datamodule, unknown_names: list[str]) -> dict[str, tuple[dict, object]]:
    """Fit once, pass over the known test set once and over each unknown set once; for each
    unknown set, every detector's scores of the pair and the pair's feature ensemble."""
    evaluator.fit(datamodule.fit_dataloader(), "fitting")
    known = evaluator.pass_over(datamodule.known_test_dataloader(), "known test set")
    pairs = {}
    for name in unknown_names:
        unknown = evaluator.pass_over(datamodule.unknown_test_dataloader(name), name)
        pairs[name] = (evaluator.score_pair(known, unknown), evaluator.features_of(known, unknown))
    return pairs


def parse_detectors(args, kind: str) -> list[str]:
    from models.evaluation import DETECTOR_NAMES, default_detectors
    from utils.flags import split_names

    names = split_names(args.detector) if args.detector else default_detectors(kind)
    unknown = [name for name in names if name not in DETECTOR_NAMES]
    if unknown:
        raise UserError(f"unknown detector {unknown[0]!r}: choose from {', '.join(DETECTOR_NAMES)}",
                        setting="detector")
    return names


def load_model(checkpoint: dict, kind: str, overrides: dict):
    from models.checkpoints import load_classifier, load_vmdls

    if kind == "ce":
        return load_classifier(checkpoint, overrides)
    model, missing = load_vmdls(checkpoint, overrides)
    if missing:
        raise UserError(f"the checkpoint lacks {len(missing)} weights of the model (e.g. {missing[0]}); "
                        "pass the checkpoint of a trained VMDLS model")
    return model


def untrained_model(checkpoint: dict, kind: str, overrides: dict, seed: int):
    from models.checkpoints import untrained_classifier, untrained_vmdls

    return (untrained_classifier if kind == "ce" else untrained_vmdls)(checkpoint, overrides, seed)


def main(argv: list[str] | None = None) -> dict:
    """Evaluate; the output folder stays locked (utils.cli.claim_output_dir) until the run ends."""
    with ExitStack() as cleanup:
        return _main(argv, cleanup)


def _main(argv: list[str] | None, cleanup: ExitStack) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import pytorch_lightning as pl

    from datasets import KnownUnknownDataModule
    from datasets.images import dataset_paths
    from models.checkpoints import checkpoint_hparams, checkpoint_kind, checkpoint_seed, read_checkpoint
    from models.evaluation import Evaluator
    from utils import metrics as M
    from utils.cli import EVALUATION, claim_output_dir, logger_trees
    from utils.flags import split_names
    from utils.loggers import atomic_path, build_loggers, log_files, write_json
    from utils.plots import plot_roc_sets

    checkpoint = read_checkpoint(args.checkpoint_path, trust=args.trust_checkpoint)
    kind = checkpoint_kind(checkpoint)
    args = resolve_settings(args, explicit_flags(parser, argv), checkpoint)
    detectors = parse_detectors(args, kind)
    unknown_names = split_names(args.unknown_dataset)
    several = len(unknown_names) > 1
    output_dir = args.output_dir or default_output_dir(args.known_dataset, unknown_names)
    # Created, checked for writing and locked before any work, with each set's folder. A previous evaluation there
    # is refused, or with --overwrite the files it recorded are removed, its results.json first: results.json is
    # written last, so it marks a complete run. Files in the way that no evaluation recorded are refused.
    declared_files, set_folders = declared_outputs(output_dir, unknown_names, detectors, args.log_tsne)
    cleanup.enter_context(claim_output_dir(output_dir, EVALUATION, args.overwrite, files=declared_files,
                                           trees=logger_trees(args.logger), folders=set_folders))
    pl.seed_everything(args.seed, verbose=False)
    device = pick_device(args)

    datamodule = KnownUnknownDataModule.from_args(args)
    datamodule.setup("test")
    height = datamodule.image_shape[1]
    if height != args.input_height:  # the network's size follows it: the checkpoint's weights would not fit
        recorded = checkpoint_hparams(checkpoint).get("input_height")
        if "input_height" in explicit_flags(parser, argv) or recorded is None:
            fix = (f"drop --input_height (the checkpoint was trained on {height}x{height} images)" if recorded == height
                   else f"pass --input_height {height}")
            raise UserError(f"--input_height {args.input_height} does not match {args.known_dataset}'s "
                            f"{height}x{height} images; {fix}")
        raise UserError(f"the checkpoint was trained on {recorded}x{recorded} images (its --input_height), and "
                        f"{args.known_dataset}'s are {height}x{height}; evaluate it on a known set of its image size")
    overrides = {name: getattr(args, name) for name in MODEL_FLAGS}
    overrides["in_channels"] = checkpoint_hparams(checkpoint).get("in_channels") or datamodule.image_shape[0]
    model = load_model(checkpoint, kind, overrides)
    autoencoder = load_reconstruction_autoencoder(args) if kind == "vmdls" else None
    if args.ae_features and kind != "vmdls":
        print("note: --ae_features weights the paper's score only; a cross-entropy checkpoint has none")

    def evaluator_for(network, keep_features: bool) -> Evaluator:
        return Evaluator(network, kind, detectors, autoencoder, preprocess=datamodule.preprocess, device=device,
                         score_stats=args.score_stats, keep_features=keep_features, progress=progress,
                         precision=args.precision, classifier=args.classifier)

    trained = evaluator_for(model, keep_features=args.log_tsne)
    pairs = evaluate_sets(trained, datamodule, unknown_names)
    untrained_pairs, seed = None, None
    if args.compare_untrained:
        seed = checkpoint_seed(checkpoint, default=args.seed)
        reference = evaluator_for(untrained_model(checkpoint, kind, overrides, seed), keep_features=False)
        untrained_pairs = evaluate_sets(reference, datamodule, unknown_names)

    class_num = args.class_num

    def metrics_of(scored) -> dict:
        metrics = M.ood_metrics(scored.scores.numpy(), scored.predictions.numpy(), scored.labels.numpy(), class_num)
        return {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in metrics.items()}

    primary = detectors[0]
    known_paths = dataset_paths(datamodule.known_test_set)
    files, summary_rows, all_results, curves = {}, [], {}, {}
    finished: list[tuple[str, dict]] = []  # the results.json files, written once everything else is
    for name in unknown_names:
        folder = set_folder(output_dir, name, several)
        scored, features = pairs[name]
        by_detector = {detector: metrics_of(scored[detector]) for detector in detectors}
        results = {
            **by_detector[primary], "detector": primary,
            "known_dataset": args.known_dataset, "unknown_dataset": name,
            "enc_type": args.enc_type, "checkpoint": os.path.abspath(args.checkpoint_path), "checkpoint_kind": kind,
            "ae_features": bool(args.ae_features and kind == "vmdls"), "ae_checkpoint": args.ae_checkpoint,
            "score_stats": args.score_stats, "jitter": trained.jitter, "classifier": args.classifier,
        }
        if len(detectors) > 1:
            results["detectors"] = by_detector
        rows = [{"method": method_name(d, False), "unknown": name, **m} for d, m in by_detector.items()]
        if untrained_pairs is not None:
            untrained_scored, _ = untrained_pairs[name]
            untrained_by_detector = {d: metrics_of(untrained_scored[d]) for d in detectors}
            results["untrained"] = {**untrained_by_detector[primary], "jitter": reference.jitter, "seed": seed}
            if len(detectors) > 1:
                results["untrained"]["detectors"] = untrained_by_detector
            rows += [{"method": method_name(d, True), "unknown": name, **m} for d, m in untrained_by_detector.items()]
        summary_rows += rows
        set_files = write_outputs(args, folder, scored[primary], features, by_detector[primary], class_num)
        paths = (known_paths, dataset_paths(datamodule.unknown_test_sets[name]))
        for detector in detectors:
            csv_name = "scores.csv" if detector == primary else f"scores_{detector}.csv"
            set_files[f"scores_{detector}"] = write_scores(os.path.join(folder, csv_name), scored[detector],
                                                           (args.known_dataset, name), paths, class_num)
        set_files["results"] = os.path.join(folder, "results.json")
        finished.append((set_files["results"], results))
        files.update({f"{name}/{k}" if several else k: v for k, v in set_files.items()})
        all_results[name] = results
        fpr, tpr, _ = M.roc_points(scored[primary].scores.numpy(), scored[primary].labels.numpy() < class_num)
        curves[name] = (fpr, tpr, results["auroc"])

    summary = summary_frame(summary_rows)
    files["summary"] = os.path.join(output_dir, "summary.csv")
    with atomic_path(files["summary"]) as tmp:
        summary.to_csv(tmp, index=False)
    files["summary_md"] = os.path.join(output_dir, "summary.md")
    with atomic_path(files["summary_md"]) as tmp, open(tmp, "w") as handle:
        handle.write(summary_markdown(summary))
    if several:
        files["roc_sets"] = plot_roc_sets(curves, os.path.join(output_dir, "roc.png"),
                                          title=f"ROC of {primary}: {args.known_dataset} vs each unknown set")

    loggers = build_loggers(output_dir, args.logger, args.offline, project=args.neptune_project,
                            tags=[f"known:{args.known_dataset}", *(f"unknown:{n}" for n in unknown_names), "test"])
    logged = {}
    for _, row in summary.iterrows():
        prefix = "" if not several and row["unknown"] != "mean" and row["method"] == primary else \
            f"{row['method']}/{row['unknown']}/"
        logged.update({f"{prefix}{k}": float(row[k]) for k in SUMMARY_COLUMNS[2:]})
    for logger in loggers:
        logger.log_metrics(logged)
        logger.save()
    for path, payload in finished:  # last: a results.json is never beside another run's (or a partial run's) files
        write_json(path, payload)
    log_files(loggers, files)
    if several:
        print(summary_markdown(summary))
        print(f"results: {output_dir}/<set>/results.json, summary: {files['summary']}")
        return {"sets": all_results, "summary": files["summary"]}
    results = all_results[unknown_names[0]]
    print(format_results(results))
    if len(detectors) > 1:
        print(summary_markdown(summary))
    print(f"results: {files['results']}")
    return results


if __name__ == "__main__":
    run_main(main)
