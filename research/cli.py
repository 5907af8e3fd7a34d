"""Console scripts: each ``main`` builds its parser and hands one action to :func:`run_main`,
which parses, sets up logging, calls the library and exits (0, 2 for user errors, 130 for Ctrl-C,
143 for SIGTERM, 129 for SIGHUP)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from research.config import CHOICES
from research.errors import (
    WRITE_ERRNOS,
    Interrupted,
    UserError,
    cannot_write,
    interrupt_exit_code,
    interrupt_name,
)
from research.faces.settings import MODES, SINGLE_MODES, resolve_mode

log = logging.getLogger("research")

OVERRIDES_USAGE = "[key=value ...]"
EPILOG_OVERRIDES = """\
overrides: any config key as key=value or --key=value (the form `wandb agent` passes), e.g.
  optim.lr=3e-4 train.epochs=5 data.root=data/dataset_emociones augment.preset=strong
  model.pretrained_file=weights.pth wandb.mode=offline run.name=my-run
  (all keys with defaults: `poetry run train --print-config`)
"""
WANDB_MODES = CHOICES["wandb.mode"]
RUN_HELP = (
    "run folder (runs/<id>); default: the FER2013 model shipped with the package (`fer2013`; its outputs go "
    "to runs/shipped-fer2013/)"
)

Action = Callable[[argparse.Namespace, list[str]], int | None]


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("PIL", "matplotlib", "urllib3", "wandb", "git", "h5py", "timm", "onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("WANDB_SILENT", "true")


def run_main(parser: argparse.ArgumentParser, argv: Sequence[str] | None, action: Action, *, overrides: bool = False) -> None:
    """Parse ``argv`` (unknown ``key=value`` items pass through as overrides when ``overrides``), set up
    logging and run ``action(args, overrides)``; user errors become one clear line and exit code 2."""
    if overrides:
        args, extra = parser.parse_known_args(argv)
    else:
        args, extra = parser.parse_args(argv), []
    setup_logging(args.verbose)
    try:
        with logging_redirect_tqdm(), signals_as_interrupts():  # log lines go above the progress bars
            code = action(args, list(extra)) or 0
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM/SIGHUP (research.errors.Interrupted)
        log.error("interrupted (%s)", interrupt_name(err))
        sys.exit(interrupt_exit_code(err))
    except UserError as err:  # bad input or environment: the message says what to do; anything else is a bug
        log.error("%s", err)
        sys.exit(2)
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:  # only writing raises these: a full or read-only disk, never a bug
            raise
        log.error("%s", cannot_write(err.filename or "an output file", err))
        sys.exit(2)
    sys.exit(code)


HANDLED_SIGNALS = ("SIGTERM", "SIGHUP")  # besides SIGINT (Ctrl-C), which Python raises as KeyboardInterrupt


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """While a command runs, SIGTERM and SIGHUP raise :class:`research.errors.Interrupted` (a
    KeyboardInterrupt) in the main thread, so they end it the way Ctrl-C does: the batch is abandoned,
    the run marked ``interrupted``, W&B closed, the image cache removed. A second such signal gets the
    default action (the process ends at once). SIGKILL cannot be caught: ``last.pt`` then holds every
    completed epoch and the cache folder is left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        signal.signal(signum, signal.SIG_DFL)
        raise Interrupted(signum, signal.Signals(signum).name)

    previous = {}
    for name in HANDLED_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None:
            previous[number] = signal.signal(number, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def _parser(prog: str, description: str, epilog: str, *, overrides: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=not overrides,  # overrides like --data.root=X must never match an option prefix
    )
    if overrides:
        parser.usage = f"%(prog)s [options] {OVERRIDES_USAGE}"
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _print(text: object) -> None:
    """Command output for scripts (a path, a list): stdout, not the log."""
    sys.stdout.write(f"{text}\n")


# --- train ------------------------------------------------------------------------------
def train_parser() -> argparse.ArgumentParser:
    from research.config import list_presets

    parser = _parser(
        "train",
        "Train one model and write a run folder (runs/<id>/: config, history, summary, checkpoints, "
        "figures, classification report), logged to W&B (online, offline or disabled).",
        EPILOG_OVERRIDES + f"\npresets: {', '.join(list_presets())}\n\nexamples:\n"
        "  poetry run train --config scratch_cnn data.root=demo train.epochs=3\n"
        "  poetry run train --config resnet18 data.root=data/dataset_emociones optim.lr=1e-4\n"
        "  poetry run train run.resume=runs/scratch_cnn-20260101-120000   # continue an interrupted run\n"
        "  poetry run train --config resnet18 --seeds 3 run.name=r18   # runs/r18-s42, r18-s43, r18-s44",
        overrides=True,
    )
    parser.add_argument("--config", "-c", help="preset name (research/configs/NAME.yaml) or a YAML file")
    parser.add_argument("--list-models", action="store_true", help="print the registered model names and exit")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--seeds", type=_positive_int, metavar="N",
        help="train the same config N times with run.seed, run.seed+1, ...; run folders <run.name or model-time>-s<seed> "
        "(the report groups them and shows mean ± std and confidence intervals)",
    )
    return parser


def resolve_train_config(preset: str | None, overrides: Sequence[str]):
    """Preset + overrides; with ``run.resume`` the resumed run's own config is the base."""
    from research.config import load_config, load_saved_config, parse_overrides
    from research.tracking.runs import RunFolder

    items = parse_overrides(overrides)
    resume = next((i.split("=", 1)[1] for i in items if i.startswith("run.resume=")), None)
    if resume and resume not in ("null", "None"):
        run = RunFolder.open(resume)
        return load_saved_config(run.config_path, [*items, f"run.resume={run.path}"])
    return load_config(preset, items)


def _train(args: argparse.Namespace, overrides: list[str], argv: Sequence[str] | None) -> int:
    from research.config import to_yaml
    from research.models import list_models

    if args.list_models:
        _print("\n".join([*list_models(), "timm/<any timm model name>"]))
        return 0
    if os.environ.get("WANDB_SWEEP_ID"):  # a trial of `wandb agent`: pretrained weights or a failed trial, never random ones
        from research.config import SWEEP_TRIAL_OVERRIDES

        log.info("W&B sweep trial: %s", " ".join(SWEEP_TRIAL_OVERRIDES))
        overrides = [*overrides, *SWEEP_TRIAL_OVERRIDES]
    cfg = resolve_train_config(args.config, overrides)
    if args.print_config:
        _print(to_yaml(cfg))
        return 0
    from research.engine.distributed import Distributed
    from research.pipeline import train_seeds, train_with_new_images

    main_process = Distributed.from_env().is_main
    if not main_process:  # under torchrun rank 0 speaks for the run; the others report only problems
        log.setLevel(logging.WARNING)
    command = "poetry run train " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.seeds is None:
        summary = train_with_new_images(cfg, command=command)
        if main_process:
            _print(summary.run_dir)
        return 0
    results = train_seeds(cfg, args.seeds, command=command)
    for result in results:
        if result.run_dir.exists() and main_process:
            _print(result.run_dir)
    failed = [r for r in results if r.error is not None]
    if failed:
        log.error("%d of %d seed(s) failed: %s", len(failed), len(results), "; ".join(f"seed {r.job.cfg.run.seed}: {r.error}" for r in failed))
        return 1
    return 0


def train_main(argv: Sequence[str] | None = None) -> None:
    run_main(train_parser(), argv, lambda args, extra: _train(args, extra, argv), overrides=True)


# --- fetch-data ---------------------------------------------------------------------------
def fetch_data_main(argv: Sequence[str] | None = None) -> None:
    from research.data.download import (
        COURSE_DRIVE_ID,
        DEFAULT_DATA_DIR,
        DEFAULT_RETRIES,
        DEFAULT_TIMEOUT,
    )

    parser = _parser(
        "fetch-data",
        "Download the course dataset (a zip on Google Drive) with gdown, check its sha256, unpack it into a temporary "
        "folder, find dataset_emociones/train and dataset_emociones/validation, verify the class folders and only then "
        "move it into DATA_DIR; print images per class. Idempotent: does nothing when the dataset is already there. "
        "An interrupted download resumes when run again; a failed one leaves no dataset folder behind.",
        "examples:\n  poetry run fetch-data\n  poetry run fetch-data --zip ~/Downloads/dataset_emociones.zip\n"
        "  poetry run fetch-data --cookies-file ~/cookies.txt   # Drive says 'too many users': your browser's Google cookies\n"
        "then train with data.root=<the printed folder>",
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where to put it (default: %(default)s)")
    parser.add_argument("--zip", type=Path, help="use this zip already on disk instead of downloading")
    parser.add_argument("--drive-id", default=COURSE_DRIVE_ID, help="Google Drive file id (default: the course zip)")
    parser.add_argument("--force", action="store_true", help="download and unpack again")
    parser.add_argument("--sha256", metavar="HEX", help="the zip's expected sha256, checked before unpacking (the log prints the sha256 of every zip)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S", help="seconds without data before an attempt fails (default: %(default)s)")
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="N", help="further attempts, each resuming the transfer (default: %(default)s)")
    parser.add_argument(
        "--cookies-file", type=Path, metavar="FILE",
        help="Netscape-format cookies of a browser logged in to Google, for Drive's 'too many users' page",
    )

    def action(args: argparse.Namespace, _: list[str]) -> int:
        from research.data.download import fetch_course_dataset, format_counts

        root, counts = fetch_course_dataset(
            args.data_dir, zip_path=args.zip, drive_id=args.drive_id, force=args.force, sha256=args.sha256,
            timeout=args.timeout, retries=args.retries, cookies_file=args.cookies_file,
        )
        log.info("dataset ready at %s\n%s", root, format_counts(counts))
        _print(root)
        return 0

    run_main(parser, argv, action)


# --- fetch-weights ------------------------------------------------------------------------
def fetch_weights_main(argv: Sequence[str] | None = None) -> None:
    from research.config import list_presets

    parser = _parser(
        "fetch-weights",
        "Download a preset's pretrained weights on a machine with internet, through torchvision's weights API or "
        "timm's hub download (the same caches training reads), then print the files and what to copy or set on a "
        "machine without internet (TORCH_HOME for torchvision, HF_HOME and HF_HUB_OFFLINE=1 for timm, or "
        "model.pretrained_file=PATH). The files go to stdout, one per line; the instructions to the log.",
        f"presets: {', '.join(list_presets())}\n\nexamples:\n  poetry run research fetch-weights --config resnet18_frozen\n"
        "  poetry run research fetch-weights --config efficientnet_lite0\n"
        "  poetry run research fetch-weights model.name=timm/convnext_atto   # any model, by name",
        overrides=True,
    )
    parser.add_argument("--config", "-c", help="preset name (research/configs/NAME.yaml) or a YAML file")

    def action(args: argparse.Namespace, overrides: list[str]) -> int:
        from research.config import load_config, parse_overrides
        from research.models.backbones import fetch_pretrained

        cfg = load_config(args.config, parse_overrides(overrides))
        fetched = fetch_pretrained(cfg.model.name)
        log.info("pretrained weights of %s:\n%s", fetched.model, "\n".join(f"  {p}" for p in fetched.files))
        log.info("on the machine without internet:\n%s", "\n".join(f"  - {line}" for line in fetched.offline))
        for path in fetched.files:
            _print(path)
        return 0

    run_main(parser, argv, action, overrides=True)


# --- predict ------------------------------------------------------------------------------
def _face_mode(value: str) -> str:
    """``--face``: a mode of :data:`research.faces.settings.MODES` ("none" is the old name of raw)."""
    value = resolve_mode(value)
    if value not in MODES:
        raise argparse.ArgumentTypeError(f"invalid choice {value!r} (choose from {', '.join(MODES)})")
    return value


def predict_main(argv: Sequence[str] | None = None) -> None:
    parser = _parser(
        "predict",
        "Score a folder of new photos with a trained run (without --run: the FER2013 model shipped with the "
        "package), raw (the whole photo) and/or after a Haar-cascade "
        "face crop, using the run's own eval preprocessing. Writes per-image panels (original with the "
        "detection box, crop, model input, class scores), a sheet, Grad-CAM heatmaps of the predicted class, predictions.json and, when file names "
        "or subfolders carry labels (anger_1.jpg, alegria/x.png), accuracy raw vs cropped. --onnx scores "
        "with an exported model (`poetry run export`) through onnxruntime instead, with the preprocessing "
        "stored in the file. --video/--camera annotate every face of a video (or a camera) into "
        "annotated.mp4 and frames.csv.",
        "examples:\n  poetry run predict ../shared/data/new-images          # the shipped FER2013 model; runs/shipped-fer2013/predictions/\n"
        "  poetry run predict --run runs/scratch_cnn-20260101-120000 ../shared/data/new-images --face both\n"
        "  poetry run predict --run runs/<id> ../shared/data/new-images --face all   # raw / haar / aligned side by side\n"
        "  poetry run predict --onnx runs/<id>/export/model.onnx ../shared/data/new-images\n"
        "  poetry run predict --run runs/<id> --video clip.mp4 --every 2\n"
        "  poetry run predict --run runs/<id> --camera 0 --max-frames 300   # needs a camera; writes files, shows nothing",
    )
    parser.add_argument("images", type=Path, nargs="?", help="folder of images (jpg/png/webp/bmp, any size)")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--run", type=Path, help=RUN_HELP)
    model.add_argument("--onnx", type=Path, metavar="MODEL.onnx", help="an exported model (poetry run export) scored with onnxruntime")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--video", type=Path, metavar="FILE", help="annotate a video file instead of scoring IMAGES")
    source.add_argument("--camera", type=int, metavar="INDEX", help="annotate frames of camera INDEX (needs a camera device)")
    parser.add_argument(
        "--face", type=_face_mode, default="both", metavar="{" + ",".join(MODES) + "}",
        help="images: raw (whole photo), haar (Haar face crop), aligned (dlib landmarks, eyes levelled; needs "
        "`poetry install --extras align`), both (raw + haar, default) or all (raw + haar + aligned side by side); "
        "video always scores every Haar face",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: <run>/predictions, <run>/predictions/video/<name> for video)")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"), help="checkpoint to score with (default: best)")
    parser.add_argument("--no-fallback", action="store_true", help="haar/aligned: leave out images without a detected face instead of scoring the whole image")
    parser.add_argument("--wandb", default=None, choices=WANDB_MODES, help="W&B mode for the prediction table (default: the run's; none with --onnx)")
    parser.add_argument(
        "--no-gradcam", action="store_true",
        help="images: skip the Grad-CAM heatmaps (<out>/<mode>/gradcam/*.png, <out>/gradcam_sheet.png); never made with --onnx",
    )
    parser.add_argument("--every", type=_positive_int, default=1, metavar="N", help="video: score every Nth frame (default: 1)")
    parser.add_argument("--max-frames", type=_positive_int, metavar="N", help="video/camera: stop after N frames")

    def action(args: argparse.Namespace, _: list[str]) -> int:
        video = args.video is not None or args.camera is not None
        _inference_threads()
        if video == (args.images is not None):
            parser.error("give either IMAGES (a folder) or --video FILE / --camera INDEX")
        if video:
            from research.inference.video import video_cli

            result = video_cli(
                args.video if args.video is not None else args.camera, run=args.run, onnx=args.onnx, out=args.out,
                checkpoint=args.checkpoint, every=args.every, max_frames=args.max_frames,
            )
            _print(result.video)
            return 0
        from research.inference.predict import predict_cli

        predict_cli(args.run, args.images, face=args.face, out=args.out, checkpoint=args.checkpoint,
                    fallback=not args.no_fallback, wandb_mode=args.wandb, onnx=args.onnx, gradcam=not args.no_gradcam)
        return 0

    run_main(parser, argv, action)


# --- export -------------------------------------------------------------------------------
def export_main(argv: Sequence[str] | None = None) -> None:
    parser = _parser(
        "export",
        "Export a run's model to ONNX (or a torch.export program, .pt2) with its eval preprocessing in the file's metadata "
        "and in model.json beside it (input size, channels, mean/std, class names, resize-and-pad rule, run id, "
        "checkpoint); the batch axis is dynamic. Then checks parity with PyTorch on real images (the run's "
        "validation images, or --check-images DIR): max |difference| of the class probabilities, same winners, "
        "and CPU latency of both at batch 1, printed and written to parity.json; exits 2 if parity fails "
        "(a probability differs by more than 1e-5 or a winner differs). Writes model_card.md too.",
        "examples:\n  poetry run export --run runs/<id>                          # runs/<id>/export/model.onnx\n"
        "  poetry run export --run runs/<id> --check-images ../shared/data/new-images\n"
        "  poetry run export --run runs/<id> --format pt2            # runs/<id>/export/pt2/model.pt2 (torch.export)\n"
        "then: poetry run predict --onnx runs/<id>/export/model.onnx IMAGES",
    )
    parser.add_argument("--run", type=Path, help=RUN_HELP)
    parser.add_argument(
        "--format", default="onnx", choices=("onnx", "pt2"),
        help="onnx (onnxruntime) or pt2 (a torch.export program: torch.export.load(FILE).module()) (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, help="model file (default: <run>/export/model.onnx or <run>/export/pt2/model.pt2)")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"), help="checkpoint to export (default: best)")
    parser.add_argument("--check-images", type=Path, metavar="DIR", help="images for the parity check (default: the run's validation images)")
    parser.add_argument("--repeats", type=_positive_int, default=50, help="latency: timed calls per model, median reported (default: %(default)s)")
    parser.add_argument("--threads", type=_positive_int, default=1, help="latency: CPU threads of both runtimes (default: %(default)s)")

    def action(args: argparse.Namespace, _: list[str]) -> int:
        from research.inference.export import export_run
        from research.report.card import write_model_card

        result = export_run(
            args.run, fmt=args.format, out=args.out, checkpoint=args.checkpoint, images_dir=args.check_images,
            repeats=args.repeats, threads=args.threads,
        )
        write_model_card(result.run_dir, result.card_path, metadata=result.record, parity=result.parity)
        result.check_parity()
        _print(result.model)
        return 0

    run_main(parser, argv, action)


# --- evaluate -------------------------------------------------------------------------------
def evaluate_main(argv: Sequence[str] | None = None) -> None:
    parser = _parser(
        "evaluate",
        "Score a trained run on any labelled image set: a folder of class subfolders, a dataset "
        "root with split folders (--split), or a flat folder whose file names carry labels. Class folders in "
        "Spanish or English map to the same emotions. Writes <run>/evaluations/<name>/ (metrics.json, "
        "classification report, confusion matrices) and logs to W&B.",
        "examples:\n  poetry run evaluate --run runs/<id> data/fer2013 --split test\n"
        "  poetry run evaluate --run runs/<id> ../shared/data/new-images --face haar\n"
        "  poetry run evaluate --run runs/<id> ../shared/data/emociones-dev --split validation --face aligned",
    )
    parser.add_argument("data_dir", type=Path, help="labelled images")
    parser.add_argument("--run", type=Path, help=RUN_HELP)
    parser.add_argument("--split", help="split folder inside DATA_DIR (e.g. test, validation)")
    parser.add_argument(
        "--face", type=_face_mode, default="raw", metavar="{" + ",".join(SINGLE_MODES) + "}",
        help="haar: crop the face first; aligned: align it on its landmarks first (needs the align extra) (default: raw)",
    )
    parser.add_argument(
        "--tta", choices=CHOICES["train.tta"],
        help="test-time augmentation (default: the run's train.tta, the setting its checkpoint was selected with)",
    )
    parser.add_argument("--out", type=Path, help="output folder (default: <run>/evaluations/<name>)")
    parser.add_argument("--name", help="evaluation name (default: derived from DATA_DIR and options)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"), help="checkpoint to score with (default: best)")
    parser.add_argument(
        "--bad-files", choices=CHOICES["data.bad_files"], default="skip",
        help="undecodable files: stop (error) or leave out and report (skip, default)",
    )
    parser.add_argument("--wandb", default=None, choices=WANDB_MODES, help="W&B mode (default: the run's)")

    def action(args: argparse.Namespace, _: list[str]) -> int:
        from research.inference.evaluate import evaluate_cli

        _inference_threads()

        if args.face not in SINGLE_MODES:
            parser.error(f"--face {args.face} is for predict; evaluate takes {', '.join(SINGLE_MODES)}")
        evaluate_cli(args)
        return 0

    run_main(parser, argv, action)


# --- report -------------------------------------------------------------------------------
def report_main(argv: Sequence[str] | None = None) -> None:
    from research.report import DEFAULT_TITLE

    parser = _parser(
        "report",
        "Write the markdown comparison of trained runs (tables, curves, confusion matrices, "
        "classification reports, new-image predictions, evaluations, conclusions computed from the numbers).",
        "examples:\n  poetry run report\n  poetry run report --runs runs/study --out reports/results.md\n"
        "  poetry run report --wandb my-entity/fer-research   # online: read runs from W&B",
    )
    parser.add_argument("--runs", nargs="+", type=Path, default=[Path("runs")], help="run folders or folders of runs (default: runs/)")
    parser.add_argument("--out", type=Path, default=Path("reports/results.md"), help="markdown file (default: %(default)s)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read finished runs from W&B instead (online only)")
    parser.add_argument("--title", default=DEFAULT_TITLE, help="the report's heading")
    parser.add_argument(
        "--no-new-image-figures", action="store_true",
        help="tables only in the new-image section (no prediction sheets: e.g. photos you may not publish)",
    )
    parser.add_argument(
        "--compare-across-datasets", action="store_true",
        help="rank runs of different datasets in one table (default: one comparison per dataset)",
    )

    def action(args: argparse.Namespace, _: list[str]) -> int:
        from research.report import report_cli

        _print(report_cli(
            args.runs, args.out, wandb_path=args.wandb, title=args.title,
            include_new_image_figures=not args.no_new_image_figures,
            compare_across_datasets=args.compare_across_datasets,
        ))
        return 0

    run_main(parser, argv, action)


# --- sweep --------------------------------------------------------------------------------
def sweep_main(argv: Sequence[str] | None = None) -> None:
    parser = _parser(
        "sweep",
        "Run a W&B sweep YAML locally, offline, with W&B's own search engine (grid/random/bayes, hyperband "
        "early termination). Each trial is a normal training run (an offline W&B run to sync later); "
        "<run.dir>/sweeps/<sweep-id>/ (run.dir defaults to runs) gets trials.csv, best.json, sweep.yaml and "
        "engine.json (what the search engine was given and its random state), and the trial run folders under "
        "trials/. Running the same command again with the same --sweep-id continues the sweep exactly: the "
        "same proposals as one longer invocation, interrupted trials resumed with their parameters. Online, use "
        "`wandb sweep` + `wandb agent` instead; `poetry run sync-runs` uploads a local sweep as a W&B sweep.",
        EPILOG_OVERRIDES + "\nexamples:\n  poetry run sweep sweeps/scratch_cnn.yaml --count 4 data.root=demo train.epochs=2\n"
        "  poetry run sweep sweeps/scratch_cnn.yaml --count 8 --sweep-id lr-search data.root=data/dataset_emociones\n"
        "  poetry run sweep sweeps/scratch_cnn.yaml --count 4 --sweep-id lr-search data.root=data/dataset_emociones"
        "   # 4 more trials of the same sweep",
        overrides=True,
    )
    parser.add_argument("sweep_yaml", type=Path, help="a W&B sweep YAML (see sweeps/)")
    parser.add_argument("--count", type=_positive_int, default=8, help="new trials to run (default: %(default)s; the YAML's run_cap caps the total)")
    parser.add_argument("--sweep-id", help="name of <run.dir>/sweeps/<id>; an existing one is continued (default: <yaml stem>-<time>)")
    parser.add_argument(
        "--seed", type=int,
        help="seed of the search engine's proposals (default: fresh each sweep); a continued sweep keeps the state "
        "saved with it, and a --seed other than the one it started with is refused",
    )

    def action(args: argparse.Namespace, overrides: list[str]) -> int:
        from research.sweep import run_local_sweep

        _print(run_local_sweep(args.sweep_yaml, count=args.count, overrides=overrides, sweep_id=args.sweep_id, seed=args.seed).folder)
        return 0

    run_main(parser, argv, action, overrides=True)


def _inference_threads() -> None:
    """Torch threads for predict/evaluate: the cores other processes leave free (a forward pass on more
    threads than free cores waits for the slowest: 109-160 ms instead of 5 ms per image on a busy 2-core CPU)."""
    from research.engine.runtime import set_threads

    choice = set_threads(0)
    log.debug("torch CPU threads: %d (%s)", choice.threads, choice.reason)


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _positive_seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {value}")
    return number


# --- pipeline -----------------------------------------------------------------------------
def pipeline_main(argv: Sequence[str] | None = None) -> None:
    parser = _parser(
        "pipeline",
        "The whole study in one command: train each model, score the new images raw and "
        "Haar-cropped, and write reports/results.md. --data demo runs offline on CPU in minutes with "
        "generated faces (every number is labelled synthetic).",
        EPILOG_OVERRIDES + "\nexamples:\n  poetry run pipeline --data demo\n"
        "  poetry run pipeline --data-dir ../shared/data/emociones-dev --images ../shared/data/new-images --epochs 10",
        overrides=True,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", choices=("demo",), help="built-in synthetic demo data (the default)")
    source.add_argument("--data-dir", type=Path, help="dataset folder with train/ and validation/")
    parser.add_argument("--images", type=Path, help="folder of new photos (default with --data demo: generated ones)")
    parser.add_argument("--models", default="scratch_cnn,resnet18,mobilenet_v3_small", help="comma-separated presets (default: %(default)s)")
    parser.add_argument("--epochs", type=_positive_int, help="epochs per model (default: 4 on demo data, else each preset's)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/study"), help="where the run folders go (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("reports/results.md"), help="the report's markdown file (default: %(default)s)")

    def action(args: argparse.Namespace, overrides: list[str]) -> int:
        from research.pipeline import run_pipeline

        result = run_pipeline(
            data_dir=None if args.data_dir is None else str(args.data_dir), images=args.images,
            models=[m.strip() for m in args.models.split(",") if m.strip()], epochs=args.epochs,
            runs_dir=args.runs_dir, out=args.out, overrides=overrides,
        )
        _print(result.report)
        return 0 if result.ok else 1

    run_main(parser, argv, action, overrides=True)


# --- sync-runs ----------------------------------------------------------------------------
def sync_runs_main(argv: Sequence[str] | None = None) -> None:
    from research.tracking.wandb_offline import DEFAULT_TIMEOUT

    parser = _parser(
        "sync-runs",
        "Upload offline W&B runs: every offline-run-* under the given folders goes up with `wandb sync` (one "
        "call per record, each with a time limit), then what the run kept as plain files (tables, the "
        "interactive confusion matrix, the model artifact, predict's table) goes into the same W&B run, and a "
        "local sweep folder becomes a W&B sweep of its trials. Works after moving runs/ to another machine. "
        "Prints one line per record, upload list and sweep: synced, uploaded, or skipped with the reason; "
        "running it again uploads nothing twice. Exit code 0 when nothing was skipped, 1 when something was, "
        "2 without a login or when the server does not answer. Needs `wandb login` (or WANDB_API_KEY) and the network.",
        "examples:\n  poetry run sync-runs runs/\n  poetry run sync-runs runs/scratch_cnn-20260101-120000 --dry-run\n"
        "  poetry run sync-runs runs/sweeps/lr-search --timeout 600   # a slow connection",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run folders, folders of runs, sweep folders, or offline-run-* folders")
    parser.add_argument("--dry-run", action="store_true", help="show what would be uploaded (wandb sync --dry-run); needs no login")
    parser.add_argument(
        "--timeout", type=_positive_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help="the longest wait for W&B per record (wandb sync) and per upload (default: %(default)g)",
    )

    def action(args: argparse.Namespace, _: list[str]) -> int:
        from research.tracking.wandb_offline import sync_offline_runs

        report = sync_offline_runs(args.paths, dry_run=args.dry_run, timeout=args.timeout)
        for line in report.lines:
            _print(line)
        if report.error is not None:
            raise report.error
        if report.failed:
            log.error("%d of %d skipped (the reasons are above); the rest is on W&B", report.failed, len(report.lines))
            return 1
        return 0

    run_main(parser, argv, action)


# --- prepare-data -------------------------------------------------------------------------
PREPARE_DATA_EPILOG = """\
formats and SRC:
  fer2013    FER2013's CSV (emotion,pixels,Usage) or its folder; Training -> train,
             PublicTest -> validation, PrivateTest -> test; 48x48 PNGs
  ferplus    a folder with fer2013.csv and FERPlus's fer2013new.csv (or --labels); majority
             vote, ties/unknown/NF/contempt dropped and counted
  rafdb      RAF-DB basic (EmoLabel/list_patition_label.txt, Image/aligned/); its test split
             becomes validation/ (RAF-DB has no separate validation split)
  affectnet  SRC/train/<id>/ and SRC/val/<id>/ (ids 0..7 or English class names)
  filenames  JAFFE-style names (KA.AN1.39.tiff) and/or CK+-style class folders (names or ids
             0..7); a seeded stratified validation split is drawn (--val-fraction, --seed)

examples:
  poetry run prepare-data fer2013 ~/datasets/fer2013/fer2013.csv data/fer2013
  poetry run prepare-data ferplus ~/datasets/ferplus data/ferplus          # fer2013.csv + fer2013new.csv
  poetry run prepare-data ferplus ~/datasets/fer2013.csv data/ferplus --labels ~/FERPlus/fer2013new.csv
  poetry run prepare-data rafdb ~/datasets/RAF-DB/basic data/rafdb
  poetry run prepare-data affectnet ~/datasets/affectnet data/affectnet --contempt map:disgust
  poetry run prepare-data filenames ~/datasets/jaffe data/jaffe --val-fraction 0.2 --seed 0
  poetry run prepare-data filenames ~/datasets/CK+48 data/ckplus --bad-rows skip
then train with data.root=DEST
"""


def prepare_data_main(argv: Sequence[str] | None = None) -> None:
    from research.data.importers import FORMATS

    parser = _parser(
        "prepare-data",
        "Import a public facial-expression dataset into the class-folder layout training reads: "
        "DEST/train/<class>/, DEST/validation/<class>/ (and DEST/test/<class>/ where the source has a test split), "
        "canonical English class names, and DEST/manifest.json (counts per split and class, dropped items with "
        "reasons, sha256 of every file). Idempotent: a second run changes nothing and says so.",
        PREPARE_DATA_EPILOG,
    )
    parser.add_argument("format", choices=FORMATS, help="source format (see below)")
    parser.add_argument("src", type=Path, help="the source as downloaded (a file or folder, per format)")
    parser.add_argument("dest", type=Path, help="output folder (new, empty, or an earlier import of the same source)")
    parser.add_argument(
        "--bad-rows", choices=("error", "skip"), default=None,
        help="bad rows, missing or unreadable images: stop with the file and line (default), or leave them out (counted in the manifest)",
    )
    parser.add_argument(
        "--contempt", metavar="{drop,keep,map:CLASS}", default=None,
        help="ferplus/affectnet/filenames: drop contempt (default), keep it as contempt/ (training refuses it), or map it to a class",
    )
    parser.add_argument("--labels", type=Path, help="ferplus: the fer2013new.csv label file (default: SRC/fer2013new.csv)")
    parser.add_argument("--val-fraction", type=float, default=None, help="filenames: share of each class put in validation (default 0.2)")
    parser.add_argument("--seed", type=int, default=None, help="filenames: seed of the validation split (default 0)")
    parser.add_argument("--force", action="store_true", help="replace an import of another source or format in DEST")

    def action(args: argparse.Namespace, _: list[str]) -> int:
        from research.data.importers import import_dataset

        result = import_dataset(
            args.format, args.src, args.dest, bad_rows=args.bad_rows, contempt=args.contempt,
            val_fraction=args.val_fraction, seed=args.seed, labels=args.labels, force=args.force,
        )
        _print(result.dest)
        return 0

    run_main(parser, argv, action)
