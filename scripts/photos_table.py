"""A markdown table of what ``predict`` wrote: one row per photo, the winner and its score per mode
(maintainers: the README's "What you get" and the shipped model's card are made with it).

    poetry run research predict ../shared/data/new-images --face both --out /tmp/shipped-photos --no-gradcam
    python scripts/photos_table.py /tmp/shipped-photos

It reads ``<out>/<mode>/predictions.json`` of every mode that was scored, the records the panels were
drawn from, so the table says what the panels show; a photo's true label is its file name's or folder's
(``predict``'s ``true``), left blank when it has none. Ends with how many each mode got right.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODES = ("raw", "haar", "aligned")


def read_modes(out: Path) -> dict[str, list[dict]]:
    """``{mode: records}`` for every mode ``predict`` scored into ``out``."""
    found = {m: json.loads((out / m / "predictions.json").read_text()) for m in MODES if (out / m / "predictions.json").is_file()}
    if not found:
        raise SystemExit(f"error: {out} holds no <mode>/predictions.json; give the --out folder of `predict`")
    return found


def table(by_mode: dict[str, list[dict]]) -> str:
    modes = list(by_mode)
    rows = {m: {r["image"]: r for r in records} for m, records in by_mode.items()}
    images = sorted({name for per in rows.values() for name in per})
    lines = ["| photo | true | " + " | ".join(modes) + " |", "|---|---|" + "---|" * len(modes)]
    right = dict.fromkeys(modes, 0)
    labelled = 0
    for name in images:
        first = next(per[name] for per in rows.values() if name in per)
        true = first.get("true") or ""
        labelled += bool(true)
        cells = []
        for m in modes:
            r = rows[m].get(name)
            if r is None:
                cells.append("(skipped)")
                continue
            ok = bool(true) and r["winner"] == true
            right[m] += ok
            mark = " ✓" if ok else ""
            face = "" if m == "raw" or r.get("face_found", True) else ", no face: whole image"
            cells.append(f"{r['winner']} {r['confidence']:.2f}{mark}{face}")
        lines.append(f"| {name} | {true} | " + " | ".join(cells) + " |")
    if labelled:
        lines.append("| **right** | | " + " | ".join(f"**{right[m]} of {labelled}**" for m in modes) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the --out folder of a `predict` run")
    args = parser.parse_args(argv)
    sys.stdout.write(table(read_modes(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
