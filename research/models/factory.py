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
from research.models.registry import TIMM_PREFIX, get_builder


def create_model(name: str, num_classes: int = 7, **kwargs: Any) -> nn.Module:
    """Build a registered model (or ``timm/<name>``) with a ``num_classes`` head."""
    if name.startswith(TIMM_PREFIX):
        return create_timm_model(name[len(TIMM_PREFIX) :], num_classes, **kwargs)
    return get_builder(name)(num_classes, **kwargs)
