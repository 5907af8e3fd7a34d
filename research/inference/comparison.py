"""Raw vs face-cropped predictions compared: faces found, accuracy and winners changed per mode.

``predict`` writes this comparison (``predictions/comparison.json``) and logs its table; the report
reads the same file and renders the same table. It is the part of the inference side the report
depends on, so the report never imports the ``predict`` command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from research.faces.settings import DETECTORS

CROP_MODES = DETECTORS  # modes that run a face detector


def compare_modes(
    by_mode: dict[str, list[dict[str, Any]]], *, skipped_no_face: Sequence[str] | dict[str, Sequence[str]] = ()
) -> dict[str, Any]:
    """Faces found and accuracy per mode (when labels are known) and the images whose winner changed.

    ``skipped_no_face``: per crop mode, images left out because no face was found (no fallback);
    they count in its ``no_face`` and are listed under ``skipped_no_face`` (a plain list means haar).
    ``changes`` lists raw -> haar changes; ``changes_by_mode`` holds raw -> each crop mode's.
    """
    skipped = skipped_no_face if isinstance(skipped_no_face, dict) else {"haar": skipped_no_face}
    out: dict[str, Any] = {"modes": {}}
    for mode, records in by_mode.items():
        labelled = [r for r in records if r["correct"] is not None]
        stats = out["modes"][mode] = {
            "images": len(records), "labelled": len(labelled),
            "accuracy": (sum(r["correct"] for r in labelled) / len(labelled)) if labelled else None,
            "no_face": sum(1 for r in records if r.get("face_found") is False),
            "mean_confidence": float(np.mean([r["confidence"] for r in records])) if records else None,
        }
        if mode in CROP_MODES:
            left_out = list(skipped.get(mode, ()))
            stats["no_face"] += len(left_out)
            stats["skipped_no_face"] = left_out
            stats["faces_found"] = sum(1 for r in records if r.get("face_found"))
    if "raw" in by_mode:
        raw = {r["image"]: r for r in by_mode["raw"]}
        out["changes_by_mode"] = {}
        for mode in (m for m in CROP_MODES if m in by_mode):
            changes = []
            for r in by_mode[mode]:
                before = raw.get(r["image"])
                if before and before["winner"] != r["winner"]:
                    changes.append(
                        {"image": r["image"], "true": r["true"], "raw": before["winner"], mode: r["winner"],
                         "face_found": r["face_found"], "effect": _effect(before, r)}
                    )
            out["changes_by_mode"][mode] = changes
        if "haar" in by_mode:
            out["changes"] = out["changes_by_mode"]["haar"]
    return out


def _effect(raw: dict[str, Any], cropped: dict[str, Any]) -> str:
    if raw["true"] is None:
        return "changed"
    if cropped["correct"] and not raw["correct"]:
        return "fixed by crop"
    if raw["correct"] and not cropped["correct"]:
        return "broken by crop"
    return "changed (both wrong)"


def summary_table(comparison: dict[str, Any]) -> list[str]:
    """Markdown rows: one column per mode (raw / haar / aligned) with faces found, accuracy on the
    labelled images and winners changed against raw. Used by the console summary and the report."""
    modes = comparison.get("modes") or {}
    names = [m for m in ("raw", *CROP_MODES) if m in modes]
    changes = comparison.get("changes_by_mode") or ({"haar": comparison["changes"]} if "changes" in comparison else {})

    def faces(mode: str) -> str:
        s = modes[mode]
        if mode == "raw":
            return "no detector"
        found = s.get("faces_found", s["images"] - s["no_face"] + len(s.get("skipped_no_face", [])))
        return f"{found} of {found + s['no_face']}"

    def accuracy(mode: str) -> str:
        s = modes[mode]
        return "n/a (no labels)" if s["accuracy"] is None else f"{s['accuracy']:.3f} ({s['labelled']} labelled)"

    def changed(mode: str) -> str:
        if mode == "raw":
            return "-"
        if mode not in changes:
            return "n/a"
        effects = [c["effect"] for c in changes[mode]]
        fixed, broken = effects.count("fixed by crop"), effects.count("broken by crop")
        return f"{len(effects)} ({fixed} fixed, {broken} broken)"

    rows = [("faces found", faces), ("accuracy", accuracy), ("winners changed vs raw", changed)]
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {label} | " + " | ".join(cell(m) for m in names) + " |" for label, cell in rows]
    return lines
