"""Every registered model: shape, finiteness, gradients; frozen mode; pretrained weights from files."""

from __future__ import annotations

import pytest
import torch

from research.models import create_model, list_models, register_model
from research.models.backbones import PretrainedWeightsError
from research.models.classifier import count_parameters
from tests.conftest import SHARED_WEIGHTS

ALL = list_models()


@pytest.mark.parametrize(
    "name,in_chans", [(n, 1) for n in ALL] + [("scratch_cnn", 3), ("resnet18", 3), ("mobilenet_v3_small", 3)]
)
def test_output_shape_finite_and_gradients(name, in_chans):
    torch.manual_seed(0)
    model = create_model(name, 7, in_chans=in_chans)
    model.train()
    out = model(torch.randn(2, in_chans, 48, 48))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"no gradient for {missing[:5]}"


@pytest.mark.parametrize("name", ["scratch_cnn", "resnet18", "mobilenet_v3_small"])
def test_frozen_mode_trains_only_the_head(name):
    model = create_model(name, 7, in_chans=3)
    model.freeze_backbone()
    total, trainable = count_parameters(model)
    head = sum(p.numel() for p in model.head_parameters())
    assert trainable == head < total
    before = {n: p.clone() for n, p in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(torch.randn(4, 3, 64, 64)).sum().backward()
    opt.step()
    changed = {n for n, p in model.state_dict().items() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(f"net.{model.head_prefix}") for n in changed)  # BN stats frozen too
    model.unfreeze()
    assert count_parameters(model)[1] == total


def test_scratch_cnn_is_small():
    assert count_parameters(create_model("scratch_cnn"))[0] < 5_000_000


def test_unknown_model_lists_known():
    with pytest.raises(KeyError, match="Known models: .*resnet18.*timm/"):
        create_model("vgg99")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18")(lambda num_classes: None)


def test_timm_any_model_by_name():
    model = create_model("timm/resnet10t", 7, in_chans=1)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 7)


def test_pretrained_from_a_file_the_test_writes(tmp_path):
    import torchvision

    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = create_model("resnet18", 7, pretrained=True, pretrained_file=str(path), in_chans=3)
    assert torch.equal(model.net.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    assert model.pretrained_source == f"file:{path}"
    gray = create_model("resnet18", 7, pretrained_file=str(path), in_chans=1)
    assert torch.allclose(gray.net.conv1.weight, source.conv1.weight.sum(1, keepdim=True))


def test_wrong_weights_file_is_a_clear_error(tmp_path):
    import torchvision

    path = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    with pytest.raises(PretrainedWeightsError, match="does not fit"):
        create_model("resnet18", 7, pretrained_file=str(path))
    with pytest.raises(PretrainedWeightsError, match="not found"):
        create_model("resnet18", 7, pretrained_file=str(tmp_path / "missing.pth"))


def test_offline_hub_without_file_says_how(monkeypatch):
    import torchvision

    def offline(self, *a, **k):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(PretrainedWeightsError, match="model.pretrained_file=PATH"):
        create_model("resnet18", 7, pretrained=True)
    model = create_model("resnet18", 7, pretrained=True, pretrained_fallback=True)
    assert model.pretrained_source == "none (hub unreachable)"


def test_scratch_refuses_pretrained():
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_model("scratch_cnn", pretrained=True)


@pytest.mark.skipif(not SHARED_WEIGHTS.exists(), reason="../shared/weights absent")
@pytest.mark.parametrize("in_chans", [1, 3])
def test_real_timm_weights_from_shared_file(in_chans):
    import timm

    state = torch.load(SHARED_WEIGHTS, map_location="cpu", weights_only=True)
    model = create_model("timm/tf_efficientnet_lite0", 7, pretrained_file=str(SHARED_WEIGHTS), in_chans=in_chans)
    assert model.pretrained_source.startswith("file:")
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    name = "blocks.1.0.conv_pw.weight"
    assert torch.equal(model.net.state_dict()[name], state[name]) and not torch.equal(ref.state_dict()[name], state[name])
    assert model(torch.randn(1, in_chans, 64, 64)).shape == (1, 7)


def test_from_scratch_backbones_use_default_bn_momentum(tmp_path):
    """MobileNetV3's ImageNet BN momentum (0.01) is kept only when its pretrained weights are loaded."""
    import torchvision

    scratch = create_model("mobilenet_v3_small", 7)
    assert {m.momentum for m in scratch.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.1}
    path = tmp_path / "mnv3.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    pretrained = create_model("mobilenet_v3_small", 7, pretrained_file=str(path))
    assert {m.momentum for m in pretrained.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.01}


@pytest.mark.parametrize("name", [*list_models(), "timm/tf_efficientnet_lite0"])
def test_every_new_head_starts_at_a_uniform_prediction(name):
    import math

    torch.manual_seed(0)
    model = create_model(name, 7, pretrained=False, in_chans=1).train()  # the first training step's loss
    x = torch.randn(8, 1, 64, 64)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x), torch.arange(8) % 7).item()
    assert abs(loss - math.log(7)) < 0.1, loss


@pytest.mark.parametrize("name", ["resnet18", "timm/tf_efficientnet_lite0"])
def test_discriminative_learning_rates(name):
    """optim.backbone_lr_mult: the head's groups train at lr, the backbone's at lr x mult, every parameter
    in exactly one group, weight decay on weights only; the schedule keeps the ratio."""
    from omegaconf import OmegaConf

    from research.builders.training import build_optimizer, build_scheduler

    model = create_model(name, 7, in_chans=3)
    cfg = OmegaConf.create({"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "momentum": 0.9, "scheduler": "cosine",
                            "warmup_epochs": 1, "min_lr_ratio": 0.01, "step_size": 10, "gamma": 0.1,
                            "backbone_lr_mult": 0.1})
    opt = build_optimizer(model, cfg)
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each parameter once
    head = {id(p) for p in model.head_parameters()}
    for g in opt.param_groups:
        in_head = {id(p) in head for p in g["params"]}
        assert len(in_head) == 1
        assert g["lr"] == pytest.approx(1e-3 if in_head.pop() else 1e-4)
        assert (g["weight_decay"] > 0) == all(p.ndim > 1 for p in g["params"])
    assert {id(p) for p in opt.param_groups[0]["params"]} <= head  # the logged lr is the head's
    sched, _ = build_scheduler(opt, cfg, epochs=3, steps_per_epoch=4, monitor="val/macro_f1")
    for _ in range(6):
        opt.step()
        sched.step()
    lrs = sorted({round(g["lr"] / opt.param_groups[0]["lr"], 6) for g in opt.param_groups})
    assert lrs == [0.1, 1.0]


def test_backbone_lr_mult_is_range_checked():
    from research.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"optim.backbone_lr_mult=0.0 is out of range"):
        load_config(None, ["optim.backbone_lr_mult=0"])


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "timm/tf_efficientnet_lite0"])
def test_backbone_layers_cover_the_backbone_from_stem_to_output(name):
    """Every non-head parameter is in exactly one layer group; the first group holds the stem (the input
    convolution), and the groups follow the forward pass."""
    model = create_model(name, 7, in_chans=3)
    layers = model.backbone_layers()
    ids = [id(p) for layer in layers for p in layer]
    head = {id(p) for p in model.head_parameters()}
    assert sorted(ids) == sorted(id(p) for p in model.parameters() if id(p) not in head)
    assert len(layers) >= 8
    group_of = {id(p): i for i, layer in enumerate(layers) for p in layer}
    convs = [m.weight for n, m in model.net.named_modules() if isinstance(m, torch.nn.Conv2d) and not model._is_head(n)]
    order = [group_of[id(w)] for w in convs]
    assert order[0] == 0 and order == sorted(order)  # the stem first; convolutions in forward order
    assert order[-1] >= len(layers) - 2  # the last convolution in the last groups (mobilenet adds a pretrained linear)
    if name == "resnet18":  # conv1 + bn1 (the stem), then the 8 basic blocks
        assert len(layers) == 9 and {id(p) for p in model.net.bn1.parameters()} <= {id(p) for p in layers[0]}


@pytest.mark.parametrize("name", ["resnet18", "timm/tf_efficientnet_lite0"])
def test_layer_wise_learning_rate_decay(name):
    """optim.layer_decay d: the head at lr, the backbone's last layer group at lr x backbone_lr_mult, each
    group below at d times the one above, down to the stem at lr x mult x d**(L-1); every parameter once."""
    from omegaconf import OmegaConf

    from research.builders.training import build_optimizer

    model = create_model(name, 7, in_chans=3)
    cfg = OmegaConf.create({"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "momentum": 0.9,
                            "backbone_lr_mult": 0.5, "layer_decay": 0.8})
    opt = build_optimizer(model, cfg)
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    layers = model.backbone_layers()
    depth = len(layers)
    for i, layer in enumerate(layers):
        rates = {lr_of[id(p)] for p in layer}
        assert len(rates) == 1 and rates.pop() == pytest.approx(1e-3 * 0.5 * 0.8 ** (depth - 1 - i))
    assert {lr_of[id(p)] for p in model.head_parameters()} == {1e-3}
    assert opt.param_groups[0]["lr"] == 1e-3


def test_drop_path_reaches_timm_blocks_and_is_refused_elsewhere():
    from research.config import ConfigError, load_config

    model = create_model("timm/tf_efficientnet_lite0", 7, in_chans=3, drop_path=0.2)
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.2, abs=0.02) and min(rates) < max(rates)  # timm's linear ramp
    plain = create_model("timm/tf_efficientnet_lite0", 7, in_chans=3)
    assert not [m for m in plain.modules() if type(m).__name__ == "DropPath"]
    with pytest.raises(ConfigError, match=r"model.drop_path=0.1: stochastic depth is available for timm/<name> models only, not resnet18"):
        load_config(None, ["model.name=resnet18", "model.drop_path=0.1"])
    with pytest.raises(ConfigError, match=r"optim.layer_decay=0.0 is out of range"):
        load_config(None, ["optim.layer_decay=0"])
