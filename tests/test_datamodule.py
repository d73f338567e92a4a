"""KnownUnknownDataModule and BatchTransform."""

import warnings
from collections import Counter

import pytest
import pytorch_lightning as pl
import torch

from conftest import write_images
from datasets import BatchTransform, KnownUnknownDataModule, normalization_for
from utils.errors import UserError


def _dm(root, **kw):
    args = dict(
        known_dataset="mnist", unknown_dataset="kmnist", data_dir=str(root), class_num=10,
        data_transforms="mnist", input_height=28, batch_classes=5, sample_count=2, batch_size=7,
        num_workers=0, seed=0, download=False,
    )
    args.update(kw)
    return KnownUnknownDataModule(**args)


def test_setup_is_idempotent_and_exposes_shapes(mnist_root):
    root, _ = mnist_root
    dm = _dm(root)
    dm.setup("fit")
    train_set = dm.train_set
    dm.setup("test")
    assert dm.train_set is train_set
    assert dm.image_shape == (1, 28, 28) and dm.class_num == 10 and dm.num_classes == 10
    assert len(dm.test_set) == len(dm.known_test_set) + len(dm.unknown_test_sets["kmnist"])


def test_train_batches_are_balanced(mnist_root):
    root, _ = mnist_root
    dm = _dm(root)
    dm.setup()
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) > 0
    for x, y in batches:
        assert x.shape == (10, 1, 28, 28) and x.dtype == torch.float32
        assert 0 <= x.min() and x.max() <= 1  # raw: transforms run after the transfer
        counts = Counter(y.tolist())
        assert len(counts) == 5 and set(counts.values()) == {2}


def test_train_loader_with_workers(mnist_root):
    root, _ = mnist_root
    dm = _dm(root, num_workers=2)
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    assert len(list(loader)) == len(loader)


def test_evaluation_loaders_read_image_folders_with_workers_too(mnist_root, tmp_path):
    """test.py's passes (fitting, known test, each unknown set, an image folder included) use
    --num_workers processes, and give the same images in the same order as without them."""
    root, _ = mnist_root
    write_images(tmp_path / "pngs" / "a", 5, size=(20, 24), mode="L", seed=3)
    names = ["kmnist", f"folder:{tmp_path / 'pngs'}"]
    passes = {}
    for workers in (0, 2):
        dm = _dm(root, unknown_dataset=",".join(names), num_workers=workers)
        dm.setup("test")
        loaders = [dm.fit_dataloader(), dm.known_test_dataloader(), *map(dm.unknown_test_dataloader, dm.unknown_names)]
        assert all(loader.num_workers == workers for loader in loaders)
        passes[workers] = [torch.cat([x for x, _ in loader]) for loader in loaders]
    assert len(passes[2]) == 4 and passes[2][-1].shape == (5, 1, 28, 28)
    for with_workers, without in zip(passes[2], passes[0]):
        assert torch.equal(with_workers, without)


def test_test_loader_known_then_unknown(mnist_root):
    root, written = mnist_root
    dm = _dm(root)
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        xs, ys = zip(*loader)
        labels = torch.cat(ys).tolist()
        known = written["mnist"]["test"][1].tolist()
        n_unknown = len(written["kmnist"]["test"][1])
        assert labels == known + [10] * n_unknown
        assert xs[0].shape[0] == 7 and torch.cat(xs).shape == (len(labels), 1, 28, 28)


def test_fit_loader_is_the_training_set_in_order(mnist_root):
    root, _ = mnist_root
    dm = _dm(root)
    xs, ys = zip(*dm.fit_dataloader())
    x, y = torch.cat(xs), torch.cat(ys)
    assert torch.equal(y, dm.train_set.targets)
    assert torch.equal(x, torch.stack([dm.train_set[i][0] for i in range(len(dm.train_set))]))


def test_digits_default_datamodule_with_cifar_like_unknown(tmp_path):
    dm = KnownUnknownDataModule(
        known_dataset="digits", unknown_dataset="noise", data_dir=str(tmp_path), class_num=6,
        data_transforms="blob", input_height=28, batch_classes=3, sample_count=8, batch_size=64,
        num_workers=0, download=False,
    )
    dm.setup()
    assert dm.image_shape == (1, 28, 28)
    unknown = dm.unknown_test_sets["noise"]
    assert len(unknown) == 10_000 and unknown.image_shape == (1, 28, 28)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (24, 1, 28, 28) and len(set(y.tolist())) == 3


def test_known_images_keep_their_size_and_the_unknown_takes_it(tmp_path):
    for c in ("a", "b"):
        write_images(tmp_path / "k" / c, 5, size=(20, 24), seed=ord(c))
    write_images(tmp_path / "u", 3, size=(50, 50), mode="L")
    kw = dict(
        known_dataset=f"folder:{tmp_path / 'k'}", unknown_dataset=f"folder:{tmp_path / 'u'}",
        class_num=2, data_transforms="cifar", input_height=16, batch_classes=2, sample_count=2,
        batch_size=4, num_workers=0, download=False,
    )
    dm = KnownUnknownDataModule(**kw)
    assert dm.image_shape == (3, 24, 20)  # input_height is only recorded
    assert dm.unknown_test_sets[f"folder:{tmp_path / 'u'}"][0][0].shape == (3, 24, 20)
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 3, 24, 20)
    assert dm.train_set.targets.tolist() == [0] * 4 + [1] * 4


def test_bad_arguments(mnist_root):
    root, _ = mnist_root
    with pytest.raises(UserError, match="mnist, cifar, cifar_test, blob"):
        _dm(root, data_transforms="imagenet")
    with pytest.raises(UserError, match="batch_classes"):
        _dm(root, batch_classes=11).train_dataloader()
    with pytest.raises(UserError, match="class_num"):
        _dm(root, class_num=12).setup()


# ----------------------------------------------------------------------------- transforms
def test_normalization_for():
    assert normalization_for("mnist", 1) == ((0.5,), (0.5,))
    assert normalization_for("blob", 3) == ((0.5,) * 3, (0.5,) * 3)
    assert normalization_for("cifar", 3) == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    m, s = normalization_for("cifar_test", 1)
    assert m[0] == pytest.approx((0.4914 + 0.4822 + 0.4465) / 3) and s[0] == pytest.approx(0.2009, abs=1e-4)
    with pytest.raises(UserError) as err:
        normalization_for("imagenet", 3)
    for v in ("mnist", "cifar", "cifar_test", "blob"):
        assert v in str(err.value)


def test_eval_transform_is_exact_normalisation():
    x = torch.rand(5, 3, 32, 32)
    for name in ("mnist", "cifar", "cifar_test", "blob"):
        t = BatchTransform(name, (3, 32, 32), train=False)
        mean, std = normalization_for(name, 3)
        ref = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        assert torch.allclose(t(x), ref, atol=1e-6)


def test_train_transforms():
    torch.manual_seed(0)
    x = torch.rand(6, 1, 28, 28)
    t = BatchTransform("mnist", (1, 28, 28), train=True)
    y = t(x)
    assert y.shape == x.shape and not torch.allclose(y, (x - 0.5) / 0.5)
    assert y.min() >= -1 - 1e-5 and y.max() <= 1 + 1e-5
    # each image its own parameters: the same image twice gets two different augmentations
    same = t(torch.stack([x[0], x[0]]))
    assert not torch.allclose(same[0], same[1])
    # no augmentation for cifar_test / blob, even in training
    for name in ("cifar_test", "blob"):
        z = torch.rand(4, 3, 32, 32)
        assert torch.equal(BatchTransform(name, (3, 32, 32), train=True)(z),
                           BatchTransform(name, (3, 32, 32), train=False)(z))
    z = torch.rand(8, 3, 32, 32)
    c = BatchTransform("cifar", (3, 32, 32), train=True)(z)
    assert c.shape == z.shape and not torch.allclose(c, BatchTransform("cifar", (3, 32, 32), train=False)(z))


def test_preprocess_and_after_batch_transfer_outside_a_trainer(mnist_root):
    root, _ = mnist_root
    dm = _dm(root)
    x = torch.rand(3, 1, 28, 28)
    y = torch.tensor([1, 2, 10])
    out = dm.on_after_batch_transfer([x, y], 0)
    assert torch.allclose(out[0], (x - 0.5) / 0.5) and out[1] is y
    assert torch.allclose(dm.preprocess(x), (x - 0.5) / 0.5)
    assert dm.preprocess(x, train=True).shape == x.shape


class _Probe(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(28 * 28, 2)
        self.epochs, self.train_batches, self.val_batches = [], [], []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.train_batches.append((x.clone(), y.clone()))
        self.epochs.append(self.trainer.train_dataloader.batch_sampler.epoch)
        return self.layer(x.flatten(1)).sum()

    def validation_step(self, batch, batch_idx):
        self.val_batches.append((batch[0].clone(), batch[1].clone()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_fit_uses_transforms_and_set_epoch(mnist_root):
    root, _ = mnist_root
    dm = _dm(root, batch_size=100)
    model = _Probe()
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=2, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, use_distributed_sampler=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm)
    assert sorted(set(model.epochs)) == [0, 1]
    x, y = model.train_batches[0]
    assert x.min() >= -1 - 1e-5 and x.max() <= 1 + 1e-5 and x.min() < -0.5  # normalised
    # validation batches: known test then unknown, eval-normalised (no augmentation)
    vx, vy = model.val_batches[0]
    raw = torch.stack([dm.test_set[i][0] for i in range(len(vy))])
    assert torch.allclose(vx, (raw - 0.5) / 0.5, atol=1e-6)
    assert vy.tolist()[-1] == 10 and vy.tolist()[0] < 10
    # the two epochs use different batches
    first_epoch = [b[1].tolist() for b, e in zip(model.train_batches, model.epochs) if e == 0]
    second_epoch = [b[1].tolist() for b, e in zip(model.train_batches, model.epochs) if e == 1]
    assert first_epoch != second_epoch


def test_errors_name_the_setting_not_the_flag(tmp_path):
    cases = [
        (dict(batch_size=0), "batch_size"),
        (dict(num_workers=-1), "num_workers"),
        (dict(data_transforms="imagenet"), "data_transforms"),
    ]
    for kw, setting in cases:
        with pytest.raises(UserError) as err:
            _dm(tmp_path, **kw)
        msg = str(err.value)
        assert "--" not in msg and "\n" not in msg and setting in msg, msg
        assert err.value.setting == setting
        line = err.value.for_command_line()
        assert line.rstrip(").").endswith(f"--{setting}") and line.count(f"--{setting}") == 1, line


def test_defaults_are_the_flags_defaults():
    """Building the data module in Python gives what main.py / test.py give without flags."""
    import inspect

    from utils.flags import add_common_args, add_data_args, new_parser

    parser = new_parser("defaults")
    add_common_args(parser)
    add_data_args(parser)
    flags = vars(parser.parse_args([]))
    defaults = {name: p.default for name, p in inspect.signature(KnownUnknownDataModule).parameters.items()
                if name in flags}
    assert set(defaults) == {"known_dataset", "unknown_dataset", "data_dir", "class_num", "data_transforms",
                             "input_height", "batch_classes", "sample_count", "batch_size", "num_workers", "seed"}
    assert defaults == {name: flags[name] for name in defaults}


def test_the_flags_choices_are_the_registries_names():
    from datasets.transforms import DATA_TRANSFORMS
    from models.backbones import BACKBONES
    from utils import flags

    assert flags.DATA_TRANSFORMS == DATA_TRANSFORMS
    assert set(flags.ENC_TYPES) == set(BACKBONES)
