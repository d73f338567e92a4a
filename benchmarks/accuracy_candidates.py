"""Closed-set accuracy of VMDLS on the standard profile: candidates measured against the paper's rule.

The standard profile's VMDLS model trails the cross-entropy model of the same backbone,
data, augmentation, optimiser and schedule by about 5 points of closed-set accuracy. This
script measures candidate configurations on the same profile (the far setting, one seed)
and prints every pair of accuracy and detection quality tried:

    python benchmarks/accuracy_candidates.py --data_dir ../shared/data --output_dir outputs/ood_standard

OUTPUT_DIR is the standard profile's folder: the candidates reuse its IDX subsets, its
trained VMDLS model (the "paper" candidate) and its cross-entropy evaluation (the
reference row); whatever is missing is trained or written first, as the profile would.
Each candidate is one main.py training with the profile's flags plus the candidate's
(under OUTPUT_DIR/seed<k>/fashion_mnist/candidates/<name>/), evaluated twice by test.py
(--detector vmdls vmdls_latent): with the paper's prediction rule (each detector's class
Gaussians; for the "paper" candidate the profile's own evaluation) and with --classifier
h_linear (a linear probe on h; the scores do not change).
Writes OUTPUT_DIR/accuracy_candidates.json and .md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name -> (main.py flags, as pairs of flag and value, that replace the profile's; what it tries)
CANDIDATES = {
    "paper": ([], "the profile's VMDLS model (the paper's MNIST hyperparameters)"),
    "latent128": (["--latent_dim", "128"], "a 4 times wider latent: mu keeps more of h's class information"),
    "kl0.01": (["--kl_coeff", "0.01"], "a 10 times weaker class-conditional KL term"),
}
CLASSIFIERS = ("gaussians", "h_linear")


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="../shared/data")
    parser.add_argument("--output_dir", default="outputs/ood_standard")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accelerator", default="cpu")
    return parser.parse_args(argv)


def standard_plan(args):
    from experiments.benchmark.cli import parse
    from experiments.benchmark.plan import build_plan
    from experiments.benchmark.profiles import PROFILES

    bench_args = parse(["--profile", "standard", "--data_dir", args.data_dir, "--output_dir", args.output_dir,
                        "--seeds", str(args.seed + 1), "--accelerator", args.accelerator])
    return build_plan(bench_args, PROFILES["standard"](bench_args))


def step_of(plan, seed: int, label: str):
    return next(s for s in plan.steps if s.seed == seed and s.setting == "fashion_mnist" and s.label == label)


def candidate_steps(plan, seed: int, name: str, flags: list[str]):
    """The training step of a candidate and its two evaluations (the paper's rule, the probe)."""
    from experiments.benchmark.original import set_flag
    from experiments.benchmark.plan import Step

    train, evaluate = step_of(plan, seed, "train VMDLS"), step_of(plan, seed, "evaluate VMDLS (+ untrained)")
    base = os.path.join(os.path.dirname(train.output_dir), "candidates", name)
    if flags:
        folder = os.path.join(base, "vmdls")
        argv = set_flag(train.argv, "--output_dir", folder)
        for flag, value in zip(flags[::2], flags[1::2]):
            argv = set_flag(argv, flag, value)
        train = Step("train", "main.py", argv, folder, f"train VMDLS ({name})", seed, train.setting,
                     os.path.join(folder, "done.json"))
    checkpoint = os.path.join(train.output_dir, "checkpoints", "last.ckpt")
    test_argv = [a for a in evaluate.argv if a != "--compare_untrained"]
    test_argv = set_flag(test_argv, "--checkpoint_path", checkpoint)
    evaluations = {}
    if not flags:  # the profile's own evaluation is the paper rule's, with the untrained reference beside it
        evaluations["gaussians"] = evaluate
    for classifier in CLASSIFIERS:
        if classifier in evaluations:
            continue
        folder = os.path.join(base, f"eval_{classifier}")
        evaluations[classifier] = Step(
            "test", "test.py", set_flag(test_argv, "--output_dir", folder) + ["--classifier", classifier], folder,
            f"evaluate ({name}, {classifier})", seed, train.setting, os.path.join(folder, "summary.csv"),
            list(evaluate.unknown), {"vmdls": train})
    return train, evaluations


def summary_means(path: str, method: str) -> dict:
    import pandas as pd

    frame = pd.read_csv(path)
    rows = frame[frame["method"] == method]
    return {"auroc": 100 * rows["auroc"].mean(), "fpr95": 100 * rows["fpr_at_95_tpr"].mean(),
            "accuracy": 100 * rows["closed_set_accuracy"].iloc[0], "sets": len(rows)}


def measure(args) -> list[dict]:
    from experiments.benchmark.data import materialise
    from experiments.benchmark.runner import Clock, recorded_seconds, run_step, step_done

    plan = standard_plan(args)
    log = Clock()
    materialise(plan, args.data_dir, log)
    reference = [step_of(plan, args.seed, label)
                 for label in ("train cross-entropy", "evaluate cross-entropy baselines")]
    rows = []
    for name in args.candidates:
        flags, why = CANDIDATES[name]
        train, evaluations = candidate_steps(plan, args.seed, name, flags)
        for step in (train, *evaluations.values()):
            if not step_done(step):
                log(f"{step.label}: {step.command()}")
                seconds = run_step(step)
                log(f"{step.label}: {seconds:.0f} s")
        paper = summary_means(evaluations["gaussians"].done_file, "vmdls")
        latent = summary_means(evaluations["gaussians"].done_file, "vmdls_latent")
        probe = summary_means(evaluations["h_linear"].done_file, "vmdls")
        rows.append({"candidate": name, "flags": " ".join(flags) or "(the profile's)", "tries": why,
                     "accuracy_paper_rule": paper["accuracy"], "accuracy_mu_gaussians": latent["accuracy"],
                     "accuracy_h_linear": probe["accuracy"], "mean_auroc": paper["auroc"], "mean_fpr95": paper["fpr95"],
                     "mean_auroc_latent": latent["auroc"], "mean_fpr95_latent": latent["fpr95"],
                     "probe_auroc_unchanged": bool(abs(probe["auroc"] - paper["auroc"]) < 1e-9),
                     "train_seconds": recorded_seconds(train), "sets": paper["sets"]})
    for step in reference:
        if not step_done(step):
            log(f"{step.label}: {step.command()}")
            run_step(step)
    ce = {method: summary_means(reference[1].done_file, method) for method in ("msp", "vim", "knn")}
    rows.append({"candidate": "cross-entropy", "flags": "main.py --objective ce", "tries": "the reference",
                 "accuracy_paper_rule": ce["msp"]["accuracy"], "best_baseline_auroc": max(
                     (v["auroc"], k) for k, v in ce.items())})
    return rows


def markdown(rows: list[dict]) -> str:
    ce = rows[-1]
    lines = [f"Cross-entropy model of the same backbone and schedule: {ce['accuracy_paper_rule']:.2f} % closed-set "
             f"accuracy; its best detector here {ce['best_baseline_auroc'][1]} "
             f"({ce['best_baseline_auroc'][0]:.2f} mean AUROC).", "",
             "| candidate | main.py flags | acc. paper rule (ensemble Gaussians) | acc. mu Gaussians | "
             "acc. linear probe on h | mean AUROC vmdls | mean FPR95 vmdls | mean AUROC vmdls_latent | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows[:-1]:
        lines.append(f"| {row['candidate']} | {row['flags']} | {row['accuracy_paper_rule']:.2f} | "
                     f"{row['accuracy_mu_gaussians']:.2f} | {row['accuracy_h_linear']:.2f} | {row['mean_auroc']:.2f} | "
                     f"{row['mean_fpr95']:.2f} | {row['mean_auroc_latent']:.2f} | {row['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    args = parse(argv)
    start = time.perf_counter()
    rows = measure(args)
    from experiments.benchmark.runner import write_json

    out = os.path.abspath(args.output_dir)
    write_json(os.path.join(out, "accuracy_candidates.json"), rows)
    table = markdown(rows)
    with open(os.path.join(out, "accuracy_candidates.md"), "w") as handle:
        handle.write(table)
    print(table)
    print(f"wall time {time.perf_counter() - start:.0f} s")
    return rows


if __name__ == "__main__":
    main()
