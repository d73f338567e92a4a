"""Training: turns main.py's parsed settings into a run (output-folder lock, resume, warm
start, Lightning's fit) and returns the path of the checkpoint it wrote."""
from __future__ import annotations

import argparse
import os
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING

from models.kinds import VMDLS_KIND
from utils.errors import UserError
from utils.flags import add_common_args, add_data_args, add_model_args, add_trainer_args, add_training_args, new_parser

if TYPE_CHECKING:  # the run imports them; importing this module does not pay for them
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from datasets import KnownUnknownDataModule
    from models.classifier import CrossEntropyClassifier
    from models.vmdls import VMDLS


def build_training_parser(description: str | None) -> argparse.ArgumentParser:
    """main.py's flags (the harness parses its training steps with them too)."""
    parser = new_parser(description)
    add_common_args(parser)
    add_data_args(parser)
    add_model_args(parser)
    add_training_args(parser)
    add_trainer_args(parser)
    group = parser.add_argument_group("run")
    group.add_argument("--checkpoint_path", default=None, type=str,
                       help="resume from this checkpoint: epoch, optimiser, class statistics and margin")
    group.add_argument("--warm_start", default=None, type=str, metavar="CKPT",
                       help="start a new run from this trained model's weights (backbone and heads), as the "
                            "original's --checkpoint_path did for its staged training: from epoch 0 with a fresh "
                            "optimiser and StepLR, the class statistics zeroed and M_d at --margin_max_distance; "
                            "every flag given applies (batches, --lr, epochs, margins), and the architecture flags "
                            "not given are the checkpoint's")
    group.add_argument("--log_tsne", action="store_true", help="write a t-SNE of the trained latent space")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the backbone and the metric loss (for a GPU; on the CPU it did not pay: "
                            "BENCHMARKS.md)")
    group.add_argument("--ae_features", action="store_true", help=argparse.SUPPRESS)  # test.py's; accepted here
    return parser


def default_output_dir(args: argparse.Namespace) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("outputs", "train", f"{args.known_dataset}-{args.enc_type}-{stamp}")


def build_datamodule(args: argparse.Namespace) -> KnownUnknownDataModule:
    from datasets import KnownUnknownDataModule

    datamodule = KnownUnknownDataModule.from_args(args)
    datamodule.setup("fit")
    height = datamodule.image_shape[1]
    if height != args.input_height:
        raise UserError(f"--input_height {args.input_height} does not match {args.known_dataset}'s "
                        f"{height}x{height} images; pass --input_height {height}")
    return datamodule


def require_checkpoint_file(flag: str, path: str) -> None:
    """A UserError unless ``path`` (given as --``flag``) is a file: one that does not exist, or a
    folder (offering the checkpoint of main.py's layout in it, when there is one)."""
    if os.path.isfile(path):
        return
    if os.path.isdir(path):
        inside = [os.path.join(path, *parts) for parts in (("checkpoints", "last.ckpt"), ("last.ckpt",))]
        found = next((candidate for candidate in inside if os.path.isfile(candidate)), None)
        offer = f"give the checkpoint file in it, {found}" if found else ("give a checkpoint file written by main.py "
                                                                          "(OUTPUT_DIR/checkpoints/last.ckpt)")
        raise UserError(f"--{flag} {path!r} is a directory, not a checkpoint file; {offer}")
    raise UserError(f"--{flag} {path!r} does not exist; give a checkpoint written by main.py (for example "
                    "OUTPUT_DIR/checkpoints/last.ckpt)")


def read_warm_start(args: argparse.Namespace, given: set[str]) -> dict:
    """--warm_start: the trained checkpoint a new run starts from, read without running code
    from it (unless --trust_checkpoint). Its architecture fills the architecture flags not
    given (models.run_settings.warm_start_settings); args.warm_start becomes an absolute path, so that
    args.json names the file wherever the run was started."""
    from models.checkpoints import checkpoint_kind, read_checkpoint
    from models.run_settings import warm_start_settings

    path = args.warm_start
    if args.weights:
        raise UserError("--warm_start and --weights both give the weights to start from; drop --weights (the "
                        "checkpoint holds the backbone)")
    require_checkpoint_file("warm_start", path)
    checkpoint = read_checkpoint(path, trust=args.trust_checkpoint, setting="warm_start")
    kind = checkpoint_kind(checkpoint, setting="warm_start")
    if kind != args.objective:
        raise UserError(f"--warm_start {path!r} holds a model of --objective {kind}, not {args.objective}; "
                        f"warm-start it with --objective {kind}")
    warm_start_settings(args, given, checkpoint)
    args.warm_start = os.path.abspath(path)
    return checkpoint


def warm_start(model: VMDLS | CrossEntropyClassifier, checkpoint: dict, args: argparse.Namespace) -> str:
    """Put the --warm_start checkpoint's backbone and heads into the freshly built ``model``;
    the rest stays as built (the class statistics zero, as the original zeroed its class
    means). M_d starts at --margin_max_distance, as in the original's warm start. Returns a
    line to print."""
    from models.checkpoints import load_network_weights

    loaded = load_network_weights(model, checkpoint)
    margin = ""
    if hasattr(model, "metric_loss"):  # VMDLS; the classifier has no margin
        model.metric_loss.neg_margin = args.margin_max_distance
        margin = f", M_d {args.margin_max_distance:g}"
    return f"warm start from {args.warm_start}: {loaded} weight tensors{margin}, training from epoch 0"


def build_callbacks(args: argparse.Namespace, checkpoint_dir: str) -> tuple[list[pl.Callback], ModelCheckpoint]:
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

    from models.callbacks import DivergenceGuard, EpochSeed, FinetuneSchedule, MarginSchedule, RecordTrainerSettings
    from models.run_settings import trainer_settings

    # No version counter: the folder holds this run only (main.py refuses another run's folder), so last.ckpt
    # is always this run's model rather than a last-v1.ckpt beside an older one.
    checkpoint = ModelCheckpoint(dirpath=checkpoint_dir, filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                                 save_last=True, save_top_k=1, enable_version_counter=False)
    callbacks: list[pl.Callback] = [
        DivergenceGuard(),  # a NaN or infinite loss stops the run before any checkpoint of it
        EpochSeed(args.seed),
        RecordTrainerSettings(trainer_settings(args)),  # a resume restores them, or refuses other ones
        LearningRateMonitor(logging_interval="epoch"),
        checkpoint,
    ]
    if args.objective == VMDLS_KIND.name:  # the margin and the heads-only phase belong to the VMDLS losses
        callbacks.insert(2, MarginSchedule(args.margin_max_distance, args.margin_jump, args.margins_epoch))
        if args.finetune:
            callbacks.insert(3, FinetuneSchedule(args.finetune_epochs))
    return callbacks, checkpoint


def plot_latent_tsne(model: VMDLS | CrossEntropyClassifier, datamodule: KnownUnknownDataModule, output_dir: str,
                     seed: int) -> str:
    """--log_tsne: the trained latent space (mu; for --objective ce, the backbone feature h)
    of the known test and unknown images."""
    import torch

    from models.classifier import CrossEntropyClassifier
    from utils.plots import plot_tsne

    classifier = isinstance(model, CrossEntropyClassifier)
    model.eval()
    mus, labels = [], []
    with torch.no_grad():
        for x, y in datamodule.test_dataloader():
            x = datamodule.preprocess(x.to(model.device))
            mus.append((model.features_and_logits(x)[0] if classifier else model(x)).cpu())
            labels.append(y)
    return plot_tsne(torch.cat(mus).numpy(), torch.cat(labels).numpy(), model.hparams.class_num,
                     os.path.join(output_dir, "tsne_latent.png"), seed=seed,
                     title="t-SNE of the features h (test images)" if classifier
                     else "t-SNE of the latent mu (test images)")


def train(args: argparse.Namespace, given: set[str], argv: list[str] | None = None) -> str:
    """Train as main.py does and return the path of the last checkpoint. ``given``: the flags
    given explicitly (utils.flags.explicit_flags), which a resume checks against the
    checkpoint and a warm start keeps over the checkpoint's architecture; ``argv``: the
    command line that args.json records (sys.argv when None). The output folder stays locked
    (utils.run_folder.claim_output_dir) until the run ends."""
    with ExitStack() as cleanup:
        cleanup.callback(leave_process_group)
        return _train(args, given, argv, cleanup)


def leave_process_group() -> None:
    """End a DDP run's process group before the interpreter exits: Lightning keeps it, and
    gloo's threads still running at exit can abort a finished run's process ("terminate
    called without an active exception", exit status -6)."""
    import sys

    if "torch" not in sys.modules:  # --help, or an error before any work: no process group, and no torch import
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _train(args: argparse.Namespace, given: set[str], argv: list[str] | None, cleanup: ExitStack) -> str:
    import pytorch_lightning as pl

    from models.checkpoints import AtomicCheckpointIO, build_model
    from models.run_settings import resume_settings
    from models.speed import prepare_for_speed
    from models.weights import load_backbone_weights
    from utils.cli import trainer_kwargs
    from utils.loggers import build_loggers, logger_trees
    from utils.run_folder import TRAINING_RUN, claim_output_dir, is_inside, write_run_record

    if args.finetune and args.objective != VMDLS_KIND.name:
        raise UserError("--finetune is for the VMDLS objective (it trains the variational heads first); "
                        "for --objective ce drop --finetune and start from --weights alone")
    if args.finetune and not (args.weights or args.warm_start):
        raise UserError("--finetune trains from given backbone weights; add --weights FILE (or --warm_start CKPT)")
    if args.warm_start and args.checkpoint_path:
        raise UserError("--warm_start starts a new run from a model's weights and --checkpoint_path resumes a run; "
                        "give only one of them")
    if args.checkpoint_path:
        require_checkpoint_file("checkpoint_path", args.checkpoint_path)
        from models.checkpoints import check_optimizer_states, checkpoint_kind, read_checkpoint

        resumed = read_checkpoint(args.checkpoint_path, trust=args.trust_checkpoint)  # refuses NaN weights too
        check_optimizer_states(resumed, args.checkpoint_path)
        kind = checkpoint_kind(resumed)
        if kind != args.objective:
            raise UserError(f"--checkpoint_path {args.checkpoint_path!r} holds a model of --objective {kind}, "
                            f"not {args.objective}; resume it with --objective {kind}")
        resume_settings(args, given, resumed)  # the checkpoint's settings, or a refusal
        del resumed
    warm = read_warm_start(args, given) if args.warm_start else None
    output_dir = args.output_dir = args.output_dir or default_output_dir(args)
    if warm is not None and args.overwrite and is_inside(args.warm_start, output_dir):
        raise UserError(f"--overwrite would delete {args.warm_start}, the checkpoint --warm_start starts from; "
                        "copy it elsewhere or pick another --output_dir")
    # Created, checked for writing and locked before any work; a folder holding another run is refused
    # (a warm start is a new run), and what this run writes is recorded there for --overwrite.
    folder = cleanup.enter_context(claim_output_dir(output_dir, TRAINING_RUN, args.overwrite, args.checkpoint_path,
                                                    trees=logger_trees(args.logger)))
    pl.seed_everything(args.seed, workers=True, verbose=False)
    trainer_args = trainer_kwargs(args)
    datamodule = build_datamodule(args)

    model = build_model(args.objective, vars(args), {"in_channels": datamodule.image_shape[0]})
    if warm is not None:
        print(warm_start(model, warm, args))
        del warm
    elif args.weights and not args.checkpoint_path:
        print(load_backbone_weights(model.encoder, args.weights, trust=args.trust_checkpoint).summary())
    prepare_for_speed(model, trainer_args["accelerator"], args.precision, args.compile)  # channels-last, --compile

    write_run_record(output_dir, args, argv, resumed=folder.resumed_here)
    checkpoint_dir = os.path.join(output_dir, "checkpoints")
    callbacks, checkpoint = build_callbacks(args, checkpoint_dir)
    loggers = build_loggers(output_dir, args.logger, args.offline, project=args.neptune_project, tags=[
        f"known:{args.known_dataset}", f"unknown:{args.unknown_dataset}", f"backbone:{args.enc_type}"],
        keep_metrics=folder.resumed_here)  # a run resumed into its own folder appends to its metrics.csv
    checkpoint_io = AtomicCheckpointIO(args.trust_checkpoint)
    trainer = pl.Trainer(
        **trainer_args, callbacks=callbacks, logger=loggers, default_root_dir=output_dir,
        use_distributed_sampler=False,  # the training batch samplers shard themselves across processes
        num_sanity_val_steps=0, log_every_n_steps=10, deterministic=False,
        # the resume load runs no code from the file; saves are atomic and never hold NaN weights
        plugins=[checkpoint_io],
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=args.checkpoint_path)

    if args.log_tsne and trainer.is_global_zero:
        print(f"t-SNE: {plot_latent_tsne(model, datamodule, output_dir, args.seed)}")
    last = os.path.join(checkpoint_dir, "last.ckpt")
    # fast_dev_run and max_steps=0 skip Lightning's checkpointing, and a resumed run may have nothing left to train
    if not trainer.strategy.broadcast(checkpoint_io.wrote(last)):
        trainer.save_checkpoint(last)
    if trainer.is_global_zero:
        if not checkpoint_io.wrote(last):  # the path printed is always this run's model
            raise UserError(f"the trained model could not be saved to {last}; pick a writable --output_dir")
        print(f"last checkpoint: {last}")
    return last
