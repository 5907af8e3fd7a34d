"""The one rule for turning a run id, image name or dataset name into a file name or a W&B id."""

from __future__ import annotations

SAFE_CHARACTERS = "-_."


def safe_name(text: str, *, fill: str = "-", max_length: int | None = None) -> str:
    """``text`` with every character other than letters, digits and ``-_.`` replaced by ``fill``
    (slashes included, so the result never leaves its folder); with ``max_length``, its last
    ``max_length`` characters (W&B ids: 64)."""
    name = "".join(c if c.isalnum() or c in SAFE_CHARACTERS else fill for c in text)
    return name[-max_length:] if max_length else name
