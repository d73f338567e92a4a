"""test.py with several unknown sets, per-image scores and the standard detectors, end to end
on tiny data: the multi-set run equals single runs, scores.csv reproduces results.json, and
every detector's scores equal a direct computation from the model's outputs."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import logsumexp, softmax
from sklearn.metrics import roc_auc_score

import main as train_script
import test as test_script
from conftest import write_idx, write_images
from datasets import KnownUnknownDataModule
from experiments.reporting import SCORE_COLUMNS, set_folder
from models.checkpoints import load_model, read_checkpoint
from utils.cli import run_main

CLASSES = 4
COMMON = ["--known_dataset", "digits", "--class_num", str(CLASSES), "--input_height", "28", "--batch_size", "64",
          "--accelerator", "cpu", "--num_workers", "0", "--offline", "--logger", "csv"]
TRAIN = ["--enc_type", "mnist-conv", "--enc_out_dim", "500", "--latent_dim", "8", "--data_transforms", "mnist",
         "--batch_classes", "4", "--sample_count", "8", "--opt", "adam", "--lr", "0.001", "--max_epochs", "1",
         "--limit_train_batches", "3", "--generation_epoch", "1", "--unknown_dataset", "digits_unknown"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A VMDLS and a cross-entropy checkpoint, a few steps each, and two tiny unknown sets
    on disk: an IDX folder and an image folder."""
    root = tmp_path_factory.mktemp("detectors")
    vmdls = train_script.main(COMMON + TRAIN + ["--output_dir", str(root / "vmdls")])
    ce = train_script.main(COMMON + TRAIN + ["--objective", "ce", "--output_dir", str(root / "ce")])
    rng = np.random.default_rng(0)
    write_idx(root / "idx" / "t10k-images-idx3-ubyte", rng.integers(0, 256, (9, 28, 28)), gz=True)
    write_idx(root / "idx" / "t10k-labels-idx1-ubyte", np.zeros(9), gz=True)
    write_images(root / "pngs" / "sub", 7, size=(28, 28), mode="L", seed=1)
    return {"vmdls": vmdls, "ce": ce, "idx": f"idx:{root / 'idx'}", "folder": f"folder:{root / 'pngs'}"}


def run_test(checkpoint, out, *extra):
    return test_script.main(COMMON + ["--checkpoint_path", checkpoint, "--data_transforms", "blob",
                                      "--output_dir", str(out), *extra])


def test_several_unknown_sets_equal_single_runs(checkpoints, tmp_path):
    sets = ["digits_unknown", checkpoints["idx"], checkpoints["folder"]]
    run_test(checkpoints["vmdls"], tmp_path / "multi", "--unknown_dataset", sets[0], f"{sets[1]},{sets[2]}",
             "--compare_untrained")
    summary = pd.read_csv(tmp_path / "multi" / "summary.csv")
    folders = sorted(p for p in os.listdir(tmp_path / "multi") if (tmp_path / "multi" / p).is_dir())
    assert len(folders) == 3 and (tmp_path / "multi" / "roc.png").stat().st_size > 0
    for i, name in enumerate(sets):
        single = run_test(checkpoints["vmdls"], tmp_path / f"single{i}", "--unknown_dataset", name,
                          "--compare_untrained")
        folder = set_folder(str(tmp_path / "multi"), name, several=True)
        multi = json.loads(open(os.path.join(folder, "results.json")).read())
        for key, value in single.items():
            if key == "untrained":
                assert multi[key] == pytest.approx(value, rel=1e-12)
            elif isinstance(value, float):
                assert multi[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
            elif key != "checkpoint":
                assert multi[key] == value, key
        for method, reference in (("vmdls", single), ("untrained", single["untrained"])):
            row = summary[(summary["method"] == method) & (summary["unknown"] == name)].iloc[0]
            assert row["auroc"] == pytest.approx(reference["auroc"])
            assert row["fpr_at_95_tpr_ood_positive"] == pytest.approx(reference["fpr_at_95_tpr_ood_positive"])
    for method in ("vmdls", "untrained"):
        rows = summary[summary["method"] == method]
        mean = rows[rows["unknown"] == "mean"].iloc[0]
        assert mean["auroc"] == pytest.approx(rows[rows["unknown"] != "mean"]["auroc"].mean())


def test_scores_csv_holds_every_image_once_and_reproduces_the_metrics(checkpoints, tmp_path):
    results = run_test(checkpoints["vmdls"], tmp_path, "--unknown_dataset", checkpoints["folder"])
    scores = pd.read_csv(tmp_path / "scores.csv", keep_default_na=False)
    assert list(scores.columns) == list(SCORE_COLUMNS)
    known, unknown = scores[scores["label"] < CLASSES], scores[scores["label"] == CLASSES]
    assert len(known) == results["n_known"] and len(unknown) == results["n_unknown"] == 7
    assert (known["set"] == "digits").all() and (unknown["set"] == checkpoints["folder"]).all()
    assert list(known["index"]) == list(range(len(known))) and list(unknown["index"]) == list(range(7))
    assert (known["path"] == "").all()
    assert [os.path.basename(p) for p in unknown["path"]] == [f"img_{i:03d}.png" for i in range(7)]
    score = scores["score"].to_numpy(dtype=float)
    assert roc_auc_score(scores["label"] < CLASSES, score) == pytest.approx(results["auroc"])
    assert np.mean(known["prediction"] == known["label"]) == pytest.approx(results["closed_set_accuracy"])
    # The paper's score, from the two columns: s = -(M - max_c l_c) * r / r_max, M = max l + 1.
    ll = scores["max_log_likelihood"].to_numpy(dtype=float)
    r = scores["reconstruction"].to_numpy(dtype=float)
    np.testing.assert_allclose(score, -(ll.max() + 1 - ll) * r / r.max(), rtol=1e-9)


def classifier_outputs(checkpoint: str, unknown: str):
    """h and logits of the known test set and an unknown set, computed here directly."""
    model = load_model(read_checkpoint(checkpoint), {"in_channels": 1})
    data = KnownUnknownDataModule(known_dataset="digits", unknown_dataset=unknown, class_num=CLASSES,
                                  data_transforms="blob", num_workers=0, batch_size=64)
    data.setup()
    outs = []
    with torch.no_grad():
        for loader in (data.known_test_dataloader(), data.unknown_test_dataloader(unknown)):
            for x, _ in loader:
                outs.append(model.features_and_logits(data.preprocess(x)))
    h = torch.cat([o[0] for o in outs]).double().numpy()
    logits = torch.cat([o[1] for o in outs]).double().numpy()
    return h, logits


def test_logit_detectors_on_a_cross_entropy_checkpoint_equal_their_formulas(checkpoints, tmp_path):
    run_test(checkpoints["ce"], tmp_path, "--unknown_dataset", "digits_unknown",
             "--detector", "msp", "energy", "maxlogit", "knn", "mahalanobis", "vim")
    h, logits = classifier_outputs(checkpoints["ce"], "digits_unknown")
    expected = {"msp": softmax(logits, axis=1).max(axis=1), "energy": logsumexp(logits, axis=1),
                "maxlogit": logits.max(axis=1)}
    for name, values in expected.items():
        csv = "scores.csv" if name == "msp" else f"scores_{name}.csv"
        frame = pd.read_csv(tmp_path / csv)
        np.testing.assert_allclose(frame["score"], values, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(frame["prediction"], logits.argmax(axis=1))
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert set(summary["method"]) == {"msp", "energy", "maxlogit", "knn", "mahalanobis", "vim"}
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["detector"] == "msp" and results["checkpoint_kind"] == "ce"
    assert set(results["detectors"]) == set(summary["method"])
    labels = pd.read_csv(tmp_path / "scores.csv")["label"].to_numpy()
    for name in summary["method"]:
        frame = pd.read_csv(tmp_path / ("scores.csv" if name == "msp" else f"scores_{name}.csv"))
        assert results["detectors"][name]["auroc"] == pytest.approx(roc_auc_score(labels < CLASSES, frame["score"]))


def test_the_latent_detector_and_mahalanobis_on_a_vmdls_checkpoint(checkpoints, tmp_path):
    results = run_test(checkpoints["vmdls"], tmp_path, "--unknown_dataset", "digits_unknown",
                       "--detector", "vmdls", "vmdls_latent", "mahalanobis", "knn")
    assert results["detector"] == "vmdls"
    assert set(results["detectors"]) == {"vmdls", "vmdls_latent", "mahalanobis", "knn"}
    latent = pd.read_csv(tmp_path / "scores_vmdls_latent.csv")
    np.testing.assert_allclose(latent["score"], latent["max_log_likelihood"])


@pytest.mark.parametrize("checkpoint,detector,words", [
    ("vmdls", "msp", "needs a classifier's logits"),
    ("vmdls", "vim", "needs a classifier's logits"),
    ("ce", "vmdls_latent", "needs a VMDLS checkpoint"),
    ("ce", "vmdls", "needs the feature ensemble"),
])
def test_a_detector_the_checkpoint_cannot_serve_is_one_sentence(checkpoints, tmp_path, capsys, checkpoint,
                                                                detector, words):
    argv = COMMON + ["--checkpoint_path", checkpoints[checkpoint], "--unknown_dataset", "digits_unknown",
                     "--detector", detector, "--output_dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: test_script.main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "--detector" in err[0]
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("value", ["bogus", "vmdls,bogus"])
def test_an_unknown_detector_is_refused_by_the_parser(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        test_script.build_parser().parse_args(["--detector", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid choice: '{value}'" in err and "--detector" in err
    args = test_script.build_parser().parse_args(["--detector", "vmdls,vmdls_latent", "knn"])
    assert args.detector == ["vmdls,vmdls_latent", "knn"]  # experiments.evaluation splits the names


@pytest.mark.parametrize("kind", ["vmdls", "ce"])
def test_every_detector_evaluates_in_float64_as_in_float32(checkpoints, tmp_path, kind):
    """test.py --precision 64-true runs every network pass in float64 (the reference the
    recorded-number tests measure float32 rounding against): the same figures, to rounding."""
    detectors = ["vmdls", "vmdls_latent", "mahalanobis", "knn"] if kind == "vmdls" else \
        ["msp", "energy", "maxlogit", "mahalanobis", "knn", "vim"]
    results = {}
    for precision in ("32-true", "64-true"):
        run_test(checkpoints[kind], tmp_path / precision, "--unknown_dataset", "digits_unknown", "--precision",
                 precision, "--detector", *detectors)
        summary = pd.read_csv(tmp_path / precision / "summary.csv")
        results[precision] = summary[summary["unknown"] == "digits_unknown"].set_index("method")
    for detector in detectors:
        single, double = results["32-true"].loc[detector], results["64-true"].loc[detector]
        assert double["auroc"] == pytest.approx(single["auroc"], abs=2e-3), detector
        assert double["closed_set_accuracy"] == pytest.approx(single["closed_set_accuracy"], abs=2e-2), detector


def test_the_linear_probe_changes_the_predictions_not_the_scores(checkpoints, tmp_path):
    """--classifier h_linear: every detector's class is a logistic regression on h fitted on
    the known training set (fitted here independently with scikit-learn on h computed
    directly); the scores are the paper rule's, bit for bit."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    detectors = ["--detector", "vmdls", "vmdls_latent", "--unknown_dataset", "digits_unknown"]
    paper = run_test(checkpoints["vmdls"], tmp_path / "paper", *detectors)
    probed = run_test(checkpoints["vmdls"], tmp_path / "probe", *detectors, "--classifier", "h_linear")
    assert probed["classifier"] == "h_linear" and paper["classifier"] == "gaussians"

    model = load_model(read_checkpoint(checkpoints["vmdls"]), {"in_channels": 1})
    data = KnownUnknownDataModule(known_dataset="digits", unknown_dataset="digits_unknown", class_num=CLASSES,
                                  data_transforms="blob", num_workers=0, batch_size=64)
    data.setup()

    def h_and_labels(loader):
        with torch.no_grad():
            parts = [(model.eval().embed(data.preprocess(x))["h"], y) for x, y in loader]
        return torch.cat([p[0] for p in parts]).double().numpy(), torch.cat([p[1] for p in parts]).numpy()

    train_h, train_y = h_and_labels(data.fit_dataloader())
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0)).fit(train_h, train_y)
    test_h = np.concatenate([h_and_labels(data.known_test_dataloader())[0],
                             h_and_labels(data.unknown_test_dataloader("digits_unknown"))[0]])
    expected = probe.predict(test_h)
    for csv in ("scores.csv", "scores_vmdls_latent.csv"):
        before, after = pd.read_csv(tmp_path / "paper" / csv), pd.read_csv(tmp_path / "probe" / csv)
        np.testing.assert_array_equal(after["score"], before["score"])
        np.testing.assert_array_equal(after["prediction"], expected)
        known = after["label"] < CLASSES
        assert np.mean(expected[known] == after["label"][known]) == pytest.approx(
            probed["detectors"]["vmdls" if csv == "scores.csv" else "vmdls_latent"]["closed_set_accuracy"])
