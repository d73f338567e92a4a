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
            lines.append(f"weights: {len(self.missing)} backbone tensors not in the file (kept as initialised): {names(self.missing)}")
        if self.mismatched:
            lines.append(f"weights: {len(self.mismatched)} tensors skipped for a shape mismatch: {names(self.mismatched)}")
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


def load_backbone_weights(backbone: nn.Module, path: str, trust: bool = False) -> WeightsReport:
    """Copy the tensors of ``path`` into ``backbone`` by name; report what loaded and what not.

    Keys match by name, after dropping wrapper prefixes such as ``module.`` (DataParallel)
    and ``encoder.`` (a whole VMDLS checkpoint).
    """
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
    backbone.load_state_dict(matched, strict=False)
    report.loaded = sorted(matched)
    report.missing = sorted(set(target) - set(matched) - set(report.mismatched))
    return report
