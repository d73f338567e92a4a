"""Training end to end on the embedded digits data: the loss falls, resuming is exact (also
across the fine-tuning phases), the class statistics match numpy, fine-tuning freezes the
backbone, weights load by name, a warm start begins a new run from a trained model."""
import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

import experiments.training as training
import main as train_script
from conftest import one_torch_thread
from models.backbones import build_backbone
from models.checkpoints import NETWORK_MODULES
from models.vmdls import VMDLS
from models.weights import load_backbone_weights
from utils.errors import UserError

TINY = [
    "--enc_type", "mnist-conv", "--enc_out_dim", "500", "--latent_dim", "8",
    "--known_dataset", "digits", "--unknown_dataset", "digits_unknown", "--class_num", "4",
    "--data_transforms", "blob", "--input_height", "28", "--batch_classes", "4", "--sample_count", "8",
    "--batch_size", "256", "--opt", "adam", "--lr", "0.001", "--accelerator", "cpu",
    "--num_workers", "0", "--offline", "--lower_bound", "0.05", "--seed", "3",
]


def train(output_dir, *extra):
    return train_script.main(TINY + ["--output_dir", str(output_dir), *extra])


@pytest.fixture
def one_thread():
    """One torch thread: on a shared CPU the tiny network's time is then steady, and short."""
    with one_torch_thread():
        yield


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_two_epochs_lower_the_training_loss(tmp_path):
    last = train(tmp_path, "--max_epochs", "2", "--limit_train_batches", "12",
                 "--generation_epoch", "5", "--margins_epoch", "100", "--log_tsne")
    assert os.path.isfile(last)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    per_epoch = metrics.dropna(subset=["train_loss_epoch"]).set_index("epoch")["train_loss_epoch"]
    assert list(per_epoch.index) == [0, 1]
    assert per_epoch[1] < per_epoch[0]
    assert (tmp_path / "hparams.yaml").is_file() and (tmp_path / "args.json").is_file()
    assert (tmp_path / "tsne_latent.png").stat().st_size > 0
    # epoch 1 validates with epoch 0's statistics: the diagnostics are logged
    assert metrics["val_f1_macro"].notna().any() and metrics["val_accuracy_known"].notna().any()


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    common = ("--generation_epoch", "1", "--margins_epoch", "0", "--margin_jump", "0.5",
              "--limit_train_batches", "6")
    whole = load(train(tmp_path / "whole", "--max_epochs", "3", *common))
    first = train(tmp_path / "first", "--max_epochs", "1", *common)
    resumed = load(train(tmp_path / "resumed", "--max_epochs", "3", "--checkpoint_path", first, *common))
    assert resumed["epoch"] == whole["epoch"]
    assert resumed["margin_distance"] == pytest.approx(whole["margin_distance"])
    assert whole["margin_distance"] == pytest.approx(0.15 + 3 * 0.5)
    for key in ("class_means", "class_covs", "class_bounds", "finished_epochs"):
        torch.testing.assert_close(resumed["state_dict"][key], whole["state_dict"][key], rtol=1e-5, atol=1e-6)
    assert torch.isfinite(whole["state_dict"]["class_bounds"]).all()
    for key, value in whole["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-4, atol=1e-5)


def make_model(class_num=3, latent_dim=4, **kwargs):
    return VMDLS(input_height=28, enc_type="mnist-conv", enc_out_dim=500, latent_dim=latent_dim,
                 class_num=class_num, in_channels=1, **kwargs)


def test_epoch_statistics_match_numpy_with_absent_classes():
    model = make_model(class_num=3, latent_dim=4)
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(7, 4)), rng.choice([0, 2], size=7)),   # class 1 absent here
               (rng.normal(size=(5, 4)), rng.choice([1, 2], size=5)),   # class 0 absent here
               (rng.normal(size=(6, 4)), rng.integers(0, 3, size=6))]
    mus = [rng.normal(size=(len(y), 4)) + 3 * y[:, None] for _, y in batches]
    stds = [rng.uniform(0.1, 1.0, size=(len(y), 4)) for _, y in batches]
    for (z, y), mu, std in zip(batches, mus, stds):
        model._accumulate(torch.tensor(z, dtype=torch.float32), torch.tensor(y), torch.tensor(mu, dtype=torch.float32),
                          torch.tensor(std, dtype=torch.float32))
    model.finish_epoch_statistics()
    z = np.concatenate([b[0] for b in batches]).astype(np.float32).astype(np.float64)
    mu = np.concatenate(mus).astype(np.float32).astype(np.float64)
    y = np.concatenate([b[1] for b in batches])
    for c in range(3):
        rows = z[y == c]
        np.testing.assert_allclose(model.class_means[c].numpy(), rows.mean(0), rtol=1e-6)
        np.testing.assert_allclose(model.class_covs[c].numpy(), np.cov(rows.T, bias=True), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(model.latent_means[c].numpy(), mu[y == c].mean(0), rtol=1e-6)
        np.testing.assert_allclose(model.latent_covs[c].numpy(), np.cov(mu[y == c].T, bias=True), rtol=1e-5, atol=1e-7)
    assert int(model.finished_epochs) == 1
    assert float(model.epoch_stats.count.sum()) == 0  # the sums start over
    assert float(model.latent_stats.count.sum()) == 0

    # The latent's health, against a direct computation.
    health = model._latent_health
    std = np.concatenate(stds).astype(np.float32).astype(np.float64)
    assert health["latent_sampling_std"] == pytest.approx(std.mean(), rel=1e-9)
    means = [mu[y == c].mean(0) for c in range(3)]
    pairs = [np.linalg.norm(means[a] - means[b]) for a in range(3) for b in range(a + 1, 3)]
    assert health["latent_class_separation"] == pytest.approx(np.mean(pairs), rel=1e-6)
    spread = np.mean([mu[y == c].std(0).mean() for c in range(3)])
    assert health["latent_within_class_spread"] == pytest.approx(spread, rel=1e-6)


def test_bounds_are_quantiles_of_own_class_log_likelihood():
    model = make_model(class_num=2, latent_dim=3, lower_bound=0.2)
    rng = np.random.default_rng(1)
    def batch(n):
        """z, y, mu, sampling std: the bounds come from mu, so z is unrelated noise."""
        return (torch.tensor(rng.normal(size=(n, 3)), dtype=torch.float32), torch.tensor(rng.integers(0, 2, n)),
                torch.tensor(rng.normal(size=(n, 3)), dtype=torch.float32), torch.ones(n, 3))
    model._accumulate(*batch(40))
    model.finish_epoch_statistics()
    gaussians = model.latent_gaussians()
    second = batch(30)
    model._accumulate(*second)
    expected_ll = gaussians.log_prob(second[2]).numpy()[np.arange(30), second[1].numpy()]
    model.finish_epoch_statistics()
    for c in range(2):
        np.testing.assert_allclose(float(model.class_bounds[c]),
                                   np.quantile(expected_ll[second[1].numpy() == c], 0.2), rtol=1e-9)


def test_predict_with_bounds_marks_unknown():
    model = make_model(class_num=2, latent_dim=2)
    model.latent_means.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]], dtype=torch.float64))
    model.latent_covs.copy_(torch.eye(2, dtype=torch.float64).expand(2, 2, 2))
    model.finished_epochs += 1
    model.class_bounds.fill_(-2 * math.log(2 * math.pi) / 2 - 2.0)  # accepts within ~2 units
    mu = torch.tensor([[0.1, 0.0], [9.9, 10.0], [5.0, 5.0]])
    assert model.predict_with_bounds(mu).tolist() == [0, 1, 2]


def test_weights_load_by_name_and_report(tmp_path):
    source = build_backbone("mnist-conv")
    state = {f"module.{k}": v.clone() + 1.0 for k, v in source.state_dict().items()}
    state["module.extra.weight"] = torch.zeros(3)
    first = next(iter(source.state_dict()))
    state[f"module.{first}"] = torch.zeros(1)  # wrong shape: skipped, reported
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.pth.tar")
    target = build_backbone("mnist-conv")
    report = load_backbone_weights(target, str(tmp_path / "w.pth.tar"))
    assert report.unused == ["module.extra.weight"]
    assert report.mismatched == [first]
    assert len(report.loaded) == len(source.state_dict()) - 1
    for name in report.loaded:
        torch.testing.assert_close(target.state_dict()[name], source.state_dict()[name] + 1.0)
    assert "loaded" in report.summary()


def test_finetune_trains_heads_first_then_everything(tmp_path):
    weights = build_backbone("mnist-conv").state_dict()
    torch.save({"state_dict": weights}, tmp_path / "backbone.pt")
    args = ("--finetune", "--weights", str(tmp_path / "backbone.pt"), "--finetune_epochs", "1",
            "--finetune_lr", "0.01", "--limit_train_batches", "3", "--generation_epoch", "9")
    heads_only = load(train(tmp_path / "a", "--max_epochs", "1", *args))["state_dict"]
    for key, value in weights.items():
        if value.is_floating_point() and "running" not in key:
            torch.testing.assert_close(heads_only[f"encoder.{key}"], value)
    both = load(train(tmp_path / "b", "--max_epochs", "2", *args))["state_dict"]
    changed = [k for k, v in weights.items() if v.is_floating_point() and not torch.equal(both[f"encoder.{k}"], v)]
    assert changed, "the backbone should train after the head-only epochs"


def optimiser_tensors(checkpoint):
    """The saved optimiser's per-parameter state tensors (Adam's moments), by parameter index."""
    state = checkpoint["optimizer_states"][0]["state"]
    return {f"{index}.{name}": value for index, values in state.items() for name, value in values.items()
            if isinstance(value, torch.Tensor)}


def test_finetune_resumes_from_every_checkpoint(tmp_path, monkeypatch, one_thread):
    """--finetune --finetune_epochs 2 trains the heads alone in epochs 0 and 1 and everything
    from epoch 2. Resumed from the checkpoint of epoch 0 (inside the heads-only phase), of
    epoch 1 (its last: the next epoch rebuilds the optimiser), of epoch 2 (after the
    boundary), and from the last.ckpt that a resumed run with nothing left to train rewrites
    (it names epoch 2 and holds the heads' optimiser), the run ends as the uninterrupted one."""
    torch.save({"state_dict": build_backbone("mnist-conv").state_dict()}, tmp_path / "backbone.pt")
    common = ("--finetune", "--weights", str(tmp_path / "backbone.pt"), "--finetune_epochs", "2",
              "--finetune_lr", "0.01", "--generation_epoch", "1", "--limit_train_batches", "2",
              "--limit_val_batches", "0", "--max_epochs", "4")
    build_callbacks = training.build_callbacks

    def keep_every_epoch(args, checkpoint_dir):  # the uninterrupted run keeps each epoch's checkpoint
        callbacks, checkpoint = build_callbacks(args, checkpoint_dir)
        checkpoint.save_top_k = -1
        return callbacks, checkpoint

    with monkeypatch.context() as patch:
        patch.setattr(training, "build_callbacks", keep_every_epoch)
        whole = load(train(tmp_path / "whole", *common))
    every = {epoch: str(tmp_path / "whole" / "checkpoints" / f"epoch{epoch:03d}.ckpt") for epoch in range(3)}
    heads, everything = 4, len(whole["optimizer_states"][0]["param_groups"][0]["params"])
    assert [len(load(every[e])["optimizer_states"][0]["param_groups"][0]["params"]) for e in range(3)] == [
        heads, heads, everything]
    nothing_left = train(tmp_path / "nothing_left", *common[:-1], "2", "--checkpoint_path", every[1])
    assert load(nothing_left)["epoch"] == 2
    starts = {**every, "rewritten": nothing_left}
    for name, start in starts.items():
        resumed = load(train(tmp_path / f"from_{name}", *common, "--checkpoint_path", start))
        assert (resumed["epoch"], resumed["global_step"]) == (whole["epoch"], whole["global_step"]), name
        for key, value in whole["state_dict"].items():
            torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
        whole_moments, moments = optimiser_tensors(whole), optimiser_tensors(resumed)
        assert moments.keys() == whole_moments.keys(), name
        for key, value in whole_moments.items():
            torch.testing.assert_close(moments[key], value, rtol=1e-4, atol=1e-5, msg=f"{name}: optimiser {key}")


class FirstStepProbe(pl.Callback):
    """What a fit holds right before its first training step (the model's state, M_d, the
    optimiser, the loops), and the size of every training batch."""

    def __init__(self):
        self.first: dict | None = None
        self.batch_sizes: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch_sizes.append(len(batch[1]))
        if self.first is None:
            optimiser = trainer.optimizers[0]
            self.first = {
                "state": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                "margin": getattr(pl_module, "margin_distance", None), "epoch": trainer.current_epoch,
                "step": trainer.global_step, "optimiser_state": len(optimiser.state),
                "lr": optimiser.param_groups[0]["lr"],
                "scheduler_epoch": trainer.lr_scheduler_configs[0].scheduler.last_epoch}


def probe_training(monkeypatch) -> FirstStepProbe:
    """The next main.py run's trainer gets a FirstStepProbe among its callbacks."""
    probe, build_callbacks = FirstStepProbe(), training.build_callbacks

    def with_probe(args, checkpoint_dir):
        callbacks, checkpoint = build_callbacks(args, checkpoint_dir)
        return [*callbacks, probe], checkpoint

    monkeypatch.setattr(training, "build_callbacks", with_probe)
    return probe


def is_network(key: str) -> bool:
    return key.split(".")[0] in NETWORK_MODULES


ARCHITECTURE_FLAGS = ("--enc_type", "--enc_out_dim", "--latent_dim", "--class_num")


def without_architecture(argv):
    """TINY without the architecture flags and their values: a warm start takes the checkpoint's."""
    dropped = {i + offset for i, arg in enumerate(argv) if arg in ARCHITECTURE_FLAGS for offset in (0, 1)}
    return [arg for i, arg in enumerate(argv) if i not in dropped]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained two epochs: its class statistics and M_d have moved from their start."""
    root = tmp_path_factory.mktemp("trained")
    with one_torch_thread():
        return train(root, "--max_epochs", "2", "--limit_train_batches", "2", "--limit_val_batches", "0",
                     "--generation_epoch", "1", "--margins_epoch", "0", "--margin_jump", "0.5")


def test_warm_start_begins_a_new_run_from_the_checkpoints_weights(trained, tmp_path, monkeypatch, one_thread):
    """--warm_start (the original's --checkpoint_path): the first step starts from the
    checkpoint's backbone and heads, with the class statistics as at initialisation, M_d at
    --margin_max_distance, a fresh optimiser and StepLR at the new --lr, from epoch 0, on
    batches of the new B_c x B_s; the architecture not given is the checkpoint's, and
    args.json names the checkpoint."""
    source = load(trained)
    assert int(source["state_dict"]["finished_epochs"]) == 2 and source["state_dict"]["class_means"].abs().sum() > 0
    probe = probe_training(monkeypatch)
    argv = without_architecture(TINY) + [
        "--output_dir", str(tmp_path / "warm"), "--warm_start", os.path.relpath(trained), "--max_epochs", "1",
        "--limit_train_batches", "2", "--limit_val_batches", "0", "--batch_classes", "2", "--sample_count", "4",
        "--lr", "0.0005", "--margin_max_distance", "3", "--margins_epoch", "1", "--generation_epoch", "0"]
    last = load(train_script.main(argv))

    first = probe.first
    fresh = make_model(class_num=4, latent_dim=8).state_dict()
    assert first["state"].keys() == source["state_dict"].keys() == fresh.keys()
    for key, value in first["state"].items():  # the network is the checkpoint's, the rest as initialised
        expected = source["state_dict"][key] if is_network(key) else fresh[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)
    assert int(first["state"]["finished_epochs"]) == 0 and first["state"]["class_means"].abs().sum() == 0
    assert first["margin"] == 3.0 and source["margin_distance"] == pytest.approx(0.15 + 2 * 0.5)
    assert (first["epoch"], first["step"], first["optimiser_state"], first["scheduler_epoch"]) == (0, 0, 0, 0)
    assert first["lr"] == pytest.approx(0.0005)
    assert probe.batch_sizes == [2 * 4, 2 * 4]  # the source trained on batches of 4 x 8

    assert (last["epoch"], last["global_step"], int(last["state_dict"]["finished_epochs"])) == (0, 2, 1)
    assert last["margin_distance"] == 3.0
    hparams = last["hyper_parameters"]
    assert (hparams["enc_type"], hparams["enc_out_dim"], hparams["latent_dim"], hparams["class_num"]) == (
        "mnist-conv", 500, 8, 4)
    assert hparams["lr"] == pytest.approx(0.0005)
    record = json.loads((tmp_path / "warm" / "args.json").read_text())
    assert record["warm_start"] == os.path.abspath(trained) and "previous_runs" not in record


def test_warm_start_of_the_cross_entropy_classifier(tmp_path, monkeypatch, one_thread):
    """--objective ce warm-starts too: its backbone and head come from the checkpoint."""
    ce = ("--objective", "ce", "--limit_train_batches", "1", "--limit_val_batches", "0", "--max_epochs", "1")
    source = load(train(tmp_path / "source", *ce))
    probe = probe_training(monkeypatch)
    train(tmp_path / "warm", *ce, "--warm_start", str(tmp_path / "source" / "checkpoints" / "last.ckpt"))
    assert probe.first["state"].keys() == source["state_dict"].keys()
    for key, value in probe.first["state"].items():
        torch.testing.assert_close(value, source["state_dict"][key], rtol=0, atol=0, msg=key)
    assert (probe.first["epoch"], probe.first["optimiser_state"]) == (0, 0)
    with pytest.raises(UserError, match="--objective ce, not vmdls; warm-start it with --objective ce"):
        train(tmp_path / "as_vmdls", "--warm_start", str(tmp_path / "source" / "checkpoints" / "last.ckpt"))


def test_initial_sampling_std_sets_the_starting_std():
    model = make_model(initial_sampling_std=0.14)
    assert torch.allclose(torch.exp(0.5 * model.fc_var.bias), torch.full((4,), 0.14))
    with pytest.raises(ValueError, match="initial_sampling_std must be positive"):
        make_model(initial_sampling_std=0.0)


def test_on_the_demos_data_and_schedule_the_latent_learns_the_classes(tmp_path):
    """The validation Gaussians of mu classify the known digits well above chance (1/6) at
    the demo's last epoch (make demo's flags: experiments/benchmark/profiles.py DEMO_TRAIN), and
    better than after its first."""
    from experiments.benchmark.profiles import DEMO_TRAIN

    argv = ["--known_dataset", "digits", "--unknown_dataset", "digits_unknown", "--class_num", "6", *DEMO_TRAIN,
            "--accelerator", "cpu", "--num_workers", "0", "--offline", "--logger", "csv", "--output_dir",
            str(tmp_path)]
    train_script.main(argv)
    frame = pd.read_csv(tmp_path / "metrics.csv")
    accuracy = frame.dropna(subset=["val_accuracy_known"]).groupby("epoch")["val_accuracy_known"].last()
    separation = frame.dropna(subset=["latent_class_separation"]).groupby("epoch")["latent_class_separation"].last()
    assert len(accuracy) == int(argv[argv.index("--max_epochs") + 1])
    assert accuracy.iloc[-1] > 0.6 and accuracy.iloc[-1] > accuracy.iloc[0]
    std = frame.dropna(subset=["latent_sampling_std"]).groupby("epoch")["latent_sampling_std"].last()
    assert separation.iloc[-1] > 3 * std.iloc[-1]
