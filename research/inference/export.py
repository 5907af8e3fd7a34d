"""``poetry run export``: a run's model as ONNX (or a ``torch.export`` program), self-describing, checked for parity.

The file carries the run's eval preprocessing in its own metadata (:class:`ModelMetadata`;
ONNX ``metadata_props``, the ``.pt2`` archive's extra file ``model.json``) and ``model.json`` beside it
says the same. The batch axis is dynamic. Before the command succeeds, the exported model
scores real images (the run's validation images, or ``--check-images DIR``) through the same
forward path as PyTorch (:func:`research.inference.loaded.predict_logits`); the largest difference of
the class probabilities, the number of images with the same winner and the batch-1 CPU latency
of both are written to ``parity.json``. Parity fails (exit 2) when any probability differs by
more than :data:`PARITY_TOLERANCE` or any winner differs.

Both formats start from ``torch.export``: ONNX through ``torch.onnx.export(dynamo=True)`` (with
``onnxscript``), the PyTorch format as an ``ExportedProgram`` saved with ``torch.export.save``. The
TorchScript-based exporters (``torch.onnx.export(dynamo=False)``, ``torch.jit.trace``) are deprecated
in the torch this package locks, and their warnings are not silenced anywhere.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from research.data.datasets import load_datasets
from research.errors import InputFileError, check_writable
from research.inference.loaded import LoadedRun, load_run, predict_logits, preprocess
from research.inference.model_file import (
    ExportParityError,
    ModelMetadata,
    OnnxModel,
    as_metadata_props,
)
from research.inference.predict import read_new_images
from research.tracking.runs import read_checkpoint, write_json

log = logging.getLogger(__name__)

FORMATS = {"onnx": "model.onnx", "pt2": "pt2/model.pt2"}  # default paths under <run>/export/
PARITY_TOLERANCE = 1e-5  # max abs difference of any class probability
OPSET = 18  # the dynamo-based exporter's own opset
CHECK_LIMIT = 64  # validation images scored for the parity check
LATENCY_REPEATS = 50
WARMUP = 5


@dataclass
class ExportResult:
    model: Path
    metadata: Path  # model.json
    parity: dict[str, Any]
    parity_path: Path
    run_dir: Path  # the exported run
    record: ModelMetadata  # what the file's metadata says

    @property
    def card_path(self) -> Path:
        """Where the model card beside the model goes (written by whoever composes export and report)."""
        return self.model.with_name("model_card.md")

    def check_parity(self) -> None:
        """Raise :class:`ExportParityError` when the exported model does not give PyTorch's probabilities."""
        parity = self.parity
        if not parity["ok"]:
            raise ExportParityError(
                f"parity check failed for {self.model}: max |p_exported - p_torch| = {parity['max_abs_diff']:.2e} "
                f"(tolerance {parity['tolerance']:.0e}), same winner on {parity['same_winners']} of {parity['images']} "
                f"images; see {self.parity_path}"
            )


def model_metadata(loaded: LoadedRun, checkpoint: str, epoch: int | None) -> ModelMetadata:
    """The exported model's metadata: the run's eval preprocessing, classes and face-crop settings."""
    assert loaded.cfg is not None
    return ModelMetadata(
        run_id=loaded.run_id, checkpoint=checkpoint if epoch is None else f"{checkpoint} (epoch {epoch})",
        model_name=str(loaded.cfg.model.name), image_size=int(loaded.cfg.data.image_size),
        channels=int(loaded.cfg.data.channels), mean=tuple(loaded.mean), std=tuple(loaded.std),
        class_names=list(loaded.class_names), faces=dict(loaded.faces or {}),
    )


def check_images(loaded: LoadedRun, folder: Path | None, limit: int = CHECK_LIMIT) -> tuple[list[np.ndarray], str]:
    """HxWx3 uint8 images for the parity check and where they came from: every readable image of
    ``folder``, else up to ``limit`` of the run's validation images spread over the set."""
    if folder is not None:
        images, _ = read_new_images(folder)
        return [i.image for i in images], str(folder)
    cfg = loaded.cfg
    assert cfg is not None
    if loaded.shipped is not None:  # its training images are not part of the package: generated faces instead
        from research.data.demo import make_demo_split

        images, _ = make_demo_split("validation", size=max(64, int(cfg.data.image_size)), seed=0, scale=0.2)
        picks = np.unique(np.linspace(0, len(images) - 1, min(limit, len(images))).round().astype(int))
        return [images[int(i)] for i in picks], f"{len(picks)} generated demo faces (synthetic; the shipped model's data is not in the package)"
    try:
        bundle = load_datasets(
            cfg.data.root, bad_files="skip", cache=False, require_all_classes=False, workers=2,
            demo_scale=cfg.data.demo_scale, seed=cfg.run.seed,
        )
    except (FileNotFoundError, ValueError) as err:
        raise InputFileError(
            f"the run's validation images cannot be read ({err}); give a folder of images with --check-images DIR"
        ) from None
    picks = np.unique(np.linspace(0, len(bundle.val) - 1, min(limit, len(bundle.val))).round().astype(int))
    return [bundle.val.load(int(i)) for i in picks], f"{len(picks)} validation images of {cfg.data.root}"


def export_run(
    run: str | Path | None,
    *,
    fmt: str = "onnx",
    out: str | Path | None = None,
    checkpoint: str = "best",
    images_dir: str | Path | None = None,
    repeats: int = LATENCY_REPEATS,
    threads: int = 1,
    tolerance: float = PARITY_TOLERANCE,
) -> ExportResult:
    """Export ``run``'s checkpoint to ``out`` (default ``<run>/export/model.onnx``, or
    ``<run>/export/pt2/model.pt2``), write ``model.json`` and ``parity.json`` beside it. Latency is
    measured with ``threads`` CPU threads for both runtimes.

    Everything is checked before a file is written: the run and its checkpoint, the format, the
    parity images. A failed parity check is in the result (:meth:`ExportResult.check_parity` raises it).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if repeats < 1 or threads < 1:
        raise ValueError(f"latency repeats and threads must be >= 1, got {repeats} and {threads}")
    loaded = load_run(run, which=checkpoint, device="cpu")
    assert loaded.run is not None and loaded.outputs is not None
    log.info("exporting %s", loaded.description)
    epoch = _checkpoint_epoch(loaded.run.path / f"{checkpoint}.pt")
    images, source = check_images(loaded, None if images_dir is None else Path(images_dir))
    meta = model_metadata(loaded, checkpoint, epoch)
    out_path = Path(out) if out else loaded.outputs / "export" / FORMATS[fmt]
    check_writable(out_path.parent)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    record = {**meta.to_dict(), "file": out_path.name, "export_format": fmt, "torch": torch.__version__}
    inputs = preprocess(loaded, images)
    loaded.model.eval()
    if fmt == "onnx":
        record["opset"] = OPSET
        _export_onnx(loaded.model, inputs, out_path, record)
        exported: Callable[[torch.Tensor], torch.Tensor] = OnnxModel(out_path, threads=threads)
        runtime = f"onnxruntime {_ort_version()} (CPU)"
    else:
        exported = _save_program(loaded.model, inputs, out_path, record)
        runtime = f"torch.export program, torch {torch.__version__} (CPU)"
    metadata_path = out_path.with_name("model.json")
    write_json(metadata_path, record)
    parity = measure_parity(
        loaded.model, exported, inputs, class_names=loaded.class_names, repeats=repeats, threads=threads, tolerance=tolerance
    )
    parity.update(images_from=source, runtime=runtime, format=fmt, model=str(out_path), run_id=loaded.run_id, checkpoint=meta.checkpoint)
    parity_path = out_path.with_name("parity.json")
    write_json(parity_path, parity)
    log.info("%s", parity_text(parity))
    return ExportResult(out_path, metadata_path, parity, parity_path, loaded.run.path, meta)


def _checkpoint_epoch(path: Path) -> int | None:
    epoch = read_checkpoint(path).get("epoch")
    return int(epoch) if epoch is not None else None


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _example(inputs: torch.Tensor) -> tuple[tuple[torch.Tensor], dict[str, Any]]:
    """The example input of ``torch.export`` and its dynamic batch axis (named ``batch``). The example holds
    two images: from one, ``torch.export`` would fix the batch size at 1."""
    example = inputs[:2] if len(inputs) > 1 else inputs[:1].repeat(2, 1, 1, 1)
    return (example,), {"x": {0: torch.export.Dim("batch", min=1)}}  # "x": the argument of FERClassifier.forward


def _export_onnx(model: torch.nn.Module, inputs: torch.Tensor, path: Path, record: dict[str, Any]) -> None:
    """The eval-mode model as one self-contained ONNX file (weights inside) through ``torch.export``, with the
    metadata in ``metadata_props``."""
    import onnx

    tmp = path.with_name(path.name + ".tmp")
    example, dynamic = _example(inputs)
    torch.onnx.export(
        model, example, str(tmp), dynamo=True, dynamic_shapes=dynamic, input_names=[record["input_name"]],
        output_names=[record["output_name"]], opset_version=OPSET, external_data=False, verbose=False,
    )
    proto = onnx.load(str(tmp))
    onnx.helper.set_model_props(proto, as_metadata_props(record))
    proto.doc_string = f"Facial-expression classifier {record['model_name']} of run {record['run_id']}; preprocessing: {record['resize_rule']}"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(path)


class ProgramModel:
    """A saved ``torch.export`` program called like the PyTorch model (``eval()``, ``model(x)``): an exported
    program has no train/eval switch, it was traced in eval mode."""

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        self.module = program.module()

    def eval(self) -> ProgramModel:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def _save_program(model: torch.nn.Module, inputs: torch.Tensor, path: Path, record: dict[str, Any]) -> ProgramModel:
    """The eval-mode model as a ``torch.export`` program, saved with ``torch.export.save`` and the metadata as
    the archive's extra file ``model.json``; returns the program read back from the file."""
    tmp = path.with_name(path.name + ".tmp")
    example, dynamic = _example(inputs)
    with torch.no_grad():
        program = torch.export.export(model, example, dynamic_shapes=dynamic)
    torch.export.save(program, str(tmp), extra_files={"model.json": json.dumps(record)})
    tmp.replace(path)
    return ProgramModel(torch.export.load(str(path)))


def _median_ms(call: Callable[[], Any], repeats: int) -> float:
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure_parity(
    reference: torch.nn.Module,
    exported: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    *,
    class_names: Sequence[str],
    repeats: int = LATENCY_REPEATS,
    threads: int = 1,
    tolerance: float = PARITY_TOLERANCE,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Probabilities of both models on ``inputs`` ``(N, C, H, W)`` (batches of ``batch_size``, so the
    dynamic batch axis is used) and their batch-1 CPU latency (median of ``repeats`` after
    :data:`WARMUP` calls, milliseconds). PyTorch is timed with ``threads`` threads; give the exported
    model the same (``OnnxModel(threads=...)``): on a busy machine more threads than free cores
    make PyTorch's batch-1 latency swing by 20x."""
    cpu = torch.device("cpu")

    def batches():
        return (inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size))

    p_ref = torch.softmax(predict_logits(reference, batches(), device=cpu), 1).numpy()
    p_exp = torch.softmax(predict_logits(exported, batches(), device=cpu), 1).numpy()  # type: ignore[arg-type]
    diff = np.abs(p_ref - p_exp)
    same = p_ref.argmax(1) == p_exp.argmax(1)
    one = inputs[:1]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            torch_ms = _median_ms(lambda: reference(one), repeats)
            exported_ms = _median_ms(lambda: exported(one), repeats)
    finally:
        torch.set_num_threads(before)
    max_abs = float(diff.max()) if diff.size else 0.0
    return {
        "ok": bool(max_abs <= tolerance and same.all()),
        "images": len(inputs), "max_abs_diff": max_abs, "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "tolerance": tolerance, "same_winners": int(same.sum()),
        "different_winners": [
            {"index": int(i), "torch": class_names[int(p_ref[i].argmax())], "exported": class_names[int(p_exp[i].argmax())]}
            for i in np.flatnonzero(~same)
        ],
        "latency_ms": {"torch": torch_ms, "exported": exported_ms, "batch": 1, "repeats": repeats, "statistic": "median",
                       "threads": threads},
    }


def parity_text(parity: dict[str, Any]) -> str:
    lat = parity["latency_ms"]
    return (
        f"parity {'OK' if parity['ok'] else 'FAILED'} on {parity['images']} images: max |dp| {parity['max_abs_diff']:.2e} "
        f"(tolerance {parity['tolerance']:.0e}), same winner {parity['same_winners']}/{parity['images']}; "
        f"CPU latency, batch 1, median of {lat['repeats']} ({lat['threads']} thread(s)): PyTorch {lat['torch']:.2f} ms, "
        f"{parity.get('runtime', 'exported')} {lat['exported']:.2f} ms"
    )
