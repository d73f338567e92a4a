"""Autoencoders (models/autoencoders/) and their training scripts mnist_ae.py / train_resnet_ae.py."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import one_torch_thread
from models.autoencoders import AutoEncoder, MnistAE, ResNetAE, load_autoencoder
from models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from utils.errors import UserError

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("channels,side", [(1, 28), (3, 32), (1, 16)])
def test_mnist_ae_reconstructs_shape(channels, side):
    net = MnistAE(input_height=side, in_channels=channels, latent_dim=32)
    x = torch.randn(3, channels, side, side)
    assert net(x).shape == x.shape


def test_mnist_ae_rejects_side_not_multiple_of_4():
    with pytest.raises(UserError):
        MnistAE(input_height=30)


def test_resnet18_ae_reconstructs_shape():
    net = ResNetAE("resnet18", input_height=32, in_channels=3, latent_dim=256)
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == x.shape
    assert net.fc.in_features == 512 and net.fc.out_features == 256


def test_resnet18_ae_decodes_28x28_grey_to_input_size():
    net = ResNetAE("resnet18", input_height=28, in_channels=1)
    x = torch.randn(2, 1, 28, 28)
    assert net(x).shape == x.shape


def test_resnet50_ae_reconstructs_single_image():
    net = ResNetAE("resnet50", input_height=32, in_channels=3).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert net(x).shape == x.shape
    assert net.fc.in_features == 2048


@pytest.mark.parametrize("arch,block", [("resnet18", BasicBlock), ("resnet50", Bottleneck)])
def test_resnet_ae_encoder_is_the_backbone_resnet(arch, block):
    net = ResNetAE(arch, input_height=32, in_channels=3)
    assert isinstance(net.encoder, ResNet)
    assert isinstance(net.encoder.layer1[0], block)
    assert net.encoder.conv1.kernel_size == (3, 3) and net.encoder.conv1.stride == (1, 1)  # CIFAR stem
    assert isinstance(net.encoder.maxpool, torch.nn.Identity)  # no max-pool
    assert net.fc.in_features == net.encoder.feature_dim


def test_autoencoder_rejects_misspelt_keyword():
    with pytest.raises(TypeError):
        AutoEncoder(arch="mnist", latnt_dim=3)


def test_autoencoder_errors_name_the_setting_not_a_flag():
    with pytest.raises(UserError) as info:
        AutoEncoder(arch="mnist", latent_dim=0)
    assert info.value.setting == "latent_dim" and "--" not in str(info.value)
    with pytest.raises(UserError) as info:
        ResNetAE("vgg")
    assert info.value.setting == "enc_type" and "--" not in str(info.value)


def test_autoencoder_from_args_takes_the_parsed_flags():
    import argparse

    args = argparse.Namespace(latent_dim=12, lr=3e-4, data_transforms=None)
    model = AutoEncoder.from_args(args, "mnist", input_height=16, in_channels=3)
    assert dict(model.hparams) == {"arch": "mnist", "input_height": 16, "in_channels": 3, "latent_dim": 12,
                                   "lr": 3e-4, "data_transforms": None}


def test_autoencoder_normalises_batches_with_the_transform_it_is_given():
    """The trainer (experiments.autoencoders) passes the data's BatchTransform; the model
    applies its training or evaluation form after each batch reaches the device, records
    only data_transforms, and uses batches as they come without one."""
    built = []

    def halve(train: bool) -> torch.nn.Module:
        built.append(train)
        return torch.nn.Identity() if train else _Scale(0.5)

    model = AutoEncoder(arch="mnist", input_height=28, in_channels=1, data_transforms="mnist", batch_transform=halve)
    assert "batch_transform" not in model.hparams and model.hparams.data_transforms == "mnist"
    x, y = torch.ones(2, 1, 28, 28), torch.zeros(2)
    model.eval()
    assert torch.equal(model.on_after_batch_transfer([x, y], 0)[0], x / 2)
    model.on_after_batch_transfer([x, y], 0)
    model.train()
    assert torch.equal(model.on_after_batch_transfer([x, y], 0)[0], x)
    assert built == [False, True]  # each form built once
    plain = AutoEncoder(arch="mnist", input_height=28, in_channels=1, data_transforms="mnist")
    assert plain.on_after_batch_transfer([x, y], 0)[0] is x


class _Scale(torch.nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def test_autoencoder_forward_rejects_wrong_image_shape():
    model = AutoEncoder(arch="mnist", input_height=28, in_channels=1)
    with pytest.raises(UserError, match="ae_checkpoint"):
        model(torch.zeros(1, 3, 32, 32))


# --------------------------------------------------------------------------- optimisation

@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.mark.parametrize("arch,shape,steps,factor", [("mnist", (1, 28, 28), 60, 0.85),
                                                     ("resnet18", (3, 8, 8), 10, 0.5)])
def test_a_few_adam_steps_lower_the_mse(arch, shape, steps, factor):
    torch.manual_seed(0)
    model = AutoEncoder(arch=arch, input_height=shape[-1], in_channels=shape[0], latent_dim=32, lr=1e-3,
                        data_transforms=None)
    # a fixed tiny batch of blobby images in the normalised range [-1, 1]
    generator = torch.Generator().manual_seed(1)
    coarse = (torch.rand(4, shape[0], shape[1] // 4, shape[2] // 4, generator=generator) > 0.6).float()
    x = torch.nn.functional.interpolate(coarse, size=shape[1:], mode="bilinear") * 2 - 1
    optimiser = model.configure_optimizers()
    model.train()
    with torch.no_grad():
        before = model.reconstruction_loss(x).item()
    for _ in range(steps):
        optimiser.zero_grad()
        loss = model.reconstruction_loss(x)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        after = model.reconstruction_loss(x).item()
    assert after < factor * before


# --------------------------------------------------------------------------- loading

def test_load_autoencoder_missing_file(tmp_path):
    with pytest.raises(UserError, match="`ae_checkpoint`") as info:
        load_autoencoder(str(tmp_path / "nope.ckpt"))
    assert "mnist_ae.py" in str(info.value) and "train_resnet_ae.py" in str(info.value)
    assert info.value.for_command_line().startswith("--ae_checkpoint ")  # the script names the flag


@pytest.mark.parametrize("content", ["text", "not_ae_checkpoint", "not_a_dict"])
def test_load_autoencoder_rejects_non_autoencoder_files(tmp_path, content):
    path = tmp_path / "other.ckpt"
    if content == "text":
        path.write_text("hello\n")
    elif content == "not_ae_checkpoint":
        torch.save({"state_dict": {"backbone.weight": torch.zeros(2)}, "hyper_parameters": {"enc_type": "vgg"}},
                   path)
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(UserError, match="`ae_checkpoint`"):
        load_autoencoder(str(path))


def test_load_autoencoder_rejects_mismatched_weights(tmp_path):
    model = AutoEncoder(arch="mnist", input_height=28, in_channels=1, latent_dim=8)
    state = model.state_dict()
    state.pop("net.fc.bias")
    path = tmp_path / "broken.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": dict(model.hparams)}, path)
    with pytest.raises(UserError, match="`ae_checkpoint`"):
        load_autoencoder(str(path))


def test_load_autoencoder_reads_original_layout_checkpoint(tmp_path):
    """The original's MNIST_AE / pl_bolts AE checkpoints: same names without the 'net.' prefix."""
    torch.manual_seed(0)
    for arch, shape in (("mnist", (1, 28, 28)), ("resnet18", (3, 32, 32))):
        source = AutoEncoder(arch=arch, input_height=shape[-1], in_channels=shape[0], latent_dim=16).eval()
        state = {key[len("net."):]: value for key, value in source.state_dict().items()}
        path = tmp_path / f"original_{arch}.ckpt"
        torch.save({"state_dict": state, "hyper_parameters": {"input_height": shape[-1], "enc_type": arch,
                                                              "latent_dim": 16}}, path)
        loaded = load_autoencoder(str(path))
        assert loaded.hparams.arch == arch and loaded.hparams.latent_dim == 16
        x = torch.randn(2, *shape)
        with torch.no_grad():
            assert torch.allclose(loaded(x), source(x), atol=1e-6)


# sha256 of the "name:shape" lines of AutoEncoder(arch, side, channels, latent_dim=16).state_dict(), computed
# with models/autoencoders.py as it was before the package split (its own ResNetEncoder); checkpoints written
# then must keep loading, so the parameter names, order and shapes may not change.
PRE_SPLIT_STATE_LAYOUT = {
    ("mnist", 28, 1): (32, "b3e36760bb8a45cbe7c32472c76dbd94b3697fb0e1d129c82a80c7846fc9c75e"),
    ("resnet18", 32, 3): (239, "931a4ca479c832436801fdfb992425f28da460095f40eff4753db606f38ae84c"),
    ("resnet50", 32, 3): (629, "6a13b7c86323cc4dec4d1f4b17b8695cffeacfbae9ba96f4aff67eefdc7275b4"),
}


@pytest.mark.parametrize("arch,side,channels", list(PRE_SPLIT_STATE_LAYOUT))
def test_parameter_layout_matches_pre_split_checkpoints(arch, side, channels):
    state = AutoEncoder(arch=arch, input_height=side, in_channels=channels, latent_dim=16).state_dict()
    lines = "\n".join(f"{key}:{tuple(value.shape)}" for key, value in state.items())
    assert (len(state), hashlib.sha256(lines.encode()).hexdigest()) == PRE_SPLIT_STATE_LAYOUT[(arch, side, channels)]


@pytest.mark.parametrize("arch,shape", [("mnist", (1, 28, 28)), ("resnet18", (3, 32, 32))])
def test_load_autoencoder_reads_lightning_checkpoint_of_pre_split_code(tmp_path, arch, shape):
    """The layout AutoEncoder checkpoints written by Lightning had: 'net.'-prefixed weights and the six
    hyperparameters (the parameter names are pinned by test_parameter_layout_matches_pre_split_checkpoints)."""
    torch.manual_seed(0)
    source = AutoEncoder(arch=arch, input_height=shape[-1], in_channels=shape[0], latent_dim=16, lr=1e-3,
                         data_transforms=None).eval()
    hparams = {"arch": arch, "input_height": shape[-1], "in_channels": shape[0], "latent_dim": 16, "lr": 1e-3,
               "data_transforms": None}
    assert dict(source.hparams) == hparams
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 0, "global_step": 2, "pytorch-lightning_version": "2.4.0", "state_dict": source.state_dict(),
                "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": [], "hparams_name": "kwargs",
                "hyper_parameters": hparams}, path)
    loaded = load_autoencoder(str(path))
    assert dict(loaded.hparams) == hparams
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_load_autoencoder_messages_use_the_label(tmp_path):
    with pytest.raises(UserError, match="ae_model") as info:
        load_autoencoder(str(tmp_path / "nope.ckpt"), label="ae_model")
    assert "ae_checkpoint" not in str(info.value)


def test_load_autoencoder_tolerates_classes_that_no_longer_exist(tmp_path, monkeypatch):
    """Old Lightning / pl_bolts checkpoints pickle classes that today's packages may lack."""
    import types

    module = types.ModuleType("vmdls_gone_module")

    class OldHparams(dict):
        pass

    OldHparams.__module__, OldHparams.__qualname__ = module.__name__, "OldHparams"
    module.OldHparams = OldHparams
    monkeypatch.setitem(sys.modules, module.__name__, module)
    source = AutoEncoder(arch="mnist", input_height=28, in_channels=1, latent_dim=8)
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": source.state_dict(),
                "hyper_parameters": OldHparams(dict(source.hparams)),
                "callbacks": {OldHparams: {"x": 1}}}, path)
    monkeypatch.delitem(sys.modules, module.__name__)
    loaded = load_autoencoder(str(path))
    assert loaded.hparams.latent_dim == 8


# --------------------------------------------------------------------------- scripts end to end

def _run_script(script: str, *args: str) -> str:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, script, *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    last_line = result.stdout.strip().splitlines()[-1]
    assert last_line.startswith("last checkpoint: "), result.stdout[-2000:]
    return last_line[len("last checkpoint: "):]


def _check_checkpoint(path: str, arch: str, shape: tuple) -> None:
    assert os.path.isfile(path)
    model = load_autoencoder(path)
    assert isinstance(model, AutoEncoder) and not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert model.hparams.arch == arch
    x = torch.rand(3, *shape) * 2 - 1  # a normalised batch
    with torch.no_grad():
        x_hat = model(x)
    assert x_hat.shape == x.shape and torch.isfinite(x_hat).all()


def test_mnist_ae_script_end_to_end(tmp_path):
    path = _run_script("mnist_ae.py", "--known_dataset", "digits", "--class_num", "6", "--max_epochs", "1",
                       "--limit_train_batches", "2", "--limit_val_batches", "1", "--accelerator", "cpu",
                       "--batch_size", "16", "--num_workers", "0", "--output_dir", str(tmp_path))
    assert Path(path).resolve() == (tmp_path / "last.ckpt").resolve()
    _check_checkpoint(path, "mnist", (1, 28, 28))
    assert list(tmp_path.glob("lightning_logs/*/metrics.csv"))


def test_train_resnet_ae_script_fast_dev_run_on_grey_digits(tmp_path):
    path = _run_script("train_resnet_ae.py", "--known_dataset", "digits", "--class_num", "6", "--fast_dev_run",
                       "--accelerator", "cpu", "--batch_size", "8", "--num_workers", "0",
                       "--output_dir", str(tmp_path))
    _check_checkpoint(path, "resnet18", (1, 28, 28))


def test_script_bad_flag_is_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, "train_resnet_ae.py", "--enc_type", "vgg", "--output_dir",
                             str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--enc_type" in result.stderr
