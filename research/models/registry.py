"""The model registry: builders filed under a name (after timm's ``_registry``).

This module only registers, lists and looks up. Building (including the ``timm/`` prefix
dispatch) is :mod:`research.models.factory`, which imports this module, never the reverse.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from research.errors import UserError

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}
_CAM_LAYERS: dict[str, str] = {}  # name -> dotted path of the Grad-CAM target layer in the built model
TIMM_PREFIX = "timm/"


class UnknownModelError(UserError, KeyError):
    """A model name that is neither registered nor a timm model; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def register_model(name: str | None = None, *, cam_layer: str | None = None) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator filing a builder ``fn(num_classes, *, pretrained, in_chans, dropout, ...)`` under a name.

    ``cam_layer``: dotted path (``model.get_submodule``) of the layer whose activations Grad-CAM
    weighs, the last spatial feature map before global pooling (e.g. ``"net.layer4"``).
    """

    def decorator(fn: ModelBuilder) -> ModelBuilder:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered (by {_REGISTRY[key].__module__})")
        _REGISTRY[key] = fn
        if cam_layer is not None:
            _CAM_LAYERS[key] = cam_layer
        return fn

    return decorator


def list_models() -> list[str]:
    """Registered names; any timm model is also accepted as ``timm/<name>``."""
    return sorted(_REGISTRY)


def get_builder(name: str) -> ModelBuilder:
    """The builder registered under ``name``; an unknown name lists the known ones."""
    if name not in _REGISTRY:
        raise UnknownModelError(
            f"unknown model {name!r}. Known models: {', '.join(list_models())}, "
            f"or any timm model as {TIMM_PREFIX}<name> (e.g. timm/tf_efficientnet_lite0)."
        )
    return _REGISTRY[name]


def get_cam_layer(name: str) -> str | None:
    """The Grad-CAM target layer path registered with ``name`` (``None`` if none was given)."""
    get_builder(name)  # an unknown name lists the known ones
    return _CAM_LAYERS.get(name)
