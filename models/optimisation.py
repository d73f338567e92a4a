"""The optimiser and schedule of the original's training (VMDLS and the cross-entropy
baseline alike): SGD with Nesterov momentum 0.9 and weight decay 1e-4, or Adam; the
learning rate multiplied by ``--step_gamma`` every ``--step_size`` epochs."""
from __future__ import annotations

from typing import Iterable

import torch
from torch.optim.lr_scheduler import StepLR

from utils.errors import UserError

OPTIMISERS = ("sgd", "adam")


def check_optimiser(opt: str) -> None:
    if opt not in OPTIMISERS:
        raise UserError(f"optimiser {opt!r} is not known; use sgd or adam", setting="opt")


def paper_optimisation(params: Iterable[torch.nn.Parameter], opt: str, lr: float, step_size: int,
                       step_gamma: float) -> dict:
    """What ``configure_optimizers`` returns: the optimiser and its per-epoch StepLR."""
    check_optimiser(opt)
    params = list(params)
    if opt == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4, nesterov=True)
    else:
        optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = StepLR(optimizer, step_size=step_size, gamma=step_gamma)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
