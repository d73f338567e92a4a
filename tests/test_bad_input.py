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
    ("bad precision", main_cmd("--precision", "17"), 2, ["--precision", "invalid choice: '17'"]),
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


# --- issue 18: pickled datasets and image-folder workers ---
import pickle  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402

from conftest import refused, write_cifar, write_images  # noqa: E402
from datasets.images import list_images  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SystemPayload:
    """A pickled object whose loading would run a shell command creating a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _run_script(entry, argv, capsys):
    """``entry(argv)`` under run_main: (exit status, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: entry(argv))
    return exit_info.value.code, capsys.readouterr().err


def _one_error_line(err):
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "DataLoader worker" not in err, err
    return lines[0]


# (the sets that read the file, CIFAR-10 or -100, file name): the training files are read
# by the known set, the test files here by the unknown set, so both roles are covered.
PICKLED_FILES = [(["--known_dataset", "cifar_known", "--input_height", "32"], 10, f"data_batch_{i}")
                 for i in range(1, 6)] + [
    (["--unknown_dataset", "cifar_unknown"], 10, "test_batch"),
    (["--known_dataset", "cifar100_known", "--input_height", "32"], 100, "train"),
    (["--unknown_dataset", "cifar100_unknown"], 100, "test")]


@pytest.mark.parametrize("sets,classes,name", PICKLED_FILES, ids=[f"cifar{c}-{n}" for _, c, n in PICKLED_FILES])
def test_planted_cifar_payload_never_runs(tmp_path, capsys, sets, classes, name):
    data_dir = tmp_path / "data"
    write_cifar(str(data_dir), classes)
    folder = data_dir / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    marker = tmp_path / "MARKER"
    # half the files hold a payload inside the batch dict, half are one whole-file payload
    payload = SystemPayload(str(marker)) if name.endswith(("1", "3", "5", "test")) else Payload(str(marker))
    with open(folder / name, "wb") as handle:
        pickle.dump({b"data": payload, b"labels": [0], b"fine_labels": [0]} if isinstance(payload, Payload)
                    else payload, handle, protocol=2)
    argv = TRAIN + sets + ["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "out")]
    status, err = _run_script(train_script.main, argv, capsys)
    assert status == 2
    line = _one_error_line(err)
    assert str(folder / name) in line and "not a plain CIFAR batch" in line, line
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_genuine_cifar_pickles_still_load(tmp_path, protocol):
    """Batches pickled the way CIFAR's own files are (protocol 2, numpy arrays, byte keys) and
    with later protocols (protocol 5 rebuilds arrays with numpy's _frombuffer) all load."""
    from datasets import sources

    written = write_cifar(str(tmp_path), 10)
    folder = tmp_path / "cifar-10-batches-py"
    data, labels = written["test"]
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"batch_label": b"testing batch 1 of 1", b"labels": labels.tolist(), b"data": data,
                     b"filenames": [b"a.png"] * len(labels)}, handle, protocol=protocol)
    images, targets = sources.load_cifar(10, str(tmp_path), train=False, download=False)
    assert torch.equal(images, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    assert targets.tolist() == labels.tolist()


def _png_header(width, height):
    """A PNG that claims width x height pixels: PIL refuses it as a decompression bomb."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + \
        chunk(b"IEND", b"")


BAD_IMAGES = {
    "truncated": lambda good: good[: len(good) // 2],
    "zero-byte": lambda good: b"",
    "not an image": lambda good: b"hello, not an image\n",
    "decompression bomb": lambda good: _png_header(40000, 40000),
}


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_image_in_a_worker_is_the_main_process_sentence(tmp_path, capsys, kind):
    folder = tmp_path / "images"
    write_images(str(folder), 6, size=(28, 28), mode="L")
    good = (folder / "img_000.png").read_bytes()
    bad = folder / "zz_bad.png"
    bad.write_bytes(BAD_IMAGES[kind](good))
    base = TRAIN + ["--unknown_dataset", f"folder:{folder}"]
    sentences = {}
    for workers in ("0", "2"):
        argv = base + ["--num_workers", workers, "--output_dir", str(tmp_path / f"out{workers}")]
        status, err = _run_script(train_script.main, argv, capsys)
        assert status == 2, err
        sentences[workers] = _one_error_line(err)
    assert sentences["2"] == sentences["0"]
    assert sentences["2"].startswith(f"error: Cannot read the image {bad} (")
    assert sentences["2"].endswith("): remove or replace that file.")


def test_fifo_named_like_an_image_is_refused_not_opened(tmp_path):
    folder = tmp_path / "images"
    write_images(str(folder), 6, size=(28, 28), mode="L")
    os.mkfifo(folder / "x.png")
    argv = TRAIN + ["--unknown_dataset", f"folder:{folder}", "--num_workers", "2",
                                 "--output_dir", str(tmp_path / "out")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    try:  # before the fix, reading the pipe waited for ever
        result = subprocess.run([sys.executable, "main.py", *argv], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("a FIFO named x.png in an image folder hung the run")
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result.stderr)
    assert line == (f"error: {folder / 'x.png'} in the image folder {folder} is a named pipe (FIFO), not an image "
                    "file: remove it or replace it with an image."), line


@pytest.mark.parametrize("kind", ["broken symbolic link", "socket"])
def test_other_non_files_are_refused_at_listing(tmp_path, capsys, kind):
    folder = tmp_path / "images"
    write_images(str(folder), 6, size=(28, 28), mode="L")
    entry = folder / "x.png"
    server = None
    if kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(entry))
    else:
        os.symlink(tmp_path / "nowhere.png", entry)
    try:
        argv = TRAIN + ["--unknown_dataset", f"folder:{folder}", "--num_workers", "2",
                                     "--output_dir", str(tmp_path / "out")]
        status, err = _run_script(train_script.main, argv, capsys)
    finally:
        if server is not None:
            server.close()
    assert status == 2
    assert _one_error_line(err) == (f"error: {entry} in the image folder {folder} is a {kind}, not an image file: "
                                    "remove it or replace it with an image.")


def test_folder_named_like_an_image_is_walked_not_opened(tmp_path):
    folder = tmp_path / "images"
    write_images(str(folder), 2, size=(28, 28), mode="L")
    write_images(str(folder / "y.png"), 1, size=(28, 28), mode="L")
    assert list_images(str(folder)) == [str(folder / n) for n in ("img_000.png", "img_001.png")] + [
        str(folder / "y.png" / "img_000.png")]


# --- issue 18: runs that cannot do what they were asked ---
import json  # noqa: E402
import shutil  # noqa: E402
import struct as _struct  # noqa: E402
import zipfile  # noqa: E402

from models.backbones import build_backbone  # noqa: E402
from models.weights import load_backbone_weights  # noqa: E402
from utils.errors import UserError  # noqa: E402


def _refusal(capsys, entry, argv) -> str:
    """``entry(argv)`` as a script runs it: exit status 2, one error line on stderr (progress
    bars aside) and no traceback; the line is returned."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: entry(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _without(argv, *flags):
    """``argv`` without ``flags`` and their values."""
    dropped = {i + offset for i, arg in enumerate(argv) if arg in flags for offset in (0, 1)}
    return [arg for i, arg in enumerate(argv) if i not in dropped]


AE = ["--known_dataset", "digits", "--class_num", "4", "--max_epochs", "1", "--limit_train_batches", "2",
      "--accelerator", "cpu", "--num_workers", "0", "--logger", "csv"]

# (script, flag, value, words of the allowed range): each refused when parsed, before any work
OUT_OF_DOMAIN = [
    ("main", "--step_gamma", "-0.1", "above 0 and at most 1"),
    ("main", "--step_gamma", "0", "above 0 and at most 1"),
    ("main", "--kl_coeff", "-1", "from 0 to"),
    ("main", "--kl_coeff", "1e300", "float32's largest number"),
    ("main", "--margin_max_distance", "-32", "from 0 to"),
    ("main", "--margin_jump", "-1", "from 0 to"),
    ("main", "--seed", "-1", "from 0 to 2147483647"),
    ("main", "--max_epochs", "-5", "-1 (no limit) or 0 or more"),
    ("main", "--max_steps", "-2", "-1 (no limit) or 0 or more"),
    ("main", "--lower_bound", "1.5", "from 0 to 1"),
    ("main", "--lower_bound", "-0.1", "from 0 to 1"),
    ("main", "--limit_train_batches", "1.5", "a fraction from 0.0 to 1.0"),
    ("main", "--limit_val_batches", "-1", "0 or more"),
    ("main", "--fast_dev_run", "-1", "0 or more"),
    ("main", "--num_workers", "-1", "0 or more"),
    ("main", "--batch_size", "0", "above 0"),
    ("main", "--class_num", "0", "above 0"),
    ("main", "--input_height", "0", "above 0"),
    ("main", "--batch_classes", "0", "above 0"),
    ("main", "--sample_count", "-4", "above 0"),
    ("main", "--enc_out_dim", "0", "above 0"),
    ("main", "--generation_epoch", "-1", "0 or more"),
    ("main", "--margins_epoch", "-1", "0 or more"),
    ("main", "--finetune_epochs", "-1", "0 or more"),
    ("main", "--initial_sampling_std", "0", "above 0"),
    ("main", "--lr", "inf", "finite"),
    ("main", "--finetune_lr", "nan", "above 0"),
    ("main", "--num_nodes", "0", "above 0"),
    ("test", "--seed", "-1", "from 0 to 2147483647"),
    ("test", "--batch_size", "0", "above 0"),
    ("test", "--lower_bound", "2", "from 0 to 1"),
    ("ae", "--lr", "-0.1", "above 0"),
    ("ae", "--latent_dim", "0", "above 0"),
    ("ae", "--max_epochs", "-5", "-1 (no limit) or 0 or more"),
]


@pytest.mark.parametrize("script,flag,value,words", OUT_OF_DOMAIN,
                         ids=[f"{s} {f} {v}" for s, f, v, _ in OUT_OF_DOMAIN])
def test_numbers_outside_their_domain_are_refused_before_any_work(tmp_path, capsys, script, flag, value, words):
    out = tmp_path / "out"
    entry, argv = {"main": (train_script.main, TRAIN), "ae": (mnist_ae.main, AE),
                   "test": (test_script.main, DATA + ["--checkpoint_path", str(tmp_path / "none.ckpt")])}[script]
    line = _refusal(capsys, entry, argv + [flag, value, "--output_dir", str(out)])
    assert line.startswith(f"error: argument {flag}") and words in line and value in line, line
    assert not out.exists()  # refused before the output folder was made


def _backbone_file(path, state):
    torch.save(state, path)
    return str(path)


def test_weights_that_fill_too_little_of_the_backbone_are_refused(tmp_path, capsys):
    state = build_backbone("mnist-conv").state_dict()
    keys = list(state)
    cases = {  # (file content, words): renamed keys load nothing; 3 tensors are not this backbone's weights
        "renamed": ({f"other.{k}_old": v for k, v in state.items()},
                    [f"loaded 0 of {len(keys)} backbone tensors", f"{len(keys)} of the file's {len(keys)} tensors "
                     "match no backbone name"]),
        "few": ({k: state[k] for k in keys[:3]}, [f"loaded 3 of {len(keys)} backbone tensors"]),
    }
    for name, (content, words) in cases.items():
        path = _backbone_file(tmp_path / f"{name}.pt", content)
        out = tmp_path / name
        line = _refusal(capsys, train_script.main, TRAIN + ["--weights", path, "--finetune", "--output_dir", str(out)])
        assert f"--weights {path!r}" in line and "at least half" in line, line
        for word in words:
            assert word in line, (word, line)
        assert not (out / "checkpoints" / "last.ckpt").exists()


def test_the_weights_threshold_is_half_of_the_backbone(tmp_path):
    """A file filling at least half the backbone loads (an older or partial file of it); one
    filling fewer than half is refused, and the backbone is left as it was."""
    state = build_backbone("mnist-conv").state_dict()
    keys = list(state)
    half = (len(keys) + 1) // 2
    target = build_backbone("mnist-conv")
    enough = _backbone_file(tmp_path / "enough.pt", {k: state[k] + 1.0 for k in keys[:half]})
    report = load_backbone_weights(target, enough)
    assert len(report.loaded) == half and len(report.missing) == len(keys) - half
    torch.testing.assert_close(target.state_dict()[keys[0]], state[keys[0]] + 1.0)
    fresh = build_backbone("mnist-conv")
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    too_few = _backbone_file(tmp_path / "too_few.pt", {k: state[k] + 1.0 for k in keys[:half - 1]})
    with pytest.raises(UserError, match=f"loaded {half - 1} of {len(keys)} backbone tensors"):
        load_backbone_weights(fresh, too_few)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_nan_in_a_weights_file_names_the_file_not_the_learning_rate(tmp_path, capsys):
    state = {k: v.clone() for k, v in build_backbone("mnist-conv").state_dict().items()}
    first = next(iter(state))
    state[first].view(-1)[0] = float("nan")
    path = _backbone_file(tmp_path / "nan.pt", state)
    line = _refusal(capsys, train_script.main, TRAIN + ["--weights", path, "--output_dir", str(tmp_path / "out")])
    assert f"--weights {path!r} holds NaN values (in {first})" in line and "--lr" not in line, line


def test_a_resume_keeps_the_trainer_settings_of_its_checkpoint(files, tmp_path, capsys):
    """The fixture's model trained 2-batch epochs validated on 1 batch in float32. A resume
    that gives other values is refused; one that leaves them out trains with them."""
    base = _without(TRAIN, "--limit_train_batches", "--limit_val_batches", "--max_epochs") + ["--max_epochs", "2"]
    model = files["model"]
    for flag, value, recorded in (("--limit_train_batches", "35", "2"), ("--limit_val_batches", "0.5", "1"),
                                  ("--precision", "bf16-mixed", "'32-true'")):
        out = tmp_path / f"refused{flag}"
        line = _refusal(capsys, train_script.main, base + [flag, value, "--checkpoint_path", model, "--output_dir",
                                                           str(out)])
        assert f"{flag} " in line and f"differs from the {recorded} that {model} was trained with" in line, line
        assert not out.exists()
    last = train_script.main(base + ["--checkpoint_path", model, "--output_dir", str(tmp_path / "resumed")])
    resumed = torch.load(last, map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 4  # two epochs of 2 batches, not 2 + 35
    assert resumed["trainer_settings"] == {"limit_train_batches": 2, "limit_val_batches": 1, "precision": "32-true"}
    with open(tmp_path / "resumed" / "args.json") as handle:
        assert json.load(handle)["limit_train_batches"] == 2


def test_a_checkpoint_without_the_record_takes_its_trainer_settings_from_its_args_json(files, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(os.path.dirname(os.path.dirname(files["model"])), run)
    path = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    del checkpoint["trainer_settings"]  # as written before checkpoints recorded them
    torch.save(checkpoint, path)
    line = _refusal(capsys, train_script.main, _without(TRAIN, "--limit_train_batches") + [
        "--limit_train_batches", "35", "--checkpoint_path", str(path), "--output_dir", str(tmp_path / "out")])
    assert f"--limit_train_batches 35 differs from the 2 that {path}" in line, line


def _damage_a_tensor(source, target) -> str:
    """Copy ``source`` to ``target`` with one byte of its largest tensor flipped, the zip
    structure intact; returns the damaged member's name."""
    shutil.copy(source, target)
    with zipfile.ZipFile(target) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(target, "r+b") as handle:
        handle.seek(info.header_offset + 26)
        name_length, extra_length = _struct.unpack("<HH", handle.read(4))
        offset = info.header_offset + 30 + name_length + extra_length + info.file_size // 2
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0xFF]))
    return info.filename


def test_a_corrupted_checkpoint_is_named_before_any_work(files, tmp_path, capsys):
    bad = str(tmp_path / "damaged.ckpt")
    member = _damage_a_tensor(files["model"], bad)
    # torch.load itself reads it, as other weights: only the CRC-32s tell
    damaged, intact = (torch.load(p, map_location="cpu", weights_only=False)["state_dict"]
                       for p in (bad, files["model"]))
    assert any(not torch.equal(damaged[k], v) for k, v in intact.items() if v.is_floating_point())
    for entry, argv in ((train_script.main, TRAIN + ["--max_epochs", "2", "--checkpoint_path", bad]),
                        (train_script.main, TRAIN + ["--warm_start", bad]),
                        (test_script.main, DATA + ["--data_transforms", "blob", "--checkpoint_path", bad])):
        out = tmp_path / f"out{len(os.listdir(tmp_path))}"
        line = _refusal(capsys, entry, argv + ["--output_dir", str(out)])
        assert f"{bad!r} is corrupted: its part {member} does not match the checksum saved with it" in line, line
        assert "diverged" not in line and "--lr" not in line
        assert not out.exists()


def _with_nan(source, target, key, optimiser=False) -> str:
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    if optimiser:
        checkpoint["optimizer_states"][0]["state"][0]["exp_avg"].view(-1)[0] = float("nan")
    else:
        checkpoint["state_dict"][key].view(-1)[0] = float("nan")
    torch.save(checkpoint, target)
    return str(target)


def test_a_nan_in_a_checkpoint_names_the_file_not_the_learning_rate(files, tmp_path, capsys):
    nan = _with_nan(files["model"], tmp_path / "nan.ckpt", "fc_mu.weight")
    for entry, argv in ((train_script.main, TRAIN + ["--max_epochs", "2", "--checkpoint_path", nan]),
                        (train_script.main, TRAIN + ["--warm_start", nan]),
                        (test_script.main, DATA + ["--data_transforms", "blob", "--checkpoint_path", nan])):
        line = _refusal(capsys, entry, argv + ["--output_dir", str(tmp_path / "out")])
        assert f"checkpoint {nan!r} holds NaN values (in fc_mu.weight)" in line and "--lr" not in line, line
    moments = _with_nan(files["model"], tmp_path / "moments.ckpt", None, optimiser=True)
    line = _refusal(capsys, train_script.main, TRAIN + ["--max_epochs", "2", "--checkpoint_path", moments,
                                                        "--output_dir", str(tmp_path / "out")])
    assert f"checkpoint {moments!r} holds NaN values in its optimiser state" in line and "--lr" not in line, line
    assert not (tmp_path / "out").exists()


def test_a_nan_in_a_cross_entropy_checkpoint_is_one_sentence(tmp_path, capsys):
    model = train_script.main(TRAIN + ["--objective", "ce", "--output_dir", str(tmp_path / "ce")])
    nan = _with_nan(model, tmp_path / "ce_nan.ckpt", "fc.weight")
    for entry, argv in ((test_script.main, DATA + ["--data_transforms", "blob", "--checkpoint_path", nan]),
                        (train_script.main, TRAIN + ["--objective", "ce", "--max_epochs", "2", "--checkpoint_path",
                                                     nan])):
        line = _refusal(capsys, entry, argv + ["--output_dir", str(tmp_path / "out")])
        assert f"checkpoint {nan!r} holds NaN values (in fc.weight)" in line, line


def test_an_overflowing_kl_coefficient_is_named(tmp_path, capsys):
    line = _refusal(capsys, train_script.main, TRAIN + ["--kl_coeff", "1e38", "--generation_epoch", "0",
                                                        "--output_dir", str(tmp_path / "out")])
    assert "the loss's KL term (--kl_coeff 1e+38 times the class KL) is" in line and "lower --kl_coeff" in line, line
    assert not (tmp_path / "out" / "checkpoints" / "last.ckpt").exists()


def test_a_directory_given_as_a_file_is_called_a_directory(files, tmp_path, capsys):
    folder = os.path.dirname(os.path.dirname(files["model"]))  # the fixture's run: checkpoints/last.ckpt inside
    for flag in ("--checkpoint_path", "--warm_start"):
        line = _refusal(capsys, train_script.main, TRAIN + [flag, folder, "--output_dir", str(tmp_path / "out")])
        assert f"{flag} {folder!r} is a directory, not a checkpoint file; give the checkpoint file in it, " \
               f"{files['model']}" in line, line
    line = _refusal(capsys, test_script.main, DATA + ["--data_transforms", "blob", "--checkpoint_path", folder,
                                                      "--output_dir", str(tmp_path / "out")])
    assert f"{folder!r} is a directory, not a file" in line and "does not exist" not in line, line
    line = _refusal(capsys, train_script.main, TRAIN + ["--weights", folder, "--output_dir", str(tmp_path / "w")])
    assert f"{folder!r} is a directory, not a file" in line and "--weights" in line, line


def test_an_input_height_the_data_does_not_have_is_named(files, tmp_path, capsys):
    line = _refusal(capsys, test_script.main, _without(DATA, "--input_height") + [
        "--data_transforms", "blob", "--input_height", "32", "--checkpoint_path", files["model"],
        "--output_dir", str(tmp_path / "out")])
    assert "--input_height 32 does not match digits's 28x28 images" in line and "--enc_type" not in line, line


# --- issue 18: overwrite records, unique outputs, the lock ---

def _files_of(folder) -> dict:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != ".lock"}


def test_overwrite_never_removes_another_kind_of_runs_files(files, tmp_path, capsys):
    """main.py, mnist_ae.py and train_resnet_ae.py --overwrite into an evaluation's folder:
    one sentence naming the evaluation and one of its files that exists; nothing removed."""
    import train_resnet_ae

    evaluation = tmp_path / "eval"
    test_script.main(DATA + ["--data_transforms", "blob", "--checkpoint_path", files["model"],
                             "--output_dir", str(evaluation)])
    before = _files_of(evaluation)
    autoencoder = ["--known_dataset", "digits", "--class_num", "4", "--accelerator", "cpu", "--num_workers", "0",
                   "--output_dir", str(evaluation), "--overwrite"]
    for call in (lambda: train_script.main(TRAIN + ["--output_dir", str(evaluation), "--overwrite"]),
                 lambda: mnist_ae.main(autoencoder), lambda: train_resnet_ae.main(autoencoder)):
        line = refused(capsys, call)
        assert f"{evaluation} holds an evaluation (results.json), not a" in line and "last.ckpt" not in line
        assert _files_of(evaluation) == before


def test_a_lock_that_links_elsewhere_is_one_sentence_and_its_target_kept(files, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    target = tmp_path / "target.txt"
    target.write_text("not a lock")
    (folder / ".lock").symlink_to(target)
    line = refused(capsys, lambda: test_script.main(DATA + ["--data_transforms", "blob", "--checkpoint_path",
                                                                      files["model"], "--output_dir", str(folder)]))
    assert ".lock is a symbolic link" in line and target.read_text() == "not a lock"


def test_an_unknown_set_path_too_long_for_a_folder_name_is_scored(files, tmp_path):
    from conftest import write_images

    long = tmp_path / ("x" * 250) / ("y" * 250)
    write_images(long, 4, size=(28, 28), mode="L")
    out = tmp_path / "out"
    result = test_script.main(DATA + ["--data_transforms", "blob", "--checkpoint_path", files["model"],
                                      "--unknown_dataset", "digits_unknown", f"folder:{long}",
                                      "--output_dir", str(out)])
    assert set(result["sets"]) == {"digits_unknown", f"folder:{long}"}
    assert all(len(path.name) < 100 for path in out.iterdir())
