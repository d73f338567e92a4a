"""Speed settings that change no result's meaning: mixed-precision autocast, channels-last
memory format and ``torch.compile`` (BENCHMARKS.md, "Throughput against the floor").

Training takes them from main.py's ``--precision`` and ``--compile`` (Lightning autocasts
the training step itself); evaluation takes ``--precision`` from test.py. The class
statistics, Gaussians and scores stay float64 whatever the precision.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

MIXED_PRECISIONS = ("bf16-mixed", "16-mixed", "bf16", "16")


def channels_last_pays(device_type: str, precision: str | None) -> bool:
    """Channels-last convolutions pay on a GPU's tensor cores, with mixed precision; on the CPU
    they change the convolution kernels (and the bits of the results) for no measured gain."""
    return device_type == "cuda" and str(precision) in MIXED_PRECISIONS


def autocast_dtype(precision: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a mixed ``--precision`` on ``device`` (None: full precision).
    bf16-mixed autocasts on a GPU and on the CPU (as Lightning's training does); 16-mixed
    on a GPU only (CPU float16 autocast is slow where it exists)."""
    precision = str(precision or "")
    if precision in ("bf16-mixed", "bf16"):
        return torch.bfloat16
    if precision in ("16-mixed", "16") and device.type == "cuda":
        return torch.float16
    return None


def evaluation_dtype(precision: str | None) -> torch.dtype | None:
    """float64 for ``--precision 64-true`` (test.py runs the networks in double precision, the
    reference the fixture tests measure float32 rounding against); None: the model's own dtype."""
    return torch.float64 if str(precision or "") in ("64-true", "64") else None


def full_precision(tensor: torch.Tensor) -> torch.Tensor:
    """An autocast output back in float32; float32 and float64 outputs as they are."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``'s type; no autocast for None."""
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


class ChannelsLast:
    """For a module with a backbone ``encoder``: :meth:`use_channels_last` keeps the backbone's
    weights in channels-last memory format, and :meth:`in_memory_format` gives its input the
    same format. The values are the same; the checkpoints' tensors load either way."""

    channels_last = False

    def use_channels_last(self):
        self.channels_last = True
        self.encoder.to(memory_format=torch.channels_last)
        return self

    def in_memory_format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


def prepare_for_speed(model: nn.Module, accelerator: str, precision: str | None, compile: bool = False) -> None:
    """main.py's speed settings, in place: channels-last on a GPU with mixed precision
    (:func:`channels_last_pays`); with ``compile`` (``--compile``), torch.compile of the
    backbone in place (so the checkpoints keep their parameter names) and, for VMDLS, of
    its metric loss."""
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if channels_last_pays("cuda" if gpu else "cpu", precision) and isinstance(model, ChannelsLast):
        model.use_channels_last()
    if compile:
        model.encoder.compile()
        metric_loss = getattr(model, "metric_loss", None)
        if metric_loss is not None:
            metric_loss.compile_dense()
