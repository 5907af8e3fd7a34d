"""Model registry: ``create_model(name, num_classes, ...)`` builds every model of the package."""

from research.models import backbones, scratch  # noqa: F401  (importing registers the builders)
from research.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
