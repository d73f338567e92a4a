"""--profile paper --released DIR: the README's test commands on the authors' released files,
evaluated without training, on synthetic checkpoints in the original's layout (the builders
of tests/test_original_layouts.py) and tiny data."""
from __future__ import annotations

import os

import pytest
import torch

from conftest import one_torch_thread, write_cifar, write_idx_folder, write_images
from experiments.benchmark import cli
from models.autoencoders import AutoEncoder
from models.backbones import build_backbone
from test_original_layouts import lightning_1_1_checkpoint, original_hparams, seen_data
from utils.errors import UserError


def save_original_vmdls(path, enc_type: str, enc_out_dim: int, known: str, input_height: int, images) -> None:
    torch.manual_seed(0)
    backbone = seen_data(build_backbone(enc_type), images)
    hparams = original_hparams(enc_type, enc_out_dim, 32, 10, input_height, known)
    torch.save(lightning_1_1_checkpoint(backbone, hparams, 32, input_height), path)


def save_original_mnist_ae(path) -> None:
    """The original's MNIST_AE checkpoint: our module's names without the ``net.`` prefix."""
    torch.manual_seed(0)
    source = AutoEncoder(arch="mnist", input_height=28, in_channels=1, latent_dim=32)
    state = {key[len("net."):]: value for key, value in source.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"input_height": 28, "latent_dim": 32}}, path)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A folder with cnn_mnist.ckpt, ae_mnist.ckpt and cifar10_vgg.ckpt (no CIFAR-10
    autoencoder, none of the other checkpoints), and a data folder with MNIST and CIFAR-10."""
    root = tmp_path_factory.mktemp("released")
    folder, data = root / "released", root / "data"
    folder.mkdir()
    write_idx_folder(data / "MNIST" / "raw", gz=True, seed=0)
    write_cifar(str(data), 10, seed=0, per_class_train=2, per_class_test=1)
    write_images(str(data / "odd"), 6)  # the unknown set: six images (the paper's sets are large)
    with one_torch_thread():
        save_original_vmdls(folder / "cnn_mnist.ckpt", "mnist-conv", 500, "mnist", 28, torch.randn(8, 1, 28, 28))
        save_original_vmdls(folder / "cifar10_vgg.ckpt", "vgg", 1024, "cifar_known", 32, torch.randn(8, 3, 32, 32))
    save_original_mnist_ae(folder / "ae_mnist.ckpt")
    return str(folder), str(data)


def _argv(released, out, *extra):
    folder, data = released
    return ["--profile", "paper", "--released", folder, "--data_dir", data, "--output_dir", str(out),
            "--accelerator", "cpu", "--num_workers", "0", "--unknown", f"folder:{data}/odd", *extra]


def test_the_dry_run_lists_the_readme_test_commands_on_the_released_files(released, tmp_path, capsys):
    folder, _ = released
    assert cli.main(["--dry_run", *_argv(released, tmp_path / "out")]) == []
    text = capsys.readouterr().out
    commands = [line for line in text.splitlines() if line.startswith("python ")]
    assert all(c.startswith("python test.py ") for c in commands)  # nothing trained
    mnist = [c for c in commands if f"--checkpoint_path {folder}/cnn_mnist.ckpt" in c]
    vgg = [c for c in commands if f"--checkpoint_path {folder}/cifar10_vgg.ckpt" in c]
    assert len(mnist) == 2 and len(vgg) == 1 and len(commands) == 3
    # The README's MNIST test line, verbatim but for the flags the plan gives.
    for flag in ("--generation_epoch 151", "--step_size 75", "--data_transforms blob", "--batch_size 2500",
                 "--known_dataset mnist", "--class_num 10", "--unknown_dataset folder:"):
        assert all(flag in c for c in mnist), flag
    assert sum(f"--ae_features --ae_checkpoint {folder}/ae_mnist.ckpt" in c for c in mnist) == 1
    assert "--ae_features" not in vgg[0] and "--data_transforms cifar_test" in vgg[0]
    assert not any("--gpus" in c for c in commands)
    assert "# left out: cifar10_resnet: skipped" in text
    assert "# left out: cifar10_vgg: no vmdls_ae row" in text and "ae_cifar10.ckpt" in text


def test_the_released_checkpoints_give_the_paper_table_without_training(released, tmp_path, capsys):
    out = tmp_path / "out"
    with one_torch_thread():
        rows = cli.main(_argv(released, out))
    capsys.readouterr()
    assert [(r["setting"], r["method"]) for r in rows] == [
        ("cnn_mnist", "vmdls"), ("cnn_mnist", "vmdls_ae"), ("cnn_mnist", "vmdls_latent"), ("cnn_mnist", "untrained"),
        ("cifar10_vgg", "vmdls"), ("cifar10_vgg", "vmdls_latent"), ("cifar10_vgg", "untrained")]
    for row in rows:
        assert row["unknown"] == "odd" and 0.0 <= row["auroc"] <= 1.0 and row["eval_seconds"] > 0
        assert row["train_seconds"] == (0.0 if row["method"] == "untrained" else None)
    assert sorted(os.listdir(out / "seed0" / "cnn_mnist")) == ["eval_vmdls", "eval_vmdls_ae"]  # no training runs
    report = (out / "results.md").read_text()
    assert "released checkpoints" in report and "| cnn_mnist | vmdls_ae |" in report
    assert "Left out:" in report and "cifar100_densenet: skipped" in report
    # Resumable as any profile: nothing runs again, the same rows.
    assert cli.main(_argv(released, out)) == rows


def test_a_missing_released_file_is_one_sentence(released, tmp_path):
    folder, _ = released
    with pytest.raises(UserError, match=r"holds no cifar10_resnet\.ckpt.*leave cifar10_resnet out of --settings"):
        cli.main(_argv(released, tmp_path / "o", "--settings", "cnn_mnist", "cifar10_resnet"))
    with pytest.raises(UserError, match="holds none of the released checkpoints"):
        cli.main(["--profile", "paper", "--released", str(tmp_path), "--dry_run"])
    with pytest.raises(UserError, match="is not a folder"):
        cli.main(["--profile", "paper", "--released", str(tmp_path / "none"), "--dry_run"])


@pytest.mark.parametrize("extra,phrase", [
    (["--profile", "quick"], "--released evaluates the paper's settings"),
    (["--profile", "paper", "--max_epochs", "2"], "--max_epochs sets a training")])
def test_released_with_training_flags_is_refused(tmp_path, capsys, extra, phrase):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--dry_run", "--released", str(tmp_path), *extra])
    assert stop.value.code == 2 and phrase in capsys.readouterr().err


def test_an_error_in_a_step_is_one_line(tmp_path, capsys):
    """A UserError raised by a step's function reaches the entry point as the scripts report
    it: one line, exit status 2, no traceback."""
    from utils.cli import run_main

    folder = tmp_path / "released"
    folder.mkdir()
    (folder / "cnn_mnist.ckpt").write_text("not a checkpoint")
    argv = ["--profile", "paper", "--released", str(folder), "--output_dir", str(tmp_path / "out"),
            "--accelerator", "cpu", "--num_workers", "0", "--unknown", "noise"]
    with pytest.raises(SystemExit) as stop:
        run_main(lambda: cli.main(argv))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and "cnn_mnist.ckpt" in err[0]
