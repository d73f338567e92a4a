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
from models.detector import FeatureEnsembleDetector, score_set
from models.vmdls import VMDLS
from models.gaussians import jitter_ladder

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


def test_detector_matches_numpy_and_scipy():
    torch.manual_seed(0)
    model = VMDLS(input_height=28, enc_type="mnist-conv", enc_out_dim=500, latent_dim=4, class_num=2,
                  in_channels=1).eval()
    rng = np.random.default_rng(0)
    train_x = torch.tensor(rng.random((40, 1, 28, 28)), dtype=torch.float32)
    train_y = torch.tensor(rng.integers(0, 2, 40))
    test_x = torch.tensor(rng.random((12, 1, 28, 28)), dtype=torch.float32)
    test_y = torch.tensor([0, 1] * 4 + [2] * 4)

    detector = FeatureEnsembleDetector(model).fit(batches(train_x, train_y), score_statistics=False)
    evaluation = score_set(detector.evaluate(batches(test_x, test_y)))

    with torch.no_grad():
        def ensemble(x):
            out = model.embed(x)
            return torch.cat([*out["taps"], out["h"], out["mu"]], 1).double().numpy()
        f_train, f_test = ensemble(train_x), ensemble(test_x)
    assert f_train.shape[1] == 100 * 3 + 500 + 4
    covs = [np.cov(f_train[train_y.numpy() == c].T, bias=True) for c in range(2)]
    jitter = jitter_ladder(torch.tensor(np.stack(covs)))
    assert detector.gaussians.jitter == pytest.approx(jitter)
    expected = np.stack([
        multivariate_normal(f_train[train_y.numpy() == c].mean(0), covs[c] + jitter * np.eye(len(covs[c])),
                            allow_singular=False).logpdf(f_test) for c in range(2)], axis=1)
    np.testing.assert_allclose(evaluation.log_likelihoods.numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(evaluation.predictions.numpy(), expected.argmax(1))
    top = expected.max() + 1
    # l is large (a tight 804-dim Gaussian), so s = l - M keeps fewer significant digits
    np.testing.assert_allclose(evaluation.scores.numpy(), expected.max(1) - top, rtol=0, atol=1e-6 * abs(top))


def test_reconstruction_weighting_and_train_statistics():
    torch.manual_seed(1)
    model = VMDLS(input_height=28, enc_type="mnist-conv", enc_out_dim=500, latent_dim=4, class_num=2,
                  in_channels=1).eval()
    autoencoder = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1)).eval()  # any image-to-image map
    rng = np.random.default_rng(1)
    train_x = torch.tensor(rng.random((30, 1, 28, 28)), dtype=torch.float32)
    train_y = torch.tensor(rng.integers(0, 2, 30))
    test_x = torch.tensor(rng.random((6, 1, 28, 28)), dtype=torch.float32)
    test_y = torch.tensor([0, 1, 0, 2, 2, 2])

    detector = FeatureEnsembleDetector(model, autoencoder).fit(batches(train_x, train_y), score_statistics=False)
    evaluation = score_set(detector.evaluate(batches(test_x, test_y)))
    with torch.no_grad():
        tap = model.encoder(test_x)[1][0]
        tap_hat = model.encoder(autoencoder(test_x))[1][0]
    r = ((tap - tap_hat) ** 2).mean(1).double()
    np.testing.assert_allclose(evaluation.reconstruction.numpy(), r.numpy(), rtol=1e-5)
    l = evaluation.log_likelihoods
    expected = (l.max(1).values - (l.max() + 1)) * (r / r.max())
    np.testing.assert_allclose(evaluation.scores.numpy(), expected.numpy(), rtol=1e-5)

    # 'train' mode: M and max r from the training set; one image scores alone, the same
    # whether or not other images come with it.
    trained = FeatureEnsembleDetector(model, autoencoder).fit(list(batches(train_x, train_y)))
    together = trained.score(trained.evaluate(batches(test_x, test_y))).scores
    torch.testing.assert_close(-trained.predict(test_x), together, rtol=0, atol=0)
    # Features of one image alone differ from the batched ones by float32 rounding (2e-6
    # relative), so the independence of the score from the other images is checked on
    # the same features.
    with torch.no_grad():
        features, reconstruction = trained.features(test_x)
    alone = torch.cat([-trained.predict_features(features[i:i + 1], reconstruction[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(alone, together, rtol=1e-6, atol=1e-9)
