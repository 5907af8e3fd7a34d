"""Package a finished run as a model that ships with ``research`` (maintainers only).

    python scripts/package_shipped_model.py runs/fer2013/fer2013-scratch_cnn_full-s0 research/models/weights/fer2013 \
        --command "poetry run research train --config scratch_cnn_full ..." --note "FER2013 Training split ..."

Writes DEST/best.pt (the selected weights, normalisation, class names and config as plain Python types,
loadable with ``torch.load(weights_only=True)``), DEST/config.yaml (the run's config, with what only made
sense on the training machine reset: ``run.resume``, ``run.dir``, W&B off), DEST/summary.json and
DEST/model_card.md, then prints the sha256 of best.pt to record in ``research/models/shipped.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from research.config import load_saved_config, to_yaml  # noqa: E402
from research.data.download import file_sha256  # noqa: E402
from research.report.card import write_model_card  # noqa: E402
from research.tracking.runs import RunFolder, read_checkpoint  # noqa: E402

KEEP = ("model", "epoch", "config", "class_names", "model_name", "mean", "std", "pretrained_source")


def package(run_dir: Path, dest: Path, *, command: str | list[str], note: str, license_name: str | None = None) -> str:
    """Copy what inference needs from ``run_dir`` to ``dest``; returns the sha256 of ``dest/best.pt``.
    ``command``: the training command, or the commands in order when the run continued another
    (``model.init_from``)."""
    commands = [command] if isinstance(command, str) else list(command)
    run = RunFolder.open(run_dir)
    ckpt = read_checkpoint(run.best_path)
    cfg = load_saved_config(run.config_path)
    # What only made sense on the training machine: its folders, the run it started from, W&B.
    cfg = OmegaConf.merge(cfg, {
        "run": {"resume": None, "dir": "runs", "new_images": None}, "wandb": {"mode": "disabled", "dir": None},
        "model": {"init_from": None, "pretrained_file": None, "pretrained": False},
        "data": {"root": Path(str(cfg.data.root)).name, "cache_dir": None},
    })
    dest.mkdir(parents=True, exist_ok=True)
    state = {k: ckpt[k] for k in KEEP if k in ckpt}
    state["config"] = OmegaConf.to_container(cfg)
    state["model"] = {k: v.detach().clone().contiguous() for k, v in state["model"].items()}
    torch.save(state, dest / "best.pt")
    (dest / "config.yaml").write_text(to_yaml(cfg))
    summary = run.read_summary()
    if isinstance(summary.get("dataset"), dict) and summary["dataset"].get("root"):
        summary["dataset"]["root"] = Path(summary["dataset"]["root"]).name  # not the packaging machine's path
    summary.pop("wandb", None)  # the training machine's offline record
    summary.update(command=" && ".join(commands), commands=commands, run_dir=str(dest), shipped_note=note)
    (dest / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name in ("history.csv", "classification_report.txt", "per_class.json", "confusion_counts.json", "val_split.json"):
        if (run.path / name).exists() and name != "val_split.json":
            shutil.copy2(run.path / name, dest / name)
    card = write_model_card(dest, dest / "model_card.md")
    card.write_text(_shipped_card(card.read_text(), summary, commands=commands, note=note, license_name=license_name))
    return file_sha256(dest / "best.pt")


def _shipped_card(text: str, summary: dict, *, commands: list[str], note: str, license_name: str | None) -> str:
    """The run's card with what a user of the shipped weights needs first: where the data came from and
    under which terms, how the model was trained and selected, and what it scored."""
    best = summary.get("best") or {}
    split = (summary.get("dataset") or {}).get("val_split") or {}
    lines = [
        "## This model ships with the package",
        "",
        note,
        "",
        *([f"- trained with: `{commands[0]}`"] if len(commands) == 1 else
          ["- trained in stages, each starting from the one before:", *(f"  {i}. `{c}`" for i, c in enumerate(commands, 1))]),
        f"- selected on: {split.get('images', '?')} validation images carved from the training folder "
        f"(stratified, `data.val_fraction={split.get('fraction', '?')}`, `data.val_split_seed={split.get('seed', '?')}`)"
        if split else "- selected on: the run's validation split",
        f"- validation accuracy {best.get('val/acc', float('nan')):.3f}, macro-F1 {best.get('val/macro_f1', float('nan')):.3f} "
        "(the checkpoint with the best validation macro-F1 of the last stage)",
        "- use it: `poetry run research predict PHOTOS` (no `--run`), fine-tune it: `model.init_from=fer2013`",
        "",
    ]
    head, _, rest = text.partition("\n# Model card")
    body_title, _, body = rest.partition("\n")
    if license_name:
        head = head.replace("license: mit", f"license: other\nlicense_name: {license_name}")
    return f"{head}\n# Model card{body_title}\n\n" + "\n".join(lines) + body



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a finished run folder")
    parser.add_argument("dest", type=Path, help="the shipped model's folder (research/models/weights/<name>)")
    parser.add_argument("--command", required=True, action="append",
                        help="the command that trained the run (for the card); repeat it, in order, for a run "
                             "that continued another with model.init_from")
    parser.add_argument("--note", default="", help="a paragraph on the data and its terms (for the card)")
    parser.add_argument("--license-name", help="the weights' licence when it is not the code's MIT (e.g. research-only data)")
    args = parser.parse_args(argv)
    digest = package(args.run, args.dest, command=args.command, note=args.note, license_name=args.license_name)
    size = (args.dest / "best.pt").stat().st_size
    print(f"{args.dest / 'best.pt'}: {size / 1e6:.2f} MB, sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
