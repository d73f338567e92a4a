"""The speed work changes no number: a short training run and its evaluations, with the same
seeds, give bit for bit the class statistics, weights, scores and metrics recorded in
tests/fixtures/short_run_statistics.pt (written by the code before the speed changes).

Regenerate the fixture (only when a change of the numbers is deliberate and documented):

    python tests/test_speed_equivalence.py --regenerate
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import main as train_script  # noqa: E402
from conftest import one_torch_thread, write_idx_folder  # noqa: E402
import mnist_ae  # noqa: E402
import test as test_script  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "short_run_statistics.pt"

COMMON = ["--known_dataset", "digits", "--unknown_dataset", "digits_unknown", "--class_num", "4",
          "--accelerator", "cpu", "--num_workers", "0", "--offline", "--logger", "csv", "--seed", "0"]
TRAIN = COMMON + ["--enc_type", "mnist-conv", "--enc_out_dim", "500", "--latent_dim", "8",
                  "--data_transforms", "mnist", "--batch_classes", "4", "--sample_count", "8", "--opt", "adam",
                  "--lr", "0.001", "--max_epochs", "2", "--limit_train_batches", "3", "--generation_epoch", "1"]
AUTOENCODER = ["--known_dataset", "digits", "--class_num", "4", "--max_epochs", "1", "--limit_train_batches", "2",
               "--accelerator", "cpu", "--num_workers", "0", "--offline", "--logger", "csv", "--seed", "0"]
# The evaluations: the paper's score with M and r_max of the evaluated images (the default) and of the
# training set, with the reconstruction weighting, beside detectors fitted from the same pass.
EVALUATIONS = {
    "test_stats": ["--detector", "vmdls", "vmdls_latent", "mahalanobis", "knn"],
    "train_stats": ["--score_stats", "train", "--ae_features"],
}
STATISTICS = ("class_means", "class_covs", "latent_means", "latent_covs", "class_bounds")


def _floats(prefix: str, value, out: dict) -> None:
    """Every float of a results.json, flattened to "prefix/key/..." names."""
    if isinstance(value, dict):
        for key, item in value.items():
            _floats(f"{prefix}/{key}", item, out)
    elif isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
        out[prefix] = float(value)


def short_run(folder: str | os.PathLike) -> dict:
    """Train a few steps on the embedded digits, train a tiny autoencoder, evaluate twice;
    return the numbers that must not change: a plain dict of tensors and floats."""
    folder = Path(folder)
    with one_torch_thread():  # reductions summed in the same order on any core count
        last = train_script.main(TRAIN + ["--output_dir", str(folder / "train")])
        ae = mnist_ae.main(AUTOENCODER + ["--output_dir", str(folder / "ae")])
        record: dict = {}
        state = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
        for key in STATISTICS:
            record[key] = state[key].clone()
        record["fc_mu.weight"] = state["fc_mu.weight"].clone()
        for name, extra in EVALUATIONS.items():
            out = folder / name
            flags = ["--ae_checkpoint", ae] if "--ae_features" in extra else []
            test_script.main(COMMON + ["--checkpoint_path", last, "--data_transforms", "blob", "--batch_size", "64",
                                       "--output_dir", str(out), *extra, *flags])
            results = json.loads((out / "results.json").read_text())
            floats: dict = {}
            _floats(name, results, floats)
            record.update(floats)
            scores = pd.read_csv(out / "scores.csv")
            for column in ("score", "max_log_likelihood", "reconstruction", "prediction"):
                record[f"{name}/scores.csv/{column}"] = torch.tensor(scores[column].to_numpy())
    return record


def regenerate() -> None:
    with tempfile.TemporaryDirectory() as folder:
        record = short_run(folder)
    record["_torch"] = str(torch.__version__)
    record["_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    torch.save(record, FIXTURE)
    print(f"wrote {FIXTURE} ({len(record)} entries)")


def _same(expected, actual) -> bool:
    """Equal bit for bit (NaN where NaN was recorded)."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor) or expected.dtype != actual.dtype or expected.shape != actual.shape:
            return False
        both_nan = expected.isnan() & actual.isnan() if expected.is_floating_point() else False
        return bool(((expected == actual) | both_nan).all())
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(actual, float) and math.isnan(actual)
    return expected == actual


def test_a_short_run_gives_the_recorded_numbers_bit_for_bit(tmp_path):
    expected = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    if expected.pop("_torch") != str(torch.__version__):
        pytest.skip("the fixture was recorded with another torch version; regenerate it with the code before a "
                    "change to compare")
    if expected.pop("_cpu_capability") != torch.backends.cpu.get_cpu_capability():
        pytest.skip("the fixture was recorded on a CPU with other vector instructions")
    actual = short_run(tmp_path)
    assert set(actual) == set(expected)
    differing = [key for key, value in expected.items() if not _same(value, actual[key])]
    assert not differing, f"not bit for bit the recorded values: {differing}"


# ---- the pieces, against the forms they replace ---------------------------------------------


def test_the_direct_metric_loss_is_the_librarys_bit_for_bit():
    """The training step's call skips pytorch-metric-learning's bookkeeping: the same value and
    the same gradient, bit for bit, with the triplets kept per label pattern."""
    from models.losses import TripletDistancingLoss

    generator = torch.Generator().manual_seed(0)
    for labels in (torch.arange(6).repeat_interleave(4), torch.tensor([3, 1, 3, 0, 1, 1, 0, 2]),
                   torch.tensor([5, 4, 5, 4]), torch.tensor([1, 1, 1])):
        for _ in range(2):  # the second time from the kept triplets
            z = torch.randn(len(labels), 8, generator=generator, requires_grad=True)
            reference = z.detach().clone().requires_grad_(True)
            loss = TripletDistancingLoss(margin=0.1, neg_margin=0.65, dense=False)
            value = loss(z, labels)
            expected = super(TripletDistancingLoss, loss).forward(reference, labels)
            value.backward()
            expected.backward()
            assert torch.equal(value, expected) and torch.equal(z.grad, reference.grad)


def test_the_class_statistics_from_a_label_layout_are_the_padded_forms_bit_for_bit(monkeypatch):
    from models import gaussians

    rng = torch.Generator().manual_seed(1)
    batches = [(torch.randn(24, 5, generator=rng), torch.arange(6).repeat_interleave(4)),
               (torch.randn(9, 5, generator=rng), torch.tensor([2, 0, 2, 2, 5, 0, 3, 3, 2])),
               (torch.randn(7, 5, generator=rng), torch.tensor([0, 1, 7, -1, 1, 0, 4])),  # labels outside 0..K-1
               (torch.randn(6, 5, generator=rng), torch.tensor([0, 1, 2, 3, 4, 5]))]
    with_layout = gaussians.ClassStatistics(6, 5)
    for x, y in batches:
        with_layout.update(x, y)
    monkeypatch.setattr(gaussians.LabelLayout, "of", classmethod(lambda cls, y, k: None))
    padded = gaussians.ClassStatistics(6, 5)
    for x, y in batches:
        padded.update(x, y)
    for name in ("count", "sum", "outer"):
        assert torch.equal(getattr(with_layout, name), getattr(padded, name)), name


def test_train_score_statistics_take_one_pass_over_the_training_set():
    from models.detector import FeatureEnsembleDetector
    from models.evaluation import Evaluator
    from models.vmdls import VMDLS

    torch.manual_seed(0)
    model = VMDLS(input_height=28, enc_type="mnist-conv", enc_out_dim=500, latent_dim=4, class_num=2, in_channels=1)
    x, y = torch.rand(12, 1, 28, 28), torch.tensor([0, 1] * 6)

    class Counted(list):
        passes = 0

        def __iter__(self):
            Counted.passes += 1
            return super().__iter__()

    loader = Counted([(x[:6], y[:6]), (x[6:], y[6:])])
    evaluator = Evaluator(model, "vmdls", ["vmdls"], autoencoder=torch.nn.Identity(), score_stats="train")
    evaluator.fit(loader)
    assert Counted.passes == 1
    two_passes = FeatureEnsembleDetector(model, torch.nn.Identity()).fit(list(loader), keep_limit=0)
    assert evaluator.paper.max_log_likelihood == two_passes.max_log_likelihood
    assert evaluator.paper.max_reconstruction == two_passes.max_reconstruction


def test_channels_last_changes_no_feature():
    from models.vmdls import VMDLS

    torch.manual_seed(0)
    model = VMDLS(input_height=28, enc_type="mnist-conv", enc_out_dim=500, latent_dim=4, class_num=2,
                  in_channels=1).eval()
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        before = model.embed(x)
        after = model.use_channels_last().embed(x)
    torch.testing.assert_close(after["mu"], before["mu"], rtol=1e-4, atol=1e-5)
    assert set(model.state_dict()) == set(VMDLS(input_height=28, enc_type="mnist-conv", enc_out_dim=500,
                                                latent_dim=4, class_num=2, in_channels=1).state_dict())


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile on the CPU needs a C++ compiler")
def test_compile_trains_the_same_model_under_the_same_names(tmp_path):
    """--compile: the backbone compiled in place and the metric loss on its compiled dense grid
    give the same training (to float32 rounding: other kernels, another summation order),
    and the checkpoint keeps the parameter names of an uncompiled run."""
    short = TRAIN[:TRAIN.index("--limit_train_batches")] + ["--limit_train_batches", "2", "--max_epochs", "1"]
    checkpoints, losses = {}, {}
    for name, extra in (("plain", []), ("compiled", ["--compile"])):
        last = train_script.main(short + extra + ["--output_dir", str(tmp_path / name)])
        checkpoints[name] = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
        metrics = pd.read_csv(tmp_path / name / "metrics.csv")
        losses[name] = metrics["train_triplet_loss_epoch"].dropna().to_numpy()
    assert set(checkpoints["compiled"]) == set(checkpoints["plain"])
    for key in ("class_means", "class_covs", "fc_mu.weight", "fc_var.weight"):
        torch.testing.assert_close(checkpoints["compiled"][key], checkpoints["plain"][key], rtol=1e-4, atol=1e-6)
    assert len(losses["plain"]) == 1 and abs(losses["compiled"][0] - losses["plain"][0]) < 1e-5 * losses["plain"][0]

    from models.speed import prepare_for_speed
    from models.vmdls import VMDLS

    model = VMDLS(input_height=28, enc_type="mnist-conv", enc_out_dim=500, latent_dim=4, class_num=2, in_channels=1)
    prepare_for_speed(model, "cpu", "32-true", compile=True)  # what main.py --compile does
    assert model.encoder._compiled_call_impl is not None and model.metric_loss._compiled is not None


def test_bf16_mixed_trains_and_evaluates_on_the_cpu(tmp_path):
    """--precision bf16-mixed: a short training and its evaluation end with finite results
    (the backbone autocasts; the losses, statistics and Gaussians stay float32 / float64).
    Tiny IDX sets: bfloat16 convolutions are slow on a CPU without bfloat16 instructions."""
    write_idx_folder(tmp_path / "known", gz=False, seed=0)  # 3 training, 2 test images per digit
    write_idx_folder(tmp_path / "other", gz=True, seed=5)
    data = ["--known_dataset", f"idx:{tmp_path / 'known'}", "--unknown_dataset", f"idx:{tmp_path / 'other'}",
            "--class_num", "4", "--accelerator", "cpu", "--num_workers", "0", "--offline", "--logger", "csv",
            "--seed", "0", "--precision", "bf16-mixed"]
    last = train_script.main(data + ["--enc_type", "mnist-conv", "--enc_out_dim", "500", "--latent_dim", "8",
                                     "--data_transforms", "mnist", "--batch_classes", "4", "--sample_count", "3",
                                     "--opt", "adam", "--lr", "0.001", "--max_epochs", "2", "--generation_epoch", "1",
                                     "--output_dir", str(tmp_path / "train")])
    state = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
    for key in STATISTICS[:-1]:
        assert state[key].dtype == torch.float64 and torch.isfinite(state[key]).all(), key
    assert torch.isfinite(state["class_covs"]).all() and float(state["class_covs"].abs().sum()) > 0
    results = test_script.main(data + ["--checkpoint_path", last, "--data_transforms", "blob", "--score_stats",
                                       "train", "--output_dir", str(tmp_path / "eval")])
    for key in ("auroc", "fpr_at_95_tpr", "closed_set_accuracy", "jitter"):
        assert math.isfinite(results[key]), key
    scores = pd.read_csv(tmp_path / "eval" / "scores.csv")
    assert len(scores) == 4 * 2 + 10 * 2  # the known test images of digits 0..3, every image of the other set
    assert scores["score"].notna().all() and (scores["score"].abs() < float("inf")).all()


if __name__ == "__main__":
    if sys.argv[1:] == ["--regenerate"]:
        regenerate()
    else:
        sys.exit(pytest.main([__file__, "-q"]))
