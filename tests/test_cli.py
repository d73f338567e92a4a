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
    """the original README's commands, verbatim, from the file the GPU check also runs."""
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


SCRIPTS = ("main.py", "test.py", "mnist_ae.py", "train_resnet_ae.py")
COMMON_FLAGS = ("--offline", "--seed", "--accelerator", "--devices", "--num_workers", "--logger", "--output_dir",
                "--data_dir", "--known_dataset", "--class_num", "--batch_size")


def script_parser(script):
    import importlib

    return importlib.import_module(script[:-3]).build_parser()


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_imports_nothing_heavy(script):
    """--help answers without importing torch or Lightning (they are imported when a run starts)."""
    probe = ("import runpy, sys\n"
             f"sys.argv = [{script!r}, '--help']\n"
             "try:\n"
             f"    runpy.run_path({script!r}, run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "print(sorted(m for m in ('torch', 'pytorch_lightning', 'matplotlib', 'sklearn') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "usage:" in result.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_listed_flag_has_a_description_and_its_default(script):
    import argparse

    parser = script_parser(script)
    listed = [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS and a.dest != "help"]
    assert listed
    help_text = parser.format_help()
    for action in listed:
        assert action.help, action.dest
        assert "default" in parser._get_formatter()._expand_help(action) or "(default:" in action.help
    for flag in COMMON_FLAGS:
        assert flag in help_text, (script, flag)


def test_test_help_hides_the_training_flags_it_still_accepts():
    parser = test_script.build_parser()
    text = parser.format_help()
    for flag in ("--kl_coeff", "--margin_jump", "--batch_classes", "--max_epochs", "--finetune", "--opt"):
        assert flag not in text
    args = parser.parse_args(["--kl_coeff", "0.5", "--max_epochs", "3", "--batch_classes", "2", "--margin_jumps", "2"])
    assert (args.kl_coeff, args.max_epochs, args.batch_classes, args.margin_jump) == (0.5, 3, 2, 2.0)
    assert "--kl_coeff" in train_script.build_parser().format_help()


def test_common_flags_share_their_defaults_across_scripts():
    parsed = [script_parser(script).parse_args([]) for script in SCRIPTS]
    for name in ("data_dir", "num_workers", "seed", "accelerator", "devices", "offline", "logger", "batch_size"):
        assert len({repr(getattr(args, name)) for args in parsed}) == 1, name


def test_a_missing_optional_logger_package_is_one_sentence(tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    result = run("main.py", "--known_dataset", "digits", "--unknown_dataset", "digits_unknown", "--class_num", "4",
                 "--enc_type", "mnist-conv", "--enc_out_dim", "500", "--accelerator", "cpu", "--num_workers", "0",
                 "--logger", "csv", "wandb", "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "pip install wandb" in last and "Traceback" not in result.stderr


def test_library_errors_get_the_flag_to_change_from_the_script(tmp_path):
    result = run("main.py", "--known_dataset", "digits", "--unknown_dataset", "digits_unknown", "--class_num", "4",
                 "--enc_type", "mnist-conv", "--enc_out_dim", "500", "--weights", str(tmp_path / "nope.pt"),
                 "--accelerator", "cpu", "--num_workers", "0", "--output_dir", str(tmp_path))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "nope.pt" in last and last.endswith("(change --weights)")


def test_a_setting_named_in_a_library_error_is_shown_as_its_flag():
    from utils.errors import UserError

    error = UserError("/tmp/x already holds a run; pass `overwrite` to replace its files, or pick another "
                      "`output_dir`", setting="output_dir")
    assert "--" not in str(error)
    assert error.for_command_line() == ("/tmp/x already holds a run; pass --overwrite to replace its files, or pick "
                                        "another --output_dir")
    assert UserError("lr must be positive, not 0", setting="lr").for_command_line() == \
        "lr must be positive, not 0 (change --lr)"


def test_the_output_folder_sentences_name_settings_and_the_scripts_show_flags(tmp_path):
    from utils.errors import UserError
    from utils.run_folder import TRAINING_RUN, claim_output_dir

    (tmp_path / "args.json").write_text("{}")  # a training run of a version that recorded nothing
    with pytest.raises(UserError) as info:
        claim_output_dir(str(tmp_path), TRAINING_RUN, overwrite=True)
    assert "--" not in str(info.value) and "even with `overwrite`" in str(info.value)
    assert info.value.for_command_line().endswith("even with --overwrite; move or remove its files by hand, or pick "
                                                  "another --output_dir")
