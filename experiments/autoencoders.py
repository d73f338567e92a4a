"""What mnist_ae.py and train_resnet_ae.py run: their flags (``build_mnist_ae_parser``,
``build_resnet_ae_parser``, from the same definitions as main.py's and test.py's), the
ResNet script's encoder (``resnet_arch``), the training run
(``train_autoencoder``: the data, its batch transform, the output folder and the trainer
around the model) and the last line they print (``announce_checkpoint``).
The models themselves live in ``models/autoencoders/``."""
from __future__ import annotations

import argparse
import functools
import os

from utils.errors import UserError
from utils.flags import add_common_args, add_known_data_args, add_trainer_args, new_parser, positive

__all__ = ["build_autoencoder_parser", "build_mnist_ae_parser", "build_resnet_ae_parser", "resnet_arch",
           "announce_checkpoint", "train_autoencoder"]

RESNET_ARCHS = ("resnet18", "resnet50")


def build_autoencoder_parser(description: str | None, *, known_dataset: str, data_transforms: str, latent_dim: int,
                             max_epochs: int) -> argparse.ArgumentParser:
    """The common flags, the known-data flags, the autoencoder's sizes, --lr and the trainer."""
    parser = new_parser(description)
    add_common_args(parser)
    add_known_data_args(parser.add_argument_group("data"), known_dataset=known_dataset,
                        data_transforms=data_transforms, class_num=None, batch_size_help="training batch size",
                        class_num_help="train on classes 0..class_num-1, like the classifier "
                                       "(default: 10; 100 for cifar100_known)")
    group = parser.add_argument_group("model")
    group.add_argument("--latent_dim", type=positive(int), default=latent_dim, help="latent size")
    group.add_argument("--enc_out_dim", type=positive(int), default=None,
                       help="accepted for the original's command lines; must equal the encoder's output size")
    parser.add_argument_group("training").add_argument("--lr", type=positive(float), default=1e-4,
                                                       help="Adam learning rate")
    add_trainer_args(parser, max_epochs=max_epochs)
    return parser


def build_mnist_ae_parser(description: str | None = None) -> argparse.ArgumentParser:
    """mnist_ae.py's flags (``description``: its --help text)."""
    return build_autoencoder_parser(description, known_dataset="mnist", data_transforms="mnist", latent_dim=32,
                                    max_epochs=50)


def build_resnet_ae_parser(description: str | None = None) -> argparse.ArgumentParser:
    """train_resnet_ae.py's flags (``description``: its --help text), --enc_type included."""
    parser = build_autoencoder_parser(description, known_dataset="cifar_known", data_transforms="cifar",
                                      latent_dim=256, max_epochs=100)
    parser.add_argument_group("autoencoder").add_argument(
        "--enc_type", default=None, help="resnet18 or resnet50 (default: resnet50 for cifar100_known, else resnet18)")
    return parser


def resnet_arch(args: argparse.Namespace) -> str:
    """train_resnet_ae.py's encoder: ``args.enc_type``, by default resnet50 for cifar100_known
    (as in the original) and resnet18 otherwise."""
    enc_type = args.enc_type or ("resnet50" if args.known_dataset == "cifar100_known" else "resnet18")
    if enc_type not in RESNET_ARCHS:
        raise UserError(f"`enc_type` {enc_type!r} is not supported here; use resnet18 or resnet50", setting="enc_type")
    return enc_type


def announce_checkpoint(path: str) -> None:
    """Print the checkpoint path as the script's last line (once, on the main process)."""
    from pytorch_lightning.utilities import rank_zero_only

    rank_zero_only(print)(f"last checkpoint: {path}", flush=True)


def train_autoencoder(args: argparse.Namespace, arch: str) -> str:
    """Train an AutoEncoder from parsed flags; returns the path of the last checkpoint.

    The output folder is created, checked for writing and locked before any work; one that
    already holds an autoencoder run is refused unless ``overwrite``, which removes only the
    files that run recorded (utils.run_folder.claim_output_dir)."""
    from models.autoencoders import encoder_out_dim
    from utils.cli import trainer_kwargs
    from utils.loggers import logger_trees
    from utils.run_folder import AUTOENCODER_RUN, claim_output_dir

    if args.batch_size < 1:
        raise UserError(f"`batch_size` must be at least 1, not {args.batch_size}", setting="batch_size")
    if args.num_workers < 0:
        raise UserError(f"`num_workers` must be 0 or more, not {args.num_workers}", setting="num_workers")
    if args.enc_out_dim is not None and args.enc_out_dim != encoder_out_dim(arch):
        raise UserError(f"`enc_out_dim` {args.enc_out_dim} does not match the {arch} encoder, whose output "
                        f"size is {encoder_out_dim(arch)}; drop the flag or set it to {encoder_out_dim(arch)}",
                        setting="enc_out_dim")
    class_num = args.class_num
    if class_num is None:
        class_num = 100 if args.known_dataset == "cifar100_known" else 10
    kwargs = trainer_kwargs(args)
    output_dir = args.output_dir or os.path.join("outputs", f"ae_{args.known_dataset}")
    with claim_output_dir(output_dir, AUTOENCODER_RUN, getattr(args, "overwrite", False),
                          trees=logger_trees(args.logger)):
        return _train(args, arch, output_dir, kwargs, class_num)


def _train(args: argparse.Namespace, arch: str, output_dir: str, kwargs: dict, class_num: int) -> str:
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from datasets import BatchTransform, get_known_dataset
    from models.autoencoders import AutoEncoder
    from models.callbacks import DivergenceGuard
    from models.checkpoints import AtomicCheckpointIO
    from utils.loggers import build_loggers

    pl.seed_everything(args.seed, workers=True)

    train_set = get_known_dataset(args.known_dataset, args.data_dir, class_num, train=True)
    val_set = get_known_dataset(args.known_dataset, args.data_dir, class_num, train=False)
    channels, height, width = train_set.image_shape
    if height != width:
        raise UserError(f"the autoencoders take square images but {args.known_dataset} has {height}x{width}; "
                        f"pick a square known dataset")
    BatchTransform(args.data_transforms, train_set.image_shape, train=True)  # fail early on a bad name

    batch_transform = functools.partial(BatchTransform, args.data_transforms, train_set.image_shape)
    model = AutoEncoder.from_args(args, arch, input_height=height, in_channels=channels,
                                  batch_transform=batch_transform)
    loader_kwargs = dict(batch_size=args.batch_size, num_workers=args.num_workers,
                         persistent_workers=args.num_workers > 0)
    train_loader = DataLoader(train_set, shuffle=True, drop_last=len(train_set) > args.batch_size,
                              **loader_kwargs)
    val_loader = DataLoader(val_set, shuffle=False, **loader_kwargs)

    steps_per_epoch = len(train_loader)
    if isinstance(args.limit_train_batches, int):
        steps_per_epoch = min(steps_per_epoch, args.limit_train_batches)
    elif isinstance(args.limit_train_batches, float):
        steps_per_epoch = int(steps_per_epoch * args.limit_train_batches)
    checkpoint = ModelCheckpoint(dirpath=output_dir, save_last=True, enable_version_counter=False)
    loggers = build_loggers(output_dir, args.logger, args.offline, project=args.neptune_project,
                            tags=[f"known:{args.known_dataset}", f"autoencoder:{arch}"], versioned_csv=True)
    checkpoint_io = AtomicCheckpointIO()  # atomic saves, never of NaN weights
    trainer = pl.Trainer(callbacks=[DivergenceGuard(), checkpoint], logger=loggers, default_root_dir=output_dir,
                         enable_progress_bar=True, log_every_n_steps=max(1, min(50, steps_per_epoch)),
                         plugins=[checkpoint_io], **kwargs)
    trainer.fit(model, train_dataloaders=train_loader, val_dataloaders=val_loader)

    last = os.path.join(output_dir, "last.ckpt")
    if not trainer.strategy.broadcast(checkpoint_io.wrote(last)):  # fast_dev_run turns checkpointing off
        trainer.save_checkpoint(last)
    if trainer.is_global_zero and not checkpoint_io.wrote(last):  # the path printed is always this run's model
        raise UserError(f"the trained autoencoder could not be saved to {last}; pick a writable `output_dir`",
                        setting="output_dir")
    return last
