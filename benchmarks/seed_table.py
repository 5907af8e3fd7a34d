"""Mean ± std over seeds of finished run folders, with macro-F1 over the well-supported classes too.

    python benchmarks/seed_table.py "efficientnet=runs/emociones-dev/efficientnet_lite0-s*" \
        "scratch=runs/emociones-dev/scratch_cnn-s*" --min-support 10

Each argument is ``LABEL=GLOB`` (a glob of run folders; each folder needs ``summary.json`` and
``per_class.json``, which every finished run has). For each label it prints one markdown row: the
runs, validation accuracy, macro-F1 over every class with validation images, and macro-F1 over the
classes with at least ``--min-support`` validation images (on emociones-dev ``fear`` has 4: each
one of them found moves the 7-class macro-F1 by about 5 points, as much as the difference being
measured), all as mean ± sample std over the runs, then the per-run values. With two or more
labels it adds the difference of the means, first label minus each other one. The scores are the
selected checkpoints' (``best.pt``), as the run recorded them (accuracy from ``summary.json``'s
``best``, per-class F1 from ``per_class.json``, both written by the final evaluation of ``best.pt``);
nothing is retrained or re-scored. The class counts in the header are the first group's.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import sys
from pathlib import Path


def run_scores(run: Path, min_support: float) -> dict[str, float]:
    per_class = json.loads((run / "per_class.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    present = {k: v for k, v in per_class.items() if v.get("support", 0) > 0}
    supported = {k: v for k, v in present.items() if v["support"] >= min_support}
    return {
        "acc": float(summary["best"]["val/acc"]),
        "macro_f1": sum(v["f1"] for v in present.values()) / max(len(present), 1),
        "macro_f1_supported": sum(v["f1"] for v in supported.values()) / len(supported) if supported else float("nan"),
        "classes": len(present),
        "supported": len(supported),
    }


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", nargs="+", metavar="LABEL=GLOB", help="a label and a glob of finished run folders")
    parser.add_argument("--min-support", type=float, default=10, help="validation images a class needs to count in the "
                        "'supported' macro-F1 (default 10)")
    args = parser.parse_args(argv)
    table: dict[str, list[dict[str, float]]] = {}
    for group in args.groups:
        label, sep, pattern = group.partition("=")
        if not sep or not label or not pattern:
            print(f"error: {group!r} is not LABEL=GLOB (e.g. scratch=runs/dev/scratch_cnn-s*)", file=sys.stderr)
            return 2
        if label in table:
            print(f"error: the label {label!r} is given twice; give each group its own label", file=sys.stderr)
            return 2
        runs = sorted(Path(p) for p in glob.glob(pattern) if (Path(p) / "per_class.json").is_file())
        if not runs:
            print(f"error: no finished run folder (with per_class.json) matches {pattern!r}", file=sys.stderr)
            return 2
        table[label] = [{"run": r.name, **run_scores(r, args.min_support)} for r in runs]
    first = next(iter(table.values()))
    print(f"| label | runs | val acc | macro-F1 ({first[0]['classes']} classes) | "
          f"macro-F1 (classes with >= {args.min_support:g} val images: {first[0]['supported']}) | per run: acc / macro-F1 / supported |")
    print("|---|---|---|---|---|---|")
    for label, rows in table.items():
        per_run = "; ".join(f"{r['acc']:.3f} / {r['macro_f1']:.3f} / {r['macro_f1_supported']:.3f}" for r in rows)
        print(f"| {label} | {', '.join(r['run'] for r in rows)} | {mean_std([r['acc'] for r in rows])} | "
              f"{mean_std([r['macro_f1'] for r in rows])} | {mean_std([r['macro_f1_supported'] for r in rows])} | {per_run} |")
    labels = list(table)
    for other in labels[1:]:
        diffs = {k: statistics.mean(r[k] for r in table[labels[0]]) - statistics.mean(r[k] for r in table[other])
                 for k in ("acc", "macro_f1", "macro_f1_supported")}
        print(f"\n{labels[0]} - {other}: accuracy {100 * diffs['acc']:+.1f} points, macro-F1 {100 * diffs['macro_f1']:+.1f}, "
              f"supported-class macro-F1 {100 * diffs['macro_f1_supported']:+.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
