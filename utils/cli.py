"""Command-line plumbing shared by main.py, test.py and the autoencoder scripts: the entry point
(``run_main``) and the device and trainer flags."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from utils.errors import UserError


def run_main(main: Callable[[], object]) -> None:
    """Run a script's main; a UserError becomes one line on stderr and exit status 2."""
    try:
        main()
    except UserError as error:
        print(f"error: {error.for_command_line()}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def int_or_float(text: str) -> int | float:
    """Lightning's limit_* flags: an int counts batches, a float is a fraction."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of batches or a fraction, got {text!r}")


def fast_dev_run_value(text: str) -> int | bool:
    if text.lower() in ("true", "yes"):
        return True
    if text.lower() in ("false", "no"):
        return False
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fast_dev_run takes a number of batches, got {text!r}")


def parse_gpus(text: str | None) -> list[int] | int | None:
    """Lightning 1.x's --gpus: "0," or "0,1" names devices, "2" counts them, "-1" is all."""
    if text is None or text.strip() == "":
        return None
    text = text.strip()
    try:
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip() != ""]
        return int(text)
    except ValueError:
        raise UserError(f'`gpus` {text!r} is not a device list like "0," or "0,1" or a count like "2"', setting="gpus")


def _parse_devices(text: str | None):
    if text is None:
        return None
    if text == "auto":
        return "auto"
    return parse_gpus(text)


def resolve_devices(args: argparse.Namespace) -> tuple[str, object]:
    """Turn --gpus / --accelerator / --devices into Lightning's (accelerator, devices)."""
    accelerator = args.accelerator
    devices = _parse_devices(args.devices)
    gpus = parse_gpus(args.gpus)
    if accelerator == "cpu":
        return "cpu", devices if devices is not None else 1
    if gpus is not None and devices is None:
        if gpus == 0 or gpus == []:
            return "cpu", 1
        accelerator = "gpu"
        devices = gpus
    if accelerator == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise UserError("a GPU was asked for (`gpus` or `accelerator` gpu) but none is visible; "
                            "add `accelerator` cpu to run on the CPU", setting="accelerator")
        count = torch.cuda.device_count()
        wanted = devices if isinstance(devices, list) else []
        if any(index >= count for index in wanted) or (isinstance(devices, int) and devices > count):
            raise UserError(f"`gpus`/`devices` {devices} asks for GPUs this machine lacks (it has {count}: "
                            f"{list(range(count))}); pass for example `gpus` \"0,\"", setting="gpus")
    return accelerator, devices if devices is not None else "auto"


def trainer_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments for pl.Trainer from the flags of utils.flags (common and trainer groups)."""
    accelerator, devices = resolve_devices(args)
    kwargs = dict(
        accelerator=accelerator,
        devices=devices,
        strategy=args.strategy,
        precision=args.precision,
        num_nodes=args.num_nodes,
        max_epochs=args.max_epochs,
        max_steps=args.max_steps if args.max_steps is not None else -1,
        fast_dev_run=args.fast_dev_run,
    )
    if args.limit_train_batches is not None:
        kwargs["limit_train_batches"] = args.limit_train_batches
    if args.limit_val_batches is not None:
        kwargs["limit_val_batches"] = args.limit_val_batches
    return kwargs
