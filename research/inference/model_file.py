"""An exported model and the preprocessing it needs, read back without its run folder.

``poetry run export`` writes ``model.onnx`` (or ``model.pt2``, a ``torch.export`` program) with the run's eval
preprocessing in the model's own metadata (ONNX ``metadata_props``; the ``.pt2`` archive's extra files)
and the same facts in ``model.json`` beside it. :class:`ModelMetadata` is that record;
:class:`OnnxModel` runs an ONNX file through onnxruntime (CPU) behind the interface of a
PyTorch module that :func:`research.inference.loaded.predict_logits` uses (``eval()``, ``model(x)``),
so new images go through the same forward path and the same eval transform, rebuilt from
the metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from research.errors import UserError

FORMAT = "research.fer-model/1"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
RESIZE_RULE = (
    "resize the longest side to image_size px (OpenCV INTER_AREA), pad to image_size x image_size "
    "with black (0), image centred; channels=1: RGB -> gray (ITU-R 601); then (pixel / 255 - mean) / std "
    "per channel, layout (N, channels, image_size, image_size) float32"
)


class ExportedModelError(UserError, ValueError):
    """An exported model file that cannot be read or lacks the metadata this package writes."""


class ExportParityError(UserError, RuntimeError):
    """The exported model does not give the PyTorch model's probabilities."""


@dataclass(frozen=True)
class ModelMetadata:
    """Everything needed to feed an exported model: shapes, normalisation, classes, face crop.

    ``faces`` holds the run's Haar settings (``scale_factor``, ``min_neighbors``, ``min_size``,
    ``margin``, ``pad``, ``upscale_to``, ``fallback``), so ``predict --onnx --face haar`` crops
    like the run did.
    """

    run_id: str
    checkpoint: str  # "best" or "last", with its epoch: "best (epoch 3)"
    model_name: str
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    faces: dict[str, Any] = field(default_factory=dict)
    resize_rule: str = RESIZE_RULE
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    output: str = "logits (N, num_classes); softmax gives the class probabilities"
    format: str = FORMAT

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean/std need {self.channels} values, got {self.mean} / {self.std}")
        if self.image_size < 1 or not self.class_names:
            raise ValueError(f"image_size must be >= 1 and class_names non-empty, got {self.image_size}, {self.class_names}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | Path) -> ModelMetadata:
        """Metadata as :meth:`to_dict` wrote it (values may still be JSON strings, as in ONNX)."""
        if data.get("format") != FORMAT:
            raise ExportedModelError(
                f"{source}: not a model exported by `poetry run export` (metadata format "
                f"{data.get('format')!r}, expected {FORMAT!r})"
            )
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in ("run_id", "image_size", "channels", "mean", "std", "class_names") if n not in data)
        if missing:
            raise ExportedModelError(f"{source}: metadata lacks {', '.join(missing)}")
        values: dict[str, Any] = {}
        for key in names & set(data):
            value = data[key]
            if isinstance(value, str) and key in {"image_size", "channels", "mean", "std", "class_names", "faces"}:
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as err:
                    raise ExportedModelError(f"{source}: metadata {key}={value!r} is not JSON ({err})") from None
            values[key] = value
        try:
            values["mean"], values["std"] = tuple(float(v) for v in values["mean"]), tuple(float(v) for v in values["std"])
            values["image_size"], values["channels"] = int(values["image_size"]), int(values["channels"])
            values["class_names"] = [str(c) for c in values["class_names"]]
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise ExportedModelError(f"{source}: bad metadata ({err})") from None


def read_onnx_metadata(path: str | Path) -> ModelMetadata:
    """The metadata of an exported ``.onnx`` file; a missing, damaged or foreign file is an
    :class:`ExportedModelError` that names it."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportedModelError(f"{path}: no such ONNX file (export one with `poetry run export --run RUN`)")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        if not external:
            onnx.checker.check_model(proto)
    except Exception as err:  # protobuf DecodeError, ValidationError, OSError: all mean "not a usable model"
        first = str(err).splitlines()[0][:160] if str(err) else ""
        raise ExportedModelError(
            f"{path} is damaged or not an ONNX model ({type(err).__name__}: {first}); export it again with "
            "`poetry run export --run RUN`"
        ) from None
    if external:  # weights in other files could be read from anywhere; export writes one file
        raise ExportedModelError(
            f"{path} keeps its weights in external files; `poetry run export` writes one self-contained file: "
            "export it again with `poetry run export --run RUN`"
        )
    meta = ModelMetadata.from_dict({p.key: p.value for p in proto.metadata_props}, source=path)
    check_graph(proto.graph, meta, path)
    return meta


def _dims(value: Any) -> list[int | None]:
    """An ONNX graph input's or output's shape; None for a dynamic (named or unknown) axis."""
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def check_graph(graph: Any, meta: ModelMetadata, path: Path) -> None:
    """The model graph takes what the metadata says (``(N, channels, image_size, image_size)`` under
    ``input_name``) and gives one logit per class name: a file edited after export fails here, before
    any image is scored or anything written."""
    inputs = {v.name: _dims(v) for v in graph.input}
    outputs = {v.name: _dims(v) for v in graph.output}
    expected_in = [None, meta.channels, meta.image_size, meta.image_size]
    problems = []
    if meta.input_name not in inputs:
        problems.append(f"no input named {meta.input_name!r} (inputs: {', '.join(inputs) or 'none'})")
    elif not _fits(inputs[meta.input_name], expected_in):
        problems.append(
            f"input {_shape(inputs[meta.input_name])} but the metadata says {_shape(expected_in)} "
            f"(channels={meta.channels}, image_size={meta.image_size})"
        )
    if meta.output_name not in outputs:
        problems.append(f"no output named {meta.output_name!r} (outputs: {', '.join(outputs) or 'none'})")
    elif not _fits(outputs[meta.output_name], [None, len(meta.class_names)]):
        problems.append(
            f"output {_shape(outputs[meta.output_name])} but the metadata names {len(meta.class_names)} classes"
        )
    if problems:
        raise ExportedModelError(
            f"{path}: the metadata does not match the model graph ({'; '.join(problems)}); the file was changed "
            "after export. Export it again with `poetry run export --run RUN`"
        )


def _fits(dims: list[int | None], expected: list[int | None]) -> bool:
    return len(dims) == len(expected) and all(d is None or e is None or d == e for d, e in zip(dims, expected, strict=True))


def _shape(dims: list[int | None]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in dims) + ")"


class OnnxModel:
    """An ONNX file run by onnxruntime on CPU, called like the PyTorch model:
    ``model(x: (B, C, H, W) float tensor) -> logits (B, num_classes) float tensor``."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.metadata = read_onnx_metadata(self.path)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ExportedModelError(f"{self.path}: onnxruntime cannot load it ({str(err).splitlines()[0][:160]})") from None

    def eval(self) -> OnnxModel:
        return self

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """``(B, C, H, W)`` float32 -> logits ``(B, num_classes)`` float32."""
        return self.session.run([self.metadata.output_name], {self.metadata.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run_numpy(x.detach().cpu().numpy()))


def as_metadata_props(record: Mapping[str, Any]) -> dict[str, str]:
    """A metadata record as ONNX ``metadata_props``: strings, with lists, dicts and numbers as JSON
    (:meth:`ModelMetadata.from_dict` reads them back)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in record.items()}
