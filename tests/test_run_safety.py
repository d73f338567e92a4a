"""Runs never overwrite or mislabel each other, saving fails loudly, divergence stops
training (issue 10, points 3-5): end to end through main.main / test.main and run_main,
on tiny runs over the embedded digits data."""
import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import main as train_script
import test as test_script
from conftest import one_torch_thread, refused, write_images
from experiments.reporting import set_folder
from utils.cli import run_main
from utils.errors import UserError
from utils.lightning_loggers import RunCSVLogger
from utils.run_folder import OutputFolder, atomic_path

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "--enc_type", "mnist-conv", "--enc_out_dim", "500", "--latent_dim", "8",
    "--known_dataset", "digits", "--unknown_dataset", "digits_unknown", "--class_num", "6",
    "--data_transforms", "blob", "--input_height", "28", "--batch_classes", "6", "--sample_count", "4",
    "--batch_size", "64", "--opt", "adam", "--lr", "0.001", "--accelerator", "cpu", "--num_workers", "0",
    "--offline", "--logger", "csv", "--seed", "3", "--limit_train_batches", "2", "--limit_val_batches", "1",
]


def train(output_dir, *extra, argv=TINY):
    return train_script.main([*argv, "--output_dir", str(output_dir), *extra])


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def stopped(capsys, call) -> str:
    """A run that failed after training started: exit 2, the last stderr line is the error."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_main(call)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last.split("\r")[-1]


@pytest.fixture(autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One finished run of two steps (one epoch), copied by each test that changes it."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("base") / "run"
    train(folder, "--max_steps", "2")
    return folder


@pytest.fixture
def used(base, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(base, folder)
    return folder


# ------------------------------------------------------------------------------ reusing a folder

def test_a_new_run_into_a_used_folder_is_refused(used, capsys):
    before = (used / "checkpoints" / "last.ckpt").read_bytes(), (used / "args.json").read_text()
    line = refused(capsys, lambda: train(used, "--max_steps", "2"))
    assert "--overwrite" in line and "--checkpoint_path" in line and str(used) in line
    assert ((used / "checkpoints" / "last.ckpt").read_bytes(), (used / "args.json").read_text()) == before


def test_overwrite_replaces_the_run_and_the_printed_path_is_the_new_model(used, capsys):
    old = load(used / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    last = train(used, "--max_steps", "2", "--seed", "5", "--overwrite")
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"last checkpoint: {last}"
    assert last == str(used / "checkpoints" / "last.ckpt")
    assert sorted(p.name for p in (used / "checkpoints").iterdir()) == ["epoch000.ckpt", "last.ckpt"]  # no -v1
    new = load(last)
    assert new["datamodule_hyper_parameters"]["seed"] == 5  # this run's model, not the previous one
    assert not torch.equal(new["state_dict"]["fc_mu.weight"], old["state_dict"]["fc_mu.weight"])
    assert json.loads((used / "args.json").read_text())["seed"] == 5


def test_a_resumed_run_appends_to_its_metrics_and_uses_the_checkpoints_settings(used):
    rows = pd.read_csv(used / "metrics.csv")
    argv = [a for i, a in enumerate(TINY) if a != "--lr" and (i == 0 or TINY[i - 1] != "--lr")]  # --lr not given
    last = train(used, "--max_steps", "4", "--checkpoint_path", str(used / "checkpoints" / "last.ckpt"), argv=argv)
    assert load(last)["global_step"] == 4
    after = pd.read_csv(used / "metrics.csv")
    assert len(after) > len(rows)
    pd.testing.assert_frame_equal(after.iloc[:len(rows)][list(rows.columns)], rows, check_dtype=False)
    assert after["step"].iloc[len(rows):].min() >= rows["step"].max()
    record = json.loads((used / "args.json").read_text())
    assert record["lr"] == 0.001 and record["checkpoint_path"].endswith("last.ckpt")  # what the run used
    assert len(record["previous_runs"]) == 1 and record["previous_runs"][0]["max_steps"] == 2


def test_resuming_with_another_lr_is_refused(used, capsys):
    rows = (used / "metrics.csv").read_text()
    line = refused(capsys, lambda: train(used, "--max_steps", "4", "--lr", "0.01",
                                         "--checkpoint_path", str(used / "checkpoints" / "last.ckpt")))
    assert "--lr 0.01" in line and "0.001" in line
    assert (used / "metrics.csv").read_text() == rows


def test_overwrite_cannot_delete_the_checkpoint_being_resumed(used, capsys):
    line = refused(capsys, lambda: train(used, "--max_steps", "4", "--overwrite",
                                         "--checkpoint_path", str(used / "checkpoints" / "last.ckpt")))
    assert "--overwrite" in line and (used / "checkpoints" / "last.ckpt").is_file()


def test_the_demo_starts_afresh_each_time():
    """make demo clears its own folder, then runs the harness (whose reruns over leftovers
    are tested in tests/test_ood_benchmark.py), so a second make demo never evaluates the
    first one's model."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    demo = text[text.index("\ndemo:"):text.index("\ntest:")]
    lines = [line.strip() for line in demo.splitlines() if line.strip() and not line.startswith("demo:")]
    assert lines[0] == "rm -rf $(DEMO_DIR)"
    assert "-m experiments.benchmark --profile demo" in lines[1] and "--output_dir $(DEMO_DIR)" in lines[1]


def test_an_autoencoder_run_into_a_folder_with_an_unrecorded_run_is_refused(tmp_path, capsys):
    """A last.ckpt that no run recorded (an earlier version's run, or a user's file) is
    never replaced, not even with --overwrite: nothing says it is a run's."""
    import mnist_ae
    from experiments.autoencoders import train_autoencoder

    (tmp_path / "last.ckpt").write_bytes(b"previous")
    for extra in ([], ["--overwrite"]):
        args = mnist_ae.build_parser().parse_args(["--known_dataset", "digits", "--class_num", "6", "--accelerator",
                                                   "cpu", "--num_workers", "0", "--output_dir", str(tmp_path), *extra])
        line = refused(capsys, lambda: train_autoencoder(args, arch="mnist"))
        assert line == (f"error: {tmp_path} seems to hold an autoencoder run (last.ckpt) written by a version that did "
                        "not record a run's files, so a new run may not write there, even with --overwrite; move or "
                        "remove its files by hand, or pick another --output_dir")
        assert (tmp_path / "last.ckpt").read_bytes() == b"previous"


# ------------------------------------------------------------------------------ saving fails loudly

def test_an_unwritable_checkpoints_folder_stops_before_training(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    if os.geteuid() == 0:  # permissions do not bind root: a file where the folder should be
        (folder / "checkpoints").write_text("")
    else:
        (folder / "checkpoints").mkdir(mode=0o500)
    try:
        line = refused(capsys, lambda: train(folder, "--max_steps", "2"))
    finally:
        if (folder / "checkpoints").is_dir():
            (folder / "checkpoints").chmod(0o700)
    assert "checkpoints" in line and "--output_dir" in line
    assert not (folder / "metrics.csv").exists() and not (folder / "args.json").exists()


def test_a_checkpoint_that_cannot_be_written_ends_the_run(tmp_path, capsys, monkeypatch):
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    def disk_full(self, checkpoint, path, storage_options=None):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", disk_full)
    folder = tmp_path / "run"
    line = stopped(capsys, lambda: train(folder, "--max_steps", "2"))
    assert "cannot write" in line and ".ckpt" in line and "No space left on device" in line
    assert "last checkpoint:" not in capsys.readouterr().out
    assert list((folder / "checkpoints").iterdir()) == []  # no half-written file under any name


def test_an_unwritable_evaluation_folder_is_one_sentence(base, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("a file")
    line = refused(capsys, lambda: test_script.main(["--checkpoint_path", str(base / "checkpoints" / "last.ckpt"),
                                                     "--accelerator", "cpu", "--output_dir", str(target)]))
    assert str(target) in line and "--output_dir" in line


def test_atomic_path_uses_unique_temporary_names_and_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with atomic_path(str(target)) as first, atomic_path(str(target)) as second:
        assert first != second and os.path.dirname(first) == str(tmp_path)
        Path(first).write_text("first")
        Path(second).write_text("second")
    assert target.read_text() == "first"  # the outer one finished last
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(str(target)) as tmp:
            Path(tmp).write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "first"
    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(UserError, match="cannot write"):
        with atomic_path(str(folder)) as tmp:
            Path(tmp).write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder", "results.json"]  # no temporary left


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    with OutputFolder(str(folder)).lock():
        line = refused(capsys, lambda: train(folder, "--max_steps", "2"))
    assert line == f"error: another run is writing into {folder}; wait for it to finish, or pick another --output_dir"
    assert not (folder / "args.json").exists()


def test_metrics_csv_keeps_its_rows_when_new_columns_arrive(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,loss,step\n0,1.5,0\n")
    logger = RunCSVLogger(save_dir=str(tmp_path), name="", version="", keep_rows=True)
    logger.log_metrics({"loss": 1.0, "accuracy": 0.5}, step=1)
    logger.save()
    frame = pd.read_csv(tmp_path / "metrics.csv")
    assert frame["step"].tolist() == [0, 1] and frame["loss"].tolist() == [1.5, 1.0]
    assert frame["accuracy"].isna().tolist() == [True, False]


# ------------------------------------------------------------------------------ evaluations

def evaluate(base, output_dir, *extra):
    return test_script.main(["--checkpoint_path", str(base / "checkpoints" / "last.ckpt"), "--data_transforms",
                             "blob", "--accelerator", "cpu", "--num_workers", "0", "--offline", "--logger", "csv",
                             "--output_dir", str(output_dir), *extra])


def test_an_evaluation_never_leaves_results_beside_another_runs_plots(base, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    evaluate(base, out)  # the previous evaluation, recorded
    previous = {name: (out / name).read_bytes() for name in ("results.json", "roc.png")}
    line = refused(capsys, lambda: evaluate(base, out))
    assert line == (f"error: {out} already holds an evaluation (results.json); pass --overwrite to replace its files, "
                    "or pick another --output_dir")
    assert all((out / name).read_bytes() == content for name, content in previous.items())

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("experiments.reporting.write_scores", killed)  # killed after the plots, before the results
    (out / "roc.png").write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt):
        evaluate(base, out, "--overwrite")
    assert not (out / "results.json").exists() and (out / "roc.png").read_bytes() != b"previous"
    monkeypatch.undo()

    results = evaluate(base, out, "--overwrite")
    saved = json.loads((out / "results.json").read_text())
    assert saved["auroc"] == pytest.approx(results["auroc"])
    newest = max(p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock")
    assert (out / "results.json").stat().st_mtime_ns == newest  # written last


# ------------------------------------------------------------------------------ divergence

def test_a_diverging_run_stops_with_the_epoch_step_and_learning_rate(tmp_path, capsys):
    folder = tmp_path / "run"
    line = stopped(capsys, lambda: train(folder, "--max_steps", "6", "--lr", "1e6"))
    assert re.search(r"training diverged: the loss is (nan|inf) at epoch 0, step \d+ \(learning rate 1e\+06\); "
                     r"lower --lr", line), line
    assert "no class has any sample" not in line.lower()
    assert not list((folder / "checkpoints").glob("*.ckpt"))  # it diverged within the first epoch


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from models.vmdls import VMDLS

    step = VMDLS.training_step

    def nan_from_step_3(self, batch, batch_idx):
        loss = step(self, batch, batch_idx)
        return loss * float("nan") if self.trainer.global_step >= 3 else loss

    monkeypatch.setattr(VMDLS, "training_step", nan_from_step_3)
    folder = tmp_path / "run"
    line = stopped(capsys, lambda: train(folder, "--max_steps", "6"))  # validation on: epoch 0 validates
    assert "training diverged: the loss is nan at epoch 1, step 3 (learning rate 0.001); lower --lr" in line
    checkpoints = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert checkpoints == ["epoch000.ckpt", "last.ckpt"]  # epoch 0's, and nothing else
    last = load(folder / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 0 and last["global_step"] == 2
    assert all(torch.isfinite(v).all() for k, v in last["state_dict"].items()
               if v.is_floating_point() and "bounds" not in k)


# ------------------------------------------------------------------- issue 18: records, unique outputs, the lock

def snapshot(folder) -> dict:
    """Every file under ``folder`` (links not followed) with its bytes, but the lock."""
    found = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(folder))] = ("link", os.readlink(path))
        elif path.is_file() and path.name != ".lock":
            found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def record(folder) -> dict:
    return json.loads((Path(folder) / ".vmdls-run.json").read_text())


def test_a_training_runs_record_names_its_files_and_overwrite_removes_only_those(used, base, tmp_path, capsys):
    """--overwrite removes the files the run recorded: a user's file beside them and another
    run in a sub-folder (an evaluation written into the training folder) survive, byte for byte."""
    kept = record(used)
    assert kept["kind"] == "training" and kept["trees"] == ["checkpoints"]
    assert {"args.json", "metrics.csv", "hparams.yaml"} <= set(kept["files"])
    (used / "notes.txt").write_text("mine")
    (used / "checkpoints" / "nested").mkdir()
    evaluate(base, used / "eval")  # another run, inside the training folder
    evaluate(base, used / "checkpoints" / "nested")  # and one inside the folder the training run owns
    others = snapshot(used / "eval"), snapshot(used / "checkpoints" / "nested")
    (used / "checkpoints" / "epoch007.ckpt").write_bytes(b"an old checkpoint")  # in the run's own folder: the run's
    train(used, "--max_steps", "2", "--seed", "5", "--overwrite")
    assert (used / "notes.txt").read_text() == "mine"
    assert (snapshot(used / "eval"), snapshot(used / "checkpoints" / "nested")) == others
    assert not (used / "checkpoints" / "epoch007.ckpt").exists()
    assert json.loads((used / "args.json").read_text())["seed"] == 5
    assert record(used)["kind"] == "training"


def test_a_training_run_into_an_evaluation_folder_is_refused_naming_it(base, used, tmp_path, capsys):
    out = tmp_path / "eval"
    evaluate(base, out)
    before = snapshot(out)
    for extra in ([], ["--overwrite"]):
        line = refused(capsys, lambda: train(out, "--max_steps", "2", *extra))
        assert line == (f"error: {out} holds an evaluation (results.json), not a training run, and --overwrite never "
                        "removes another kind of run's files; pick another --output_dir")
        assert snapshot(out) == before  # nothing removed, nothing added
    before = snapshot(used)
    line = refused(capsys, lambda: evaluate(base, used, "--overwrite"))  # and the other way round
    assert line.startswith(f"error: {used} holds a training run (checkpoints/last.ckpt), not an evaluation")
    assert snapshot(used) == before


def test_a_folder_of_an_earlier_version_is_refused_naming_its_kind_and_offering_only_what_exists(used, capsys):
    (used / ".vmdls-run.json").unlink()  # as an earlier version left it
    before = snapshot(used)
    for extra in ([], ["--overwrite"]):
        line = refused(capsys, lambda: train(used, "--max_steps", "2", *extra))
        last = used / "checkpoints" / "last.ckpt"
        assert line == (f"error: {used} seems to hold a training run (args.json) written by a version that did not "
                        "record a run's files, so a new run may not write there, even with --overwrite; resume it "
                        f"with --checkpoint_path {last}, move or remove its files by hand, or pick another "
                        "--output_dir")
        assert snapshot(used) == before
    (used / "checkpoints" / "last.ckpt").unlink()
    line = refused(capsys, lambda: train(used, "--max_steps", "2"))
    assert "last.ckpt" not in line and "--checkpoint_path" not in line  # no path that does not exist


def test_a_run_of_an_earlier_version_resumes_and_its_record_starts(used):
    (used / ".vmdls-run.json").unlink()  # as an earlier version left it
    last = train(used, "--max_steps", "4", "--checkpoint_path", str(used / "checkpoints" / "last.ckpt"))
    assert load(last)["global_step"] == 4
    kept = record(used)
    assert kept["kind"] == "training" and kept["trees"] == ["checkpoints"]
    assert {"args.json", "metrics.csv", "hparams.yaml"} <= set(kept["files"])


def test_files_in_the_way_that_no_run_recorded_are_never_replaced(base, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "roc.png").write_bytes(b"a user's figure")
    for extra in ([], ["--overwrite"]):
        line = refused(capsys, lambda: evaluate(base, out, *extra))
        assert line == (f"error: {out / 'roc.png'} already exists and no run recorded it as its own, so this run may "
                        "not replace it, not even with --overwrite; move or remove it by hand, or pick another "
                        "--output_dir")
    assert (out / "roc.png").read_bytes() == b"a user's figure"


def test_evaluation_overwrite_keeps_the_evaluations_in_its_sub_folders(base, tmp_path, capsys):
    """test.py --output_dir outputs/test --overwrite: the evaluations one level down, recorded
    or written by an earlier version, keep every file."""
    out = tmp_path / "test"
    evaluate(base, out / "first")
    write_images(tmp_path / "pngs", 5, size=(28, 28), mode="L")
    evaluate(base, out / "second", "--unknown_dataset", "digits_unknown", f"folder:{tmp_path / 'pngs'}")  # two sets
    (out / "old" / "digits_unknown").mkdir(parents=True)  # an earlier version's evaluation: no record
    for name in ("results.json", "summary.csv", "thresholds.csv", "roc.png"):
        (out / "old" / name).write_text(name)
        (out / "old" / "digits_unknown" / name).write_text(name)
    before = snapshot(out)
    evaluate(base, out, "--overwrite")  # nothing recorded at the top yet: nothing to remove
    evaluate(base, out, "--overwrite")  # now its own files go, and only they
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {".vmdls-run.json", *record(out)["files"]}
    assert "results.json" in record(out)["files"] and "first/results.json" not in record(out)["files"]


def test_autoencoder_overwrite_keeps_other_checkpoints_in_its_folder(tmp_path, capsys):
    """mnist_ae.py --output_dir models --overwrite (the original README's folder for the
    autoencoders): the models already there and another run in a sub-folder survive."""
    import mnist_ae

    models = tmp_path / "models"
    (models / "other").mkdir(parents=True)
    (models / "ae_cifar10.ckpt").write_bytes(b"a trained autoencoder")
    argv = ["--known_dataset", "digits", "--class_num", "6", "--max_epochs", "1", "--limit_train_batches", "1",
            "--limit_val_batches", "0", "--batch_size", "16", "--accelerator", "cpu", "--num_workers", "0",
            "--logger", "csv"]
    mnist_ae.main(argv + ["--output_dir", str(models / "other")])
    other = snapshot(models / "other")
    mnist_ae.main(argv + ["--output_dir", str(models)])
    first = record(models)
    assert first["kind"] == "autoencoder" and "last.ckpt" in first["files"]
    assert first["trees"] == ["lightning_logs/version_0"] and first["folders"] == ["lightning_logs"]
    line = refused(capsys, lambda: mnist_ae.main(argv + ["--output_dir", str(models)]))
    assert line.startswith(f"error: {models} already holds an autoencoder run (") and "--overwrite" in line
    mnist_ae.main(argv + ["--output_dir", str(models), "--seed", "1", "--overwrite"])
    assert (models / "ae_cifar10.ckpt").read_bytes() == b"a trained autoencoder"
    assert snapshot(models / "other") == other
    assert record(models)["trees"] == ["lightning_logs/version_0"]  # the first run's logs went, not kept beside


def test_train_resnet_ae_claims_its_folder_the_same_way(base, tmp_path, capsys):
    import train_resnet_ae

    argv = ["--known_dataset", "digits", "--class_num", "6", "--accelerator", "cpu", "--num_workers", "0"]
    before = snapshot(base)
    line = refused(capsys, lambda: train_resnet_ae.main(argv + ["--output_dir", str(base), "--overwrite"]))
    assert line == (f"error: {base} holds a training run (checkpoints/last.ckpt), not an autoencoder run, and "
                    "--overwrite never removes another kind of run's files; pick another --output_dir")
    assert snapshot(base) == before


def test_a_record_that_is_a_link_or_names_paths_outside_is_refused(used, tmp_path, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    text = (used / ".vmdls-run.json").read_text()
    for content in ('{"format": 1, "kind": "training", "files": ["../outside.txt"], "trees": [], "folders": []}',
                    '{"format": 1, "kind": "training", "files": ["/etc/hostname"], "trees": [], "folders": []}',
                    "not json"):
        (used / ".vmdls-run.json").write_text(content)
        line = refused(capsys, lambda: train(used, "--max_steps", "2", "--overwrite"))
        assert line.startswith(f"error: {used / '.vmdls-run.json'} is not a run record this version can read")
    (used / ".vmdls-run.json").unlink()
    (tmp_path / "elsewhere.json").write_text(text)
    (used / ".vmdls-run.json").symlink_to(tmp_path / "elsewhere.json")
    line = refused(capsys, lambda: train(used, "--max_steps", "2", "--overwrite"))
    assert line.startswith(f"error: {used / '.vmdls-run.json'} is a symbolic link, not a run record")
    assert outside.read_text() == "keep" and (tmp_path / "elsewhere.json").read_text() == text


def test_overwrite_never_follows_a_link_out_of_the_folder(used, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "last.ckpt").write_bytes(b"not this run's")
    (used / "args.json").unlink()
    (used / "args.json").symlink_to(elsewhere / "last.ckpt")  # a recorded file replaced by a link: the link goes
    train(used, "--max_steps", "2", "--overwrite")
    assert not (used / "args.json").is_symlink() and (elsewhere / "last.ckpt").read_bytes() == b"not this run's"
    shutil.rmtree(used / "checkpoints")
    (used / "checkpoints").symlink_to(elsewhere)  # the run's own folder replaced by a link out
    line = refused(capsys, lambda: train(used, "--max_steps", "2", "--overwrite"))
    assert line == (f"error: {used / 'checkpoints'} is a symbolic link where this run writes, and a run never writes "
                    "through a link; remove the link, or pick another --output_dir")
    assert os.listdir(elsewhere) == ["last.ckpt"] and (elsewhere / "last.ckpt").read_bytes() == b"not this run's"


# The lock

def test_a_lock_that_is_a_link_is_refused_and_its_target_kept(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    (folder / ".lock").symlink_to(target)
    line = refused(capsys, lambda: train(folder, "--max_steps", "2"))
    assert line == (f"error: {folder / '.lock'} is a symbolic link, and a run never writes its lock through a link; "
                    "remove the link, or pick another --output_dir")
    assert target.read_text() == "precious" and os.listdir(folder) == [".lock"]
    (folder / ".lock").unlink()
    (folder / ".lock").symlink_to(tmp_path / "missing")  # dangling: O_CREAT would create the target
    refused(capsys, lambda: train(folder, "--max_steps", "2"))
    assert not (tmp_path / "missing").exists()


def test_a_lock_that_is_not_a_regular_file_or_has_other_names_is_refused(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    os.mkfifo(folder / ".lock")  # opening it for writing would wait for a reader for ever
    line = refused(capsys, lambda: OutputFolder(str(folder)).lock())
    assert line == (f"error: {folder / '.lock'} is not a regular file, so it cannot be the run's lock; remove it, or "
                    "pick another --output_dir")
    (folder / ".lock").unlink()
    other = tmp_path / "other.txt"
    other.write_text("another file's bytes")
    os.link(other, folder / ".lock")
    line = refused(capsys, lambda: OutputFolder(str(folder)).lock())
    assert "(a hard link)" in line and other.read_text() == "another file's bytes"


def test_a_refused_lock_leaves_the_holders_file_as_it_was(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    with OutputFolder(str(folder)).lock():
        holder = (folder / ".lock").read_bytes()
        assert holder == f"{os.getpid()}\n".encode()
        refused(capsys, lambda: OutputFolder(str(folder)).lock())
        assert (folder / ".lock").read_bytes() == holder  # not truncated by the one that did not get it


# Unique outputs per set

def test_unknown_sets_whose_names_read_alike_get_their_own_folders(base, tmp_path):
    """folder:P/a/b and folder:P/a_b, names that differ in non-ASCII letters only, and a path
    too long for a folder name: one folder each, each holding its own set's results."""
    root = tmp_path / "sets"
    long = root / ("x" * 200) / ("y" * 200)
    sizes = {root / "a" / "b": 3, root / "a_b": 4, root / "é": 5, root / "è": 6, long: 7}
    for i, (folder, count) in enumerate(sizes.items()):
        write_images(folder, count, size=(28, 28), mode="L", seed=i)
    names = [f"folder:{folder}" for folder in sizes]
    out = tmp_path / "eval"
    evaluate(base, out, "--unknown_dataset", *names)
    folders = {set_folder(str(out), name, True) for name in names}
    assert len(folders) == len(names) and all(len(os.path.basename(f)) <= 90 for f in folders)
    for name, count in zip(names, sizes.values()):
        results = json.loads(Path(set_folder(str(out), name, True), "results.json").read_text())
        assert results["unknown_dataset"] == name and results["n_unknown"] == count
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["unknown"][summary["unknown"] != "mean"]) == sorted(names)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(os.path.basename(f) for f in folders)
