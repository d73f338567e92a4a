"""Training-epoch time of VMDLS against the bare backbone, measured in one run.

The baseline is the same backbone with a linear softmax classifier and cross-entropy,
trained by the same Lightning loop on the same balanced batches, transforms, optimiser
and device. VMDLS adds the heads, the all-triplets metric loss, the class KL and the
float64 class statistics. Validation is off for both (it is a VMDLS-only diagnostic).
The first epoch is a warm-up; the figure is the median of the following epochs.

    python benchmarks/bench_epoch.py --known_dataset fashion_mnist --data_dir ../shared/data \
        --enc_type resnet18 --accelerator gpu --epochs 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.optim.lr_scheduler import StepLR  # noqa: E402

from datasets import KnownUnknownDataModule  # noqa: E402
from models.backbones import build_backbone, default_feature_dim  # noqa: E402
from models.callbacks import MarginSchedule  # noqa: E402
from models.vmdls import VMDLS  # noqa: E402


class BareClassifier(pl.LightningModule):
    """The baseline: backbone + linear classifier, cross-entropy, the same SGD / StepLR."""

    def __init__(self, enc_type: str, in_channels: int, input_height: int, class_num: int, lr: float):
        super().__init__()
        self.encoder = build_backbone(enc_type, in_channels=in_channels, input_height=input_height,
                                      class_num=class_num)
        self.classifier = nn.Linear(self.encoder.feature_dim, class_num)
        self.lr = lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        h, _ = self.encoder(x)
        loss = nn.functional.cross_entropy(self.classifier(h), y)
        self.log("train_loss", loss, on_step=True, prog_bar=False, batch_size=len(y))
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-4, nesterov=True)
        return {"optimizer": optimizer, "lr_scheduler": StepLR(optimizer, step_size=100, gamma=0.1)}


class EpochTimer(pl.Callback):
    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def _sync(self, module):
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_epoch_start(self, trainer, module):
        self._sync(module)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        self._sync(module)
        self.times.append(time.perf_counter() - self._start)


def time_epochs(module: pl.LightningModule, datamodule, args, callbacks=()) -> list[float]:
    timer = EpochTimer()
    trainer = pl.Trainer(
        accelerator=args.accelerator, devices=1, precision=args.precision, max_epochs=args.epochs,
        limit_train_batches=args.limit_train_batches, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False, callbacks=[timer, *callbacks],
    )
    trainer.fit(module, datamodule=datamodule)
    return timer.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--known_dataset", default="digits")
    parser.add_argument("--unknown_dataset", default=None)
    parser.add_argument("--data_dir", default="./data")
    parser.add_argument("--class_num", type=int, default=10)
    parser.add_argument("--data_transforms", default="mnist")
    parser.add_argument("--enc_type", default="mnist-conv")
    parser.add_argument("--latent_dim", type=int, default=32)
    parser.add_argument("--input_height", type=int, default=28)
    parser.add_argument("--batch_classes", type=int, default=10)
    parser.add_argument("--sample_count", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit_train_batches", type=float, default=1.0)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--output", default=None, help="append the result as one JSON line to this file")
    args = parser.parse_args()
    if args.limit_train_batches > 1:
        args.limit_train_batches = int(args.limit_train_batches)

    unknown = args.unknown_dataset or ("digits_unknown" if args.known_dataset == "digits" else "noise")
    datamodule = KnownUnknownDataModule(
        known_dataset=args.known_dataset, unknown_dataset=unknown, data_dir=args.data_dir,
        class_num=args.class_num, data_transforms=args.data_transforms,
        input_height=args.input_height, batch_classes=args.batch_classes, sample_count=args.sample_count,
        batch_size=512, num_workers=args.num_workers, seed=0)
    datamodule.setup("fit")
    channels, height, _ = datamodule.image_shape

    pl.seed_everything(0, verbose=False)
    bare = time_epochs(BareClassifier(args.enc_type, channels, height, args.class_num, args.lr), datamodule, args)
    pl.seed_everything(0, verbose=False)
    vmdls_model = VMDLS(input_height=height, enc_type=args.enc_type, enc_out_dim=default_feature_dim(args.enc_type),
                        latent_dim=args.latent_dim, class_num=args.class_num, lr=args.lr, generation_epoch=0,
                        in_channels=channels, opt="sgd")
    vmdls = time_epochs(vmdls_model, datamodule, args, callbacks=[MarginSchedule(32, 1.0, 0)])

    steady = lambda times: statistics.median(times[1:]) if len(times) > 1 else times[0]  # noqa: E731
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else platform.processor() or platform.machine()
    result = {
        "date": time.strftime("%Y-%m-%d"), "device": device, "accelerator": args.accelerator,
        "known_dataset": args.known_dataset, "enc_type": args.enc_type,
        "batch": f"{args.batch_classes}x{args.sample_count}", "batches_per_epoch": len(datamodule.train_dataloader()),
        "limit_train_batches": args.limit_train_batches, "precision": args.precision,
        "bare_epoch_s": round(steady(bare), 3), "vmdls_epoch_s": round(steady(vmdls), 3),
        "ratio_vmdls_over_bare": round(steady(vmdls) / steady(bare), 3),
        "bare_epochs_s": [round(t, 3) for t in bare], "vmdls_epochs_s": [round(t, 3) for t in vmdls],
    }
    line = json.dumps(result)
    print(line)
    if args.output:
        with open(args.output, "a") as handle:
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
