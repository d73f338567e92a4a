"""benchmarks/throughput.py end to end on the smallest setting: the JSON it writes has the
issue's layout, its ratios are the quotients of its own measurements, and the evaluation
it times covers every image test.py evaluates. (The timings themselves are not asserted:
BENCHMARKS.md keeps them.)"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import throughput  # noqa: E402
from datasets import sources  # noqa: E402
from models import backbones  # noqa: E402
from utils import flags  # noqa: E402


def test_throughput_writes_the_issues_table_for_one_backbone(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(backbones, "BACKBONES", dict(backbones.BACKBONES))  # tiny-conv stays out of the real one
    monkeypatch.setattr(flags, "ENC_TYPES", flags.ENC_TYPES)  # and out of --enc_type's choices
    out = tmp_path / "out"
    result = throughput.main(["--backbones", "tiny-conv", "--accelerator", "cpu", "--epochs", "2",
                              "--limit_train_batches", "2", "--sample_count", "2", "--latent_dim", "4",
                              "--eval_repeats", "1", "--output_dir", str(out)])

    written = json.loads((out / "throughput.json").read_text())
    assert written["device"] == result["device"] and "CPU" in written["device"]
    [row] = written["rows"]
    assert {"backbone", "floor_img_per_s", "epoch_img_per_s", "epoch_ratio", "eval_ratio"} <= set(row)
    assert row["backbone"] == "tiny-conv"
    assert math.isclose(row["epoch_ratio"], row["floor_img_per_s"] / row["epoch_img_per_s"], rel_tol=2e-3)
    assert math.isclose(row["eval_ratio"], row["eval_s"] / row["plain_forward_s"], rel_tol=2e-3)
    assert row["batches_per_epoch"] == 2 and row["batch"] == "6x2"
    assert len(row["epochs_s"]) == 2 and all(t > 0 for t in row["epochs_s"])

    # The plain passes cover what test.py reads: the known training and test images of classes
    # 0..5 and the test split's images of classes 6..9 (the scikit-learn digits, counted here).
    train_labels, test_labels = sources.load_digits_split(True)[1], sources.load_digits_split(False)[1]
    expected = int((train_labels < 6).sum()) + len(test_labels)
    assert row["eval_images"] == expected
    assert "| tiny-conv |" in capsys.readouterr().out


def test_an_unknown_backbone_is_one_sentence(tmp_path, capsys):
    import subprocess

    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--backbones", "resnet7",
                          "--output_dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 2
    assert "resnet7" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "throughput.json").exists()
