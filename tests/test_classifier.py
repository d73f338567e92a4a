"""The cross-entropy baseline (main.py --objective ce) end to end on the embedded digits:
it trains on shuffled batches and learns, its checkpoint says its kind and reloads exactly."""
from collections import Counter

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import main as train_script
import models.checkpoints
from datasets import KnownUnknownDataModule
from experiments.training import build_callbacks
from models.checkpoints import checkpoint_kind, load_model, untrained_model
from models.classifier import CrossEntropyClassifier
from models.vmdls import VMDLS
from utils.cli import run_main
from utils.errors import UserError

B_C, B_S = 4, 8
TINY = [
    "--objective", "ce", "--enc_type", "mnist-conv", "--enc_out_dim", "500",
    "--known_dataset", "digits", "--unknown_dataset", "digits_unknown", "--class_num", "4",
    "--data_transforms", "blob", "--input_height", "28", "--batch_classes", str(B_C), "--sample_count", str(B_S),
    "--batch_size", "256", "--opt", "adam", "--lr", "0.001", "--accelerator", "cpu",
    "--num_workers", "0", "--offline", "--logger", "csv", "--seed", "3",
]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two short epochs of --objective ce; the in-memory model main.py trained is kept."""
    output_dir = tmp_path_factory.mktemp("ce")
    built = []
    original = models.checkpoints.build_model

    def recording(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models.checkpoints, "build_model", recording)
        last = train_script.main(TINY + ["--output_dir", str(output_dir), "--max_epochs", "2",
                                         "--limit_train_batches", "8"])
    assert len(built) == 1
    return output_dir, last, built[0].eval()


def digits_batch(count=64):
    """Preprocessed known training images and their labels, in order (no augmentation)."""
    datamodule = KnownUnknownDataModule(known_dataset="digits", unknown_dataset="digits_unknown", class_num=4,
                                        data_transforms="blob", input_height=28, batch_classes=B_C,
                                        sample_count=B_S, num_workers=0, seed=3, download=False)
    datamodule.setup()
    x, y = next(iter(datamodule._sequential(torch.utils.data.Subset(datamodule.train_set,
                                                                    range(0, 4 * count, 4)))))
    return datamodule.preprocess(x), y


def test_ce_run_writes_a_checkpoint_that_says_ce_and_reloads_exactly(trained):
    output_dir, last, model = trained
    assert last == str(output_dir / "checkpoints" / "last.ckpt")
    checkpoint = load(last)
    assert checkpoint_kind(checkpoint) == "ce"
    assert checkpoint["hyper_parameters"]["objective"] == "ce"
    assert checkpoint["datamodule_hyper_parameters"]["shuffled_batches"] is True
    assert "fc.weight" in checkpoint["state_dict"] and "fc_mu.weight" not in checkpoint["state_dict"]
    assert (output_dir / "args.json").is_file() and (output_dir / "hparams.yaml").is_file()

    loaded = load_model(checkpoint, {"latent_dim": 8, "class_num": 4})  # test.py's flags: extras ignored
    assert isinstance(loaded, CrossEntropyClassifier) and not loaded.training
    x, _ = digits_batch(32)
    with torch.no_grad():
        expected = model(x)
        logits = loaded(x)
        h, logits_too = loaded.features_and_logits(x)
    assert logits.shape == (32, 4) and h.shape == (32, 500)
    assert torch.equal(logits, expected)
    assert torch.equal(logits_too, logits) and torch.equal(loaded.fc(h), logits)

    metrics = pd.read_csv(output_dir / "metrics.csv")
    accuracy = metrics["val_accuracy_known"].dropna()
    assert len(accuracy) == 2 and ((0 <= accuracy) & (accuracy <= 1)).all()

    with pytest.raises(UserError, match="class_num"):  # weights of another size: one sentence
        load_model(checkpoint, {"class_num": 5})


def test_cross_entropy_falls_with_training(trained):
    output_dir, last, _ = trained
    checkpoint = load(last)
    per_epoch = pd.read_csv(output_dir / "metrics.csv").dropna(subset=["train_loss_epoch"])
    per_epoch = per_epoch.set_index("epoch")["train_loss_epoch"]
    assert list(per_epoch.index) == [0, 1] and per_epoch[1] < per_epoch[0]

    # The same images, scored before (the run's initialisation) and after 16 steps.
    x, y = digits_batch(64)
    start = untrained_model(checkpoint, seed=3)
    with torch.no_grad():
        before = F.cross_entropy(start(x), y).item()
        after = F.cross_entropy(load_model(checkpoint)(x), y).item()
    assert before == pytest.approx(1.386, abs=0.1)  # ln 4: the untrained head knows nothing
    assert after < 0.75 * before


def test_kinds_of_checkpoints():
    vmdls = VMDLS(input_height=28, enc_type="mnist-conv", enc_out_dim=500, latent_dim=4, class_num=3,
                  in_channels=1)
    state = vmdls.state_dict()
    assert checkpoint_kind({"state_dict": state, "hyper_parameters": dict(vmdls.hparams)}) == "vmdls"
    assert checkpoint_kind({"state_dict": state}) == "vmdls"  # the original's: no objective
    classifier = CrossEntropyClassifier(input_height=28, enc_type="mnist-conv", enc_out_dim=500, class_num=3,
                                        in_channels=1)
    assert classifier.hparams.objective == "ce"
    assert checkpoint_kind({"state_dict": classifier.state_dict()}) == "ce"  # told by its head
    with pytest.raises(UserError, match="objective") as error:
        checkpoint_kind({"state_dict": {}, "hyper_parameters": {"objective": "arcface"}})
    assert "\n" not in str(error.value)
    assert isinstance(load_model({"state_dict": state, "hyper_parameters": dict(vmdls.hparams)}), VMDLS)


def shuffled_datamodule(**kw):
    args = dict(known_dataset="digits", unknown_dataset="digits_unknown", class_num=4, data_transforms="blob",
                input_height=28, batch_classes=B_C, sample_count=B_S, num_workers=0, seed=3, download=False,
                shuffled_batches=True)
    return KnownUnknownDataModule(**{**args, **kw})


def test_shuffled_batches_are_not_balanced_and_use_each_image_once():
    datamodule = shuffled_datamodule()
    loader = datamodule.train_dataloader()
    images = len(datamodule.train_set)
    batches = list(loader.batch_sampler)
    assert len(batches) == len(loader) == images // (B_C * B_S)
    assert all(len(batch) == B_C * B_S for batch in batches)
    flat = [i for batch in batches for i in batch]
    assert len(set(flat)) == len(flat)  # no image twice in an epoch; the remainder is dropped
    labels = datamodule.train_set.targets
    compositions = [Counter(int(labels[i]) for i in batch) for batch in batches]
    assert any(set(c.values()) != {B_S} for c in compositions)  # not B_c classes x B_s images
    x, y = next(iter(loader))
    assert x.shape == (B_C * B_S, 1, 28, 28) and y.shape == (B_C * B_S,)

    # The order is fixed by (seed, epoch): Lightning's set_epoch reaches it.
    loader.batch_sampler.sampler.set_epoch(1)
    second = list(loader.batch_sampler)
    assert second != batches
    assert list(shuffled_datamodule().train_dataloader().batch_sampler) == batches
    # The balanced sampler stays the default.
    balanced = shuffled_datamodule(shuffled_batches=False)
    assert all(set(Counter(int(labels[i]) for i in batch).values()) == {B_S}
               for batch in balanced.train_dataloader().batch_sampler)


def test_shuffled_batches_shard_across_processes(monkeypatch):
    datamodule = shuffled_datamodule()
    datamodule.setup()
    shards = []
    for rank in range(2):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda rank=rank: rank)
        shards.append([i for batch in datamodule.shuffled_train_sampler() for i in batch])
    assert len(shards[0]) == len(shards[1]) > 0
    assert not set(shards[0]) & set(shards[1])


def test_from_args_picks_the_batches_by_objective():
    parser = train_script.build_parser()
    for objective, shuffled in (("ce", True), ("vmdls", False)):
        args = parser.parse_args(["--objective", objective, "--known_dataset", "digits"])
        assert KnownUnknownDataModule.from_args(args).shuffled_batches is shuffled
    assert parser.parse_args([]).objective == "vmdls"
    assert "--objective" in parser.format_help()


def test_finetune_with_ce_is_one_sentence_and_exit_2(tmp_path, capsys):
    weights = tmp_path / "backbone.pt"
    torch.save({}, weights)
    argv = TINY + ["--finetune", "--weights", str(weights), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: train_script.main(argv))
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --finetune is for the VMDLS objective")


def test_resuming_with_the_other_objective_is_refused(trained, tmp_path):
    _, last, _ = trained
    argv = [a for a in TINY if a not in ("--objective", "ce")]
    with pytest.raises(UserError, match="--objective ce"):
        train_script.main(argv + ["--checkpoint_path", last, "--output_dir", str(tmp_path)])


def test_build_callbacks_skip_the_vmdls_schedules_for_ce(tmp_path):
    from models.callbacks import FinetuneSchedule, MarginSchedule

    args = train_script.build_parser().parse_args(["--objective", "ce"])
    callbacks, _ = build_callbacks(args, str(tmp_path))
    assert not any(isinstance(c, (MarginSchedule, FinetuneSchedule)) for c in callbacks)
    args = train_script.build_parser().parse_args([])
    callbacks, _ = build_callbacks(args, str(tmp_path))
    assert any(isinstance(c, MarginSchedule) for c in callbacks)


def test_the_objective_flag_offers_the_model_kinds():
    from models.kinds import KINDS
    from utils.flags import OBJECTIVES

    assert OBJECTIVES == tuple(KINDS)
