"""benchmarks/ood_benchmark.py: aggregation, report, dry runs and one tiny end-to-end run."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load():
    spec = importlib.util.spec_from_file_location("ood_benchmark", os.path.join(ROOT, "benchmarks", "ood_benchmark.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load()


def _row(seed, method, unknown, auroc, fpr=0.1, setting="s"):
    return {"seed": seed, "setting": setting, "method": method, "unknown": unknown, "auroc": auroc,
            "fpr_at_95_tpr": fpr, "aupr_in": 0.5, "aupr_out": 0.4, "f1_macro_at_95_tpr": 0.3,
            "closed_set_accuracy": 0.8 + seed / 100, "train_seconds": 10.0 * (seed + 1), "eval_seconds": 2.0}


def test_aggregate_means_sample_std_and_seeds():
    rows = [_row(0, "vmdls", "mnist", 0.9, 0.2), _row(1, "vmdls", "mnist", 0.8, 0.4), _row(2, "vmdls", "mnist", 0.7),
            _row(0, "msp", "mnist", 0.6)]
    out = bench.aggregate(rows)
    assert [(r["method"], r["unknown"]) for r in out] == [("vmdls", "mnist"), ("msp", "mnist")]
    vmdls, msp = out
    for row in out:
        assert set(bench.REQUIRED_KEYS) <= set(row)
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
    rows = bench.aggregate([_row(s, m, u, a + 0.01 * s) for s in (0, 1) for m, a in (("vmdls", 0.9), ("msp", 0.7))
                            for u in ("mnist", "noise")])
    files = bench.write_report(rows, str(tmp_path), header="# header")
    assert os.path.isfile(files["png"]) and os.path.getsize(files["png"]) > 0
    text = open(files["md"]).read()
    assert text.startswith("# header")
    table = [line for line in text.splitlines() if line.startswith("|")]
    head = table[0]
    for column in ("AUROC mnist", "AUROC noise", "AUROC mean", "FPR95 mnist", "FPR95 noise", "closed-set acc."):
        assert column in head
    body = [line.split("|")[1].strip() for line in table[2:]]
    assert body == ["vmdls", "msp"]
    vmdls = table[2].split("|")
    assert vmdls[2].strip() == "90.50 ± 0.71" and vmdls[4].strip() == "90.50 ± 0.71"  # mnist, mean


def test_report_with_several_settings(tmp_path):
    rows = bench.aggregate([_row(0, "vmdls", "omniglot", 0.9, setting="cnn_mnist"),
                            _row(0, "vmdls", "lsun-crop", 0.8, setting="cifar10_vgg"),
                            _row(0, "msp", "lsun-crop", 0.7, setting="cifar10_vgg")])
    files = bench.write_report(rows, str(tmp_path))
    text = open(files["md"]).read()
    assert "| cnn_mnist | vmdls |" in text and "| cifar10_vgg | msp |" in text
    assert os.path.isfile(tmp_path / "auroc_cnn_mnist.png") and os.path.isfile(files["png"])


def _dry(capsys, *argv):
    assert bench.main(["--dry_run", *argv]) == []
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
    for setting in bench.PAPER_ORDER:
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
    rows = bench.main(argv)
    capsys.readouterr()
    saved = json.load(open(os.path.join(out_dir, "results.json")))
    assert saved == json.loads(json.dumps(rows))
    assert [r["method"] for r in saved] == list(bench.METHODS)
    for row in saved:
        assert set(bench.REQUIRED_KEYS) <= set(row)
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
    assert bench.main(argv) == rows
    assert os.path.getmtime(marker) == stamp
    # A step left unfinished (its folder written, no done.json / summary.csv) runs again
    # over its own leftovers: the scripts refuse a used folder unless --overwrite.
    os.remove(os.path.join(out_dir, "seed0", "ae_digits", "done.json"))
    os.remove(os.path.join(out_dir, "seed0", "digits", "eval_ce", "summary.csv"))
    assert [r["method"] for r in bench.main(argv)] == list(bench.METHODS)
    assert os.path.isfile(os.path.join(out_dir, "seed0", "ae_digits", "done.json"))
    # Another budget into the same folder stops.
    with pytest.raises(SystemExit):
        bench.main(argv + ["--max_epochs", "2"])
