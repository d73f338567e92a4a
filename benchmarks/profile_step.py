"""Where a main.py training step's host time goes: cProfile over a short run, reported per step.

The profiler inflates every figure; read them as shares of the step. Uses the embedded
digits and throughput.py's ``tiny-conv`` (one convolution), on which the step is all
host work, unless ``--enc_type`` says otherwise.

    python benchmarks/profile_step.py                    # VMDLS
    python benchmarks/profile_step.py --objective ce     # the cross-entropy model, same path
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import torch  # noqa: E402

import main as train_script  # noqa: E402
import throughput  # noqa: E402
from models.kinds import KINDS  # noqa: E402
from utils.cli import run_main  # noqa: E402

# (file suffix, function name) -> what the row is
PIECES = {
    ("training_epoch_loop.py", "advance"): "whole step (Lightning's advance)",
    ("datamodule.py", "on_after_batch_transfer"): "batch augmentation + normalisation",
    ("models/vmdls.py", "training_step"): "training_step",
    ("models/classifier.py", "training_step"): "training_step",
    ("automatic.py", "closure"): "training_step + backward (the closure)",
    ("fetchers.py", "__next__"): "data fetch (sampler, dataset, collate)",
    ("result.py", "log"): "Lightning self.log calls",
    ("tqdm_progress.py", "on_train_batch_end"): "progress bar",
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objective", default="vmdls", choices=tuple(KINDS))
    parser.add_argument("--enc_type", default=throughput.TINY)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--sample_count", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    throughput.register_tiny()
    with tempfile.TemporaryDirectory() as folder:
        # throughput.py's timed training (the embedded digits on the CPU), under the profiler
        settings = throughput.build_parser().parse_args([
            "--backbones", args.enc_type, "--accelerator", "cpu", "--epochs", str(args.epochs),
            "--sample_count", str(args.sample_count), "--output_dir", folder])
        run = throughput.training_flags(args.enc_type, settings) + [
            "--objective", args.objective, "--output_dir", os.path.join(folder, "run")]
        profile = cProfile.Profile()
        profile.enable()
        train_script.main(run)
        profile.disable()
    per_step: dict[str, float] = {}
    steps = 0
    for (path, _, name), (_, calls, _, cumulative, _) in pstats.Stats(profile).stats.items():
        for (suffix, function), label in PIECES.items():
            if name == function and path.replace(os.sep, "/").endswith(suffix):
                per_step[label] = max(per_step.get(label, 0.0), cumulative)  # nested entries: the outer one
                steps = calls if label.startswith("whole step") else steps
    per_step = {label: 1000 * seconds / steps for label, seconds in per_step.items()}
    print(f"{args.objective}, {args.enc_type}, {steps} steps of 6 x {args.sample_count} images, ms per step "
          "under cProfile:")
    for label in dict.fromkeys(PIECES.values()):
        if label in per_step:
            print(f"  {label:42s} {per_step[label]:7.2f}")
    return per_step


if __name__ == "__main__":
    run_main(main)
