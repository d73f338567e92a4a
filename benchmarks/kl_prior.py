"""The KL prior, measured: where its class means come from and when it starts.

Trains mnist-conv on a Fashion-MNIST quick budget once per variant (same seed, data,
schedule and batches; main.py's run, experiments.training), evaluates each as test.py does
(experiments.evaluation) against MNIST, and prints one table:
the latent at the last epoch (class-mean separation of mu over the sampling std, the
within-class spread), the mu-Gaussian validation accuracy, and test.py's closed-set
accuracy, AUROC and FPR at 95% TPR, beside the untrained reference of the same run.

    python benchmarks/kl_prior.py --data_dir ../shared/data --output_dir outputs/kl_prior

The quick budget: the first 10,000 Fashion-MNIST training images (3 epochs of about 62
batches of 10 x 16), fitted and scored on the first 2,000 Fashion-MNIST test images against
the first 2,000 MNIST test images; the subsets are written as IDX folders under
OUTPUT_DIR/data and read as idx:PATH sets.

Variants: --kl_prior_means z (the original) or mu, crossed with --generation_epoch 0
(the paper's MNIST command: the KL starts while the prior means are still zeros) or 1
(after one epoch of statistics).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = (("z", 0), ("mu", 0), ("z", 1), ("mu", 1))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="../shared/data")
    parser.add_argument("--train_images", type=int, default=10_000)
    parser.add_argument("--test_images", type=int, default=2_000)
    parser.add_argument("--output_dir", default="outputs/kl_prior")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit_train_batches", type=int, default=62, help="62 x 160 images: about 10,000 a epoch")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def write_subsets(data_dir: str, output_dir: str, train: int, test: int) -> tuple[str, str]:
    """idx: folders holding the first images of Fashion-MNIST (train and test) and MNIST (test)."""
    from datasets.sources import load_idx_pair
    from experiments.benchmark.data import write_idx

    known, unknown = os.path.join(output_dir, "data", "fmnist"), os.path.join(output_dir, "data", "mnist")
    for folder, source, splits in ((known, "FashionMNIST", (("train", train), ("t10k", test))),
                                   (unknown, "MNIST", (("t10k", test),))):
        for prefix, count in splits:
            images, labels = load_idx_pair(os.path.join(data_dir, source, "raw", f"{prefix}-images-idx3-ubyte.gz"),
                                           os.path.join(data_dir, source, "raw", f"{prefix}-labels-idx1-ubyte.gz"))
            write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), images[:count].squeeze(1).numpy())
            write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), labels[:count].numpy())
    return known, unknown


def last_epoch(metrics_csv: str) -> dict:
    import pandas as pd

    frame = pd.read_csv(metrics_csv)
    columns = ["latent_sampling_std", "latent_class_separation", "latent_within_class_spread", "val_accuracy_known"]
    per_epoch = frame.groupby("epoch")[columns].max()
    return per_epoch.iloc[-1].to_dict()


def main() -> None:
    args = parse()
    from experiments.benchmark.calls import evaluate_step, train_step

    known, unknown = write_subsets(args.data_dir, args.output_dir, args.train_images, args.test_images)
    common = ["--known_dataset", f"idx:{os.path.abspath(known)}", "--unknown_dataset",
              f"idx:{os.path.abspath(unknown)}", "--accelerator", args.accelerator, "--num_workers",
              str(args.num_workers), "--seed", str(args.seed), "--logger", "csv", "--offline",
              "--class_num", "10", "--input_height", "28", "--batch_size", "1000"]
    rows = []
    for index, (prior, generation_epoch) in enumerate(VARIANTS):
        out = os.path.join(args.output_dir, f"{prior}-gen{generation_epoch}")
        start = time.perf_counter()
        checkpoint = train_step(common + [
            "--enc_type", "mnist-conv", "--enc_out_dim", "500", "--latent_dim", "32", "--data_transforms", "mnist",
            "--opt", "adam", "--lr", "0.001", "--kl_coeff", "0.1", "--batch_classes", "10", "--sample_count", "16",
            "--margins_epoch", "1", "--margin_jump", "1.0", "--lower_bound", "0.05",
            "--generation_epoch", str(generation_epoch), "--kl_prior_means", prior,
            "--max_epochs", str(args.epochs), "--limit_train_batches", str(args.limit_train_batches),
            "--output_dir", os.path.join(out, "train")])
        train_s = time.perf_counter() - start
        results = evaluate_step(common + ["--checkpoint_path", checkpoint, "--data_transforms", "blob",
                                          "--output_dir", os.path.join(out, "test")]
                                + (["--compare_untrained"] if index == 0 else [])).results
        latent = last_epoch(os.path.join(out, "train", "metrics.csv"))
        rows.append({"prior_means": prior, "generation_epoch": generation_epoch, "train_s": train_s, **latent,
                     "separation_over_std": latent["latent_class_separation"] / latent["latent_sampling_std"],
                     **{k: results[k] for k in ("closed_set_accuracy", "auroc", "fpr_at_95_tpr")}})
        if index == 0:
            untrained = results["untrained"]
    header = ("| KL prior means | KL from epoch | separation / sampling std | separation | sampling std | "
              "within-class spread | val. accuracy (mu) | closed-set acc. | AUROC | FPR at 95% TPR |")
    lines = [header, "|" + "---|" * 10]
    for row in rows:
        lines.append(f"| {row['prior_means']} | {row['generation_epoch']} | {row['separation_over_std']:.3g} | "
                     f"{row['latent_class_separation']:.3g} | {row['latent_sampling_std']:.3g} | "
                     f"{row['latent_within_class_spread']:.3g} | {100 * row['val_accuracy_known']:.1f} % | "
                     f"{100 * row['closed_set_accuracy']:.2f} % | {100 * row['auroc']:.2f} % | "
                     f"{100 * row['fpr_at_95_tpr']:.2f} % |")
    lines.append(f"| untrained reference | - | - | - | - | - | - | {100 * untrained['closed_set_accuracy']:.2f} % | "
                 f"{100 * untrained['auroc']:.2f} % | {100 * untrained['fpr_at_95_tpr']:.2f} % |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "kl_prior.json"), "w") as handle:
        json.dump({"rows": rows, "untrained": untrained}, handle, indent=2)
    with open(os.path.join(args.output_dir, "kl_prior.md"), "w") as handle:
        handle.write(table + "\n")


if __name__ == "__main__":
    main()
