"""``research COMMAND ...`` and ``python -m research COMMAND ...``: one dispatcher for every command.

The ``research`` console script (``[project.scripts]``) and ``python -m research`` both run :func:`main`;
the single-command scripts (``train``, ``predict``, ...) call the same ``*_main`` functions. W&B sweep
YAMLs use the module form (``${interpreter} -m research train ...``) so that ``wandb agent`` started from
the project's environment runs the same code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

from research import cli

COMMANDS: dict[str, tuple[Callable[[Sequence[str] | None], None], str]] = {
    "train": (cli.train_main, "train one model (or --seeds N) into a run folder, logged to W&B"),
    "sweep": (cli.sweep_main, "run a W&B sweep YAML locally with W&B's own search engine"),
    "predict": (cli.predict_main, "score new photos (raw, Haar crop, aligned), a video or a camera"),
    "evaluate": (cli.evaluate_main, "score a labelled image set (a test split, another dataset)"),
    "report": (cli.report_main, "write the markdown comparison of runs and their model cards"),
    "export": (cli.export_main, "export a run to ONNX or a torch.export program, checked for parity"),
    "pipeline": (cli.pipeline_main, "the whole study: train the models, score new images, report"),
    "fetch-data": (cli.fetch_data_main, "download and unpack the course dataset"),
    "fetch-weights": (cli.fetch_weights_main, "download a preset's pretrained weights for offline machines"),
    "prepare-data": (cli.prepare_data_main, "import a public dataset (FER2013, FERPlus, RAF-DB, ...)"),
    "sync-runs": (cli.sync_runs_main, "upload offline W&B runs"),
}


def package_version() -> str:
    try:
        return version("research")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "unknown (not installed)"


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: research COMMAND [options]     (or: python -m research COMMAND ...)",
        "",
        "Facial-expression recognition: train, sweep, predict, evaluate, export and report CNNs for 7 emotions.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()),
        "",
        "options:",
        "  -h, --help     show this message and exit",
        "  -V, --version  print the package version and exit",
        "",
        "`research COMMAND --help` explains a command. The single-command scripts (`train`, `predict`, ...) are the",
        "same commands; in an activated virtualenv the shell's own `export` builtin shadows the `export` script,",
        "so use `research export` (or `poetry run research export`).",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage() + "\n")
        sys.exit(0)
    if args and args[0] in ("-V", "--version"):
        sys.stdout.write(f"research {package_version()}\n")
        sys.exit(0)
    if not args or args[0] not in COMMANDS:
        problem = "a command is required" if not args else f"unknown command {args[0]!r}"
        sys.stderr.write(f"{usage()}\n\nresearch: error: {problem} (choose from {', '.join(COMMANDS)})\n")
        sys.exit(2)
    COMMANDS[args[0]][0](args[1:])


if __name__ == "__main__":
    main()
