"""test.py end to end, and the detector against an independent numpy/scipy computation."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import multivariate_normal

import main as train_script
import test as test_script
from float_tolerance import assert_results_within, rank_allowances, score_band
from models.detector import FeatureEnsembleDetector, score_set
from models.gaussians import fit_jitter
from models.vmdls import VMDLS

ROOT = Path(__file__).resolve().parents[1]
RESULT_KEYS = {"auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr", "tnr_at_95_tpr", "detection_accuracy",
               "closed_set_accuracy", "f1_macro_at_95_tpr", "f1_macro_best", "n_known", "n_unknown",
               "known_dataset", "unknown_dataset", "enc_type", "checkpoint", "ae_features"}
DATA = ["--known_dataset", "digits", "--unknown_dataset", "digits_unknown", "--class_num", "4",
        "--input_height", "28", "--batch_size", "128", "--accelerator", "cpu", "--num_workers", "0", "--offline"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint trained for a few steps, and an autoencoder trained for a few steps."""
    root = tmp_path_factory.mktemp("trained")
    checkpoint = train_script.main(DATA + [
        "--enc_type", "mnist-conv", "--enc_out_dim", "500", "--latent_dim", "8", "--data_transforms", "mnist",
        "--batch_classes", "4", "--sample_count", "8", "--opt", "adam", "--lr", "0.001", "--max_epochs", "2",
        "--limit_train_batches", "4", "--generation_epoch", "1", "--output_dir", str(root / "train")])
    ae = subprocess.run([sys.executable, str(ROOT / "mnist_ae.py"), "--known_dataset", "digits", "--class_num", "4",
                         "--max_epochs", "1", "--limit_train_batches", "3", "--accelerator", "cpu",
                         "--num_workers", "0", "--output_dir", str(root / "ae")],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert ae.returncode == 0, ae.stderr[-3000:]
    return checkpoint, ae.stdout.strip().splitlines()[-1].split(": ", 1)[1]


def test_end_to_end_writes_every_output(trained, tmp_path):
    checkpoint, ae_checkpoint = trained
    out = tmp_path / "eval"
    results = test_script.main(DATA + ["--checkpoint_path", checkpoint, "--data_transforms", "blob",
                                       "--ae_features", "--ae_checkpoint", ae_checkpoint, "--log_tsne",
                                       "--thresholding", "--output_dir", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert RESULT_KEYS <= set(saved)
    assert saved["ae_features"] is True and saved["enc_type"] == "mnist-conv"
    assert saved["n_known"] > 0 and saved["n_unknown"] > 0
    for key in ("auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr", "f1_macro_best"):
        assert 0.0 <= saved[key] <= 1.0
    assert saved["tnr_at_95_tpr"] == pytest.approx(1 - saved["fpr_at_95_tpr"])
    assert saved == pytest.approx(json.loads(json.dumps(results, default=str)))
    table = pd.read_csv(out / "thresholds.csv")
    assert list(table.columns) == ["threshold", "tpr", "fpr", "f1_macro"]
    assert table["threshold"].is_unique and table["threshold"].is_monotonic_decreasing
    for name in ("roc.png", "f1_threshold.png", "score_histogram.png", "tsne.png"):
        with Image.open(out / name) as image:
            assert image.size[0] > 200
    assert (out / "metrics.csv").is_file()


def test_missing_autoencoder_is_one_sentence(trained, tmp_path):
    checkpoint, _ = trained
    result = subprocess.run([sys.executable, str(ROOT / "test.py"), *DATA, "--checkpoint_path", checkpoint,
                             "--ae_features", "--output_dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert "--ae_checkpoint" in message and "mnist_ae.py" in message and "Traceback" not in result.stderr


def batches(images, labels, size=7):
    for i in range(0, len(images), size):
        yield images[i:i + size], labels[i:i + size]


def tiny_model_and_training_set(seed: int, n_train: int):
    """An untrained 2-class mnist-conv VMDLS, random training images and labels, and the rng."""
    torch.manual_seed(seed)
    model = VMDLS(input_height=28, enc_type="mnist-conv", enc_out_dim=500, latent_dim=4, class_num=2,
                  in_channels=1).eval()
    rng = np.random.default_rng(seed)
    train_x = torch.tensor(rng.random((n_train, 1, 28, 28)), dtype=torch.float32)
    train_y = torch.tensor(rng.integers(0, 2, n_train))
    return model, train_x, train_y, rng


def test_detector_matches_numpy_and_scipy():
    model, train_x, train_y, rng = tiny_model_and_training_set(0, 40)
    test_x = torch.tensor(rng.random((12, 1, 28, 28)), dtype=torch.float32)
    test_y = torch.tensor([0, 1] * 4 + [2] * 4)

    detector = FeatureEnsembleDetector(model).fit(batches(train_x, train_y), score_statistics=False)
    record = detector.evaluate(batches(test_x, test_y))
    outlier = score_set(record)

    with torch.no_grad():
        def ensemble(x):
            out = model.embed(x)
            return torch.cat([*out["taps"], out["h"], out["mu"]], 1).double().numpy()
        f_train, f_test = ensemble(train_x), ensemble(test_x)
    assert f_train.shape[1] == 100 * 3 + 500 + 4
    covs = [np.cov(f_train[train_y.numpy() == c].T, bias=True) for c in range(2)]
    jitter = fit_jitter(torch.tensor(np.stack(covs)))[0]
    assert detector.gaussians.jitter == pytest.approx(jitter)
    expected = np.stack([
        multivariate_normal(f_train[train_y.numpy() == c].mean(0), covs[c] + jitter * np.eye(len(covs[c])),
                            allow_singular=False).logpdf(f_test) for c in range(2)], axis=1)
    np.testing.assert_allclose(record.log_likelihoods.numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(record.own_predictions().numpy(), expected.argmax(1))
    top = expected.max() + 1
    # l is large (a tight 804-dim Gaussian), so s = l - M keeps fewer significant digits; outlier score -s
    np.testing.assert_allclose(-outlier.numpy(), expected.max(1) - top, rtol=0, atol=1e-6 * abs(top))


def test_reconstruction_weighting_and_train_statistics():
    model, train_x, train_y, rng = tiny_model_and_training_set(1, 30)
    autoencoder = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1)).eval()  # any image-to-image map
    test_x = torch.tensor(rng.random((6, 1, 28, 28)), dtype=torch.float32)
    test_y = torch.tensor([0, 1, 0, 2, 2, 2])

    detector = FeatureEnsembleDetector(model, autoencoder).fit(batches(train_x, train_y), score_statistics=False)
    record = detector.evaluate(batches(test_x, test_y))
    with torch.no_grad():
        tap = model.encoder(test_x)[1][0]
        tap_hat = model.encoder(autoencoder(test_x))[1][0]
    r = ((tap - tap_hat) ** 2).mean(1).double()
    np.testing.assert_allclose(record.reconstruction.numpy(), r.numpy(), rtol=1e-5)
    likelihoods = record.log_likelihoods
    expected = ((likelihoods.max() + 1) - likelihoods.max(1).values) * (r / r.max())
    np.testing.assert_allclose(score_set(record).numpy(), expected.numpy(), rtol=1e-5)

    # 'train' mode: M and max r from the training set; one image scores alone, the same
    # whether or not other images come with it.
    trained = FeatureEnsembleDetector(model, autoencoder).fit(list(batches(train_x, train_y)))
    together = trained.predict_record(trained.evaluate(batches(test_x, test_y)))
    torch.testing.assert_close(trained.predict(test_x), together, rtol=0, atol=0)
    # Features of one image alone differ from the batched ones by float32 rounding (2e-6
    # relative), so the independence of the score from the other images is checked on
    # the same features.
    with torch.no_grad():
        features, reconstruction = trained.features(test_x)
    alone = torch.cat([trained.predict_features(features[i:i + 1], reconstruction[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(alone, together, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------- checkpoints and settings

FIXTURES = ROOT / "tests" / "fixtures"
FIXTURE_ARGS = ["--data_transforms", "blob", "--batch_size", "128", "--accelerator", "cpu", "--num_workers", "0",
                "--offline", "--logger", "csv"]


# Keys results.json gained after the fixture was written (the metric conventions and the
# detector interface); every key the fixture has must still be there with its value.
ADDED_KEYS = {"cauroc", "auroc_ood_positive", "fpr_at_95_tpr_ood_positive", "aupr_ood_positive", "detector",
              "checkpoint_kind", "classifier"}  # results keys added since the fixture was recorded


def assert_same_results(got: dict, expected: dict):
    assert set(got) - set(expected) <= ADDED_KEYS and set(expected) <= set(got)
    for key, value in expected.items():
        if key == "checkpoint":
            continue
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        else:
            assert got[key] == value, key


@pytest.mark.recorded
def test_a_checkpoint_written_before_the_data_module_recorded_its_settings_evaluates_as_before(tmp_path):
    """tests/fixtures/vmdls_v0_digits.ckpt was written by main.py before this change (its
    hyperparameters carry the whole command line; optimiser state dropped to keep it
    small), and vmdls_v0_digits_results.json is what test.py gave for it then, on another
    CPU. It holds on any CPU within the rounding that the evaluation amplifies: measured here
    against a float64 evaluation of the same checkpoint (tests/float_tolerance.py)."""
    checkpoint = torch.load(FIXTURES / "vmdls_v0_digits.ckpt", weights_only=False)
    assert "datamodule_hyper_parameters" not in checkpoint and "num_workers" in checkpoint["hyper_parameters"]
    evaluate = ["--checkpoint_path", str(FIXTURES / "vmdls_v0_digits.ckpt"), *FIXTURE_ARGS]
    results = test_script.main([*evaluate, "--output_dir", str(tmp_path / "float32")])
    exact = test_script.main([*evaluate, "--precision", "64-true", "--output_dir", str(tmp_path / "float64")])
    scores = pd.read_csv(tmp_path / "float32" / "scores.csv")
    reference = pd.read_csv(tmp_path / "float64" / "scores.csv")
    assert (scores["prediction"] == reference["prediction"]).all()  # no class decided by rounding
    band = score_band(scores["score"], reference["score"])
    assert 0 < band < 1e-4 * scores["score"].abs().max()  # float32 rounding, amplified: not a different model
    assert abs(exact["threshold_at_95_tpr"] - results["threshold_at_95_tpr"]) <= band
    allowances = rank_allowances(scores["score"], scores["label"], scores["prediction"], 4, band,
                                 results["threshold_at_95_tpr"])
    expected = json.loads((FIXTURES / "vmdls_v0_digits_results.json").read_text())
    assert set(results) - set(expected) <= ADDED_KEYS and set(expected) <= set(results)
    assert_results_within(results, expected, band, allowances)
    assert_results_within(json.loads((tmp_path / "float32" / "results.json").read_text()), expected, band,
                          allowances)


def test_checkpoints_hold_the_model_hyperparameters_and_the_data_settings_apart(trained, tmp_path):
    from models.vmdls import VMDLS

    checkpoint_path, _ = trained
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    assert set(checkpoint["hyper_parameters"]) == set(VMDLS.hyperparameter_names())
    data = checkpoint["datamodule_hyper_parameters"]
    assert (data["known_dataset"], data["unknown_dataset"], data["class_num"]) == ("digits", "digits_unknown", 4)

    # test.py takes the data settings from the data module's record: no data flag given.
    fresh = test_script.main(["--checkpoint_path", checkpoint_path, *FIXTURE_ARGS, "--output_dir", str(tmp_path / "a")])
    assert (fresh["known_dataset"], fresh["unknown_dataset"]) == ("digits", "digits_unknown")
    assert fresh["n_known"] > 0 and fresh["n_unknown"] > 0

    # The same weights in the earlier layout (command line in hyper_parameters, no data
    # module record) give the same results.
    old = dict(checkpoint)
    data = old.pop("datamodule_hyper_parameters")
    old["hyper_parameters"] = {**old["hyper_parameters"], **data, "gpus": None, "output_dir": "elsewhere",
                               "log_tsne": False, "cov_scaling": 5.0}
    torch.save(old, tmp_path / "old.ckpt")
    before = test_script.main(["--checkpoint_path", str(tmp_path / "old.ckpt"), *FIXTURE_ARGS,
                               "--output_dir", str(tmp_path / "b")])
    assert_same_results(before, fresh)


def test_tensorboard_is_a_default_logger_and_csv_is_always_written(trained):
    checkpoint_path, _ = trained
    run_dir = Path(checkpoint_path).parents[1]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "metrics.csv").is_file()


def test_vmdls_takes_exactly_its_own_hyperparameters():
    from models.checkpoints import build_model
    from models.vmdls import VMDLS

    with pytest.raises(TypeError):
        VMDLS(enc_type="mnist-conv", enc_out_dim=500, latnt_dim=8)
    args = train_script.build_parser().parse_args(["--enc_type", "mnist-conv", "--enc_out_dim", "500",
                                                   "--latent_dim", "8", "--num_workers", "3", "--gpus", "0,"])
    model = build_model("vmdls", vars(args), {"in_channels": 1})
    assert set(model.hparams) == set(VMDLS.hyperparameter_names())
    assert model.hparams.latent_dim == 8 and "num_workers" not in model.hparams and "gpus" not in model.hparams


# --------------------------------------------------------------------------- the detector interface

def test_detector_is_a_pytorch_ood_detector_scoring_one_batch_alone():
    from pytorch_ood.api import Detector, RequiresFittingException

    model, train_x, train_y, _ = tiny_model_and_training_set(2, 30)
    detector = FeatureEnsembleDetector(model)
    assert isinstance(detector, Detector)
    with pytest.raises(RequiresFittingException):
        detector.predict(train_x[:2])
    detector.fit(batches(train_x, train_y))  # one pass (M from the kept features): a one-shot iterator will do
    one_pass = (detector.max_log_likelihood, detector.max_reconstruction)
    detector.fit(list(batches(train_x, train_y)), keep_limit=0)  # the second pass, for features too many to keep
    assert (detector.max_log_likelihood, detector.max_reconstruction) == one_pass
    with pytest.raises(ValueError, match="twice"):
        detector.fit(batches(train_x, train_y), keep_limit=0)

    # The training set's own statistics: its most likely image sits at gap 1, r = 1.
    with torch.no_grad():
        features, _ = detector.features(train_x)
    l_train = detector.gaussians.log_prob(features).max(dim=1).values
    assert detector.max_log_likelihood == pytest.approx(float(l_train.max()))
    scores = detector(train_x)  # pytorch-ood: __call__ is predict, higher = more unknown
    expected = ((detector.max_log_likelihood + 1) - l_train).clamp(min=1)
    np.testing.assert_allclose(scores.numpy(), expected.numpy(), rtol=1e-9)
    np.testing.assert_allclose(detector.predict_features(features).numpy(), scores.numpy(), rtol=0, atol=0)


def test_train_statistics_never_reward_a_worse_reconstruction():
    """--score_stats train: an image more likely than every training image (max_c l_c
    beyond the training maximum) must still lose score as its reconstruction worsens."""
    rng = np.random.default_rng(3)
    dim = 20  # in 20 dimensions no training image comes near its class mean's density
    means = np.stack([np.zeros(dim), np.full(dim, 6.0)])
    y = np.repeat([0, 1], 50)
    x = means[y] + rng.normal(size=(100, dim))
    reconstruction = rng.uniform(0.5, 2.0, size=100)
    detector = FeatureEnsembleDetector(None, num_classes=2).fit_features(
        torch.tensor(x), torch.tensor(y), torch.tensor(reconstruction))
    assert detector.max_reconstruction == pytest.approx(reconstruction.max())

    centre = torch.tensor(x[y == 0].mean(0, keepdims=True))  # the densest point of class 0
    best = float(detector.gaussians.log_prob(centre).max())
    top = detector.max_log_likelihood
    assert best > top + 1  # beyond the training maximum + 1: (l - M) would be positive
    r = torch.tensor([0.1, 1.0, 3.0, 10.0], dtype=torch.float64)
    outlier = detector.predict_features(centre.repeat(4, 1), r)
    assert torch.all(outlier[1:] > outlier[:-1])  # worse reconstruction, more unknown
    np.testing.assert_allclose(outlier.numpy(), (r / reconstruction.max()).numpy(), rtol=1e-12)

    # Below the maximum nothing changes: -s = (M - l) r / r_max.
    far = torch.full((1, dim), 1.0, dtype=torch.float64)
    l_far = float(detector.gaussians.log_prob(far).max())
    assert l_far < top
    expected = (top + 1 - l_far) * 2.0 / reconstruction.max()
    assert float(detector.predict_features(far, torch.tensor([2.0], dtype=torch.float64))) == pytest.approx(expected)


def test_the_readme_python_example_runs(trained, tmp_path, monkeypatch):
    """README's "The detector from Python" block, run as written from a folder that holds a
    trained checkpoint where `make demo` writes its VMDLS model."""
    import shutil

    import pandas as pd

    checkpoint_path, _ = trained
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The detector from Python"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[:code.index("```")]
    demo_checkpoint = tmp_path / "outputs" / "demo" / "seed0" / "digits" / "vmdls" / "checkpoints" / "last.ckpt"
    demo_checkpoint.parent.mkdir(parents=True)
    shutil.copyfile(checkpoint_path, demo_checkpoint)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    scores, x = namespace["outlier_scores"], namespace["x"]
    assert scores.shape == (len(x),) and torch.isfinite(scores).all()
    # The same images scored by test.py's path with training statistics.
    detector = namespace["detector"]
    expected = detector.predict_record(detector.evaluate([(x, namespace["y"])]))
    torch.testing.assert_close(scores, expected, rtol=0, atol=0)
    # The table is test.py's for the same detectors.
    test_script.main(["--checkpoint_path", str(demo_checkpoint), "--detector", "vmdls", "vmdls_latent",
                      "--data_transforms", "blob", "--num_workers", "0", "--accelerator", "cpu", "--offline",
                      "--logger", "csv", "--output_dir", str(tmp_path / "eval")])
    summary = pd.read_csv(tmp_path / "eval" / "summary.csv")
    summary = summary[summary["unknown"] != "mean"]
    table = namespace["result"].table
    assert list(table["detector"]) == list(summary["method"]) and list(table["unknown"]) == list(summary["unknown"])
    np.testing.assert_allclose(table[["auroc", "fpr_at_95_tpr"]].to_numpy(),
                               summary[["auroc", "fpr_at_95_tpr"]].to_numpy(), rtol=1e-12)


# --------------------------------------------------------------------------- the untrained reference

def test_compare_untrained_reports_both_and_the_reference_is_the_runs_initialisation(trained, tmp_path, capsys):
    from models.checkpoints import untrained_model

    checkpoint_path, _ = trained
    results = test_script.main(["--checkpoint_path", checkpoint_path, *FIXTURE_ARGS, "--compare_untrained",
                                "--output_dir", str(tmp_path / "eval")])
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    metric_keys = RESULT_KEYS - {"known_dataset", "unknown_dataset", "enc_type", "checkpoint", "ae_features"}
    assert metric_keys <= set(saved["untrained"])
    assert saved["untrained"]["seed"] == 0 and saved["untrained"]["n_known"] == saved["n_known"]
    assert saved["untrained"]["auroc"] != saved["auroc"]
    table = capsys.readouterr().out
    assert "untrained" in table and f"{100 * results['untrained']['auroc']:8.2f} %" in table

    # No weight of the reference is a trained one ...
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    reference = untrained_model(checkpoint)
    for name, value in reference.state_dict().items():
        if name.startswith(("encoder.", "fc_")) and value.is_floating_point() and "running" not in name:
            assert not torch.equal(value, checkpoint["state_dict"][name]), name


def test_the_untrained_reference_has_the_weights_its_run_started_from(tmp_path):
    from models.checkpoints import untrained_model

    start = train_script.main(DATA + ["--enc_type", "mnist-conv", "--enc_out_dim", "500", "--latent_dim", "8",
                                      "--data_transforms", "mnist", "--batch_classes", "4", "--sample_count", "8",
                                      "--max_steps", "0", "--seed", "7", "--logger", "csv",
                                      "--output_dir", str(tmp_path / "start")])
    checkpoint = torch.load(start, weights_only=False)
    reference = untrained_model(checkpoint)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(value, checkpoint["state_dict"][name], rtol=0, atol=0)
    other_seed = untrained_model(checkpoint, seed=8)
    assert not torch.equal(other_seed.fc_mu.weight, reference.fc_mu.weight)
