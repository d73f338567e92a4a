"""The original implementation's files evaluate and load without conversion.

The original (BGU-CS-VIL/vmdls: Lightning 1.1, torch 1.7) saved its LightningModule
``GMM_VAE_Contrastive(**vars(args))``: the backbone under ``encoder.`` with the module
names of the ODIN/Mahalanobis DenseNet-BC-100, the WideResNet with ``convShortcut``, VGG
and the mnist-conv ``encoder.N`` sequence plus ``dec_layer``; the heads ``fc_mu`` /
``fc_var``; the CIFAR-10 autoencoder it always embedded under ``ae.``; kornia's SIFT
descriptor under ``sift.``; the whole command line as ``hyper_parameters``; and Lightning
1.1's callback states keyed by the callback's class. Each test writes such a checkpoint,
with batch-norm statistics of a network that has seen data, and runs test.py on it.
The fine-tuning weight files of the original README (``checkpoint_100.pth.tar``,
``finetuning_wideresnet.tar``) load through main.py --weights.
"""
import argparse
import collections
from pathlib import Path

import numpy as np
import pytest
import torch

import main as train_script
import test as test_script
from conftest import one_torch_thread, write_cifar
from models.backbones import build_backbone
from models.checkpoints import load_model, read_checkpoint
from utils.torch_files import as_plain_dict

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--accelerator", "cpu", "--gpus", "0,", "--num_workers", "0", "--offline", "--logger", "csv"]

# Distinctive names of each original encoder, as its checkpoints hold them.
ORIGINAL_KEYS = {
    "densenet": ("encoder.conv1.weight", "encoder.block1.layer.0.bn1.running_mean",
                 "encoder.block1.layer.15.conv2.weight",
                 "encoder.trans1.conv1.weight", "encoder.trans2.bn1.running_var", "encoder.bn1.weight",
                 "encoder.fc.weight"),
    "wresnet": ("encoder.conv1.weight", "encoder.block1.layer.0.convShortcut.weight",
                "encoder.block2.layer.0.convShortcut.weight", "encoder.block3.layer.3.bn2.running_var",
                "encoder.bn1.num_batches_tracked"),
    "vgg": ("encoder.encoder.0.weight", "encoder.encoder.1.running_mean", "encoder.encoder.28.weight",
            "encoder.encoder.30.weight"),
    "mnist-conv": ("encoder.encoder.0.weight", "encoder.encoder.10.weight", "encoder.dec_layer.weight"),
}


def original_hparams(enc_type: str, enc_out_dim: int, latent_dim: int, class_num: int, input_height: int,
                     known_dataset: str) -> dict:
    """What GMM_VAE_Contrastive(**vars(args)).save_hyperparameters() kept: its own arguments,
    the script's and Lightning 1.1's Trainer.add_argparse_args flags."""
    return {
        # the model's arguments
        "input_height": input_height, "enc_type": enc_type, "first_conv": False, "maxpool1": False,
        "enc_out_dim": enc_out_dim, "kl_coeff": 0.1, "latent_dim": latent_dim, "lr": 0.001, "class_num": class_num,
        "generation_epoch": 5, "lower_bound": 0.05, "step_size": 200, "step_gamma": 0.1, "cov_scaling": 5.0,
        "recon_weight": 0.1, "gen_weight": 0.5, "log_tsne": False, "weights": None, "finetune": False,
        "finetune_lr": 0.0001, "known_dataset": known_dataset, "opt": "sgd", "ae_features": False,
        "margin_max_distance": np.float64(64.0), "sample_count": 20,
        # main.py's own flags
        "checkpoint_path": None, "margin_jumps": 1.0, "margins_epoch": 30, "unknown_dataset": "imagenet-resize",
        "data_transforms": "cifar", "batch_classes": 10, "offline": False, "batch_size": 200, "num_workers": 8,
        "data_dir": "./data",
        # Lightning 1.1's Trainer flags
        "gpus": "0,", "max_epochs": 500, "min_epochs": 1, "max_steps": None, "min_steps": None, "logger": True,
        "checkpoint_callback": True, "default_root_dir": None, "gradient_clip_val": 0, "process_position": 0,
        "num_nodes": 1, "num_processes": 1, "auto_select_gpus": False, "tpu_cores": None, "log_gpu_memory": None,
        "progress_bar_refresh_rate": 1, "overfit_batches": 0.0, "track_grad_norm": -1,
        "check_val_every_n_epoch": 1, "fast_dev_run": False, "accumulate_grad_batches": 1,
        "limit_train_batches": 1.0, "limit_val_batches": 1.0, "limit_test_batches": 1.0, "val_check_interval": 1.0,
        "flush_logs_every_n_steps": 100, "log_every_n_steps": 50, "accelerator": None, "sync_batchnorm": False,
        "precision": 32, "weights_summary": "top", "weights_save_path": None, "num_sanity_val_steps": 2,
        "truncated_bptt_steps": None, "resume_from_checkpoint": None, "profiler": None, "benchmark": False,
        "deterministic": False, "reload_dataloaders_every_epoch": False, "auto_lr_find": False,
        "replace_sampler_ddp": True, "terminate_on_nan": False, "auto_scale_batch_size": False,
        "prepare_data_per_node": True, "plugins": None, "amp_backend": "native", "amp_level": "O2",
        "distributed_backend": None, "automatic_optimization": None, "move_metrics_to_cpu": False,
        "enable_pl_optimizer": False,
    }


def seen_data(backbone: torch.nn.Module, images: torch.Tensor, batch: int = 2) -> torch.nn.Module:
    """Run ``images`` through in train mode, as training does, so batch-norm statistics move."""
    backbone.train()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            backbone(images[start:start + batch])
    for name, buffer in backbone.named_buffers():
        if name.endswith("running_mean"):
            assert not torch.equal(buffer, torch.zeros_like(buffer)), name
        if name.endswith("running_var"):
            assert not torch.equal(buffer, torch.ones_like(buffer)), name
    return backbone.eval()


def lightning_1_1_checkpoint(backbone: torch.nn.Module, hparams, latent_dim: int, input_height: int) -> dict:
    from pytorch_lightning.callbacks import ModelCheckpoint

    torch.manual_seed(1)
    feature_dim = backbone.feature_dim
    state = collections.OrderedDict((f"encoder.{k}", v.clone()) for k, v in backbone.state_dict().items())
    for head in ("fc_mu", "fc_var"):
        linear = torch.nn.Linear(feature_dim, latent_dim)
        state[f"{head}.weight"], state[f"{head}.bias"] = linear.weight.detach(), linear.bias.detach()
    # pl_bolts' CIFAR-10 AE, always embedded (a few of its tensors), and kornia's SIFT pooling kernel.
    state.update({"ae.encoder.conv1.weight": torch.randn(64, 3, 3, 3), "ae.encoder.bn1.running_mean": torch.zeros(64),
                  "ae.fc.weight": torch.randn(256, 512), "ae.decoder.linear.weight": torch.randn(2048, 256),
                  "sift.pk.weight": torch.randn(1, 1, 2 * (input_height // 5), 2 * (input_height // 5))})
    parameters = [i for i, k in enumerate(state) if not k.startswith(("ae.", "sift.")) and "running" not in k]
    return {
        "epoch": 500, "global_step": 195500, "pytorch-lightning_version": "1.1.0",
        "callbacks": {ModelCheckpoint: {"monitor": "f1_score", "best_model_score": torch.tensor(0.93),
                                        "best_model_path": "checkpoints/cifar_known/VMDLS-1/checkpoint-487-0.930.ckpt",
                                        "current_score": torch.tensor(0.92),
                                        "dirpath": "checkpoints/cifar_known/VMDLS-1/"}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-5, "momentum": 0.9, "dampening": 0,
                                                               "weight_decay": 0.0001, "nesterov": True,
                                                               "initial_lr": 0.001, "params": parameters}]}],
        "lr_schedulers": [{"step_size": 200, "gamma": 0.1, "base_lrs": [0.001], "last_epoch": 500, "_step_count": 501,
                           "verbose": False, "_get_lr_called_within_step": False, "_last_lr": [1e-5]}],
        "state_dict": state,
        "hparams_name": "kwargs",
        "hyper_parameters": hparams,
    }


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """DenseNet-100 and WRN-28-10 run ~100 small ops a pass: one thread is far faster on a
    shared CPU (measured: 0.05 s against 5 s)."""
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    written = write_cifar(str(root), 10, seed=0, per_class_train=2, per_class_test=1)
    write_cifar(str(root), 100, seed=1, per_class_train=2, per_class_test=1)
    images = torch.tensor(written["train"][0], dtype=torch.float32).view(-1, 3, 32, 32) / 255.0
    images = (images - 0.5) / 0.25  # roughly the CIFAR normalisation
    return str(root), images[:8]


@pytest.fixture(scope="module")
def wide_resnet(cifar):
    """WRN-28-10 is slow on a CPU: built and shown data once for both of its tests."""
    torch.manual_seed(0)
    return seen_data(build_backbone("wresnet", class_num=10), cifar[1][:4])


def evaluate(tmp_path, checkpoint: dict, argv: list[str]) -> dict:
    path = tmp_path / "original.ckpt"
    torch.save(checkpoint, path)
    for name in ORIGINAL_KEYS[as_plain_dict(checkpoint["hyper_parameters"])["enc_type"]]:
        assert name in checkpoint["state_dict"], name
    # The weights load as saved (batch-norm statistics included); nothing is re-initialised.
    model = load_model(read_checkpoint(str(path)), {"in_channels": 1 if "mnist" in str(argv) else 3})
    for key, value in model.state_dict().items():
        if key in checkpoint["state_dict"]:
            assert torch.equal(value, checkpoint["state_dict"][key]), key
    results = test_script.main(["--checkpoint_path", str(path), *argv, *COMMON, "--output_dir", str(tmp_path / "out")])
    for key in ("auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr", "closed_set_accuracy", "f1_macro_best", "jitter"):
        assert np.isfinite(results[key]), key
    assert results["n_known"] > 0 and results["n_unknown"] > 0 and results["checkpoint_kind"] == "vmdls"
    return results


# The original README's CIFAR test commands (benchmarks/readme_original_commands.txt), on tiny
# data: two known classes, cifar_unknown for the unknown set.
def cifar_command(root: str, enc_type: str, latent_dim: int, enc_out_dim: int) -> list[str]:
    return ["--enc_type", enc_type, "--latent_dim", str(latent_dim), "--enc_out_dim", str(enc_out_dim),
            "--max_epochs", "500", "--generation_epoch", "5", "--lower_bound", "0.05", "--data_dir", root,
            "--step_size", "100", "--margin_max_distance", "64", "--known_dataset", "cifar_known",
            "--unknown_dataset", "cifar_unknown", "--data_transforms", "cifar_test", "--input_height", "32",
            "--class_num", "2", "--kl_coeff", "0.1", "--lr", "0.001", "--margin_jump", "1.0", "--margins_epoch", "30",
            "--batch_classes", "1", "--sample_count", "4996", "--batch_size", "2500"]


def test_the_originals_densenet_checkpoint_evaluates(cifar, tmp_path):
    root, images = cifar
    torch.manual_seed(0)
    backbone = seen_data(build_backbone("densenet", class_num=2), images)
    hparams = original_hparams("densenet", 342, 32, 2, 32, "cifar_known")
    evaluate(tmp_path, lightning_1_1_checkpoint(backbone, hparams, 32, 32), cifar_command(root, "densenet", 32, 342))


def test_the_originals_wide_resnet_checkpoint_evaluates(cifar, wide_resnet, tmp_path):
    from pytorch_lightning.utilities.parsing import AttributeDict

    root, _ = cifar
    hparams = AttributeDict(original_hparams("wresnet", 640, 32, 2, 32, "cifar_known"))  # Lightning 1.x's hparams type
    evaluate(tmp_path, lightning_1_1_checkpoint(wide_resnet, hparams, 32, 32), cifar_command(root, "wresnet", 32, 640))


def test_the_originals_vgg_checkpoint_evaluates_with_its_settings_from_the_checkpoint(cifar, tmp_path):
    """The model settings come from the checkpoint's hyperparameters, here an argparse Namespace."""
    root, images = cifar
    torch.manual_seed(0)
    backbone = seen_data(build_backbone("vgg"), images)
    hparams = argparse.Namespace(**original_hparams("vgg", 1024, 32, 2, 32, "cifar_known"))
    results = evaluate(tmp_path, lightning_1_1_checkpoint(backbone, hparams, 32, 32),
                       ["--known_dataset", "cifar_known", "--unknown_dataset", "cifar_unknown", "--data_dir", root,
                        "--data_transforms", "cifar_test", "--batch_size", "64"])
    assert results["enc_type"] == "vgg"


def test_the_originals_mnist_conv_checkpoint_evaluates(tmp_path):
    torch.manual_seed(0)
    backbone = seen_data(build_backbone("mnist-conv"), torch.randn(8, 1, 28, 28))
    hparams = original_hparams("mnist-conv", 500, 32, 2, 28, "digits")
    evaluate(tmp_path, lightning_1_1_checkpoint(backbone, hparams, 32, 28),
             ["--enc_type", "mnist-conv", "--latent_dim", "32", "--enc_out_dim", "500", "--known_dataset", "digits",
              "--unknown_dataset", "digits_unknown", "--data_transforms", "blob", "--input_height", "28",
              "--class_num", "2", "--batch_classes", "1", "--sample_count", "4996", "--batch_size", "2500"])


# ------------------------------------------------------------------------- fine-tuning weights

def finetune(root: str, tmp_path, enc_type: str, enc_out_dim: int, known: str, class_num: int, weights: str,
             capsys) -> tuple[dict, str]:
    last = train_script.main([
        "--enc_type", enc_type, "--latent_dim", "32", "--enc_out_dim", str(enc_out_dim), "--data_dir", root,
        "--known_dataset", known, "--unknown_dataset", "noise",
        "--data_transforms", "cifar", "--input_height", "32", "--class_num", str(class_num), "--lr", "0.001",
        "--opt", "sgd", "--batch_classes", "2", "--sample_count", "2", "--batch_size", "16", "--weights", weights,
        "--finetune_lr", "0.01", "--finetune", "--max_steps", "1", "--limit_val_batches", "0", *COMMON,
        "--output_dir", str(tmp_path / "run")])
    return torch.load(last, map_location="cpu", weights_only=True)["state_dict"], capsys.readouterr().out


def test_checkpoint_100_pth_tar_loads_through_weights(cifar, tmp_path, capsys):
    """The README's CIFAR-100 DenseNet-BC-100 (densenet-pytorch's checkpoint.pth.tar layout:
    epoch, state_dict, best_prec1), saved by a torch of before 1.6 (the legacy format)."""
    root, images = cifar
    torch.manual_seed(2)
    source = seen_data(build_backbone("densenet", class_num=100), images[:4])
    state = collections.OrderedDict((k, v.clone()) for k, v in source.state_dict().items())
    path = tmp_path / "checkpoint_100.pth.tar"
    torch.save({"epoch": 300, "state_dict": state, "best_prec1": torch.tensor(77.49)}, path,
               _use_new_zipfile_serialization=False)
    trained, printed = finetune(root, tmp_path, "densenet", 342, "cifar100_known", 100, str(path), capsys)
    assert f"weights: loaded {len(state)} tensors" in printed and "not in the file" not in printed
    assert "matched nothing" not in printed and "shape mismatch" not in printed
    for key, value in state.items():  # the heads-only phase leaves the loaded weights as they were
        if value.is_floating_point() and "running" not in key:
            assert torch.equal(trained[f"encoder.{key}"], value), key


def test_finetuning_wideresnet_tar_loads_through_weights(cifar, wide_resnet, tmp_path, capsys):
    """The README's WRN-28-10 (WideResNet-pytorch's layout, with its classifier ``fc``, which the
    original's encoder lacks: reported as matching nothing)."""
    root, _ = cifar
    state = collections.OrderedDict((k, v.clone()) for k, v in wide_resnet.state_dict().items())
    state["fc.weight"], state["fc.bias"] = torch.randn(10, 640), torch.zeros(10)
    path = tmp_path / "finetuning_wideresnet.tar"
    torch.save({"epoch": 200, "state_dict": state, "best_prec1": 96.1}, path)
    trained, printed = finetune(root, tmp_path, "wresnet", 640, "cifar_known", 10, str(path), capsys)
    assert f"weights: loaded {len(state) - 2} tensors" in printed and "not in the file" not in printed
    assert "2 tensors in the file matched nothing: fc.weight, fc.bias" in printed
    for key in ("conv1.weight", "block1.layer.0.convShortcut.weight", "block3.layer.3.conv2.weight", "bn1.weight"):
        assert torch.equal(trained[f"encoder.{key}"], state[key]), key
