"""No code runs from a file: checkpoints, autoencoder checkpoints and weights files are read
with an allow-list of plain types (utils/torch_files.py); a file that needs anything else is
one sentence naming --trust_checkpoint, and with that flag it loads."""
import argparse
import builtins
import collections
import os
import pathlib
import pickle
import shlex
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import main as train_script
import test as test_script
from conftest import one_torch_thread
from models.checkpoints import SafeCheckpointIO, read_checkpoint
from utils.cli import run_main
from utils.errors import UserError
from utils.torch_files import allowed_names, load_torch_file, read_torch_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "vmdls_v0_digits.ckpt"
DATA = ["--known_dataset", "digits", "--unknown_dataset", "digits_unknown", "--class_num", "2",
        "--input_height", "28", "--accelerator", "cpu", "--num_workers", "0", "--offline", "--logger", "csv"]
TRAIN = ["--enc_type", "mnist-conv", "--enc_out_dim", "500", "--latent_dim", "8", "--data_transforms", "blob",
         "--batch_classes", "2", "--sample_count", "8", "--batch_size", "128", "--opt", "adam", "--lr", "0.001",
         "--limit_train_batches", "2", "--limit_val_batches", "1", "--generation_epoch", "1"]
EVAL = ["--data_transforms", "blob", "--batch_size", "256"]


class SystemPayload:
    """Pickles as os.system("touch MARKER"): unpickling it runs a shell command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


class ExecPayload:
    """Pickles as builtins.exec(...) writing MARKER."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


def with_payload(source, target, payload):
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)  # our own file
    checkpoint["payload"] = payload
    torch.save(checkpoint, target)
    return str(target)


def cli(main, argv, capsys):
    """Run a script's main as its command line does (utils.cli.run_main): exit status, stderr lines."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(argv))
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def assert_refused(code, lines, marker, flag=None):
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and errors[0] == lines[-1], lines
    assert "--trust_checkpoint" in errors[0] and "run code" in errors[0]
    if flag:
        assert flag in errors[0]
    assert not os.path.exists(marker)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A VMDLS checkpoint and an autoencoder checkpoint, each trained for two steps."""
    import mnist_ae
    from experiments.autoencoders import train_autoencoder

    root = tmp_path_factory.mktemp("trained")
    checkpoint = train_script.main(DATA + TRAIN + ["--max_epochs", "1", "--output_dir", str(root / "train")])
    ae_args = mnist_ae.build_parser().parse_args([
        "--known_dataset", "digits", "--class_num", "2", "--max_epochs", "1", "--limit_train_batches", "2",
        "--accelerator", "cpu", "--num_workers", "0", "--offline", "--logger", "csv",
        "--output_dir", str(root / "ae")])
    autoencoder = train_autoencoder(ae_args, arch="mnist")
    return checkpoint, autoencoder


# ---------------------------------------------------------------------- what loads without the flag

def test_the_fixture_and_new_checkpoints_load_through_torchs_weights_only_unpickler(trained, monkeypatch):
    """Our own files never need the fallback unpickler: torch.load(weights_only=True) reads them."""
    import utils.torch_files as torch_files

    def fallback_used(*args, **kwargs):
        raise AssertionError("the restricted fallback unpickler was used")

    monkeypatch.setattr(torch_files._SafeUnpickler, "find_class", fallback_used)
    before = set(torch.serialization.get_safe_globals())
    for path in (FIXTURE, *trained):
        checkpoint = load_torch_file(str(path))
        assert isinstance(checkpoint["state_dict"], dict) and checkpoint["state_dict"]
    assert set(torch.serialization.get_safe_globals()) == before  # the allow-list was scoped to each load
    assert read_checkpoint(str(FIXTURE))["hyper_parameters"]["enc_type"] == "mnist-conv"


def test_plain_values_of_old_checkpoints_load_and_code_does_not(tmp_path):
    from pytorch_lightning.utilities.parsing import AttributeDict

    plain = {
        "state_dict": collections.OrderedDict(w=torch.arange(3.0)),
        "hyper_parameters": argparse.Namespace(lr=0.1, data_dir=pathlib.PurePosixPath("/data"), seed=np.int64(3)),
        "hparams": AttributeDict(latent_dim=32),
        "stats": {"best": np.float64(0.5), "values": np.arange(4), "dtype": np.dtype("float32")},
        "factory": collections.defaultdict(list, a=[1]),
        "versions": (torch.__version__, {1, 2}, frozenset({3})),
    }
    for legacy in (False, True):
        path = tmp_path / f"plain{legacy}.pt"
        torch.save(plain, path, _use_new_zipfile_serialization=not legacy)
        loaded = load_torch_file(str(path))
        assert loaded["hyper_parameters"] == plain["hyper_parameters"]
        assert dict(loaded["hparams"]) == {"latent_dim": 32} and loaded["factory"]["b"] == []
        assert loaded["stats"]["best"] == 0.5 and loaded["stats"]["values"].tolist() == [0, 1, 2, 3]
        assert loaded["versions"] == plain["versions"]
        torch.testing.assert_close(loaded["state_dict"]["w"], torch.arange(3.0))


def test_the_allow_list_holds_plain_types_only():
    names = set(allowed_names())
    for plain in ("argparse.Namespace", "collections.OrderedDict", "collections.defaultdict", "pathlib.PosixPath",
                  "torch.torch_version.TorchVersion", "numpy.core.multiarray.scalar", "numpy.dtype",
                  "pytorch_lightning.utilities.parsing.AttributeDict", "torch._utils._rebuild_tensor_v2"):
        assert plain in names
    for dangerous in ("posix.system", "os.system", "builtins.eval", "builtins.exec", "builtins.getattr",
                      "builtins.__import__", "builtins.open", "subprocess.Popen", "torch.load", "pickle.loads",
                      "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"):
        assert dangerous not in names


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("payload_class", [SystemPayload, ExecPayload])
def test_a_payload_is_refused_in_one_sentence_and_never_runs(tmp_path, payload_class, legacy):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": payload_class(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UserError) as info:
        read_torch_file(str(path), "checkpoint", "give one written by main.py", setting="checkpoint_path")
    message = info.value.for_command_line()
    assert "--trust_checkpoint" in message and "\n" not in message and message.count("--trust_checkpoint") == 1
    assert ("system" if payload_class is SystemPayload else "builtins.exec") in message
    assert not marker.exists()
    read_torch_file(str(path), "checkpoint", "x", trust=True)  # trusted: it runs
    assert marker.exists()


def test_classes_that_no_longer_exist_become_inert_placeholders(tmp_path, monkeypatch):
    """The original's classes (pl_bolts, its own modules, Lightning 1.1 callbacks) load as
    placeholders; building one ignores its arguments, so a REDUCE on it runs nothing."""
    marker = tmp_path / "MARKER"
    gone = types.ModuleType("vmdls_gone_module")

    class Gone(dict):
        def __reduce__(self):
            return Gone, (f"touch {marker}",), {"kept": 1}

    Gone.__module__, Gone.__qualname__ = gone.__name__, "Gone"
    gone.Gone = Gone
    monkeypatch.setitem(sys.modules, gone.__name__, gone)
    from pytorch_lightning.callbacks import ModelCheckpoint

    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hyper_parameters": Gone(), "callbacks": {ModelCheckpoint: {
        "best_model_score": torch.tensor(0.5), "dirpath": "checkpoints/"}}}, path)
    monkeypatch.delitem(sys.modules, gone.__name__)
    loaded = load_torch_file(str(path))
    placeholder = loaded["hyper_parameters"]
    assert type(placeholder).__name__ == "Gone" and type(placeholder).__module__ == "vmdls_missing.vmdls_gone_module"
    assert dict(placeholder) == {} and placeholder._pickled_state == {"kept": 1}
    (key, state), = loaded["callbacks"].items()
    assert key is not ModelCheckpoint and key.__name__ == "ModelCheckpoint"  # a stand-in, not Lightning's class
    assert state["dirpath"] == "checkpoints/"
    assert not marker.exists()


def test_a_dotted_name_cannot_reach_an_attribute_of_an_allowed_class(tmp_path):
    """Protocol 4 names qualified attributes (STACK_GLOBAL "argparse" "Namespace.__init__")."""
    path = tmp_path / "dotted.pt"
    data = pickle.dumps({"x": argparse.Namespace.__init__}, protocol=4)
    assert b"Namespace.__init__" in data
    with open(path, "wb") as handle:  # a legacy-format torch file is a sequence of pickles
        for part in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                     "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(part, handle, protocol=2)
        handle.write(data)
        pickle.dump([], handle, protocol=2)
    with pytest.raises(UserError) as info:
        read_torch_file(str(path), "checkpoint", "x")
    assert "--trust_checkpoint" in info.value.for_command_line()


# ------------------------------------------------------------------------------ the three flags

def test_test_py_checkpoint_path_refuses_a_payload_and_loads_it_when_trusted(trained, tmp_path, capsys):
    checkpoint, _ = trained
    marker = tmp_path / "MARKER"
    evil = with_payload(checkpoint, tmp_path / "evil.ckpt", SystemPayload(marker))
    argv = DATA + EVAL + ["--checkpoint_path", evil, "--output_dir", str(tmp_path / "out")]
    assert_refused(*cli(test_script.main, argv, capsys), marker)
    results = test_script.main(argv + ["--trust_checkpoint"])
    assert marker.exists() and np.isfinite(results["auroc"])


def test_test_py_ae_checkpoint_refuses_a_payload_and_loads_it_when_trusted(trained, tmp_path, capsys):
    checkpoint, autoencoder = trained
    marker = tmp_path / "MARKER"
    evil = with_payload(autoencoder, tmp_path / "evil_ae.ckpt", ExecPayload(marker))
    argv = DATA + EVAL + ["--checkpoint_path", checkpoint, "--ae_features", "--ae_checkpoint", evil,
                          "--output_dir", str(tmp_path / "out")]
    assert_refused(*cli(test_script.main, argv, capsys), marker, flag="--ae_checkpoint")
    results = test_script.main(argv + ["--trust_checkpoint"])
    assert marker.exists() and results["ae_features"] is True and np.isfinite(results["auroc"])


def test_main_py_weights_refuses_a_payload_and_loads_it_when_trusted(trained, tmp_path, capsys):
    checkpoint, _ = trained
    marker = tmp_path / "MARKER"
    evil = with_payload(checkpoint, tmp_path / "evil_weights.pth.tar", SystemPayload(marker))
    argv = DATA + TRAIN + ["--weights", evil, "--max_steps", "1", "--limit_val_batches", "0",
                           "--output_dir", str(tmp_path / "out")]
    assert_refused(*cli(train_script.main, argv, capsys), marker, flag="weights file")
    assert os.path.isfile(train_script.main(argv + ["--trust_checkpoint"]))
    assert marker.exists()


def test_main_py_resume_refuses_a_payload_and_resumes_a_trusted_one(trained, tmp_path, capsys):
    checkpoint, _ = trained
    marker = tmp_path / "MARKER"
    evil = with_payload(checkpoint, tmp_path / "evil_resume.ckpt", SystemPayload(marker))
    argv = DATA + TRAIN + ["--checkpoint_path", evil, "--max_epochs", "2", "--output_dir", str(tmp_path / "out")]
    assert_refused(*cli(train_script.main, argv, capsys), marker)
    last = train_script.main(argv + ["--trust_checkpoint"])
    assert marker.exists() and torch.load(last, weights_only=True)["epoch"] == 1


def test_lightnings_resume_load_goes_through_the_safe_reader(trained, tmp_path):
    """main.py hands Lightning SafeCheckpointIO: the resume load itself refuses a payload (not only
    main.py's look at the file first), and reads what torch's own weights_only refuses."""
    checkpoint, _ = trained
    marker = tmp_path / "MARKER"
    evil = with_payload(checkpoint, tmp_path / "evil.ckpt", SystemPayload(marker))
    with pytest.raises(UserError) as info:
        SafeCheckpointIO().load_checkpoint(evil)
    assert "--trust_checkpoint" in info.value.for_command_line()
    assert not marker.exists()
    assert "payload" in SafeCheckpointIO(trust=True).load_checkpoint(evil) and marker.exists()

    # A Lightning 1.1-style callbacks entry (a class as key) resumes: Lightning's own
    # torch.load(weights_only=True) would refuse it.
    from pytorch_lightning.callbacks import ModelCheckpoint

    old_style = torch.load(checkpoint, weights_only=False)
    old_style["callbacks"] = {**old_style["callbacks"], ModelCheckpoint: {"best_model_score": None}}
    torch.save(old_style, tmp_path / "old_style.ckpt")
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(tmp_path / "old_style.ckpt", weights_only=True)
    last = train_script.main(DATA + TRAIN + ["--checkpoint_path", str(tmp_path / "old_style.ckpt"),
                                             "--max_epochs", "2", "--output_dir", str(tmp_path / "resumed")])
    assert torch.load(last, weights_only=True)["epoch"] == 1


def test_the_refusal_from_the_command_line(trained, tmp_path):
    checkpoint, _ = trained
    marker = tmp_path / "MARKER"
    evil = with_payload(checkpoint, tmp_path / "evil.ckpt", SystemPayload(marker))
    result = subprocess.run([sys.executable, str(ROOT / "test.py"), *DATA, *EVAL, "--checkpoint_path", evil,
                             "--output_dir", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: checkpoint") and "--trust_checkpoint" in line
    assert not marker.exists()


def test_every_script_takes_trust_checkpoint():
    import mnist_ae
    import train_resnet_ae

    for module in (train_script, test_script, mnist_ae, train_resnet_ae):
        parser = module.build_parser()
        assert parser.parse_args(["--trust_checkpoint"]).trust_checkpoint is True
        assert parser.parse_args([]).trust_checkpoint is False
        assert "only for files you trust" in " ".join(parser.format_help().split())
