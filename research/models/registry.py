"""One registry, one factory (after timm's ``register_model`` / ``create_model``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}
TIMM_PREFIX = "timm/"


def register_model(name: str | None = None) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator filing a builder ``fn(num_classes, *, pretrained, in_chans, dropout, ...)`` under a name."""

    def decorator(fn: ModelBuilder) -> ModelBuilder:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered (by {_REGISTRY[key].__module__})")
        _REGISTRY[key] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Registered names; any timm model is also accepted as ``timm/<name>``."""
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int = 7, **kwargs: Any) -> nn.Module:
    """Build a registered model (or ``timm/<name>``) with a ``num_classes`` head."""
    if name.startswith(TIMM_PREFIX):
        from research.models.backbones import create_timm_model

        return create_timm_model(name[len(TIMM_PREFIX) :], num_classes, **kwargs)
    if name not in _REGISTRY:
        raise KeyError(
            f"unknown model {name!r}. Known models: {', '.join(list_models())}, "
            f"or any timm model as {TIMM_PREFIX}<name> (e.g. timm/tf_efficientnet_lite0)."
        )
    return _REGISTRY[name](num_classes, **kwargs)
