"""One factory for every model (after timm's ``_factory``): registered names and ``timm/<name>``.

Importing the builder modules fills the registry; the registry itself imports nothing back.
"""

from __future__ import annotations

from typing import Any

from torch import nn

import research.models.scratch  # noqa: F401  (importing registers the scratch builders)
from research.models.backbones import (
    create_timm_model,  # importing registers the torchvision builders
)
from research.models.registry import TIMM_PREFIX, get_builder, get_cam_layer


def create_model(name: str, num_classes: int = 7, **kwargs: Any) -> nn.Module:
    """Build a registered model (or ``timm/<name>``) with a ``num_classes`` head."""
    if name.startswith(TIMM_PREFIX):
        return create_timm_model(name[len(TIMM_PREFIX) :], num_classes, **kwargs)
    return get_builder(name)(num_classes, **kwargs)


def cam_target_layer(model: nn.Module, name: str) -> nn.Module:
    """The layer Grad-CAM explains for a model built by :func:`create_model` under ``name``.

    A registered model names its layer at registration (``register_model(cam_layer=...)``). A
    ``timm/<name>`` model uses the deepest feature stage timm reports (``feature_info[-1]``: the
    last stage of a ResNet, EfficientNet, MobileNet, ConvNeXt...), or else its last convolution.

    Raises:
        ValueError: the registered model has no Grad-CAM layer, or the path is not in ``model``.
    """
    net = getattr(model, "net", model)
    prefix = "net." if net is not model else ""
    if name.startswith(TIMM_PREFIX):
        info = getattr(net, "feature_info", None)
        if info:
            path = prefix + info[-1]["module"]
        else:
            convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
            if not convs:
                raise ValueError(f"{name} has no convolution for Grad-CAM to explain")
            path = prefix + convs[-1]
    else:
        path = get_cam_layer(name)
        if path is None:
            raise ValueError(f"model {name!r} was registered without a Grad-CAM layer (register_model(cam_layer=...))")
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"Grad-CAM layer {path!r} of {name} is not in the built {type(net).__name__}") from None
