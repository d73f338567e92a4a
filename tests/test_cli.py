"""The original README's commands parse unchanged; bad input is one sentence and exit 2."""
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import main as train_script
import test as test_script
from utils.cli import parse_gpus, resolve_devices
from utils.flags import explicit_flags

ROOT = Path(__file__).resolve().parents[1]

# Verbatim from README-original (the interface to keep).
TRAIN_COMMANDS = [
    'python main.py --enc_type vgg --latent_dim 32 --enc_out_dim 1024 --max_epochs 500 --gpus "1,"  --generation_epoch 0 --lower_bound 0.95 --data_dir ./data --margin_max_distance 32 --known_dataset cifar_known --unknown_dataset imagenet-resize --data_transforms cifar --input_height 32 --class_num 10 --lr 0.001 --step_size 100 --margin_jump 1.0 --margins_epoch 10 --batch_classes 8 --sample_count 8  --batch_size 64 --opt adam',
    'python main.py --enc_type resnet18 --latent_dim 32 --enc_out_dim 512 --max_epochs 500 --gpus "0,"  --generation_epoch 0 --lower_bound 0.95 --data_dir ./data --margin_max_distance 32 --known_dataset cifar_known --unknown_dataset imagenet-resize --data_transforms cifar --input_height 32 --class_num 10 --kl_coeff 0.1 --lr 0.01 --step_size 100 --margin_jump 1.0 --margins_epoch 10 --batch_classes 10 --sample_count 8  --batch_size 400 --opt sgd',
    'python main.py --enc_type densenet --latent_dim 32 --enc_out_dim 342 --max_epochs 500 --gpus "1,"  --generation_epoch 0 --lower_bound 0.95 --data_dir ./data --margin_max_distance 32 --known_dataset cifar_known --unknown_dataset imagenet-resize --data_transforms cifar --input_height 32 --class_num 10 --kl_coeff 0.1 --lr 0.1 --step_size 100 --margin_jump 1.0 --margins_epoch 30 --batch_classes 10 --sample_count 8  --batch_size 420 --opt sgd',
    'python main.py --enc_type mnist-conv --latent_dim 32 --enc_out_dim 500 --max_epochs 500 --gpus "0," --generation_epoch 0 --lower_bound 0.05 --data_dir ./data --step_size 100 --margin_max_distance 32 --known_dataset mnist --unknown_dataset omniglot --data_transforms mnist --input_height 28 --class_num 10 --kl_coeff 0.1 --lr 0.0001 --opt adam --margin_jump 1.0 --margins_epoch 1 --batch_classes 10 --sample_count 16 --batch_size 400',
    'python main.py --enc_type densenet --latent_dim 64 --enc_out_dim 342 --max_epochs 200 --gpus "0," --generation_epoch 0 --lower_bound 0.05 --data_dir ./data --step_size 64 --margin_max_distance 64 --known_dataset cifar100_known --unknown_dataset imagenet-resize --data_transforms cifar --input_height 32 --class_num 100 --lr 0.001 --opt sgd --margin_jump 1.0 --margins_epoch 40 --batch_classes 20 --sample_count 20 --batch_size 400 --weights checkpoint_100.pth.tar --finetune_lr 0.01 --finetune',
    'python main.py --enc_type wresnet --latent_dim 32 --enc_out_dim 640 --max_epochs 500 --gpus "0,"  --generation_epoch 0 --lower_bound 0.95 --data_dir ./data --margin_max_distance 32 --known_dataset cifar_known --unknown_dataset imagenet-resize --data_transforms cifar --input_height 32 --class_num 10 --kl_coeff 0.1 --lr 0.001 --step_size 100 --margin_jump 1.0 --margins_epoch 40 --batch_classes 10 --sample_count 20  --batch_size 640 --weights finetuning_wideresnet.tar --finetune_lr 0.01 --finetune',
]
TEST_COMMANDS = [
    'python test.py --enc_type densenet --latent_dim 32 --enc_out_dim 342 --max_epochs 500 --gpus "0,"  --generation_epoch 5 --lower_bound 0.05 --data_dir ./data --step_size 200 --margin_max_distance 64 --known_dataset cifar_known --unknown_dataset imagenet-resize --data_transforms cifar_test --input_height 32 --class_num 10 --kl_coeff 0.1 --lr 0.001 --step_size 100 --margin_jump 1.0 --margins_epoch 30 --checkpoint_path cifar10_densenet.ckpt --batch_classes 1 --sample_count 4996 --batch_size 2500 --ae_features',
    'python test.py --enc_type resnet18 --latent_dim 32 --enc_out_dim 512 --max_epochs 500 --gpus "0," --generation_epoch 1 --lower_bound 0.98 --data_dir ./data --step_size 100 --margin_max_distance 32 --known_dataset cifar_known --unknown_dataset lsun-crop --data_transforms cifar_test --input_height 32 --class_num 10 --kl_coeff 0.1 --lr 0.1 --margin_jump 1.0 --margins_epoch 10 --batch_classes 1 --sample_count 4996 --batch_size 2500 --checkpoint_path cifar10_resnet.ckpt --ae_features',
    'python test.py --enc_type vgg --latent_dim 32 --enc_out_dim 1024 --max_epochs 500 --gpus "0," --generation_epoch 0 --lower_bound 0.05 --data_dir ./data --step_size 100 --margin_max_distance 32 --known_dataset cifar_known --unknown_dataset imagenet-crop --data_transforms cifar_test --input_height 32 --class_num 10 --kl_coeff 0.1 --lr 0.001 --margin_jump 1.0 --margins_epoch 10 --batch_classes 1 --sample_count 2500  --batch_size 2500 --checkpoint_path cifar10_vgg.ckpt --ae_features',
    'python test.py --enc_type wresnet --latent_dim 32 --enc_out_dim 640 --max_epochs 500 --gpus "0,"  --generation_epoch 5 --lower_bound 0.05 --data_dir ./data --step_size 200 --margin_max_distance 32 --known_dataset cifar_known --unknown_dataset imagenet-crop --data_transforms cifar_test --input_height 32 --class_num 10 --kl_coeff 0.1 --lr 0.001 --step_size 100 --margin_jump 1.0 --margins_epoch 30 --checkpoint_path cifar10_wresnet.ckpt --batch_classes 2 --sample_count 2500 --batch_size 2000',
    'python test.py --enc_type densenet --latent_dim 64 --enc_out_dim 342 --max_epochs 500 --gpus "0," --generation_epoch 5 --lower_bound 0.05 --data_dir ./data --step_size 100 --margin_max_distance 64 --known_dataset cifar100_known --unknown_dataset lsun-resize --data_transforms cifar_test --input_height 32 --class_num 100 --kl_coeff 0.1 --lr 0.01 --margin_jump 1.0 --margins_epoch 10 --batch_classes 10 --sample_count 450 --batch_size 500 --checkpoint_path cifar100_densenet.ckpt --ae_features',
    'python test.py --enc_type mnist-conv --latent_dim 32 --enc_out_dim 500 --max_epochs 500 --gpus "0," --generation_epoch 151 --lower_bound 0.05 --data_dir ./data --step_size 75 --margin_max_distance 32 --known_dataset mnist --unknown_dataset omniglot --data_transforms blob --input_height 28 --class_num 10 --kl_coeff 0.1 --lr 0.1 --margin_jump 1.0 --margins_epoch 10 --batch_classes 1 --sample_count 4996 --batch_size 2500 --checkpoint_path cnn_mnist.ckpt --ae_features',
]


def argv_of(command):
    return shlex.split(command)[2:]


@pytest.mark.parametrize("command", TRAIN_COMMANDS)
def test_every_original_training_command_parses(command):
    args = train_script.build_parser().parse_args(argv_of(command))
    assert args.gpus in ("0,", "1,") and parse_gpus(args.gpus) in ([0], [1])
    assert args.margin_jump == 1.0 and args.max_epochs in (200, 500)
    assert args.finetune == ("--finetune" in command)


@pytest.mark.parametrize("command", TEST_COMMANDS)
def test_every_original_test_command_parses(command):
    parser = test_script.build_parser()
    args = parser.parse_args(argv_of(command))
    assert args.checkpoint_path.endswith(".ckpt")
    assert args.ae_features == ("--ae_features" in command)
    given = explicit_flags(parser, argv_of(command))
    assert {"enc_type", "known_dataset", "checkpoint_path", "gpus"} <= given
    assert "seed" not in given


def test_both_spellings_of_the_margin_flags():
    parser = train_script.build_parser()
    a = parser.parse_args(["--margin_jumps", "2.5", "--margin_epochs", "7"])
    b = parser.parse_args(["--margin_jump", "2.5", "--margins_epoch", "7"])
    assert (a.margin_jump, a.margins_epoch) == (b.margin_jump, b.margins_epoch) == (2.5, 7)


def test_accelerator_cpu_overrides_gpus():
    args = train_script.build_parser().parse_args(["--gpus", "0,", "--accelerator", "cpu"])
    assert resolve_devices(args) == ("cpu", 1)


def run(script, *argv, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("script,argv,phrase", [
    ("main.py", ["--known_dataset", "nope", "--accelerator", "cpu"], "nope"),
    ("main.py", ["--known_dataset", "digits", "--unknown_dataset", "digits_unknown", "--class_num", "6",
                 "--enc_type", "mnist-conv", "--enc_out_dim", "512", "--accelerator", "cpu"], "--enc_out_dim"),
    ("main.py", ["--known_dataset", "digits", "--class_num", "11", "--unknown_dataset", "noise",
                 "--accelerator", "cpu"], "class_num"),
    ("main.py", ["--checkpoint_path", "missing.ckpt", "--accelerator", "cpu"], "missing.ckpt"),
    ("test.py", ["--accelerator", "cpu"], "--checkpoint_path"),
    ("test.py", ["--checkpoint_path", "missing.ckpt"], "missing.ckpt"),
])
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, script, argv, phrase):
    result = run(script, *argv, "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and phrase in lines[-1]
    assert "Traceback" not in result.stderr
