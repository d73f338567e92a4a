"""Loading autoencoder checkpoints: ``load_autoencoder`` and the sniffing of their format.

Two formats load:

- ours, the Lightning checkpoints of ``AutoEncoder`` that mnist_ae.py and
  train_resnet_ae.py write: "state_dict" keys prefixed ``net.`` and "hyper_parameters"
  with arch, input_height, in_channels, latent_dim, lr and data_transforms;
- the original's (``ae_mnist.ckpt``, ``ae_cifar100.ckpt``, pl_bolts' CIFAR-10 AE): the
  networks' parameter names follow the original modules (``encoder``, ``fc``, ``decoder``
  and their children), so these hold the same names without the ``net.`` prefix; the
  architecture, latent size, image side and channels are read off the tensors.
"""
from __future__ import annotations

import math

import torch

from utils.errors import UserError
from utils.torch_files import as_plain_dict, read_torch_file

from .module import AutoEncoder

__all__ = ["load_autoencoder"]

_TRAIN_HINT = ("train one with mnist_ae.py (28x28 grey sets) or train_resnet_ae.py (CIFAR) "
               "and pass the path of its last.ckpt")


def _from_vmdls_checkpoint(state: dict, hparams: dict) -> AutoEncoder | None:
    if "arch" not in hparams or not any(key.startswith("net.") for key in state):
        return None
    names = ("arch", "input_height", "in_channels", "latent_dim", "lr", "data_transforms")
    return AutoEncoder(**{name: hparams[name] for name in names if name in hparams})


def _from_original_checkpoint(state: dict, hparams: dict) -> AutoEncoder | None:
    """The original's MNIST_AE or pl_bolts' AE: same parameter names, without the 'net.' prefix."""
    if "fc.weight" not in state:
        return None
    latent_dim = state["fc.weight"].shape[0]
    if "encoder.encoder.0.weight" in state and "decoder.enc_layer.weight" in state:
        arch, in_channels = "mnist", state["encoder.encoder.0.weight"].shape[1]
        stride1 = sum(1 for key, v in state.items()
                      if key.startswith("decoder.decoder.") and key.endswith(".weight") and v.dim() == 4) - 3
        bottom = int(round(math.sqrt(state["decoder.enc_layer.weight"].shape[0] / 100)))
        input_height, transforms = 4 * (bottom + stride1), "mnist"
    elif "encoder.conv1.weight" in state and "decoder.linear.weight" in state:
        arch = "resnet50" if "encoder.layer1.0.conv3.weight" in state else "resnet18"
        in_channels = state["encoder.conv1.weight"].shape[1]
        input_height, transforms = int(hparams.get("input_height", 32)), "cifar"
    else:
        return None
    return AutoEncoder(arch=arch, input_height=input_height, in_channels=in_channels,
                       latent_dim=latent_dim, data_transforms=transforms)


def load_autoencoder(path: str, map_location="cpu", label: str = "`ae_checkpoint`",
                     trust: bool = False) -> AutoEncoder:
    """Load an autoencoder checkpoint (ours, or the original's) in eval mode with frozen weights.

    ``label`` names where ``path`` came from (a flag, a setting); the error messages start with it.
    The file is read without running code from it unless ``trust`` (--trust_checkpoint): see
    utils.torch_files.
    """
    checkpoint = read_torch_file(path, label, _TRAIN_HINT, map_location, trust=trust)
    not_ae = f"{label} {path!r} is not an autoencoder checkpoint; {_TRAIN_HINT}"
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(not_ae)
    state = checkpoint["state_dict"]
    hparams = as_plain_dict(checkpoint.get("hyper_parameters") or checkpoint.get("hparams"))
    try:
        model = _from_vmdls_checkpoint(state, hparams)
        if model is None:
            model = _from_original_checkpoint(state, hparams)
            if model is not None:
                state = {"net." + key: value for key, value in state.items()}
    except (TypeError, ValueError, KeyError, AttributeError):
        raise UserError(not_ae) from None
    if model is None:
        raise UserError(not_ae)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise UserError(f"{label} {path!r} does not match the autoencoder its settings describe "
                        f"(wrong or damaged file); {_TRAIN_HINT}") from None
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.eval()
    model.requires_grad_(False)
    return model
