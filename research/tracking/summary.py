"""The typed run summary: ``summary.json`` of a run folder and the W&B run summary, one type.

``train()`` fills a :class:`RunSummary` and writes it; the report, the sweep runner and the
W&B reader read it back through :meth:`RunSummary.from_dict` / :meth:`RunSummary.from_wandb`.
Metric dictionaries are keyed like the history: ``"val/acc"``, ``"val/macro_f1"``, ...
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

# The metrics of a checkpoint that a summary carries (the selected one's in ``best``).
# ``val/loss`` is the training criterion (class weights, label smoothing), ``val/nll`` plain cross-entropy.
SUMMARY_METRICS = ("val/loss", "val/nll", "val/acc", "val/top2", "val/macro_f1", "val/weighted_f1", "val/ece")
DEFAULT_MONITOR = "val/macro_f1"
SYNTHETIC_DATASET = "synthetic demo data"

# Run states.
RUNNING, FINISHED, FAILED, INTERRUPTED = "running", "finished", "failed", "interrupted"


@dataclass
class DatasetSummary:
    root: str = "?"
    name: str = "?"
    synthetic: bool = False
    train_images: int | None = None
    val_images: int | None = None
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped_files: list[str] = field(default_factory=list)
    val_split: dict[str, Any] | None = None  # how a validation split was carved (train-only datasets)


@dataclass
class RunSummary:
    """Everything a run's consumers read about it. ``best`` holds the selected checkpoint's metrics."""

    run_id: str
    status: str = RUNNING
    model: str = "?"
    dataset: DatasetSummary = field(default_factory=DatasetSummary)
    pretrained: str = "?"
    mode: str = "?"
    class_names: list[str] = field(default_factory=list)
    params_total: int | None = None
    params_trainable: int | None = None
    seed: int | None = None
    git_commit: str | None = None
    command: str | None = None
    created: str | None = None
    env: dict[str, Any] = field(default_factory=dict)
    image_size: int | None = None
    channels: int | None = None
    epochs_planned: int | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    stopped_early_by: str | None = None  # "sweep" | "early_stopping" | None
    monitor: str = DEFAULT_MONITOR
    best: dict[str, float | None] = field(default_factory=dict)  # the selected checkpoint's val metrics
    final: dict[str, float | None] = field(default_factory=dict)  # the last epoch's val metrics
    train_seconds: float | None = None
    train_images_per_s: float | None = None
    latency_ms_per_image: float | None = None  # median of 20 timed calls
    latency_ms_quartiles: list[float] | None = None  # their first and third quartiles (the timings' spread)
    wall_seconds: float | None = None
    wandb: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # why a failed run failed
    run_dir: str | None = None  # where the folder is (not stored: the folder knows where it is)

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("run_dir")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, run_id: str = "?") -> RunSummary:
        """A summary.json as written by any version of the package: unknown keys are ignored,
        missing ones keep their defaults."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k != "dataset"}
        values.setdefault("run_id", run_id)
        dataset = data.get("dataset") or {}
        dataset_known = {f.name for f in fields(DatasetSummary)}
        summary = cls(**values, dataset=DatasetSummary(**{k: v for k, v in dataset.items() if k in dataset_known}))
        if "status" not in data:
            summary.status = FINISHED if summary.best else "incomplete"
        return summary

    # --- W&B -------------------------------------------------------------------------------
    def to_wandb(self) -> dict[str, Any]:
        """The W&B run summary: the selected checkpoint's metrics under their own keys (``val/acc``,
        so the dashboard's columns equal the report's) and as ``best/val/acc``, plus run facts."""
        out: dict[str, Any] = {
            "best_epoch": self.best_epoch, "epochs_run": self.epochs_run, "params_total": self.params_total,
            "params_trainable": self.params_trainable, "pretrained": self.pretrained, "mode": self.mode,
            "dataset/name": self.dataset.name, "dataset/synthetic": self.dataset.synthetic,
            "dataset/train_images": self.dataset.train_images, "dataset/val_images": self.dataset.val_images,
            "train_seconds": self.train_seconds, "train_images_per_s": self.train_images_per_s,
            "latency_ms_per_image": self.latency_ms_per_image, "status": self.status,
        }
        if self.latency_ms_quartiles:
            out["latency_ms_p25"], out["latency_ms_p75"] = self.latency_ms_quartiles
        for key, value in self.best.items():
            out[key] = value
            out[f"best/{key}"] = value
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_wandb(cls, *, name: str, config: dict[str, Any], summary: dict[str, Any]) -> RunSummary:
        """A summary read back from a W&B run (config keys flat or nested, as the API gives them)."""
        root = str(config_value(config, "data.root", "?"))
        synthetic = bool(summary.get("dataset/synthetic", root == "demo"))
        best = {k: summary.get(f"best/{k}") for k in SUMMARY_METRICS if summary.get(f"best/{k}") is not None}
        pretrained = summary.get("pretrained")
        if not pretrained:
            if config_value(config, "model.pretrained_file"):
                pretrained = f"file:{config_value(config, 'model.pretrained_file')}"
            elif config_value(config, "model.pretrained", False):
                pretrained = "hub (model.pretrained=true; source not recorded in W&B)"
            else:
                pretrained = "none"
        return cls(
            run_id=name,
            status=FINISHED if best.get(DEFAULT_MONITOR) is not None else "no best/val metrics (not a training run?)",
            model=str(config_value(config, "model.name", "?")),
            dataset=DatasetSummary(
                root=root, name=str(summary.get("dataset/name") or (SYNTHETIC_DATASET if synthetic else root)),
                synthetic=synthetic, train_images=summary.get("dataset/train_images"),
                val_images=summary.get("dataset/val_images"),
            ),
            pretrained=str(pretrained), mode=str(config_value(config, "model.mode", "?")),
            params_total=summary.get("params_total"), params_trainable=summary.get("params_trainable"),
            seed=config_value(config, "run.seed"), image_size=config_value(config, "data.image_size"),
            epochs_run=summary.get("epochs_run"), best_epoch=summary.get("best_epoch"),
            monitor=str(config_value(config, "train.monitor", DEFAULT_MONITOR)), best=best,
            train_seconds=summary.get("train_seconds"), train_images_per_s=summary.get("train_images_per_s"),
            latency_ms_per_image=summary.get("latency_ms_per_image"),
            latency_ms_quartiles=[summary["latency_ms_p25"], summary["latency_ms_p75"]]
            if summary.get("latency_ms_p25") is not None and summary.get("latency_ms_p75") is not None else None,
        )


def config_value(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """A config value by dotted key, whether W&B stored the keys flat or nested."""
    if dotted in config:
        value = config[dotted]
    else:
        value = config
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
    if isinstance(value, dict) and set(value) == {"value"}:  # the API may wrap values as {"value": ...}
        value = value["value"]
    return default if value is None else value
