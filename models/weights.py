"""Loading backbone weights from a state_dict file (--weights)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from utils.errors import UserError
from utils.torch_files import read_torch_file

_PREFIXES = ("module.", "encoder.", "model.", "backbone.")


@dataclass
class WeightsReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)      # in the backbone, not in the file
    unused: list[str] = field(default_factory=list)       # in the file, matching nothing
    mismatched: list[str] = field(default_factory=list)   # same name, other shape

    def summary(self, limit: int = 8) -> str:
        def names(keys):
            return ", ".join(keys[:limit]) + (" ..." if len(keys) > limit else "")
        lines = [f"weights: loaded {len(self.loaded)} tensors"]
        if self.missing:
            lines.append(f"weights: {len(self.missing)} backbone tensors not in the file (kept as initialised): "
                         f"{names(self.missing)}")
        if self.mismatched:
            lines.append(f"weights: {len(self.mismatched)} tensors skipped for a shape mismatch: "
                         f"{names(self.mismatched)}")
        if self.unused:
            lines.append(f"weights: {len(self.unused)} tensors in the file matched nothing: {names(self.unused)}")
        return "\n".join(lines)


def read_state_dict(path: str, trust: bool = False) -> dict[str, torch.Tensor]:
    """A state_dict from a file, possibly nested under 'state_dict' (Lightning, .pth.tar), read
    without running code from it unless ``trust`` (--trust_checkpoint): see utils.torch_files."""
    payload = read_torch_file(path, "weights file", "give a state_dict saved with torch.save", setting="weights",
                              trust=trust)
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise UserError(f"weights file {path!r} holds no state_dict of tensors; save one with "
                        "torch.save(model.state_dict(), path)", setting="weights")
    return payload


def _match_key(key: str, targets: dict[str, torch.Tensor]) -> str | None:
    candidate = key
    while True:
        if candidate in targets:
            return candidate
        for prefix in _PREFIXES:
            if candidate.startswith(prefix):
                candidate = candidate[len(prefix):]
                break
        else:
            return None


# The least share of the backbone's tensors a --weights file must fill. A file saved from this
# backbone fills all of them (what its own model had around it, such as a classifier ``fc``,
# matches nothing and is reported); an older one may lack a few, such as the batch-norm
# ``num_batches_tracked`` counters that torch before 0.4.1 did not save, and still be the
# intended file. Filling fewer than half, the file is for another architecture or naming: most
# of the network would stay randomly initialised, and the run (with --finetune, its heads on a
# frozen random backbone) would not be the one asked for.
MIN_LOADED_SHARE = 0.5


def load_backbone_weights(backbone: nn.Module, path: str, trust: bool = False) -> WeightsReport:
    """Copy the tensors of ``path`` into ``backbone`` by name; report what loaded and what not.

    Keys match by name, after dropping wrapper prefixes such as ``module.`` (DataParallel)
    and ``encoder.`` (a whole VMDLS checkpoint). Nothing is loaded, and a UserError names
    the file, when it would fill fewer than :data:`MIN_LOADED_SHARE` of the backbone's
    tensors (with the count), or when a tensor it would load holds NaN or infinite values.
    """
    from models.checkpoints import non_finite_state

    source = read_state_dict(path, trust=trust)
    target = backbone.state_dict()
    report = WeightsReport()
    matched: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        name = _match_key(key, target)
        if name is None:
            report.unused.append(key)
        elif target[name].shape != value.shape:
            report.mismatched.append(name)
        else:
            matched[name] = value
    if not matched or len(matched) < MIN_LOADED_SHARE * len(target):
        detail = "; ".join(part for part in (
            f"{len(report.unused)} of the file's {len(source)} tensors match no backbone name" if report.unused else "",
            f"{len(report.mismatched)} have another shape" if report.mismatched else "") if part)
        raise UserError(f"`weights` {path!r} loaded {len(matched)} of {len(target)} backbone tensors"
                        f"{f' ({detail})' if detail else ''}, too few to be this backbone's weights (at least half "
                        "must load); give a state_dict saved from this `enc_type`, or set `enc_type` to the backbone "
                        "it was saved from", setting="weights")
    found = non_finite_state(matched.items())
    if found:
        name, kind = found
        raise UserError(f"`weights` {path!r} holds {'NaN' if kind == 'nan' else 'infinite'} values (in {name}), so "
                        "the backbone cannot start from it; give a state_dict of finite weights", setting="weights")
    backbone.load_state_dict(matched, strict=False)
    report.loaded = sorted(matched)
    report.missing = sorted(set(target) - set(matched) - set(report.mismatched))
    return report
