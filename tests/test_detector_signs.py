"""One sign convention: every registered detector's pytorch-ood output (higher = more unknown)
and the ``score`` column of the scores.csv a real test.py run writes for it (higher = more
known) are exact negatives, on tiny data."""
import numpy as np
import pandas as pd
import pytest
import torch

import main as train_script
import models.evaluation
import test as test_script
from datasets import KnownUnknownDataModule
from models.detector import score_set
from models.detector_registry import DETECTORS
from models.records import FeatureRecord
from test_detectors_cli import CLASSES, COMMON, TRAIN  # the same tiny runs as the detector CLI tests

BY_KIND = {"vmdls": [name for name, entry in DETECTORS.items() if "vmdls" in entry.kinds],
           "ce": [name for name, entry in DETECTORS.items() if "ce" in entry.kinds]}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("signs")
    return {"vmdls": train_script.main(COMMON + TRAIN + ["--output_dir", str(root / "vmdls")]),
            "ce": train_script.main(COMMON + TRAIN + ["--objective", "ce", "--output_dir", str(root / "ce")])}


def run_and_capture(monkeypatch, checkpoint, out, *extra):
    """test.py's run, and the models.evaluation.evaluate result it wrote its files from."""
    captured = []
    evaluate = models.evaluation.evaluate

    def capturing(*args, **kwargs):
        captured.append(evaluate(*args, **kwargs))
        return captured[-1]

    monkeypatch.setattr(models.evaluation, "evaluate", capturing)
    test_script.main(COMMON + ["--checkpoint_path", checkpoint, "--data_transforms", "blob", "--output_dir",
                               str(out), "--unknown_dataset", "digits_unknown", *extra])
    assert len(captured) == 1
    return captured[0]


def csv_scores(folder, detector, primary) -> np.ndarray:
    name = "scores.csv" if detector == primary else f"scores_{detector}.csv"
    return pd.read_csv(folder / name, float_precision="round_trip")["score"].to_numpy()


def image_batches():
    """The known test set's and the unknown set's batches, as test.py's run loads them."""
    data = KnownUnknownDataModule(known_dataset="digits", unknown_dataset="digits_unknown", class_num=CLASSES,
                                  data_transforms="blob", num_workers=0, batch_size=64)
    data.setup()
    loaders = (data.known_test_dataloader(), data.unknown_test_dataloader("digits_unknown"))
    return [x for loader in loaders for x, _ in loader], data.preprocess


def pytorch_ood_outlier(name: str, detector, known: FeatureRecord, unknown: FeatureRecord) -> np.ndarray:
    """The detector's own pytorch-ood method on what it reads: predict_logits / predict_features on
    the records' tensors, predict on the images for those that read the images themselves."""
    needs = DETECTORS[name].needs
    if needs in ("logits", "h", "mu"):
        method = detector.predict_logits if needs == "logits" else detector.predict_features
        return torch.cat([method(getattr(known, needs)), method(getattr(unknown, needs))]).double().numpy()
    batches, preprocess = image_batches()
    if needs == "inputs":  # ODIN: the images normalised as the model takes them
        return torch.cat([detector.predict(preprocess(x)).detach().double() for x in batches]).numpy()
    with torch.no_grad():  # the paper's detector normalises the loader's images itself
        return torch.cat([detector.predict(x) for x in batches]).numpy()


@pytest.mark.parametrize("kind", ["vmdls", "ce"])
def test_every_detector_scores_csv_is_the_negative_of_its_pytorch_ood_output(checkpoints, tmp_path, monkeypatch,
                                                                            kind):
    detectors = BY_KIND[kind]
    # --score_stats train: the paper's detector scores each image on its own, as its predict does
    result = run_and_capture(monkeypatch, checkpoints[kind], tmp_path, "--score_stats", "train",
                             "--detector", *detectors)
    for name in detectors:
        outlier = pytorch_ood_outlier(name, result.detectors[name], result.known, result.unknown["digits_unknown"])
        np.testing.assert_array_equal(csv_scores(tmp_path, name, detectors[0]), -outlier, err_msg=name)
    assert set(BY_KIND["vmdls"]) | set(BY_KIND["ce"]) == set(DETECTORS)


def test_the_paper_set_level_score_is_the_negative_of_score_set(checkpoints, tmp_path, monkeypatch):
    """--score_stats test (the paper's): M and r_max from the evaluated pair, models.detector.score_set."""
    result = run_and_capture(monkeypatch, checkpoints["vmdls"], tmp_path, "--detector", "vmdls")
    known, unknown = result.known, result.unknown["digits_unknown"]
    pair = FeatureRecord(labels=torch.cat([known.labels, unknown.labels]),
                         log_likelihoods=torch.cat([known.log_likelihoods, unknown.log_likelihoods]),
                         reconstruction=torch.cat([known.reconstruction, unknown.reconstruction]))
    np.testing.assert_array_equal(csv_scores(tmp_path, "vmdls", "vmdls"), -score_set(pair).numpy())
    assert list(result.table.columns[:2]) == ["detector", "unknown"] and len(result.table) == 1
    np.testing.assert_array_equal(result.scores[("vmdls", "digits_unknown")].scores.numpy(),
                                  csv_scores(tmp_path, "vmdls", "vmdls"))
