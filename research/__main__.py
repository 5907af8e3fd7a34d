"""``python -m research COMMAND ...``: the console scripts without Poetry's wrappers.

W&B sweep YAMLs use this form (``${interpreter} -m research train ...``) so that
``wandb agent`` started from the project's environment runs the same code.
"""

import sys

from research import cli

COMMANDS = {
    "train": cli.train_main,
    "sweep": cli.sweep_main,
    "predict": cli.predict_main,
    "evaluate": cli.evaluate_main,
    "report": cli.report_main,
    "pipeline": cli.pipeline_main,
    "fetch-data": cli.fetch_data_main,
    "sync-runs": cli.sync_runs_main,
    "prepare-data": cli.prepare_data_main,
    "export": cli.export_main,
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.stderr.write(f"usage: python -m research {{{','.join(COMMANDS)}}} [args...]\n")
        sys.exit(2)
    COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
