"""Models: ``create_model(name, num_classes, ...)`` builds every model of the package."""

from research.models.factory import create_model
from research.models.registry import list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
