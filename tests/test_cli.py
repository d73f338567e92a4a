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

COMMANDS_FILE = ROOT / "benchmarks" / "readme_original_commands.txt"


def original_commands(kind):
    """README-original's commands, verbatim, from the file the GPU check also runs."""
    rows = [line.split(" ", 2) for line in COMMANDS_FILE.read_text().splitlines() if line and not line.startswith("#")]
    return [command for row_kind, _, command in rows if row_kind == kind]


TRAIN_COMMANDS = original_commands("train")
TEST_COMMANDS = original_commands("test")


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
