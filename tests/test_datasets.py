"""Registry tests: every on-disk format, shape conversion, noise determinism, errors.

Every test uses download=False or files that exist, so nothing touches the network.
"""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from conftest import make_mnist_arrays, write_cifar, write_idx, write_idx_folder, write_images
from datasets import available_datasets, get_known_dataset, get_unknown_dataset, registry
from utils.errors import UserError

EXPECTED_NAMES = [
    "mnist", "kmnist", "fashion_mnist", "omniglot", "mnist_noise", "noise", "cifar_known",
    "cifar_unknown", "cifar100_known", "cifar100_unknown", "imagenet-crop", "imagenet-resize",
    "lsun-crop", "lsun-resize", "fashion_mnist_known", "fashion_mnist_unknown", "digits",
    "digits_unknown",
]


def _one_sentence(msg):
    assert msg and "\n" not in msg
    assert msg.rstrip().endswith(".")


def test_available_datasets_lists_every_name():
    names = available_datasets()
    for n in EXPECTED_NAMES:
        assert n in names
    assert "idx:PATH" in names and "folder:PATH" in names


# ----------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "kmnist"])
@pytest.mark.parametrize("train", [True, False])
def test_mnist_like_known_roundtrip(mnist_root, name, train):
    root, written = mnist_root
    images, labels = written[name]["train" if train else "test"]
    ds = get_known_dataset(name, str(root), 10, train, download=False)
    assert len(ds) == len(labels)
    assert ds.image_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.targets.dtype == torch.long and ds.targets.tolist() == labels.tolist()
    for i in (0, len(ds) - 1):
        x, y = ds[i]
        assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
        assert y == int(labels[i]) and isinstance(y, int)
        assert torch.equal(x[0], torch.from_numpy(images[i]).float() / 255)


def test_known_restricted_to_lower_class_num(mnist_root):
    root, written = mnist_root
    images, labels = written["mnist"]["train"]
    ds = get_known_dataset("mnist", str(root), 4, True, download=False)
    keep = labels < 4
    assert len(ds) == keep.sum() and ds.num_classes == 4
    assert ds.targets.tolist() == labels[keep].tolist()
    assert torch.equal(ds[1][0][0], torch.from_numpy(images[keep][1]).float() / 255)


def test_mnist_like_as_unknown_is_whole_test_split_resized(mnist_root):
    root, written = mnist_root
    images, labels = written["kmnist"]["test"]
    ds = get_unknown_dataset("kmnist", str(root), 10, (3, 32, 32), download=False)
    assert len(ds) == len(labels) and ds.image_shape == (3, 32, 32)
    assert set(ds.targets.tolist()) == {10}
    x, y = ds[0]
    assert y == 10 and x.shape == (3, 32, 32)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey repeated to RGB
    ref = F.interpolate(
        torch.from_numpy(images[0]).float().div(255)[None, None], size=(32, 32), mode="bilinear",
        align_corners=False, antialias=True,
    )[0, 0]
    assert torch.allclose(x[0], ref.clamp(0, 1), atol=1e-6)
    # same shape: no conversion at all
    same = get_unknown_dataset("kmnist", str(root), 10, (1, 28, 28), download=False)
    assert torch.equal(same[3][0][0], torch.from_numpy(images[3]).float() / 255)


def test_folder_with_only_t10k_files_works_as_unknown_mnist(tmp_path):
    written = write_idx_folder(tmp_path / "MNIST" / "raw", gz=False, train=False)
    images, labels = written["test"]
    ds = get_unknown_dataset("mnist", str(tmp_path), 7, (1, 28, 28), download=False)
    assert len(ds) == len(labels) and set(ds.targets.tolist()) == {7}
    assert torch.equal(ds[5][0][0], torch.from_numpy(images[5]).float() / 255)
    with pytest.raises(UserError) as err:
        get_known_dataset("mnist", str(tmp_path), 10, True, download=False)
    msg = str(err.value)
    _one_sentence(msg)
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    assert os.path.join(str(tmp_path), "MNIST", "raw") in msg


@pytest.mark.parametrize("gz", [True, False])
def test_idx_prefix_known_and_unknown(tmp_path, gz):
    folder = tmp_path / "my_idx"
    written = write_idx_folder(folder, gz=gz, seed=3)
    name = f"idx:{folder}"
    tr = get_known_dataset(name, "/nonexistent", 10, True, download=False)
    te = get_known_dataset(name, "/nonexistent", 10, False, download=False)
    assert tr.targets.tolist() == written["train"][1].tolist()
    assert te.targets.tolist() == written["test"][1].tolist()
    assert torch.equal(tr[2][0][0], torch.from_numpy(written["train"][0][2]).float() / 255)
    k5 = get_known_dataset(name, "/nonexistent", 5, True, download=False)
    assert k5.targets.max() == 4 and len(k5) == (written["train"][1] < 5).sum()
    un = get_unknown_dataset(name, "/nonexistent", 3, (1, 28, 28), download=False)
    assert len(un) == len(written["test"][1]) and set(un.targets.tolist()) == {3}


def test_idx_prefix_accepts_other_file_names_and_data_dir_relative(tmp_path):
    folder = tmp_path / "other"
    names = {
        "train": ("emnist-train-images.bin", "emnist-train-labels.bin"),
        "test": ("emnist-test-images.bin", "emnist-test-labels.bin"),
    }
    written = write_idx_folder(folder, gz=True, names=names, seed=5)
    (folder / "README.txt").write_text("not an idx file")
    ds = get_known_dataset("idx:other", str(tmp_path), 10, False, download=False)  # relative to data_dir
    assert ds.targets.tolist() == written["test"][1].tolist()
    assert torch.equal(ds[0][0][0], torch.from_numpy(written["test"][0][0]).float() / 255)


def test_idx_non_square_images(tmp_path):
    images, labels = make_mnist_arrays(0, 2, classes=3, size=28)
    images = np.zeros((labels.size, 20, 16), np.uint8) + np.arange(16, dtype=np.uint8)
    write_idx(tmp_path / "d" / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "d" / "t10k-labels-idx1-ubyte", labels)
    ds = get_known_dataset(f"idx:{tmp_path / 'd'}", ".", 3, False, download=False)
    assert ds.image_shape == (1, 20, 16) and ds[0][0].shape == (1, 20, 16)


# ----------------------------------------------------------------------------- CIFAR
def test_cifar10_known_and_unknown(tmp_path):
    written = write_cifar(tmp_path, 10)
    data, labels = written["train"]
    ds = get_known_dataset("cifar_known", str(tmp_path), 6, True, download=False)
    keep = labels < 6
    assert len(ds) == keep.sum() and ds.image_shape == (3, 32, 32) and ds.num_classes == 6
    assert ds.targets.tolist() == labels[keep].tolist()
    x, y = ds[3]
    assert torch.equal(x, torch.from_numpy(data[keep][3].reshape(3, 32, 32)).float() / 255)
    full = get_known_dataset("cifar_known", str(tmp_path), 10, False, download=False)
    assert len(full) == len(written["test"][1])

    un = get_unknown_dataset("cifar_unknown", str(tmp_path), 6, (3, 32, 32), download=False)
    tdata, tlabels = written["test"]
    assert len(un) == (tlabels >= 6).sum() and set(un.targets.tolist()) == {6}
    assert torch.equal(un[0][0], torch.from_numpy(tdata[tlabels >= 6][0].reshape(3, 32, 32)).float() / 255)
    grey = get_unknown_dataset("cifar_unknown", str(tmp_path), 6, (1, 28, 28), download=False)
    g = grey[0][0]
    assert g.shape == (1, 28, 28) and 0 <= g.min() and g.max() <= 1
    with pytest.raises(UserError) as err:
        get_unknown_dataset("cifar_unknown", str(tmp_path), 10, (3, 32, 32), download=False)
    _one_sentence(str(err.value))
    assert "class_num" in str(err.value)


def test_cifar100_known_and_unknown(tmp_path):
    written = write_cifar(tmp_path, 100)
    data, labels = written["train"]
    ds = get_known_dataset("cifar100_known", str(tmp_path), 100, True, download=False)
    assert len(ds) == len(labels) and ds.targets.tolist() == labels.tolist()
    assert torch.equal(ds[7][0], torch.from_numpy(data[7].reshape(3, 32, 32)).float() / 255)
    part = get_known_dataset("cifar100_known", str(tmp_path), 20, False, download=False)
    assert part.targets.max() == 19 and len(part) == 20
    un = get_unknown_dataset("cifar100_unknown", str(tmp_path), 90, (3, 32, 32), download=False)
    assert len(un) == 10 and set(un.targets.tolist()) == {90}


# ----------------------------------------------------------------------------- folders
@pytest.mark.parametrize(
    "name, sub",
    [("imagenet-crop", "Imagenet"), ("imagenet-resize", "Imagenet_resize"), ("lsun-crop", "LSUN"),
     ("lsun-resize", "LSUN_resize")],
)
def test_odin_folders_under_data_dir(tmp_path, name, sub):
    arrays = write_images(tmp_path / "openset" / sub / "test", 4, size=(32, 32), seed=1)
    ds = get_unknown_dataset(name, str(tmp_path), 10, (3, 32, 32), download=False)
    assert len(ds) == 4 and set(ds.targets.tolist()) == {10}
    x, y = ds[2]
    assert y == 10 and torch.equal(x, torch.from_numpy(arrays[2]).permute(2, 0, 1).float() / 255)
    grey = get_unknown_dataset(name, str(tmp_path), 10, (1, 28, 28), download=False)[2][0]
    assert grey.shape == (1, 28, 28)
    # RGB -> grey uses the 0.299/0.587/0.114 luminance (then the resize)
    lum = Image.fromarray(arrays[2]).convert("L").resize((28, 28), Image.BILINEAR)
    assert torch.equal(grey[0], torch.from_numpy(np.array(lum)).float() / 255)


def test_grey_folder_of_another_size_as_unknown_for_rgb32(tmp_path):
    arrays = write_images(tmp_path / "grey" / "a" / "b", 3, size=(40, 30), mode="L", seed=2)
    ds = get_unknown_dataset(f"folder:{tmp_path / 'grey'}", "/nonexistent", 10, (3, 32, 32), download=False)
    assert len(ds) == 3 and ds.image_shape == (3, 32, 32)
    x, y = ds[1]
    assert y == 10 and x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    ref = np.array(Image.fromarray(arrays[1]).resize((32, 32), Image.BILINEAR))
    assert torch.equal(x[0], torch.from_numpy(ref).float() / 255)


def test_folder_images_of_odd_modes(tmp_path):
    folder = tmp_path / "modes"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)).save(folder / "a_rgba.png")
    Image.fromarray(rng.integers(0, 65535, (10, 12), dtype=np.uint16)).save(folder / "b_16bit.png")
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).convert("P").save(folder / "c_palette.png")
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(folder / "d.jpg")
    for shape in [(1, 28, 28), (3, 32, 32)]:
        ds = get_unknown_dataset(f"folder:{folder}", ".", 2, shape, download=False)
        assert len(ds) == 4
        for i in range(4):
            x, _ = ds[i]
            assert x.shape == shape and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1


def test_omniglot_tree(tmp_path, monkeypatch):
    root = tmp_path / "omniglot-py" / "images_evaluation"
    paths = []
    for alphabet in ("Bravo", "Alpha"):
        for character in ("character02", "character01"):
            d = root / alphabet / character
            d.mkdir(parents=True)
            for k in (2, 1):
                img = np.full((105, 105), 255, np.uint8)  # white background
                img[40:60, 10:90] = 0  # black stroke
                p = d / f"{k:02d}.png"
                Image.fromarray(img).convert("1").save(p)
                paths.append(str(p))
    monkeypatch.setattr(registry, "OMNIGLOT_SIZE", 5)
    ds = get_unknown_dataset("omniglot", str(tmp_path), 10, (1, 28, 28), download=False)
    assert len(ds) == 5 and set(ds.targets.tolist()) == {10}
    assert ds.paths == sorted(paths)[:5]  # first images in sorted path order
    x, _ = ds[0]
    assert x.shape == (1, 28, 28)
    assert x[0, 0, 0] == 0 and x[0, 14, 14] == 1  # inverted: white strokes on black
    rgb = get_unknown_dataset("omniglot", str(tmp_path), 10, (3, 32, 32), download=False)[0][0]
    assert rgb.shape == (3, 32, 32) and torch.equal(rgb[0], rgb[2])


def test_folder_known_with_class_subfolders(tmp_path):
    root = tmp_path / "classes"
    for c, cls in enumerate(["b_second", "a_first", "c_third"]):
        write_images(root / cls, 5, size=(20, 24), seed=c)
    tr = get_known_dataset(f"folder:{root}", ".", 3, True, download=False)
    te = get_known_dataset(f"folder:{root}", ".", 3, False, download=False)
    assert tr.image_shape == (3, 24, 20) and tr.num_classes == 3
    assert len(tr) == 12 and len(te) == 3  # fixed stratified 80/20 split
    assert torch.bincount(tr.targets).tolist() == [4, 4, 4]
    assert set(tr.paths).isdisjoint(te.paths)
    assert all(os.sep + "a_first" + os.sep in p for p, t in zip(tr.paths, tr.targets.tolist()) if t == 0)
    x, y = tr[0]
    assert x.shape == (3, 24, 20) and y == 0
    two = get_known_dataset(f"folder:{root}", ".", 2, True, download=False)
    assert set(two.targets.tolist()) == {0, 1}
    # split given as train/ and test/ subfolders
    pre = tmp_path / "presplit"
    for split, n in (("train", 3), ("test", 2)):
        for c, cls in enumerate(["x", "y"]):
            write_images(pre / split / cls, n, size=(8, 8), mode="L", seed=c)
    tr = get_known_dataset(f"folder:{pre}", ".", 2, True, download=False)
    te = get_known_dataset(f"folder:{pre}", ".", 2, False, download=False)
    assert len(tr) == 6 and len(te) == 4 and tr.image_shape == (1, 8, 8)
    assert te.targets.tolist() == [0, 0, 1, 1]


# ----------------------------------------------------------------------------- noise
def test_noise_is_deterministic_per_index_and_seed():
    a = get_unknown_dataset("noise", "/nonexistent", 10, (3, 32, 32), seed=0, download=False)
    b = get_unknown_dataset("noise", "/nonexistent", 10, (3, 32, 32), seed=0, download=False)
    c = get_unknown_dataset("noise", "/nonexistent", 10, (3, 32, 32), seed=1, download=False)
    assert len(a) == 10_000 and a.image_shape == (3, 32, 32)
    x, y = a[17]
    assert y == 10 and x.shape == (3, 32, 32) and 0 <= x.min() and x.max() <= 1
    torch.manual_seed(123)
    assert torch.equal(x, b[17][0]) and torch.equal(x, a[17][0])
    assert not torch.equal(x, c[17][0]) and not torch.equal(x, a[18][0])
    assert abs(float(x.mean()) - 0.5) < 0.05


def test_noise_same_in_dataloader_workers():
    ds = get_unknown_dataset("noise", "/nonexistent", 10, (1, 8, 8), seed=3, download=False)
    sub = torch.utils.data.Subset(ds, list(range(40)))
    seq = torch.cat([x for x, _ in DataLoader(sub, batch_size=8, num_workers=0)])
    par = torch.cat([x for x, _ in DataLoader(sub, batch_size=8, num_workers=2)])
    assert torch.equal(seq, par)


def test_mnist_noise(mnist_root):
    root, written = mnist_root
    images, _ = written["mnist"]["test"]
    a = get_unknown_dataset("mnist_noise", str(root), 10, (1, 28, 28), seed=0, download=False)
    b = get_unknown_dataset("mnist_noise", str(root), 10, (1, 28, 28), seed=1, download=False)
    assert len(a) == len(images) and set(a.targets.tolist()) == {10}
    x = a[4][0]
    base = torch.from_numpy(images[4]).float()[None] / 255
    assert torch.equal(x, a[4][0]) and not torch.equal(x, b[4][0])
    assert 0 <= x.min() and x.max() <= 1
    # 0.5 * U(0, 1) added (U(0, 1) after the original's 0.5/0.5 normalisation), then clamped
    assert bool((x >= base - 1e-6).all()) and bool((x <= base + 0.5 + 1e-6).all())
    seq = torch.stack([a[i][0] for i in range(8)])
    par = torch.cat([x for x, _ in DataLoader(torch.utils.data.Subset(a, range(8)), batch_size=4, num_workers=2)])
    assert torch.equal(seq, par)


# ----------------------------------------------------------------------------- digits
def test_digits_default_needs_no_files(tmp_path):
    from sklearn.datasets import load_digits

    y = load_digits().target
    tr = get_known_dataset("digits", str(tmp_path / "nothing"), 6, True, download=False)
    te = get_known_dataset("digits", str(tmp_path / "nothing"), 6, False, download=False)
    assert tr.image_shape == (1, 28, 28) and tr.num_classes == 6
    assert set(tr.targets.tolist()) == set(range(6)) == set(te.targets.tolist())
    n = int((y < 6).sum())
    assert len(tr) + len(te) == n
    for c in range(6):
        n_c = int((y == c).sum())
        assert abs(int((te.targets == c).sum()) - 0.2 * n_c) <= 1  # stratified 80/20
    x, label = tr[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    from sklearn.model_selection import train_test_split

    _, test_idx = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    first = int(np.sort(test_idx)[0])
    ref = F.interpolate(torch.from_numpy(load_digits().images[first] / 16.0).float()[None, None], size=(28, 28),
                        mode="bilinear", align_corners=False)[0]
    te_all = get_known_dataset("digits", str(tmp_path), 10, False, download=False)
    assert te_all.targets[0] == y[first] and torch.allclose(te_all[0][0], ref.clamp(0, 1), atol=1e-6)
    un = get_unknown_dataset("digits_unknown", str(tmp_path), 6, (1, 28, 28), download=False)
    assert len(un) == 360 - len(te) and set(un.targets.tolist()) == {6}  # 360 = 20% of 1797
    # the split does not depend on class_num
    te10 = get_known_dataset("digits", str(tmp_path), 10, False, download=False)
    assert len(te10) == 360
    first = int(torch.nonzero(te10.targets < 6)[0])
    assert torch.equal(te[0][0], te10[first][0])


# ----------------------------------------------------------------------------- errors
def test_unknown_name_lists_valid_names():
    for fn in (lambda: get_known_dataset("mnsit", ".", 10, True, download=False),
               lambda: get_unknown_dataset("omniglott", ".", 10, (1, 28, 28), download=False)):
        with pytest.raises(UserError) as err:
            fn()
        msg = str(err.value)
        _one_sentence(msg)
        assert "mnist" in msg and "omniglot" in msg and "cifar_known" in msg and "folder:PATH" in msg


def test_wrong_role_names():
    with pytest.raises(UserError, match="known dataset"):
        get_known_dataset("omniglot", ".", 10, True, download=False)
    with pytest.raises(UserError, match="unknown dataset"):
        get_unknown_dataset("cifar_known", ".", 10, (3, 32, 32), download=False)


def test_class_num_too_large_or_invalid(mnist_root, tmp_path):
    root, _ = mnist_root
    with pytest.raises(UserError) as err:
        get_known_dataset("mnist", str(root), 11, True, download=False)
    _one_sentence(str(err.value))
    assert "class_num" in str(err.value) and "10" in str(err.value)
    write_cifar(tmp_path / "c", 10)
    with pytest.raises(UserError, match="class_num"):
        get_known_dataset("cifar_known", str(tmp_path / "c"), 12, True, download=False)
    with pytest.raises(UserError, match="class_num"):
        get_known_dataset("digits", ".", 0, True, download=False)
    write_images(tmp_path / "f" / "only_class", 5, size=(8, 8))
    with pytest.raises(UserError, match="class_num"):
        get_known_dataset(f"folder:{tmp_path / 'f'}", ".", 2, True, download=False)
    with pytest.raises(UserError, match="shape"):
        get_unknown_dataset("noise", ".", 10, (2, 28, 28), download=False)


def test_empty_known_class(tmp_path):
    images, labels = make_mnist_arrays(0, 3)
    labels[labels == 3] = 4  # no class 3
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(UserError) as err:
        get_known_dataset("mnist", str(tmp_path), 10, False, download=False)
    _one_sentence(str(err.value))
    assert "class 3" in str(err.value)
    assert len(get_known_dataset("mnist", str(tmp_path), 3, False, download=False)) > 0
    root = tmp_path / "f"
    write_images(root / "a", 5, size=(8, 8))
    (root / "b").mkdir()
    with pytest.raises(UserError, match="no training images"):
        get_known_dataset(f"folder:{root}", ".", 2, True, download=False)


def test_empty_or_missing_folders(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("no images here")
    for fn in (lambda: get_unknown_dataset(f"folder:{tmp_path / 'empty'}", ".", 10, (1, 28, 28)),
               lambda: get_known_dataset(f"folder:{tmp_path / 'empty'}", ".", 1, True),
               lambda: get_unknown_dataset(f"folder:{tmp_path / 'missing'}", ".", 10, (1, 28, 28))):
        with pytest.raises(UserError) as err:
            fn()
        _one_sentence(str(err.value))
    with pytest.raises(UserError) as err:
        get_known_dataset(f"folder:{tmp_path / 'empty'}", ".", 1, True)
    assert "no images" in str(err.value)


def test_missing_files_messages(tmp_path):
    cases = [
        (lambda: get_unknown_dataset("mnist", str(tmp_path), 10, (1, 28, 28), download=False),
         ["t10k-images-idx3-ubyte", os.path.join(str(tmp_path), "MNIST", "raw")]),
        (lambda: get_known_dataset("fashion_mnist", str(tmp_path), 10, True, download=False),
         ["train-images-idx3-ubyte", os.path.join(str(tmp_path), "FashionMNIST", "raw")]),
        (lambda: get_known_dataset("kmnist", str(tmp_path), 10, False, download=False),
         [os.path.join(str(tmp_path), "KMNIST", "raw")]),
        (lambda: get_known_dataset("cifar_known", str(tmp_path), 10, True, download=False),
         ["data_batch_1", os.path.join(str(tmp_path), "cifar-10-batches-py")]),
        (lambda: get_unknown_dataset("cifar100_unknown", str(tmp_path), 10, (3, 32, 32), download=False),
         ["test", os.path.join(str(tmp_path), "cifar-100-python")]),
        (lambda: get_unknown_dataset("omniglot", str(tmp_path), 10, (1, 28, 28), download=False),
         [os.path.join(str(tmp_path), "omniglot-py", "images_evaluation")]),
        (lambda: get_unknown_dataset("lsun-resize", str(tmp_path), 10, (3, 32, 32), download=False),
         [os.path.join(str(tmp_path), "openset", "LSUN_resize"), "ODIN"]),
        (lambda: get_known_dataset(f"idx:{tmp_path}", ".", 10, True, download=False), ["train-images-idx3-ubyte"]),
    ]
    for fn, parts in cases:
        with pytest.raises(UserError) as err:
            fn()
        msg = str(err.value)
        _one_sentence(msg)
        for p in parts:
            assert p in msg, msg


def test_corrupt_idx_file(tmp_path):
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    (folder / "t10k-images-idx3-ubyte").write_bytes(b"garbage!")
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(UserError, match="IDX"):
        get_unknown_dataset("mnist", str(tmp_path), 10, (1, 28, 28), download=False)


# ----------------------------------------------------------------------------- settings at fault
def _names_setting(err, setting):
    """A library message names no flag; ``setting`` is at fault; the script adds its flag once."""
    msg = str(err.value)
    _one_sentence(msg)
    assert "--" not in msg, msg
    assert err.value.setting == setting
    line = err.value.for_command_line()
    assert line.rstrip(").").endswith(f"--{setting}") and line.count(f"--{setting}") == 1, line


def test_errors_name_the_setting_not_the_flag(tmp_path):
    with pytest.raises(UserError) as err:
        get_known_dataset("digits", ".", 11, True, download=False)
    _names_setting(err, "class_num")
    assert "class_num 11" in str(err.value)
    with pytest.raises(UserError) as err:
        get_known_dataset("digits", ".", 0, True, download=False)
    _names_setting(err, "class_num")
    with pytest.raises(UserError) as err:
        get_unknown_dataset("digits_unknown", ".", 10, (1, 28, 28), download=False)
    _names_setting(err, "class_num")
    with pytest.raises(UserError) as err:
        get_known_dataset("mnsit", ".", 10, True, download=False)
    _names_setting(err, "known_dataset")
    with pytest.raises(UserError) as err:
        get_known_dataset("omniglot", ".", 10, True, download=False)
    _names_setting(err, "known_dataset")
    with pytest.raises(UserError) as err:
        get_unknown_dataset("cifar_known", ".", 10, (3, 32, 32), download=False)
    _names_setting(err, "unknown_dataset")
    with pytest.raises(UserError) as err:
        get_unknown_dataset(f"folder:{tmp_path / 'missing'}", ".", 10, (1, 28, 28))
    _names_setting(err, "unknown_dataset")
    with pytest.raises(UserError) as err:
        get_known_dataset(f"idx:{tmp_path / 'missing'}", ".", 10, True)
    _names_setting(err, "known_dataset")


def test_missing_files_name_data_dir(tmp_path):
    for fn in (lambda: get_known_dataset("mnist", str(tmp_path), 10, True, download=False),
               lambda: get_known_dataset("cifar_known", str(tmp_path), 10, True, download=False),
               lambda: get_unknown_dataset("omniglot", str(tmp_path), 10, (1, 28, 28), download=False),
               lambda: get_unknown_dataset("lsun-crop", str(tmp_path), 10, (3, 32, 32), download=False)):
        with pytest.raises(UserError) as err:
            fn()
        _names_setting(err, "data_dir")


# ----------------------------------------------------------------------------- symbolic links
def test_a_symlink_loop_in_an_unknown_folder_counts_each_image_once(tmp_path):
    from datasets.registry import get_unknown_dataset

    write_images(tmp_path / "set" / "a", 3, size=(8, 8), mode="L")
    os.symlink(tmp_path / "set", tmp_path / "set" / "a" / "loop")      # a loop back to the root
    os.symlink(tmp_path / "set" / "a", tmp_path / "set" / "alias")     # a second name of a folder
    os.symlink(tmp_path / "set" / "a" / "img_000.png", tmp_path / "set" / "a" / "same.png")
    unknown = get_unknown_dataset(f"folder:{tmp_path / 'set'}", str(tmp_path), 2, (1, 8, 8))
    assert len(unknown) == 3
    assert sorted(os.path.basename(p) for p in unknown.paths) == ["img_000.png", "img_001.png", "img_002.png"]


def test_a_symlink_loop_in_a_known_class_pulls_in_no_other_class(tmp_path):
    from datasets.registry import get_known_dataset

    root = tmp_path / "known"
    for c in ("a", "b"):
        write_images(root / c, 5, size=(8, 8), mode="L", seed=ord(c))
    os.symlink(root, root / "a" / "loop")
    train = get_known_dataset(f"folder:{root}", str(tmp_path), 2, train=True)
    test = get_known_dataset(f"folder:{root}", str(tmp_path), 2, train=False)
    assert len(train) + len(test) == 10
    assert not {os.path.realpath(p) for p in train.paths} & {os.path.realpath(p) for p in test.paths}
    for dataset in (train, test):
        for path, label in zip(dataset.paths, dataset.targets.tolist()):
            assert os.path.basename(os.path.dirname(os.path.realpath(path))) == "ab"[label]


@pytest.mark.parametrize("link,words", [
    (("a", "to_b", "b"), "in two classes"),
    (("train/a", "from_test", "test/a"), "in both the train and the test split"),
])
def test_one_image_in_two_classes_or_splits_is_one_sentence(tmp_path, link, words):
    from datasets.registry import get_known_dataset

    root = tmp_path / "known"
    presplit = link[0].startswith("train")
    for split in (("train", "test") if presplit else ("",)):
        for c in ("a", "b"):
            write_images(root / split / c, 5, size=(8, 8), mode="L", seed=ord(c))
    os.symlink(root / link[2], root / link[0] / link[1])
    with pytest.raises(UserError, match=words):
        get_known_dataset(f"folder:{root}", str(tmp_path), 2, train=True)
