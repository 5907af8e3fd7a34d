"""Models: ``create_model(name, num_classes, ...)`` builds every model of the package."""

from research.models.factory import cam_target_layer, create_model
from research.models.registry import list_models, register_model

__all__ = ["cam_target_layer", "create_model", "list_models", "register_model"]
