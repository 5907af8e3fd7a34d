"""Trained models that ship inside the package, ready to score photos right after ``poetry install``.

Each is a minimal run folder under ``research/models/weights/<name>/``: ``config.yaml`` (the training
config: model, input size, channels, face settings), ``best.pt`` (the selected weights with their
normalisation and class names, loadable with ``torch.load(weights_only=True)``), ``summary.json`` (what
the training run measured) and ``model_card.md``. ``predict``, ``evaluate``, video and ``export`` use
the default one when no ``--run`` is given; ``model.init_from=fer2013`` fine-tunes from it. The sha256
of every ``best.pt`` is recorded here and checked on every load, so a damaged or swapped file is an
error, never a silently different model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from research.data.download import file_sha256
from research.errors import UserError

WEIGHTS = Path(__file__).parent / "weights"


class ShippedModelError(UserError):
    """A shipped model's files are missing or do not match their recorded checksum."""


@dataclass(frozen=True)
class ShippedModel:
    """A model that ships with the package.

    Attributes:
        name: how commands and ``model.init_from`` refer to it (``fer2013``).
        folder: its run folder inside the package.
        sha256: the checksum of its ``best.pt``.
        summary: one line for logs: what it is, what it was trained on, how it scored.
    """

    name: str
    folder: Path
    sha256: str
    summary: str

    @property
    def checkpoint(self) -> Path:
        return self.folder / "best.pt"

    @property
    def card(self) -> Path:
        return self.folder / "model_card.md"

    @property
    def outputs(self) -> Path:
        """Where its predictions and evaluations go by default (never inside the installed package)."""
        return Path("runs") / f"shipped-{self.name}"


SHIPPED: dict[str, ShippedModel] = {
    "fer2013": ShippedModel(
        name="fer2013",
        folder=WEIGHTS / "fer2013",
        sha256="50c689f6e1fa632c08b75b4acee3fa431fb164a260df7b3f161dd8bf709ad140",
        summary="scratch_cnn, 48 px grayscale, trained on FER2013's Training split (research use only); "
                "validation accuracy 0.664, macro-F1 0.629",
    ),
}
DEFAULT = "fer2013"


def shipped_model(name: str = DEFAULT) -> ShippedModel:
    """The shipped model ``name``, its files checked against the recorded sha256.

    Raises:
        ShippedModelError: an unknown name (the message lists the known ones), a missing file or a
            checksum that differs (reinstall the package).
    """
    if name not in SHIPPED:
        known = ", ".join(SHIPPED) or "none in this installation"
        raise ShippedModelError(f"no shipped model {name!r}; shipped models: {known}")
    model = SHIPPED[name]
    for path in (model.checkpoint, model.folder / "config.yaml"):
        if not path.is_file():
            raise ShippedModelError(
                f"the shipped model {name} is incomplete: {path} is missing. Reinstall the package "
                "(`poetry install`), or pass --run RUN_FOLDER"
            )
    actual = file_sha256(model.checkpoint)
    if actual != model.sha256:
        raise ShippedModelError(
            f"{model.checkpoint} is damaged or was replaced: sha256 {actual[:12]}..., expected {model.sha256[:12]}... "
            "Reinstall the package (`poetry install`), or pass --run RUN_FOLDER"
        )
    return model


def is_shipped_name(value: str | None) -> bool:
    """Whether a ``model.init_from`` / ``--run`` value names a shipped model rather than a path."""
    return value is not None and value in SHIPPED and not Path(value).exists()
