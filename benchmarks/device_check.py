"""GPU check: the original README's commands run unchanged, then the epoch-time benchmark.

Runs on a GPU machine, from the repository root, after benchmarks/fake_data.py has
written stand-in datasets under ./data:

1. every training command of benchmarks/readme_original_commands.txt, verbatim, with a
   short-run suffix (--max_epochs 1 --limit_train_batches N ...; argparse keeps the
   last value), saving each last checkpoint under the name the test commands expect;
2. the autoencoders (mnist_ae.py, train_resnet_ae.py) into models/ae_*.ckpt, where
   the original README told users to put them;
3. every test command, verbatim (plus --output_dir);
Writes one JSON summary with each command's exit status, time and last line.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = os.path.join(ROOT, "benchmarks", "readme_original_commands.txt")
SHORT_RUN = ["--max_epochs", "1", "--limit_train_batches", "3", "--limit_val_batches", "2", "--num_workers", "4",
             "--offline"]


def run(argv: list[str], log_dir: str, name: str) -> dict:
    start = time.perf_counter()
    with open(os.path.join(log_dir, f"{name}.log"), "w") as log:
        result = subprocess.run(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
        log.write(result.stdout)
    lines = [line for line in result.stdout.strip().splitlines() if line.strip()]
    record = {"name": name, "argv": shlex.join(argv[1:]), "rc": result.returncode,
              "seconds": round(time.perf_counter() - start, 1), "last_line": lines[-1] if lines else ""}
    print(json.dumps(record), flush=True)
    return record


def write_finetuning_weights() -> None:
    """Stand-ins for the README's --weights files: state_dicts nested under 'state_dict'."""
    import torch

    sys.path.insert(0, ROOT)
    from models.backbones import build_backbone

    for name, enc_type, class_num in (("checkpoint_100.pth.tar", "densenet", 100),
                                      ("finetuning_wideresnet.tar", "wresnet", 10)):
        torch.save({"state_dict": build_backbone(enc_type, class_num=class_num).state_dict()}, os.path.join(ROOT, name))


def main(out_dir: str, extra: list[str]) -> int:
    os.makedirs(out_dir, exist_ok=True)
    write_finetuning_weights()
    log_dir = os.path.join(ROOT, "runs", "logs")
    os.makedirs(log_dir, exist_ok=True)
    rows = [line.split(" ", 2) for line in open(COMMANDS).read().splitlines() if line and not line.startswith("#")]
    records = []
    for index, (kind, checkpoint_name, command) in enumerate(rows):
        argv = shlex.split(command)
        argv[0] = sys.executable
        name = f"{kind}{index}-{argv[argv.index('--enc_type') + 1]}"
        if os.environ.get("ONLY") and os.environ["ONLY"] not in name:  # for a dry run on the CPU
            if kind == "train" and rows[index + 1][0] == "test":
                records += train_autoencoders(log_dir, extra)
            continue
        note = None
        if argv[argv.index("--gpus") + 1] != "0," and "--accelerator" not in extra:
            argv += ["--gpus", "0,"]  # the README used GPU 1 for some runs; this machine has GPU 0 only
            note = "--gpus 0, appended"
        if kind == "train":
            argv += SHORT_RUN + ["--output_dir", f"runs/{name}"] + extra
        else:
            argv += ["--num_workers", "4", "--offline", "--output_dir", f"runs/{name}"] + extra
        record = run(argv, log_dir, name)
        record["note"] = note
        if kind == "train" and record["rc"] == 0:
            shutil.copy(os.path.join(ROOT, "runs", name, "checkpoints", "last.ckpt"),
                        os.path.join(ROOT, checkpoint_name))
        if kind == "test" and record["rc"] == 0:
            record["results"] = json.load(open(os.path.join(ROOT, "runs", name, "results.json")))
        records.append(record)
        if kind == "train" and rows[index + 1][0] == "test":
            records += train_autoencoders(log_dir, extra)
    summary = {"passed": sum(r["rc"] == 0 for r in records), "failed": sum(r["rc"] != 0 for r in records),
               "records": records}
    with open(os.path.join(out_dir, "device_check.json"), "w") as handle:
        json.dump(summary, handle, indent=1, default=str)
    print(f"{summary['passed']} passed, {summary['failed']} failed")
    return 0 if summary["failed"] == 0 else 1


def train_autoencoders(log_dir: str, extra: list[str]) -> list[dict]:
    os.makedirs(os.path.join(ROOT, "models"), exist_ok=True)
    records = []
    for script, dataset, target in (("mnist_ae.py", "mnist", "ae_mnist.ckpt"),
                                    ("train_resnet_ae.py", "cifar_known", "ae_cifar10.ckpt"),
                                    ("train_resnet_ae.py", "cifar100_known", "ae_cifar100.ckpt")):
        argv = [sys.executable, script, "--known_dataset", dataset, "--data_dir", "./data",
                *(["--class_num", "100"] if dataset == "cifar100_known" else []),
                "--max_epochs", "1", "--limit_train_batches", "3", "--num_workers", "4",
                "--output_dir", f"runs/ae_{dataset}", *extra]
        record = run(argv, log_dir, f"ae-{dataset}")
        if record["rc"] == 0:
            shutil.copy(record["last_line"].split(": ", 1)[1], os.path.join(ROOT, "models", target))
        records.append(record)
    return records


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
