"""experiments/benchmark (python -m experiments.benchmark, benchmarks/ood_benchmark.py): aggregation, report,
dry runs and tiny end-to-end runs."""
from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import make_mnist_arrays, one_torch_thread, write_idx
from experiments.benchmark import aggregate, cli, data, original, profiles, report, runner
from experiments.benchmark import plan as planning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _row(seed, method, unknown, auroc, fpr=0.1, setting="s"):
    return {"seed": seed, "setting": setting, "method": method, "unknown": unknown, "auroc": auroc,
            "fpr_at_95_tpr": fpr, "aupr_in": 0.5, "aupr_out": 0.4, "f1_macro_at_95_tpr": 0.3,
            "closed_set_accuracy": 0.8 + seed / 100, "train_seconds": 10.0 * (seed + 1), "eval_seconds": 2.0}


def test_aggregate_means_sample_std_and_seeds():
    rows = [_row(0, "vmdls", "mnist", 0.9, 0.2), _row(1, "vmdls", "mnist", 0.8, 0.4), _row(2, "vmdls", "mnist", 0.7),
            _row(0, "msp", "mnist", 0.6)]
    out = aggregate.aggregate(rows)
    assert [(r["method"], r["unknown"]) for r in out] == [("vmdls", "mnist"), ("msp", "mnist")]
    vmdls, msp = out
    for row in out:
        assert set(aggregate.REQUIRED_KEYS) <= set(row)
    assert vmdls["auroc"] == pytest.approx(0.8)
    assert vmdls["auroc_std"] == pytest.approx(0.1)  # sample std (ddof=1) of 0.9, 0.8, 0.7
    assert vmdls["fpr_at_95_tpr"] == pytest.approx((0.2 + 0.4 + 0.1) / 3)
    assert vmdls["fpr_at_95_tpr_std"] == pytest.approx(0.15275252, rel=1e-6)
    assert vmdls["closed_set_accuracy"] == pytest.approx(0.81)
    assert vmdls["train_seconds"] == pytest.approx(20.0)
    assert vmdls["seeds"] == [0, 1, 2]
    assert vmdls["auroc_per_seed"] == pytest.approx([0.9, 0.8, 0.7])
    assert msp["auroc"] == pytest.approx(0.6) and msp["auroc_std"] == 0.0 and msp["seeds"] == [0]


def test_report_has_a_row_per_method_and_a_column_per_set(tmp_path):
    rows = aggregate.aggregate([_row(s, m, u, a + 0.01 * s) for s in (0, 1) for m, a in (("vmdls", 0.9), ("msp", 0.7))
                            for u in ("mnist", "noise")])
    files = report.write_report(rows, str(tmp_path), header="# header")
    assert os.path.isfile(files["png"]) and os.path.getsize(files["png"]) > 0
    text = open(files["md"]).read()
    assert text.startswith("# header")
    summary, detail = _tables(text)[:2]
    head = summary[0]
    for column in ("AUROC mnist", "AUROC noise", "AUROC mean", "FPR95 mnist", "FPR95 noise", "FPR95 mean",
                   "closed-set acc.", "train s", "eval s"):
        assert column in head
    assert "F1@95TPR" not in head  # not an open-set setting
    body = [line.split("|")[1].strip() for line in summary[2:]]
    assert body == ["vmdls", "msp"]
    vmdls = summary[2].split("|")
    assert vmdls[2].strip() == "90.50 ± 0.71" and vmdls[4].strip() == "90.50 ± 0.71"  # mnist, mean
    # Per method and unknown set: every metric, and a mean line per method.
    columns = [c.strip() for c in detail[0].split("|")[1:-1]]
    assert columns == ["method", "unknown", "AUROC", "FPR95", "AUPR-In", "AUPR-Out", "macro-F1@95TPR",
                       "closed-set acc.", "train s", "eval s"]
    cells = {(c[0], c[1]): c for c in ([x.strip() for x in line.split("|")[1:-1]] for line in detail[2:])}
    assert list(cells) == [("vmdls", "mnist"), ("vmdls", "noise"), ("vmdls", "mean"), ("msp", "mnist"),
                           ("msp", "noise"), ("msp", "mean")]
    assert cells[("vmdls", "mean")][2:6] == ["90.50 ± 0.71", "10.00 ± 0.00", "50.00 ± 0.00", "40.00 ± 0.00"]
    assert cells[("vmdls", "mnist")][8:] == ["15", "2"]


def _tables(text):
    """The Markdown tables of a results.md, each as its lines."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_report_with_several_settings(tmp_path):
    rows = aggregate.aggregate([_row(0, "vmdls", "omniglot", 0.9, setting="cnn_mnist"),
                            _row(0, "vmdls", "lsun-crop", 0.8, setting="cifar10_vgg"),
                            _row(0, "msp", "lsun-crop", 0.7, setting="cifar10_vgg")])
    files = report.write_report(rows, str(tmp_path))
    text = open(files["md"]).read()
    assert "| cnn_mnist | vmdls |" in text and "| cifar10_vgg | msp |" in text
    assert os.path.isfile(tmp_path / "auroc_cnn_mnist.png") and os.path.isfile(files["png"])


def _dry(capsys, *argv):
    assert cli.main(["--dry_run", *argv]) == []
    return capsys.readouterr().out


def test_quick_dry_run_lists_every_step(capsys, tmp_path):
    out_dir = tmp_path / "quick"
    text = _dry(capsys, "--profile", "quick", "--seeds", "2", "--output_dir", str(out_dir), "--data_dir", "/data",
                "--unknown", "mnist", "noise", "idx:/sets/digits", "--accelerator", "cpu")
    assert not out_dir.exists()  # a dry run writes nothing
    commands = [line for line in text.splitlines() if line.startswith("python ")]
    for seed in (0, 1):
        mine = [c for c in commands if f"--seed {seed} " in c]
        assert sum("main.py" in c and "--objective vmdls" in c for c in mine) == 1
        assert sum(c.startswith("python mnist_ae.py") for c in mine) == 1
        assert sum("main.py" in c and "--objective ce" in c for c in mine) == 1
        tests = [c for c in mine if c.startswith("python test.py")]
        assert len(tests) == 3
        assert sum("--compare_untrained" in c and "--detector vmdls vmdls_latent" in c for c in tests) == 1
        assert sum("--ae_features" in c and "--ae_checkpoint" in c for c in tests) == 1
        assert sum("--detector msp energy maxlogit mahalanobis knn vim" in c for c in tests) == 1
        for c in tests:  # every set in one call
            assert c.count("idx:") >= 4
    assert "--generation_epoch 1" in commands[0] and "--enc_type mnist-conv" in commands[0]
    assert "fashion_mnist" in text and "first 500 images of idx:/sets/digits" in text


def test_paper_dry_run_mentions_every_setting(capsys, tmp_path):
    text = _dry(capsys, "--profile", "paper", "--seeds", "1", "--output_dir", str(tmp_path / "paper"),
                "--data_dir", "/data", "--accelerator", "gpu")
    commands = [line for line in text.splitlines() if line.startswith("python ")]
    for setting in original.PAPER_ORDER:
        assert f"/{setting}/vmdls" in text and f"/{setting}/ce" in text and f"/{setting}/eval_ce" in text
    for enc in ("mnist-conv", "vgg", "resnet18", "densenet", "wresnet"):
        assert f"--enc_type {enc} " in text
    for name in ("omniglot", "mnist_noise", "noise", "imagenet-crop", "imagenet-resize", "lsun-crop", "lsun-resize"):
        assert f" {name} " in text
    assert "cifar100_known" in text and "train_resnet_ae.py" in text and "mnist_ae.py" in text
    assert sum(c.startswith("python main.py") for c in commands) == 12
    assert sum(c.startswith("python test.py") for c in commands) == 18
    assert sum("_ae.py" in c for c in commands) == 3  # one autoencoder per known set
    assert "--weights /data/checkpoint_100.pth.tar" in text
    ce_lines = [c for c in commands if "--objective ce" in c]
    assert all("--finetune " not in c + " " for c in ce_lines)
    assert all("--gpus" not in c for c in commands)
    only = _dry(capsys, "--profile", "paper", "--settings", "cnn_mnist", "--output_dir", str(tmp_path / "p2"))
    assert "cifar10" not in only and "cnn_mnist" in only


def test_tiny_end_to_end(tmp_path, capsys):
    out_dir = str(tmp_path / "tiny")
    argv = ["--profile", "tiny", "--output_dir", out_dir, "--seeds", "1", "--accelerator", "cpu"]
    rows = cli.main(argv)
    capsys.readouterr()
    saved = json.load(open(os.path.join(out_dir, "results.json")))
    assert saved == json.loads(json.dumps(rows))
    assert [r["method"] for r in saved] == list(planning.METHODS)
    for row in saved:
        assert set(aggregate.REQUIRED_KEYS) <= set(row)
        assert row["unknown"] == "digits_unknown" and row["seeds"] == [0]
        assert 0.0 <= row["auroc"] <= 1.0 and not math.isnan(row["auroc"])
        assert row["eval_seconds"] > 0
    by_method = {r["method"]: r for r in saved}
    assert by_method["untrained"]["train_seconds"] == 0.0
    assert by_method["vmdls_ae"]["train_seconds"] > by_method["vmdls"]["train_seconds"] > 0
    assert os.path.isfile(os.path.join(out_dir, "results.md")) and os.path.isfile(os.path.join(out_dir, "auroc.png"))
    # Resumable: everything is done, nothing runs again.
    marker = os.path.join(out_dir, "seed0", "digits", "vmdls", "done.json")
    stamp = os.path.getmtime(marker)
    assert "[todo]" not in _dry(capsys, *argv)
    assert cli.main(argv) == rows
    assert os.path.getmtime(marker) == stamp
    # A step left unfinished (its folder written, no done.json / summary.csv) runs again
    # over its own leftovers: the scripts refuse a used folder unless --overwrite.
    os.remove(os.path.join(out_dir, "seed0", "ae_digits", "done.json"))
    os.remove(os.path.join(out_dir, "seed0", "digits", "eval_ce", "summary.csv"))
    assert [r["method"] for r in cli.main(argv)] == list(planning.METHODS)
    assert os.path.isfile(os.path.join(out_dir, "seed0", "ae_digits", "done.json"))
    # Another budget into the same folder stops.
    with pytest.raises(SystemExit):
        cli.main(argv + ["--max_epochs", "2"])


# --------------------------------------------------------------------------------------
# Budget flags (issue 16, point 6): every mix of 0 / positive counts, bad values in one line
# --------------------------------------------------------------------------------------
def _idx_count(folder, split):
    from datasets.sources import load_idx_folder

    return int(load_idx_folder(str(folder), split == "train")[0].shape[0])


@pytest.mark.parametrize("train_n,test_n,unknown_n", list(itertools.product((0, 7), (0, 5), (0, 4))))
def test_budget_flags_combine(tmp_path, capsys, train_n, test_n, unknown_n):
    """Plan (dry run) and data step (materialise) for each mix of whole sets (0) and subsets."""
    out_dir = tmp_path / "out"
    argv = ["--profile", "tiny", "--output_dir", str(out_dir), "--accelerator", "cpu", "--train_images", str(train_n),
            "--test_images", str(test_n), "--unknown_images", str(unknown_n), "--max_epochs", "2",
            "--limit_train_batches", "3", "--ae_epochs", "2", "--lr", "0.002"]
    text = _dry(capsys, *argv)
    assert not out_dir.exists()
    commands = [line for line in text.splitlines() if line.startswith("python ")]
    assert len(commands) == 6
    train = next(c for c in commands if "--objective vmdls" in c)
    assert "--max_epochs 2 " in train and "--limit_train_batches 3 " in train and "--lr 0.002 " in train
    assert "--max_epochs 2 " in next(c for c in commands if c.startswith("python mnist_ae.py"))
    subset = bool(train_n or test_n)
    assert all(("--known_dataset idx:" in c) == subset for c in commands)
    assert all(("--known_dataset digits " in c) == (not subset) for c in commands)
    tests = [c for c in commands if c.startswith("python test.py")]
    assert all(("data/unknown/digits_unknown-4" in c) == bool(unknown_n) for c in tests)
    assert all((" digits_unknown " in c + " ") == (not unknown_n) for c in tests)

    args = cli.parse(argv)
    plan = planning.build_plan(args, profiles.PROFILES["tiny"](args))
    data.materialise(plan, args.data_dir, lambda message: None)
    known_dirs = list((out_dir / "data" / "known").glob("*")) if subset else []
    assert len(known_dirs) == int(subset) and (out_dir / "data" / "known").exists() == subset
    from datasets.registry import get_known_dataset

    for folder in known_dirs:
        for split, count in (("train", train_n), ("test", test_n)):
            whole = len(get_known_dataset("digits", "", 6, split == "train"))
            assert _idx_count(folder, split) == (count or whole)
    unknown_dirs = list((out_dir / "data" / "unknown").glob("*"))
    assert [d.name for d in unknown_dirs] == (["digits_unknown-4"] if unknown_n else [])
    for folder in unknown_dirs:
        assert _idx_count(folder, "test") == 4


def _fashion_mnist_root(root):
    """data_dir with a small fake Fashion-MNIST (16 training, 2 test images per class) and
    MNIST test split, in torchvision's <Name>/raw/ layout."""
    for name, seed, splits in (("FashionMNIST", 10, (("train", 16), ("t10k", 2))), ("MNIST", 0, (("t10k", 2),))):
        for split, per_class in splits:
            images, labels = make_mnist_arrays(seed + (split == "t10k"), per_class)
            write_idx(os.path.join(root, name, "raw", f"{split}-images-idx3-ubyte"), images, gz=True)
            write_idx(os.path.join(root, name, "raw", f"{split}-labels-idx1-ubyte"), labels, gz=True)
    return str(root)


def test_quick_whole_known_set_with_unknown_subsets_end_to_end(tmp_path, capsys):
    """The report of issue 16: --train_images 0 --test_images 0 --unknown_images N (the
    known set as it is, a subset of each unknown set) stopped with KeyError: 'fashion_mnist'."""
    data_dir = _fashion_mnist_root(tmp_path / "data")
    out_dir = tmp_path / "out"
    argv = ["--profile", "quick", "--data_dir", data_dir, "--output_dir", str(out_dir), "--accelerator", "cpu",
            "--train_images", "0", "--test_images", "0", "--unknown_images", "6", "--unknown", "mnist",
            "--max_epochs", "1", "--limit_train_batches", "1", "--ae_epochs", "1"]
    with one_torch_thread():
        rows = cli.main(argv)
    capsys.readouterr()
    assert [r["method"] for r in rows] == list(planning.METHODS)
    assert all(r["unknown"] == "mnist" and 0.0 <= r["auroc"] <= 1.0 for r in rows)
    assert not (out_dir / "data" / "known").exists()  # the known set read as it is
    assert _idx_count(out_dir / "data" / "unknown" / "mnist-6", "test") == 6
    summary = (out_dir / "seed0" / "fashion_mnist" / "eval_ce" / "summary.csv").read_text()
    assert "mnist-6" in summary
    header = (out_dir / "results.md").read_text()
    assert "first 6 test images" in header and "Known set" not in header


@pytest.mark.parametrize("flag,value", [("--train_images", "-1"), ("--test_images", "-3"), ("--unknown_images", "-5"),
                                        ("--max_epochs", "-1"), ("--ae_epochs", "-2"),
                                        ("--limit_train_batches", "-1"), ("--lr", "-0.1"), ("--lr", "nan"),
                                        ("--seeds", "0"), ("--num_workers", "-1")])
def test_bad_budget_values_are_one_line(capsys, tmp_path, flag, value):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--dry_run", "--profile", "tiny", "--output_dir", str(tmp_path / "o"), flag, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: argument ") and flag in err[0] and value in err[0]


@pytest.mark.parametrize("entry", [[os.path.join(ROOT, "benchmarks", "ood_benchmark.py")],
                                   ["-m", "experiments.benchmark"]])
def test_bad_budget_value_from_the_command_line_has_no_traceback(tmp_path, entry):
    """Both entry points (the module and the thin script in benchmarks/) run the same main."""
    done = subprocess.run([sys.executable, *entry, "--dry_run", "--output_dir", str(tmp_path / "o"),
                           "--unknown_images", "-2"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: argument --unknown_images: must be 0 or more, got -2 (see python -m experiments.benchmark --help)"
        if entry[0] == "-m" else
        f"error: argument --unknown_images: must be 0 or more, got -2 (see {os.path.basename(entry[0])} --help)"]


def test_colour_known_set_with_subsets_is_one_sentence(tmp_path):
    """IDX subsets are grey: a colour setting with a subset flag stops before writing anything."""
    from conftest import write_cifar
    from utils.errors import UserError

    write_cifar(str(tmp_path / "data"), 10)
    args = cli.parse(["--profile", "paper", "--settings", "cifar10_vgg", "--data_dir", str(tmp_path / "data"),
                        "--output_dir", str(tmp_path / "o"), "--unknown", "noise", "--unknown_images", "3"])
    plan = planning.build_plan(args, profiles.PROFILES["paper"](args))
    with pytest.raises(UserError, match="--unknown_images write grey IDX subsets"):
        data.materialise(plan, args.data_dir, lambda message: None)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------
# The standard profile (issue 17): plan, near-OOD setting, progress, end to end on tiny data
# --------------------------------------------------------------------------------------
def _flags(command):
    """{flag: value or list of values} of one command line (a flag alone maps to [])."""
    import shlex

    out, key = {}, None
    for token in shlex.split(command)[2:]:
        if token.startswith("--"):
            key = token
            out[key] = []
        else:
            out[key].append(token)
    return {k: v[0] if len(v) == 1 else v for k, v in out.items()}


def test_standard_dry_run_lists_the_commands(capsys, tmp_path):
    out_dir = tmp_path / "std"
    text = _dry(capsys, "--profile", "standard", "--seeds", "2", "--output_dir", str(out_dir), "--data_dir", "/data",
                "--accelerator", "cpu")
    assert not out_dir.exists()
    commands = [line for line in text.splitlines() if line.startswith("python ")]
    assert len(commands) == 12  # far setting alone by default: 6 steps a seed
    assert "fashion_mnist_near" not in text and "data/known" not in text  # the known set read as it is
    for seed in (0, 1):
        lines = [c for c in commands if f"--seed {seed} " in c]
        mine = [_flags(c) for c in lines]
        vmdls = [f for f in mine if f.get("--objective") == "vmdls"]
        ce = [f for f in mine if f.get("--objective") == "ce"]
        ae = [c for c in lines if c.startswith("python mnist_ae.py")]
        tests = [f for c, f in zip(lines, mine) if c.startswith("python test.py")]
        assert len(vmdls) == len(ce) == len(ae) == 1 and len(tests) == 3
        vmdls, ce, ae = vmdls[0], ce[0], _flags(ae[0])
        for flags in mine:
            assert flags["--known_dataset"] == "fashion_mnist" and flags["--class_num"] == "10"
        expected = {"--enc_type": "mnist-conv", "--latent_dim": "32", "--enc_out_dim": "500", "--kl_coeff": "0.1",
                    "--generation_epoch": "1", "--lr": "0.001", "--opt": "adam", "--batch_classes": "10",
                    "--sample_count": "16", "--max_epochs": "3", "--limit_train_batches": "375",
                    "--margins_epoch": "1", "--margin_jump": "1.0", "--margin_max_distance": "32",
                    "--lower_bound": "0.05", "--data_transforms": "mnist"}
        assert {k: vmdls[k] for k in expected} == expected
        # The cross-entropy model: the same flags but the objective and its folder.
        assert {k: v for k, v in ce.items() if k not in ("--objective", "--output_dir")} == \
            {k: v for k, v in vmdls.items() if k not in ("--objective", "--output_dir")}
        assert ae["--max_epochs"] == "3" and ae["--limit_train_batches"] == "375"
        assert ae["--known_dataset"] == "fashion_mnist"
        for flags in tests:
            sets = flags["--unknown_dataset"]
            assert [os.path.basename(s) for s in sets] == ["mnist-2000", "mnist_noise-2000", "noise-2000", "digits"]
            assert sets[3] == f"idx:{out_dir}/data/sets/digits"  # 1,797 digits: scored whole
            assert flags["--data_transforms"] == "blob"
        detectors = sorted(tuple(f["--detector"]) if isinstance(f["--detector"], list) else (f["--detector"],)
                           for f in tests)
        assert detectors == sorted([("vmdls", "vmdls_latent"), ("vmdls",), planning.CE_DETECTORS])
        assert sum("--compare_untrained" in f for f in tests) == 1
        assert sum("--ae_features" in f and f["--ae_checkpoint"].startswith(ae["--output_dir"]) for f in tests) == 1
    for name in ("mnist", "mnist_noise", "noise"):
        assert f"# write the first 2000 images of {name} to idx:{out_dir}/data/unknown/{name}-2000" in text
    assert f"# write all 1,797 scikit-learn digits to idx:{out_dir}/data/sets/digits" in text
    assert "# deviations from the paper's MNIST command:" in text
    for phrase in ("--generation_epoch 1 (paper: 0)", "--lr 0.001 (paper: 0.0001)", "--max_epochs 3 with "
                   "--limit_train_batches 375 (paper: 500 epochs", "first 2000 test images"):
        assert phrase in text


def test_standard_deviations_name_every_flag_that_differs_from_the_paper():
    """The standard profile's main.py flags against the paper's MNIST training line: every
    flag that differs (or is added) is named in the deviations list."""
    paper = original.read_original_training_lines()["cnn_mnist"]
    paper = _flags("python main.py " + " ".join(paper))
    args = cli.parse(["--profile", "standard", "--settings", "far", "near", "--dry_run"])
    settings = profiles.PROFILES["standard"](args)
    deviations = " ".join(profiles.standard_deviations(args, settings))
    ignored = {"--gpus", "--data_dir", "--known_dataset", "--unknown_dataset", "--class_num"}  # per run / setting
    for setting in settings:
        ours = _flags("python main.py " + " ".join(setting.train_flags))
        differ = {k for k in set(ours) | set(paper) if ours.get(k) != paper.get(k)} - ignored
        if setting.name == "fashion_mnist":
            assert differ == {"--generation_epoch", "--lr", "--max_epochs", "--limit_train_batches",
                              "--limit_val_batches"}
        for flag in differ:
            assert flag in deviations, flag
    assert "classes 0-5 known" in deviations and "Fashion-MNIST" in deviations


def test_standard_near_setting_plan(capsys, tmp_path):
    text = _dry(capsys, "--profile", "standard", "--settings", "near", "--output_dir", str(tmp_path / "n"),
                "--data_dir", "/data", "--unknown", "noise")
    commands = [_flags(line) for line in text.splitlines() if line.startswith("python ")]
    assert len(commands) == 6
    for flags in commands:
        assert flags["--known_dataset"] == "fashion_mnist_known" and flags["--class_num"] == "6"
    tests = [f for f in commands if "--detector" in f]
    assert len(tests) == 3 and all(f["--unknown_dataset"] == "fashion_mnist_unknown" for f in tests)  # whole
    assert all(f["--batch_classes"] == "6" and f["--sample_count"] == "16" for f in commands if "--objective" in f)
    assert "/fashion_mnist_near/eval_ce" in text and "# write" not in text and "classes 0-5 known" in text
    both = _dry(capsys, "--profile", "standard", "--settings", "far", "near", "--output_dir", str(tmp_path / "b"))
    assert sum(line.startswith("python ") for line in both.splitlines()) == 12
    with pytest.raises(SystemExit, match="far, near"):
        cli.main(["--dry_run", "--profile", "standard", "--settings", "cnn_mnist"])


def test_progress_estimate():
    step = lambda setting, label: planning.Step("train", "main.py", [], "", label, 0, setting)  # noqa: E731
    steps = [step("far", "train VMDLS"), step("near", "train VMDLS"), step("far", "evaluate")]
    assert runner.estimate_left(steps, {}) is None
    timed = {("far", "train VMDLS"): [100.0, 200.0], ("far", "train cross-entropy"): [30.0]}
    # far/train: its own mean 150; near/train: the kind's mean 150; evaluate: every step's mean 110.
    assert runner.estimate_left(steps, timed) == pytest.approx(150 + 150 + 110)
    line = runner.progress_line(2, 6, 65, 410, 3, "seed 0 · far · train VMDLS")
    assert line == ("[step 2/6] elapsed 0:01:05, estimate: ~7 min left (from 3 steps timed) · seed 0 · far · "
                    "train VMDLS")
    assert "estimate: none yet" in runner.progress_line(1, 6, 0, None, 0, "x")


def test_standard_end_to_end_on_tiny_data(tmp_path, capsys):
    """Both settings of the standard profile on a fake Fashion-MNIST / MNIST, at a budget of
    one batch: the embedded digits, the unknown subsets, the near split, the progress lines
    and the report (no number is checked)."""
    data_dir = _fashion_mnist_root(tmp_path / "data")
    out_dir = tmp_path / "out"
    argv = ["--profile", "standard", "--settings", "far", "near", "--data_dir", data_dir, "--output_dir",
            str(out_dir), "--accelerator", "cpu", "--unknown_images", "6", "--max_epochs", "1",
            "--limit_train_batches", "1", "--ae_epochs", "1"]
    with one_torch_thread():
        rows = cli.main(argv)
    text = capsys.readouterr().out
    far = [r for r in rows if r["setting"] == "fashion_mnist"]
    near = [r for r in rows if r["setting"] == "fashion_mnist_near"]
    assert [(r["method"], r["unknown"]) for r in far] == [(m, u) for m in planning.METHODS
                                                          for u in ("mnist", "mnist_noise", "noise", "digits")]
    assert [(r["method"], r["unknown"]) for r in near] == [(m, "fashion_mnist_unknown") for m in planning.METHODS]
    assert all(0.0 <= r["auroc"] <= 1.0 and set(aggregate.REQUIRED_KEYS) <= set(r) for r in rows)
    assert _idx_count(out_dir / "data" / "unknown" / "digits-6", "test") == 6
    assert _idx_count(out_dir / "data" / "sets" / "digits", "test") == profiles.DIGITS_IMAGES
    assert not (out_dir / "data" / "known").exists()
    # Progress: a line before each of the 12 steps, with the elapsed time and an estimate.
    progress = [line for line in text.splitlines() if line.startswith("[step ")]
    assert [line.split("]")[0] for line in progress] == [f"[step {k}/12" for k in range(1, 13)]
    assert "estimate: none yet" in progress[0] and "elapsed 0:" in progress[0]
    assert all("left (from " in line for line in progress[1:])
    # The report: deviations, the near setting's macro-F1 beside AUROC, the time per step.
    report = (out_dir / "results.md").read_text()
    assert "Deviations from the paper's MNIST command:" in report and "--generation_epoch 1" in report
    summary = _tables(report)
    far_head, near_head = summary[0][0], summary[1][0]
    assert "AUROC digits" in far_head and "F1@95TPR" not in far_head
    assert "AUROC fashion_mnist_unknown" in near_head and "F1@95TPR fashion_mnist_unknown" in near_head
    assert "## Per method and unknown set" in report and "## Time per step" in report
    timing = summary[-1]
    assert len(timing) == 4 and "| 0 | fashion_mnist |" in timing[2] and "| 0 | fashion_mnist_near |" in timing[3]
    # One setting of the same budget into the same folder: nothing runs again.
    far_only = cli.main([a for a in argv if a != "near"])
    text = capsys.readouterr().out
    assert far_only == far
    assert [line for line in text.splitlines() if line.startswith("[step ")] == \
        [line for line in text.splitlines() if line.startswith("[step ") and line.endswith("done before, kept")]
    assert len([line for line in text.splitlines() if line.startswith("[step ")]) == 6


# --------------------------------------------------------------------------------------
# Issue 18, point 3: a row per set as given, a short name that tells sets apart, one sentence
# for an unwritable folder
# --------------------------------------------------------------------------------------
def test_display_names_tell_sets_apart():
    names = ["folder:/d/same1/digits", "folder:/d/same2/digits", "digits", "mnist", "idx:/d/x", "folder:/d/x"]
    shown = planning.display_names(names)
    assert shown["folder:/d/same1/digits"] == "same1/digits" and shown["folder:/d/same2/digits"] == "same2/digits"
    assert shown["digits"] == "digits" and shown["mnist"] == "mnist"
    assert shown["idx:/d/x"].startswith("d/x~") and shown["folder:/d/x"].startswith("d/x~")
    assert len(set(shown.values())) == len(names)
    assert planning.display_names(["folder:/d/a/b", "idx:/e/c"]) == {"folder:/d/a/b": "b", "idx:/e/c": "c"}


def test_sets_with_one_folder_name_are_rows_of_their_own(tmp_path):
    """folder:P/same1/digits and folder:P/same2/digits: two rows (not one row whose spread
    is taken for a seed standard deviation), shown apart, keyed by the set as given; their
    IDX subsets go to two folders."""
    import pandas as pd

    sets = [f"folder:{tmp_path / 'same1' / 'digits'}", f"folder:{tmp_path / 'same2' / 'digits'}",
            f"folder:{tmp_path / 'a' / 'b'}", f"folder:{tmp_path / 'a_b'}"]
    out_dir = tmp_path / "out"
    args = cli.parse(["--profile", "tiny", "--output_dir", str(out_dir), "--unknown", *sets])
    subsets = planning.build_plan(args, profiles.PROFILES["tiny"](args))
    assert len({folder for _, _, _, folder, _ in subsets.data["unknown"]}) == len(sets)
    args = cli.parse(["--profile", "tiny", "--output_dir", str(out_dir), "--unknown", *sets, "--unknown_images", "0"])
    plan = planning.build_plan(args, profiles.PROFILES["tiny"](args))
    for step in plan.steps:
        if step.kind != "test":
            continue
        os.makedirs(step.output_dir)
        pd.DataFrame([{"method": method, "unknown": name, **{k: 0.5 + 0.1 * i for k in aggregate.METRICS}}
                      for i, name in enumerate(step.unknown) for method in step.methods]).to_csv(step.done_file)
    rows = aggregate.aggregate(aggregate.per_seed_rows(plan))
    vmdls = [r for r in rows if r["method"] == "vmdls"]
    assert [r["unknown_set"] for r in vmdls] == sets
    assert [r["unknown"] for r in vmdls] == ["same1/digits", "same2/digits", "b", "a_b"]
    assert [r["auroc"] for r in vmdls] == pytest.approx([0.5, 0.6, 0.7, 0.8])
    assert all(r["auroc_std"] == 0.0 and r["seeds"] == [0] for r in rows)
    files = report.write_report(rows, str(out_dir))
    head = _tables(open(files["md"]).read())[0][0]
    assert "AUROC same1/digits" in head and "AUROC same2/digits" in head


def test_the_plan_names_the_rows_of_each_evaluation(tmp_path):
    """Method names come from the plan (each evaluation step knows its rows and the trainings
    they cost), not from the evaluations' folder names."""
    args = cli.parse(["--profile", "tiny", "--output_dir", str(tmp_path / "out")])
    plan = planning.build_plan(args, profiles.PROFILES["tiny"](args))
    named = {step.label: {summary: (m.name, m.trained_by) for summary, m in step.methods.items()}
             for step in plan.steps if step.kind == "test"}
    assert named == {
        "evaluate VMDLS (+ untrained)": {"vmdls": ("vmdls", ("vmdls",)), "vmdls_latent": ("vmdls_latent", ("vmdls",)),
                                         "untrained": ("untrained", ())},
        "evaluate VMDLS, reconstruction-weighted": {"vmdls": ("vmdls_ae", ("vmdls", "ae"))},
        "evaluate cross-entropy baselines": {d: (d, ("ce",)) for d in planning.CE_DETECTORS}}
    assert all(not step.methods for step in plan.steps if step.kind != "test")


def test_an_unwritable_output_folder_is_one_sentence(tmp_path, capsys):
    from utils.cli import run_main

    taken = tmp_path / "taken"
    taken.write_text("a file")
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: cli.main(["--profile", "tiny", "--output_dir", str(taken), "--accelerator", "cpu"]))
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"error: {taken} is a file, not a folder, so the run cannot write into it; remove it or pick "
                     "another --output_dir"]
    assert taken.read_text() == "a file"
