"""The 7 canonical emotions and the folder names that map to them.

Class indices are fixed by :data:`CANONICAL_CLASSES`, so a dataset stored in Spanish
folders (the course dataset) and one stored in English folders (FER2013, RAF-DB, ...)
produce the same label for the same emotion.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from research.errors import UserError

CANONICAL_CLASSES: tuple[str, ...] = (
    "anger",
    "disgust",
    "fear",
    "happiness",
    "neutral",
    "sadness",
    "surprise",
)
NUM_CLASSES = len(CANONICAL_CLASSES)

SPANISH_NAMES: dict[str, str] = {
    "anger": "enojo",
    "disgust": "disgusto",
    "fear": "miedo",
    "happiness": "alegria",
    "neutral": "seriedad",
    "sadness": "tristeza",
    "surprise": "sorpresa",
}

_ALIASES: dict[str, tuple[str, ...]] = {
    "anger": ("angry", "anger", "enojo", "enojado", "ira", "enfado", "rabia", "mad"),
    "disgust": ("disgust", "disgusted", "disgusto", "asco"),
    "fear": ("fear", "fearful", "afraid", "scared", "miedo", "temor"),
    "happiness": ("happy", "happiness", "joy", "alegria", "felicidad", "feliz", "contento"),
    "neutral": ("neutral", "neutro", "neutra", "seriedad", "serio", "calm"),
    "sadness": ("sad", "sadness", "tristeza", "triste"),
    "surprise": ("surprise", "surprised", "sorpresa", "sorprendido"),
}


class UnknownClassError(UserError, ValueError):
    """A folder or label name that maps to none of the canonical emotions."""


def normalize_name(name: str) -> str:
    """Lower-case, strip accents and surrounding blanks: ``' Alegría '`` -> ``'alegria'``."""
    decomposed = unicodedata.normalize("NFKD", name.strip().lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).replace(" ", "_")


_LOOKUP: dict[str, str] = {
    normalize_name(alias): canonical for canonical, aliases in _ALIASES.items() for alias in aliases
}


def known_names() -> list[str]:
    """Every accepted folder name, sorted."""
    return sorted(_LOOKUP)


def canonical_name(name: str) -> str:
    """Map a folder or label name (any language/case/accents) to its canonical emotion.

    Raises:
        UnknownClassError: listing the accepted names.
    """
    try:
        return _LOOKUP[normalize_name(name)]
    except KeyError:
        raise UnknownClassError(
            f"unknown emotion class {name!r}. Known names: {', '.join(known_names())}. "
            "Rename the folder to one of them."
        ) from None


def class_index(name: str) -> int:
    """Canonical class index of a folder or label name."""
    return CANONICAL_CLASSES.index(canonical_name(name))


def try_canonical_name(name: str) -> str | None:
    """Like :func:`canonical_name` but returns ``None`` for unknown names."""
    return _LOOKUP.get(normalize_name(name))


def label_from_filename(stem: str) -> str | None:
    """Read a true label from a file name such as ``anger_1`` or ``alegria-3``; ``None`` if absent."""
    for token in normalize_name(stem).replace("-", "_").split("_"):
        label = _LOOKUP.get(token)
        if label is not None:
            return label
    return None


def map_folders(folders: Iterable[str]) -> dict[str, str]:
    """Map folder names to canonical names; two folders for one emotion is an error."""
    mapping: dict[str, str] = {}
    seen: dict[str, str] = {}
    for folder in folders:
        canonical = canonical_name(folder)
        if canonical in seen:
            raise UnknownClassError(
                f"folders {seen[canonical]!r} and {folder!r} both mean {canonical!r}; merge them into one."
            )
        seen[canonical] = folder
        mapping[folder] = canonical
    return mapping
