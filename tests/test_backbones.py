"""The six backbones: output shapes, which activations the taps are, checkpoint key names."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import BACKBONES, build_backbone, default_feature_dim, default_tap_dims
from utils.errors import UserError

ALL = ["mnist-conv", "vgg", "resnet18", "resnet50", "densenet", "wresnet"]

EXPECTED_DIMS = {
    "mnist-conv": (500, (100, 100, 100)),
    "vgg": (1024, (128, 256, 256)),
    "resnet18": (512, (64, 128, 256)),
    "resnet50": (2048, (256, 512, 1024)),
    "densenet": (342, (108, 150, 342)),
    "wresnet": (640, (160, 320, 640)),
}

# A few distinctive parameter/buffer names (and shapes) of the original implementation's
# encoders (vmdls models/decoders_encoders.py, vgg.py, resnet_encoders.py, densenet.py,
# wide_resnet.py); its checkpoints store them under "encoder.".
EXPECTED_KEYS = {
    "mnist-conv": {
        "encoder.0.weight": (100, 1, 3, 3),
        "encoder.2.weight": (100, 100, 3, 3),
        "encoder.5.bias": (100,),
        "encoder.7.weight": (100, 100, 3, 3),
        "encoder.10.weight": (100, 100, 3, 3),
        "dec_layer.weight": (500, 900),
        "dec_layer.bias": (500,),
    },
    "vgg": {
        "encoder.0.weight": (64, 3, 3, 3),
        "encoder.1.running_mean": (64,),
        "encoder.4.num_batches_tracked": (),
        "encoder.23.weight": (256, 256, 3, 3),
        "encoder.24.running_var": (256,),
        "encoder.28.weight": (1024, 4096),
        "encoder.30.weight": (1024, 1024),
    },
    "resnet18": {
        "conv1.weight": (64, 3, 3, 3),
        "bn1.running_mean": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.1.bn2.weight": (64,),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.running_var": (128,),
        "layer4.1.conv2.weight": (512, 512, 3, 3),
    },
    "resnet50": {
        "conv1.weight": (64, 3, 3, 3),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer3.5.bn3.weight": (1024,),
        "layer4.0.conv2.weight": (512, 512, 3, 3),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
    },
    "densenet": {
        "conv1.weight": (24, 3, 3, 3),
        "block1.layer.0.bn1.weight": (24,),
        "block1.layer.0.conv1.weight": (48, 24, 1, 1),
        "block1.layer.15.conv2.weight": (12, 48, 3, 3),
        "trans1.conv1.weight": (108, 216, 1, 1),
        "trans2.bn1.running_mean": (300,),
        "block3.layer.15.bn1.weight": (330,),
        "bn1.running_var": (342,),
        "fc.weight": (10, 342),
        "fc.bias": (10,),
    },
    "wresnet": {
        "conv1.weight": (16, 3, 3, 3),
        "block1.layer.0.bn1.weight": (16,),
        "block1.layer.0.convShortcut.weight": (160, 16, 1, 1),
        "block1.layer.3.conv2.weight": (160, 160, 3, 3),
        "block2.layer.0.convShortcut.weight": (320, 160, 1, 1),
        "block3.layer.3.bn2.running_var": (640,),
        "bn1.weight": (640,),
    },
}

HEAVY = {"resnet50", "densenet", "wresnet"}


def natural_input(enc_type: str, batch: int = 2) -> torch.Tensor:
    if enc_type == "mnist-conv":
        return torch.randn(batch, 1, 28, 28)
    return torch.randn(batch, 3, 32, 32)


def pooled(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def hooked_outputs(modules: list[nn.Module]):
    """Register hooks keeping a copy of each module's output (later in-place ReLUs change it)."""
    store: list[torch.Tensor | None] = [None] * len(modules)
    handles = []
    for i, module in enumerate(modules):
        def hook(_module, _inputs, output, i=i):
            store[i] = output.detach().clone()
        handles.append(module.register_forward_hook(hook))
    return store, handles


@pytest.fixture(scope="module")
def built():
    """Each backbone, built once (eval mode), with its output on its natural input."""
    torch.manual_seed(0)
    out = {}
    for name in ALL:
        model = build_backbone(name).eval()
        x = natural_input(name)
        with torch.no_grad():
            h, taps = model(x)
        out[name] = (model, x, h, taps)
    return out


@pytest.mark.parametrize("enc_type", ALL)
def test_shapes(built, enc_type):
    model, _, h, taps = built[enc_type]
    feature_dim, tap_dims = EXPECTED_DIMS[enc_type]
    assert model.feature_dim == feature_dim == default_feature_dim(enc_type)
    assert tuple(model.tap_dims) == tap_dims == default_tap_dims(enc_type)
    assert h.shape == (2, feature_dim)
    assert isinstance(taps, list) and len(taps) == 3
    for tap, dim in zip(taps, tap_dims):
        assert tap.shape == (2, dim)
    assert torch.isfinite(h).all()


def test_original_feature_ensemble_sizes():
    # The original's initialize_gaussians: the three taps add 448 / 640 / 600 / 1120,
    # and 300 for mnist-conv, to enc_out_dim + latent_dim.
    original = {"resnet18": 448, "vgg": 640, "densenet": 600, "wresnet": 1120, "mnist-conv": 300}
    for name, size in original.items():
        assert sum(default_tap_dims(name)) == size


@pytest.mark.parametrize("enc_type", ALL)
def test_state_dict_keys(built, enc_type):
    state = built[enc_type][0].state_dict()
    for key, shape in EXPECTED_KEYS[enc_type].items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key


def test_mnist_conv_taps_by_hand(built):
    model, x, h, taps = built["mnist-conv"]
    e = model.encoder
    with torch.no_grad():
        conv2 = e[2](F.relu(e[0](x)))  # conv 2, before its ReLU
        pool1 = F.max_pool2d(F.relu(conv2), 2)
        conv3 = F.relu(e[5](pool1))
        rest = F.max_pool2d(F.relu(e[7](conv3)), 2)
        rest = F.max_pool2d(F.relu(e[10](rest)), 2)
        h_ref = model.dec_layer(rest.reshape(len(x), 900))
    for tap, ref in zip(taps, (conv2, pool1, conv3)):
        torch.testing.assert_close(tap, pooled(ref))
    torch.testing.assert_close(h, h_ref)
    assert (taps[0] < 0).any()  # before the ReLU


def test_vgg_taps_by_hand(built):
    model, x, h, taps = built["vgg"]
    e = model.encoder
    with torch.no_grad():
        bn2 = e[4](e[3](F.relu(e[1](e[0](x)))))  # BN of conv 2, before its ReLU
        y = F.max_pool2d(F.relu(bn2), 2)
        bn4 = e[11](e[10](F.relu(e[8](e[7](y)))))
        y = F.max_pool2d(F.relu(bn4), 2)
        for conv in (14, 17, 20):
            y = F.relu(e[conv + 1](e[conv](y)))
        bn8 = e[24](e[23](y))
        y = torch.flatten(F.max_pool2d(F.relu(bn8), 2), 1)
        h_ref = F.relu(e[30](F.relu(e[28](y))))
    for tap, ref in zip(taps, (bn2, bn4, bn8)):
        torch.testing.assert_close(tap, pooled(ref))
    torch.testing.assert_close(h, h_ref)
    assert all((tap < 0).any() for tap in taps)  # before the ReLU


@pytest.mark.parametrize("enc_type", ["mnist-conv", "vgg"])
def test_sequential_taps_match_hooks(enc_type):
    """Same check through forward hooks, in train mode, with a backward pass (in-place safety)."""
    torch.manual_seed(1)
    model = build_backbone(enc_type).train()
    indices = {"mnist-conv": (2, 4, 6), "vgg": (4, 11, 24)}[enc_type]
    store, handles = hooked_outputs([model.encoder[i] for i in indices])
    try:
        h, taps = model(natural_input(enc_type))
    finally:
        for handle in handles:
            handle.remove()
    for tap, ref in zip(taps, store):
        torch.testing.assert_close(tap.detach(), pooled(ref))
    (h.sum() + sum(t.square().sum() for t in taps)).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_resnet18_taps_are_layer_outputs():
    torch.manual_seed(2)
    model = build_backbone("resnet18").train()
    store, handles = hooked_outputs([model.layer1, model.layer2, model.layer3, model.layer4])
    try:
        h, taps = model(natural_input("resnet18"))
    finally:
        for handle in handles:
            handle.remove()
    for tap, ref in zip(taps, store[:3]):
        torch.testing.assert_close(tap.detach(), pooled(ref))
    torch.testing.assert_close(h.detach(), pooled(store[3]))
    assert store[0].shape[-1] == 32  # CIFAR stem: no downsampling before layer1
    (h.sum() + sum(t.square().sum() for t in taps)).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("enc_type,modules", [
    ("resnet50", ("layer1", "layer2", "layer3")),
    ("densenet", ("trans1", "trans2")),
    ("wresnet", ("block1", "block2")),
])
def test_heavy_taps_match_hooks(enc_type, modules):
    torch.manual_seed(3)
    model = build_backbone(enc_type).eval()
    store, handles = hooked_outputs([getattr(model, name) for name in modules])
    try:
        with torch.no_grad():
            h, taps = model(natural_input(enc_type))
    finally:
        for handle in handles:
            handle.remove()
    for tap, ref in zip(taps, store):
        torch.testing.assert_close(tap, pooled(ref))
    if enc_type in ("densenet", "wresnet"):
        # Tap 3 is block 3 + BN + ReLU, pooled: the same vector as h, as in the original.
        torch.testing.assert_close(taps[2], h)
        assert (h >= 0).all()


def test_resnet_stem_options():
    plain = build_backbone("resnet18")
    imagenet = build_backbone("resnet18", first_conv=True, maxpool1=True)
    assert plain.conv1.kernel_size == (3, 3) and plain.conv1.stride == (1, 1)
    assert not isinstance(plain.maxpool, nn.MaxPool2d) or plain.maxpool.kernel_size == 1
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d) and imagenet.maxpool.stride == 2
    assert plain.state_dict().keys() == imagenet.state_dict().keys()
    only_pool = build_backbone("resnet18", maxpool1=True)
    assert only_pool.conv1.kernel_size == (3, 3) and isinstance(only_pool.maxpool, nn.MaxPool2d)

    store, handles = hooked_outputs([imagenet.layer1])
    try:
        with torch.no_grad():
            h, taps = imagenet.eval()(torch.randn(2, 3, 32, 32))
    finally:
        for handle in handles:
            handle.remove()
    assert store[0].shape[-1] == 8  # 32 -> 16 (stem) -> 8 (max-pool)
    assert h.shape == (2, 512) and [t.shape[1] for t in taps] == [64, 128, 256]


def test_in_channels():
    grey = build_backbone("resnet18", in_channels=1).eval()
    assert grey.conv1.weight.shape == (64, 1, 3, 3)
    with torch.no_grad():
        h, taps = grey(torch.randn(2, 1, 28, 28))
    assert h.shape == (2, 512) and [t.shape for t in taps] == [(2, 64), (2, 128), (2, 256)]

    first_conv_weight = {
        "mnist-conv": "encoder.0.weight", "vgg": "encoder.0.weight", "resnet18": "conv1.weight",
        "resnet50": "conv1.weight", "densenet": "conv1.weight", "wresnet": "conv1.weight",
    }
    for name, key in first_conv_weight.items():
        default = build_backbone(name).state_dict()[key].shape[1]
        assert default == (1 if name == "mnist-conv" else 3)
        if name in HEAVY:
            continue
        assert build_backbone(name, in_channels=2).state_dict()[key].shape[1] == 2
    assert build_backbone("mnist-conv", in_channels=3).encoder[0].in_channels == 3


def test_input_height():
    assert build_backbone("mnist-conv").dec_layer.in_features == 900
    assert build_backbone("mnist-conv", input_height=28).dec_layer.in_features == 900
    big = build_backbone("mnist-conv", input_height=32).eval()
    assert big.dec_layer.in_features == 1600
    with torch.no_grad():
        h, _ = big(torch.randn(2, 1, 32, 32))
    assert h.shape == (2, 500)
    assert build_backbone("vgg").encoder[28].in_features == 4096
    assert build_backbone("vgg", input_height=28, in_channels=1).encoder[28].in_features == 256 * 9


def test_class_num_sizes_unused_classifier():
    assert build_backbone("densenet", class_num=100).fc.weight.shape == (100, 342)
    # The original WideResNet has no classifier: class_num is accepted and ignored.
    assert not any(k.startswith("fc.") for k in build_backbone("wresnet", class_num=100).state_dict())


def test_wresnet_dropout_only_in_training():
    torch.manual_seed(4)
    model = build_backbone("wresnet").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first, _ = model(x)
        second, _ = model(x)
    torch.testing.assert_close(first, second)


def test_registry_and_unknown_name():
    assert set(BACKBONES) == set(ALL)
    with pytest.raises(UserError) as info:
        build_backbone("resnet34")
    message = str(info.value)
    assert "resnet34" in message
    for name in ALL:
        assert name in message
    with pytest.raises(UserError):
        default_feature_dim("mnist")
