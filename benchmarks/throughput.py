"""Throughput of VMDLS against its floor, per backbone, in one run on one device.

For each backbone it measures:

(a) the floor: the bare backbone with a linear classifier and cross-entropy, trained by a
    plain PyTorch loop (no Lightning, no data loading, no augmentation) on device-resident
    synthetic batches of the same size and shape as the real ones;
(b) a VMDLS training epoch through main.py itself: its data module and loaders, the
    batch augmentation, the losses, the class statistics, the logging and the callbacks
    (validation off: it is a diagnostic, and the epoch is timed from its start to its
    last batch's end, before the checkpoint is written). The same run with
    ``--objective ce`` (main.py's cross-entropy model: the same path without the VMDLS
    head, losses and statistics) is timed beside it;
(c) test.py's evaluation (fitting the detector on the known training set, one pass over the
    known test set and over the unknown set, the scores) against plain forward passes
    of the same trained network over the same images, held on the device.

Ratios are ours over the floor, so 1.0 is the limit and bigger is slower:
``epoch_ratio = floor_img_per_s / epoch_img_per_s``; ``eval_ratio = evaluation time /
plain forward time``. Writes ``OUT/throughput.json``
(``{"device": ..., "rows": [{"backbone", "floor_img_per_s", "epoch_img_per_s",
"epoch_ratio", "eval_ratio", ...}]}``) and prints the table.

    # this CPU (2 cores, minutes): the embedded digits
    python benchmarks/throughput.py --backbones mnist-conv --accelerator cpu --output_dir outputs/throughput
    # host overhead: a backbone of one convolution, where Python dominates the step
    python benchmarks/throughput.py --backbones tiny-conv --accelerator cpu --output_dir outputs/throughput_tiny
    # a GPU: Fashion-MNIST for the 28x28 backbones, CIFAR-shaped synthetic data for the others
    python benchmarks/throughput.py --backbones mnist-conv resnet18 vgg --accelerator gpu --data_dir ./data \
        --output_dir outputs/throughput_gpu --num_workers 8

``tiny-conv`` is built here (not in the registry): one 3x3 convolution of 16 channels,
global-average-pooled; its three taps are that pooled output.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import experiments.training as training  # noqa: E402
import main as train_script  # noqa: E402
import test as test_script  # noqa: E402
from models import backbones  # noqa: E402
from models.speed import autocast, autocast_dtype, channels_last_pays  # noqa: E402
from utils.cli import run_main  # noqa: E402
from utils.run_folder import write_json  # noqa: E402

TINY = "tiny-conv"
GREY_28 = ("mnist-conv", TINY)


class TinyConv(nn.Module):
    """One 3x3 convolution, global-average-pooled: a backbone whose step is all host work."""

    def __init__(self, in_channels: int = 1, class_num: int = 10, width: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.feature_dim = width
        self.tap_dims = (width, width, width)

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return h, [h, h, h]


def register_tiny() -> None:
    """Add tiny-conv to the backbone registry and to --enc_type's choices (main.py's and
    test.py's parsers read utils.flags.ENC_TYPES when they are built)."""
    from utils import flags

    backbones.BACKBONES[TINY] = TinyConv
    if TINY not in flags.ENC_TYPES:
        flags.ENC_TYPES = (*flags.ENC_TYPES, TINY)


def device_name(accelerator: str) -> str:
    if accelerator == "gpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    gpu = "no GPU" if not torch.cuda.is_available() else f"GPU unused ({torch.cuda.get_device_name()})"
    return f"{os.cpu_count()}-core CPU ({model}, {threads} torch threads), {gpu}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------ data

def data_flags(backbone: str, args, root: str) -> list[str]:
    """The data of one backbone's runs (main.py / test.py flags)."""
    if backbone in GREY_28:
        if args.accelerator == "gpu" and not args.cpu_data:
            return ["--known_dataset", "fashion_mnist_known", "--unknown_dataset", "fashion_mnist_unknown",
                    "--class_num", str(args.class_num or 6), "--data_dir", args.data_dir,
                    "--data_transforms", "mnist", "--input_height", "28"]
        return ["--known_dataset", "digits", "--unknown_dataset", "digits_unknown", "--class_num",
                str(args.class_num or 6), "--data_transforms", "mnist", "--input_height", "28"]
    folder = os.path.join(root, "cifar_shaped")
    if not os.path.isdir(os.path.join(folder, "cifar-10-batches-py")):
        from conftest import write_cifar

        write_cifar(folder, 10, seed=0, per_class_train=args.synthetic_per_class,
                    per_class_test=max(1, args.synthetic_per_class // 5))
    return ["--known_dataset", "cifar_known", "--unknown_dataset", "cifar_unknown", "--class_num",
            str(args.class_num or 6), "--data_dir", folder, "--data_transforms", "cifar", "--input_height", "32"]


# ------------------------------------------------------------------------------ (a) the floor

def floor_throughput(backbone: str, shape: tuple[int, int, int], class_num: int, batch: int, steps: int,
                     blocks: int, device: torch.device, precision: str, compile_model: bool) -> dict:
    """The bare backbone + linear classifier + cross-entropy, SGD (main.py's), on
    device-resident synthetic batches: images per second, from the median of ``blocks``
    timed blocks of ``steps`` steps (measured as the epochs are: equal blocks, a median)."""
    torch.manual_seed(0)
    encoder = backbones.build_backbone(backbone, in_channels=shape[0], input_height=shape[1],
                                       class_num=class_num).to(device)
    classifier = nn.Linear(encoder.feature_dim, class_num).to(device)
    channels_last = channels_last_pays(device.type, precision)
    if channels_last:
        encoder.to(memory_format=torch.channels_last)
    if compile_model:
        encoder.compile()
    parameters = [*encoder.parameters(), *classifier.parameters()]
    optimizer = torch.optim.SGD(parameters, lr=0.01, momentum=0.9, weight_decay=1e-4, nesterov=True)
    batches = [(torch.randn(batch, *shape, device=device), torch.randint(0, class_num, (batch,), device=device))
               for _ in range(4)]
    if channels_last:
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]

    def step(i: int) -> None:
        x, y = batches[i % len(batches)]
        with autocast(device, autocast_dtype(precision, device)):
            h, _ = encoder(x)
            loss = nn.functional.cross_entropy(classifier(h).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(3):  # warm-up (and compilation)
        step(i)
    times, cpu_times = [], []
    for _ in range(blocks):
        sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        for i in range(steps):
            step(i)
        sync(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - start_cpu)
    seconds, cpu_seconds = statistics.median(times), statistics.median(cpu_times)
    return {"floor_img_per_s": batch * steps / seconds, "floor_step_ms": 1000 * seconds / steps,
            "floor_step_cpu_ms": 1000 * cpu_seconds / steps}


# ------------------------------------------------------------------------------ (b) main.py's epoch

class EpochTimer:
    """Times each training epoch from its start to its last batch's end (validation off)."""

    def __init__(self):
        import pytorch_lightning as pl

        outer = self

        class Timer(pl.Callback):
            def on_train_epoch_start(self, trainer, module):
                sync(module.device)
                outer._start = time.perf_counter()
                outer._start_cpu = time.process_time()

            def on_train_epoch_end(self, trainer, module):
                sync(module.device)
                outer.times.append(time.perf_counter() - outer._start)
                outer.cpu_times.append(time.process_time() - outer._start_cpu)
                outer.batches.append(trainer.num_training_batches)

        self.callback = Timer()
        self.times: list[float] = []
        self.cpu_times: list[float] = []  # process CPU time: less sensitive than wall time to other jobs
        self.batches: list[int] = []
        self._start = self._start_cpu = 0.0


def timed_training(argv: list[str], breakdown: dict | None = None) -> tuple[str, EpochTimer]:
    """main.py's run with an epoch timer among its callbacks. With ``breakdown`` (a dict), the
    wall time spent in the module's training_step, and within it in Lightning's logging
    (self.log / self.log_dict), is added up there."""
    import pytorch_lightning as pl

    timer = EpochTimer()
    build = training.build_callbacks

    def with_timer(*a, **k):
        callbacks, checkpoint = build(*a, **k)
        return [*callbacks, timer.callback], checkpoint

    patched = []
    if breakdown is not None:
        from models.vmdls import VMDLS

        breakdown.update(step_s=0.0, steps=0, logging_s=0.0)
        depth = [0]

        def timed(owner, name, key, count=False):
            original = getattr(owner, name)

            def wrapper(*a, **k):
                depth[0] += 1
                start = time.perf_counter()
                try:
                    return original(*a, **k)
                finally:
                    depth[0] -= 1
                    if key == "step_s" or depth[0] == 1:  # logging: the calls made by the step itself
                        breakdown[key] += time.perf_counter() - start
                    if count:
                        breakdown["steps"] += 1
            setattr(owner, name, wrapper)
            patched.append((owner, name, original))

        timed(VMDLS, "training_step", "step_s", count=True)
        timed(pl.LightningModule, "log", "logging_s")
        timed(pl.LightningModule, "log_dict", "logging_s")
    training.build_callbacks = with_timer
    try:
        last = train_script.main(argv)
    finally:
        training.build_callbacks = build
        for owner, name, original in patched:
            setattr(owner, name, original)
    return last, timer


def step_pieces(class_num: int, batch_classes: int, sample_count: int, latent_dim: int) -> dict:
    """Microseconds per call of the VMDLS step's own pieces on the CPU, on one batch of the
    benchmark's shape: the metric loss, the class KL, the statistics update (first epoch,
    and later epochs, which also score mu for the bounds). Best of 7 runs of 200 calls."""
    from models.class_statistics import LabelLayout
    from models.losses import class_kl_loss
    from models.vmdls import VMDLS

    torch.manual_seed(0)
    model = VMDLS(input_height=28, enc_type="mnist-conv", enc_out_dim=500, latent_dim=latent_dim,
                  class_num=class_num, in_channels=1)
    y = torch.arange(batch_classes).repeat_interleave(sample_count)
    mu = torch.randn(len(y), latent_dim, requires_grad=True)
    log_var = torch.randn(len(y), latent_dim, requires_grad=True)
    z = mu + torch.exp(0.5 * log_var) * torch.randn(len(y), latent_dim)
    detached = (z.detach(), y, mu.detach(), torch.exp(0.5 * log_var.detach()))

    def kl():
        return class_kl_loss(z, mu, log_var, y, model.class_means, 0.1, layout=LabelLayout.of(y, class_num))

    def statistics():
        model._accumulate(*detached, LabelLayout.of(y, class_num))
        model._epoch_log_likelihoods.clear()
        model._epoch_labels.clear()

    def best(fn, calls=200):
        for _ in range(20):
            fn()
        runs = []
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            runs.append((time.perf_counter() - start) / calls * 1e6)
        return round(min(runs))

    pieces = {"metric_loss_us": best(lambda: model.metric_loss(z, y)), "class_kl_us": best(kl),
              "statistics_first_epoch_us": best(statistics)}
    model.finish_epoch_statistics()
    pieces["statistics_later_epochs_us"] = best(statistics)
    return pieces


def steady(times: list[float]) -> float:
    """The median epoch after the first (warm-up)."""
    return statistics.median(times[1:]) if len(times) > 1 else times[0]


# ------------------------------------------------------------------------------ (c) evaluation

def timed_evaluation(argv: list[str], device: torch.device) -> float:
    """test.py's run; the seconds of its evaluation (fit, passes, scores)."""
    import models.evaluation

    seconds: list[float] = []
    evaluate = models.evaluation.evaluate

    def timed(*a, **k):
        sync(device)
        start = time.perf_counter()
        out = evaluate(*a, **k)
        sync(device)
        seconds.append(time.perf_counter() - start)
        return out

    models.evaluation.evaluate = timed
    try:
        test_script.main(argv)
    finally:
        models.evaluation.evaluate = evaluate
    return seconds[0]


def plain_forward_seconds(checkpoint: str, argv: list[str], device: torch.device, precision: str,
                          repeats: int = 3) -> tuple[float, int]:
    """Forward passes of the trained network (mu) over the images test.py evaluates (the
    known training set, the known test set, the unknown set), preprocessed and held on the
    device, in batches of --batch_size; the best of ``repeats``."""
    from models.checkpoints import load_model, read_checkpoint
    from models.run_settings import evaluation_settings

    args = test_script.build_parser().parse_args(argv)
    record = read_checkpoint(checkpoint)
    args = evaluation_settings(args, set(), record)
    from datasets import KnownUnknownDataModule

    datamodule = KnownUnknownDataModule.from_args(args)
    datamodule.setup("test")
    model = load_model(record).to(device)
    if channels_last_pays(device.type, precision):  # as test.py's evaluation does
        model.use_channels_last()
    loaders = [datamodule.fit_dataloader(), datamodule.known_test_dataloader(),
               *(datamodule.unknown_test_dataloader(name) for name in datamodule.unknown_names)]
    batches = [datamodule.preprocess(x.to(device)) for loader in loaders for x, _ in loader]
    images = sum(len(x) for x in batches)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            for x in batches:
                with autocast(device, autocast_dtype(precision, device)):
                    model(x)
            sync(device)
            best = min(best, time.perf_counter() - start)
    return best, images


# ------------------------------------------------------------------------------ one backbone

def common_flags(args) -> list[str]:
    """main.py's and test.py's flags shared by every run of the benchmark."""
    return ["--accelerator", args.accelerator, "--num_workers", str(args.num_workers), "--offline",
            "--logger", "csv", "--seed", "0", "--overwrite", "--precision", args.precision]


def training_flags(backbone: str, args) -> list[str]:
    """main.py's flags (all but --output_dir) of the timed VMDLS training of ``backbone``."""
    train = data_flags(backbone, args, args.output_dir) + common_flags(args) + [
        "--enc_type", backbone, "--enc_out_dim", str(backbones.default_feature_dim(backbone)),
        "--latent_dim", str(args.latent_dim), "--batch_classes", str(args.batch_classes),
        "--sample_count", str(args.sample_count), "--opt", "sgd", "--lr", "0.01", "--generation_epoch", "0",
        "--margins_epoch", "0", "--max_epochs", str(args.epochs), "--limit_val_batches", "0",
    ]
    if args.limit_train_batches:
        train += ["--limit_train_batches", str(args.limit_train_batches)]
    if args.compile:
        train += ["--compile"]
    return train


def measure(backbone: str, args, device: torch.device) -> dict:
    root = os.path.join(args.output_dir, backbone)
    data = data_flags(backbone, args, args.output_dir)
    train = training_flags(backbone, args)
    batch = args.batch_classes * args.sample_count

    breakdown = {} if args.step_breakdown else None
    last, vmdls_timer = timed_training(train + ["--output_dir", os.path.join(root, "vmdls")], breakdown)
    _, ce_timer = timed_training(train + ["--objective", "ce", "--output_dir", os.path.join(root, "ce")])
    batches = vmdls_timer.batches[-1]
    epoch_s, ce_epoch_s = steady(vmdls_timer.times), steady(ce_timer.times)

    from datasets import KnownUnknownDataModule

    shape_args = train_script.build_parser().parse_args(train)
    shape = KnownUnknownDataModule.from_args(shape_args).image_shape
    floor = floor_throughput(backbone, shape, shape_args.class_num, batch, batches, max(3, args.epochs - 1),
                             device, args.precision, args.compile)

    evaluation = data + common_flags(args) + [
        "--checkpoint_path", last, "--batch_size", str(args.eval_batch_size),
        "--data_transforms", "cifar_test" if "cifar" in data[1] else "blob",
        "--score_stats", args.score_stats, "--output_dir", os.path.join(root, "eval")]
    eval_s = min(timed_evaluation(evaluation, device) for _ in range(args.eval_repeats))
    plain_s, images = plain_forward_seconds(last, evaluation, device, args.precision, repeats=args.eval_repeats + 1)

    epoch_img_per_s = batch * batches / epoch_s
    ce_img_per_s = batch * ce_timer.batches[-1] / ce_epoch_s
    extra = {}
    if breakdown is not None:
        extra = {"training_step_ms": round(1000 * breakdown["step_s"] / breakdown["steps"], 3),
                 "logging_ms": round(1000 * breakdown["logging_s"] / breakdown["steps"], 3),
                 **step_pieces(shape_args.class_num, args.batch_classes, args.sample_count, args.latent_dim)}
    return {
        "backbone": backbone,
        # throughputs to 1e-3 img/s, fine enough that even a slow backbone's epoch_ratio is their quotient
        "floor_img_per_s": round(floor["floor_img_per_s"], 3),
        "epoch_img_per_s": round(epoch_img_per_s, 3),
        "epoch_ratio": round(floor["floor_img_per_s"] / epoch_img_per_s, 3),
        "eval_ratio": round(eval_s / plain_s, 3),
        # beside the four: per-step times, main.py's cross-entropy model, the evaluation's seconds
        "floor_step_ms": round(floor["floor_step_ms"], 3),
        "epoch_step_ms": round(1000 * epoch_s / batches, 3),
        "ce_img_per_s": round(ce_img_per_s, 3),
        "ce_step_ms": round(1000 * ce_epoch_s / ce_timer.batches[-1], 3),
        "vmdls_over_ce": round(epoch_s / batches / (ce_epoch_s / ce_timer.batches[-1]), 3),
        # process CPU time per step (all threads): on a host-bound step, what another job on the machine
        # disturbs least
        "floor_step_cpu_ms": round(floor["floor_step_cpu_ms"], 3),
        "epoch_step_cpu_ms": round(1000 * steady(vmdls_timer.cpu_times) / batches, 3),
        "ce_step_cpu_ms": round(1000 * steady(ce_timer.cpu_times) / ce_timer.batches[-1], 3),
        "batch": f"{args.batch_classes}x{args.sample_count}", "batches_per_epoch": batches,
        # seconds to the microsecond: a tiny run's evaluation takes tens of milliseconds, where rounding to the
        # millisecond would move the quotient eval_s / plain_forward_s by a few per cent
        "epochs_s": [round(t, 6) for t in vmdls_timer.times], "ce_epochs_s": [round(t, 6) for t in ce_timer.times],
        "eval_s": round(eval_s, 6), "plain_forward_s": round(plain_s, 6), "eval_images": images,
        "data": data[1], **extra,
    }


def table(rows: list[dict]) -> str:
    lines = ["| backbone | floor img/s | epoch img/s | epoch_ratio | eval_ratio | floor ms/step | VMDLS ms/step | "
             "CE (main.py) ms/step | VMDLS / CE |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['floor_img_per_s']:.0f} | {r['epoch_img_per_s']:.0f} | "
                     f"**{r['epoch_ratio']:.2f}** | **{r['eval_ratio']:.2f}** | {r['floor_step_ms']:.1f} | "
                     f"{r['epoch_step_ms']:.1f} | {r['ce_step_ms']:.1f} | {r['vmdls_over_ce']:.2f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["mnist-conv"],
                        help=f"registry names, or {TINY} (one convolution, built here)")
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--data_dir", default="./data", help="Fashion-MNIST for the 28x28 backbones on a GPU")
    parser.add_argument("--cpu_data", action="store_true",
                        help="the embedded digits for the 28x28 backbones on a GPU too (no --data_dir needed)")
    parser.add_argument("--class_num", type=int, default=None, help="known classes (default 6)")
    parser.add_argument("--batch_classes", type=int, default=6)
    parser.add_argument("--sample_count", type=int, default=16)
    parser.add_argument("--latent_dim", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs; the first is a warm-up")
    parser.add_argument("--limit_train_batches", type=int, default=None)
    parser.add_argument("--eval_batch_size", type=int, default=256)
    parser.add_argument("--eval_repeats", type=int, default=2,
                        help="test.py runs timed (the fastest counts; the plain passes get one more)")
    parser.add_argument("--score_stats", default="test", choices=("test", "train"))
    parser.add_argument("--synthetic_per_class", type=int, default=500,
                        help="training images per class of the CIFAR-shaped synthetic set")
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--compile", action="store_true", help="main.py --compile (and a compiled floor)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--step_breakdown", action="store_true",
                        help="also: the time per step inside VMDLS's training_step and its logging, and the "
                             "microseconds of the metric loss, the class KL and the statistics update")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    register_tiny()
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    os.makedirs(args.output_dir, exist_ok=True)
    rows = []
    for backbone in args.backbones:
        rows.append(measure(backbone, args, device))
        print(json.dumps(rows[-1]), flush=True)
    result = {"device": device_name(args.accelerator), "date": time.strftime("%Y-%m-%d"),
              "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "torch": str(torch.__version__), "precision": args.precision, "compile": args.compile, "rows": rows}
    write_json(os.path.join(args.output_dir, "throughput.json"), result)
    print(f"device: {result['device']}")
    print(table(rows))
    return result


if __name__ == "__main__":
    run_main(main)
