"""Wall time of ``python -m research predict`` as whole processes, and where one process spends it.

Each checkout given with ``--code LABEL=PATH`` (default: this one, labelled ``current``) runs the
command ``--repeats`` times in fresh processes (``--wandb disabled``, outputs to a temporary
folder); the checkouts take turns round by round, so a slow spell on the machine falls on all of
them. Then one more process per checkout times the phases inside the command by wrapping the
functions that ``research.inference.predict`` (``research.predict`` in older checkouts) calls. Prints a markdown table (one row per checkout) on
stdout and the machine on stderr. Asserts nothing: timings depend on the machine and its load.

    python benchmarks/predict_speed.py --run /tmp/predict-bench/r1 --images ../shared/data/new-images \\
        --code before=/tmp/predict-base --code after=.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hostinfo import cpu_capability, cpu_model  # benchmarks/hostinfo.py, beside this script

HEAVY_MODULES = ("wandb", "seaborn", "pandas", "sklearn")


def predict_argv(run: Path | None, images: Path, face: str, out: Path) -> list[str]:
    """``run`` None: no ``--run``, so the model shipped with the package scores."""
    model = [] if run is None else ["--run", str(run)]
    return ["predict", *model, str(images), "--face", face, "--wandb", "disabled", "--out", str(out)]


def code_env(code: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(code))
    env.pop("WANDB_MODE", None)
    return env


def whole_process_seconds(code: Path, run: Path | None, images: Path, face: str) -> float:
    with tempfile.TemporaryDirectory(prefix="predict-speed-") as out:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "research", *predict_argv(run, images, face, Path(out))],
            cwd=code, env=code_env(code), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        return time.perf_counter() - start


def phases(run: Path | None, images: Path, face: str) -> dict[str, float | int | list[str]]:
    """Run inside a process whose ``research`` is the checkout under test: seconds per phase."""
    start = time.perf_counter()
    try:
        from research.inference import predict as predict_module
    except ImportError:  # a checkout from before research/inference/ (2026-12)
        import research.predict as predict_module

    import research.cli
    import research.plots

    seconds: dict[str, float] = {"imports": time.perf_counter() - start}
    calls: dict[str, int] = {}

    def timed(owner: object, attr: str, phase: str) -> None:
        inner = getattr(owner, attr)

        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                seconds[phase] = seconds.get(phase, 0.0) + time.perf_counter() - t
                calls[phase] = calls.get(phase, 0) + 1

        setattr(owner, attr, wrapper)

    timed(predict_module, "load_run", "model load")
    timed(predict_module, "training_wandb_run" if hasattr(predict_module, "training_wandb_run") else "linked_wandb_run", "W&B setup")
    timed(predict_module, "read_new_images", "image reading")
    timed(predict_module, "_crop_or_none", "detection")
    timed(predict_module, "predict_arrays", "forward")
    # The reused-figure writer where the checkout has it, else the one-figure-per-panel function.
    if hasattr(research.plots, "PredictionPanels"):
        timed(research.plots.PredictionPanels, "save", "panels")
    else:
        timed(research.plots, "plot_prediction_panel", "panels")
    timed(research.plots, "plot_prediction_sheet", "sheets")
    with tempfile.TemporaryDirectory(prefix="predict-speed-") as out:
        t = time.perf_counter()
        try:
            research.cli.predict_main(predict_argv(run, images, face, Path(out))[1:])
        except SystemExit as exit_:
            if exit_.code:
                raise
        command = time.perf_counter() - t
    seconds["other"] = command - sum(v for k, v in seconds.items() if k != "imports")
    return {
        **seconds, "panel_count": calls.get("panels", 0), "total": seconds["imports"] + command,
        "heavy_modules_loaded": [m for m in HEAVY_MODULES if m in sys.modules],
    }


def phases_in_subprocess(code: Path, run: Path | None, images: Path, face: str) -> dict:
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--phases-only", *([] if run is None else ["--run", str(run)]),
         "--images", str(images), "--face", face],
        cwd=code, env=code_env(code), check=True, capture_output=True, text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, CPU capability {cpu_capability()}, Python {platform.python_version()}"


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="trained run folder (default: none, so the shipped model scores)")
    parser.add_argument("--images", type=Path, required=True, help="folder of new images")
    parser.add_argument("--face", default="both", choices=("raw", "haar", "both"))
    parser.add_argument("--repeats", type=int, default=5, help="whole-process runs per checkout (default: %(default)s)")
    parser.add_argument(
        "--code", action="append", metavar="LABEL=PATH",
        help="a checkout to time (repeatable; default: current=<this repository>)",
    )
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--phases-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    run, images = (None if args.run is None else args.run.resolve()), args.images.resolve()
    if args.phases_only:
        print(json.dumps(phases(run, images, args.face)))
        return

    codes = dict(item.split("=", 1) for item in (args.code or [f"current={Path(__file__).resolve().parents[1]}"]))
    codes = {label: Path(path).resolve() for label, path in codes.items()}
    sys.stderr.write(f"machine: {machine()}; load average before: {load_average()}\n")
    walls: dict[str, list[float]] = {label: [] for label in codes}
    for round_ in range(args.repeats):
        for label, code in (codes.items() if round_ % 2 == 0 else reversed(codes.items())):
            walls[label].append(whole_process_seconds(code, run, images, args.face))
            sys.stderr.write(f"round {round_ + 1}/{args.repeats} {label}: {walls[label][-1]:.2f} s\n")
    breakdown = {label: phases_in_subprocess(code, run, images, args.face) for label, code in codes.items()}
    sys.stderr.write(f"load average after: {load_average()}\n")

    print("| code | runs | median s | min s | max s | imports | model load | W&B setup | image reading | detection | forward | panels | sheets | other | heavy modules loaded |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, values in walls.items():
        p = breakdown[label]
        per_panel = p.get("panels", 0.0) / max(1, p["panel_count"])
        cells = [f"{p.get(k, 0.0):.2f}" for k in ("imports", "model load", "W&B setup", "image reading", "detection", "forward")]
        print(
            f"| {label} | {len(values)} | **{statistics.median(values):.2f}** | {min(values):.2f} | {max(values):.2f} | "
            + " | ".join(cells)
            + f" | {p.get('panels', 0.0):.2f} ({p['panel_count']} x {per_panel:.3f}) | {p.get('sheets', 0.0):.2f} | {p['other']:.2f} | "
            + (", ".join(p["heavy_modules_loaded"]) or "none")
            + " |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "walls": walls, "phases": breakdown}, indent=2))


if __name__ == "__main__":
    main()
