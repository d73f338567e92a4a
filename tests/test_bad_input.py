"""Bad input, end to end: each case is a command on tiny data, the exit status it must end
with, and words its one-line message must hold (docs: README "Bad input")."""
import os

import pytest
import torch

import main as train_script
import mnist_ae
import test as test_script
from utils.cli import run_main

DATA = ["--known_dataset", "digits", "--unknown_dataset", "digits_unknown", "--class_num", "4", "--input_height",
        "28", "--accelerator", "cpu", "--num_workers", "0", "--offline", "--logger", "csv"]
TRAIN = DATA + ["--enc_type", "mnist-conv", "--enc_out_dim", "500", "--latent_dim", "8", "--data_transforms",
                "mnist", "--batch_classes", "4", "--sample_count", "8", "--opt", "adam", "--lr", "0.001",
                "--max_epochs", "1", "--limit_train_batches", "2", "--limit_val_batches", "1"]


class Payload:
    """A pickled object whose loading would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    model = train_script.main(TRAIN + ["--output_dir", str(root / "model")])
    ae = os.path.join(root, "ae")
    run_main(lambda: mnist_ae.main(["--known_dataset", "digits", "--class_num", "4", "--max_epochs", "1",
                                    "--limit_train_batches", "2", "--accelerator", "cpu", "--num_workers", "0",
                                    "--logger", "csv", "--output_dir", ae]))
    raw = open(model, "rb").read()
    paths = {"model": model, "ae": os.path.join(ae, "last.ckpt"), "root": str(root)}
    for name, content in (("empty", b""), ("truncated", raw[: len(raw) // 2]),
                          ("random", os.urandom(4096)), ("text", b"not a checkpoint\n")):
        paths[name] = str(root / f"{name}.ckpt")
        with open(paths[name], "wb") as handle:
            handle.write(content)
    checkpoint = torch.load(model, weights_only=False)
    checkpoint["payload"] = Payload(str(root / "MARKER"))
    paths["payload"] = str(root / "payload.ckpt")
    torch.save(checkpoint, paths["payload"])
    with open(root / "a_file", "w") as handle:
        handle.write("x")
    paths["a_file"] = str(root / "a_file")
    return paths


def main_cmd(*extra):
    return "main", TRAIN + list(extra)


def test_cmd(*extra):
    return "test", DATA + ["--data_transforms", "blob"] + list(extra)


CASES = [
    # (id, command, exit status, words in the message)
    ("negative lr", main_cmd("--lr", "-1"), 2, ["--lr", "above 0"]),
    ("zero latent", main_cmd("--latent_dim", "0"), 2, ["--latent_dim", "above 0"]),
    ("bad precision", main_cmd("--precision", "17"), 2, ["--precision", "not a precision"]),
    ("bad strategy", main_cmd("--strategy", "bogus"), 2, ["--strategy", "not a strategy"]),
    ("unknown dataset", main_cmd("--known_dataset", "bogus"), 2, ["--known_dataset", "bogus"]),
    ("resume from empty file", main_cmd("--checkpoint_path", "{empty}"), 2, ["--checkpoint_path"]),
    ("resume from truncated file", main_cmd("--checkpoint_path", "{truncated}"), 2, ["--checkpoint_path"]),
    ("resume from random bytes", main_cmd("--checkpoint_path", "{random}"), 2, ["--checkpoint_path"]),
    ("resume from text", main_cmd("--checkpoint_path", "{text}"), 2, ["--checkpoint_path"]),
    ("resume from an autoencoder", main_cmd("--checkpoint_path", "{ae}"), 2, ["autoencoder"]),
    ("resume with another backbone", main_cmd("--checkpoint_path", "{model}", "--enc_type", "vgg", "--enc_out_dim",
                                              "1024"), 2, ["--enc_type"]),
    ("resume with another class count", main_cmd("--checkpoint_path", "{model}", "--class_num", "3"), 2,
     ["--class_num"]),
    ("resume from a pickled payload", main_cmd("--checkpoint_path", "{payload}"), 2, ["--trust_checkpoint"]),
    ("output folder is a file", main_cmd("--output_dir", "{a_file}"), 2, ["--output_dir"]),
    ("diverging", main_cmd("--lr", "1e6", "--limit_val_batches", "0"), 2, ["diverged", "learning rate"]),
    ("evaluate an empty file", test_cmd("--checkpoint_path", "{empty}"), 2, ["--checkpoint_path"]),
    ("evaluate random bytes", test_cmd("--checkpoint_path", "{random}"), 2, ["--checkpoint_path"]),
    ("evaluate an autoencoder", test_cmd("--checkpoint_path", "{ae}"), 2, ["autoencoder"]),
    ("evaluate with another class count", test_cmd("--checkpoint_path", "{model}", "--class_num", "5"), 2,
     ["--class_num"]),
    ("evaluate a pickled payload", test_cmd("--checkpoint_path", "{payload}"), 2, ["--trust_checkpoint"]),
    ("autoencoder with a payload", test_cmd("--checkpoint_path", "{model}", "--ae_features", "--ae_checkpoint",
                                            "{payload}"), 2, ["--trust_checkpoint"]),
    ("missing autoencoder file", test_cmd("--checkpoint_path", "{model}", "--ae_features", "--ae_checkpoint",
                                          "{root}/none.ckpt"), 2, ["--ae_checkpoint"]),
    ("detector the checkpoint cannot serve", test_cmd("--checkpoint_path", "{model}", "--detector", "msp"), 2,
     ["--detector", "logits"]),
    ("evaluation folder is a file", test_cmd("--checkpoint_path", "{model}", "--output_dir", "{a_file}"), 2,
     ["--output_dir"]),
    ("warm start from a missing file", main_cmd("--warm_start", "{root}/none.ckpt"), 2,
     ["--warm_start", "does not exist"]),
    ("warm start and resume at once", main_cmd("--warm_start", "{model}", "--checkpoint_path", "{model}"), 2,
     ["--warm_start", "--checkpoint_path"]),
    ("warm start from random bytes", main_cmd("--warm_start", "{random}"), 2, ["--warm_start"]),
    ("warm start from an autoencoder", main_cmd("--warm_start", "{ae}"), 2, ["autoencoder", "--warm_start"]),
    ("warm start from a pickled payload", main_cmd("--warm_start", "{payload}"), 2, ["--trust_checkpoint"]),
    ("warm start with another latent size", main_cmd("--warm_start", "{model}", "--latent_dim", "16"), 2,
     ["--latent_dim 16", "8"]),
    ("warm start with --weights too", main_cmd("--warm_start", "{model}", "--weights", "{model}"), 2, ["--weights"]),
    # last: were a warm start taken for a resume, these would write over the fixture's model
    ("warm start into its model's folder", main_cmd("--warm_start", "{model}", "--output_dir", "{root}/model"), 2,
     ["already holds", "--overwrite"]),
    ("warm start overwriting its model", main_cmd("--warm_start", "{model}", "--output_dir", "{root}/model",
                                                  "--overwrite"), 2, ["--overwrite would delete", "--warm_start"]),
]


@pytest.mark.parametrize("name,command,status,words", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_sentence(files, tmp_path, capsys, name, command, status, words):
    script, argv = command
    argv = [arg.format(**files) for arg in argv]
    if "--output_dir" not in argv:
        argv += ["--output_dir", str(tmp_path / "out")]
    entry = train_script.main if script == "main" else test_script.main
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: entry(argv))
    assert exit_info.value.code == status
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in lines[0]
    assert not os.path.exists(os.path.join(files["root"], "MARKER"))
