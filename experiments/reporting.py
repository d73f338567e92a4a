"""The files and the printed table of a checkpoint evaluation (test.py), from the results of
models.evaluation.evaluate: per unknown set results.json, scores.csv (scores_<detector>.csv
for the other detectors), thresholds.csv and the figures; summary.csv and summary.md for the
whole run; and the metrics handed to the loggers.
"""
from __future__ import annotations

import os
import time

from utils.errors import UserError
from utils.run_folder import atomic_path, folder_name

RESULT_ROWS = (
    ("AUROC", "auroc"), ("AUPR-In", "aupr_in"), ("AUPR-Out", "aupr_out"),
    ("FPR at 95% TPR", "fpr_at_95_tpr"), ("TNR at 95% TPR", "tnr_at_95_tpr"),
    ("Detection accuracy", "detection_accuracy"), ("Closed-set accuracy", "closed_set_accuracy"),
    ("Macro-F1 at 95% TPR", "f1_macro_at_95_tpr"), ("Best macro-F1", "f1_macro_best"),
)
# What test.py writes for one unknown set (in its folder, set_folder), besides scores_<detector>.csv.
SET_FILES = ("results.json", "scores.csv", "thresholds.csv", "roc.png", "f1_threshold.png", "score_histogram.png",
             "tsne.png")
SCORE_COLUMNS = ("set", "index", "label", "prediction", "score", "max_log_likelihood", "reconstruction", "path")
SUMMARY_COLUMNS = ("method", "unknown", "auroc", "fpr_at_95_tpr", "aupr_in", "aupr_out", "auroc_ood_positive",
                   "fpr_at_95_tpr_ood_positive", "aupr_ood_positive", "cauroc", "closed_set_accuracy",
                   "f1_macro_at_95_tpr", "n_known", "n_unknown")


# ----------------------------------------------------------------------------- where the files go

def set_folder(output_dir: str, name: str, several: bool) -> str:
    """Where one unknown set's files go: the output folder itself for a single set (as
    before), a sub-folder named after the set when there are several: the name itself when
    it is a plain short name (digits_unknown), else its readable part and a short hash of
    the whole name (utils.run_folder.folder_name), so that no two sets share a folder and no
    name is too long for one."""
    return os.path.join(output_dir, folder_name(name)) if several else output_dir


def declared_outputs(output_dir: str, unknown_names: list[str], detectors: list[str],
                     log_tsne: bool = False) -> tuple[list[str], list[str]]:
    """The files this evaluation would write besides utils.run_folder.EVALUATION's, and its set
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
    name = f"{folder_name(known)}-vs-{'+'.join(folder_name(n) for n in unknown_names)}"
    if len(name) > 120:
        name = folder_name(name)
    return os.path.join("outputs", "test", f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


# ----------------------------------------------------------------------------- one known/unknown pair

def write_pair_files(output_dir: str, scored, ensemble, metrics: dict, class_num: int, *, thresholding: bool = False,
                     seed: int = 0) -> dict[str, str]:
    """thresholds.csv and the figures of one known/unknown pair (the t-SNE when ``ensemble``,
    the pair's feature ensemble, is given); with ``thresholding``, prints the thresholds
    around the 95%-TPR operating point."""
    from utils import metrics as M
    from utils.plots import plot_f1_curve, plot_roc, plot_score_histograms, plot_tsne

    os.makedirs(output_dir, exist_ok=True)
    scores = scored.scores.numpy()
    labels = scored.labels.numpy()
    known = labels < class_num
    table = M.threshold_table(scores, known, scored.predictions.numpy(), labels, class_num)
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
    if ensemble is not None:
        files["tsne"] = plot_tsne(ensemble.numpy(), labels, class_num, os.path.join(output_dir, "tsne.png"),
                                  seed=seed, title="t-SNE of the feature ensemble f(x) (test images)")
    if thresholding:
        near = table.iloc[(table["tpr"] - 0.95).abs().argsort()[:5]].sort_values("threshold", ascending=False)
        print("thresholds around 95% TPR:")
        print(near.to_string(index=False))
    return files


def write_scores(path: str, scored, set_names: tuple[str, str], paths: tuple, class_num: int) -> str:
    """scores.csv: one row per image of the pair, known test images first; ``index`` is the
    image's position in its own set, ``path`` its file (empty for sets held as tensors);
    ``score`` is the known-positive score (higher = more known)."""
    import numpy as np
    import pandas as pd

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


# ----------------------------------------------------------------------------- the run's table

def method_name(detector: str, untrained: bool) -> str:
    """A summary row's method: the detector, or the untrained reference ("untrained" for
    the paper's detector, as the benchmark names it)."""
    if not untrained:
        return detector
    return "untrained" if detector == "vmdls" else f"untrained_{detector}"


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


def write_summary(output_dir: str, summary) -> dict[str, str]:
    """summary.csv and summary.md."""
    files = {"summary": os.path.join(output_dir, "summary.csv"), "summary_md": os.path.join(output_dir, "summary.md")}
    with atomic_path(files["summary"]) as tmp:
        summary.to_csv(tmp, index=False)
    with atomic_path(files["summary_md"]) as tmp, open(tmp, "w") as handle:
        handle.write(summary_markdown(summary))
    return files


def logged_metrics(summary, primary: str, several: bool) -> dict[str, float]:
    """The summary's figures for the loggers: a single set's leading detector under the bare
    metric names, every other row under <method>/<unknown set>/."""
    logged = {}
    for _, row in summary.iterrows():
        prefix = "" if not several and row["unknown"] != "mean" and row["method"] == primary else \
            f"{row['method']}/{row['unknown']}/"
        logged.update({f"{prefix}{k}": float(row[k]) for k in SUMMARY_COLUMNS[2:]})
    return logged


# ----------------------------------------------------------------------------- what test.py prints

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


def console_report(results: dict, summary, output_dir: str) -> str:
    """What test.py prints at the end: the results table of a single unknown set (and the
    summary when several detectors ran), or the summary of several sets; then where the
    results are."""
    if "sets" in results:
        return f"{summary_markdown(summary)}\nresults: {output_dir}/<set>/results.json, summary: {results['summary']}"
    lines = [format_results(results)]
    if "detectors" in results:
        lines.append(summary_markdown(summary))
    return "\n".join([*lines, f"results: {os.path.join(output_dir, 'results.json')}"])
