"""Model cards: one markdown page per run saying what the model is, what it was trained on,
how well it does (with its spread), where it fails and what it must not be used for.

``poetry run report`` writes ``<report dir>/model_cards/<run_id>.md`` for every reported run
(linked from the report's per-model section); ``poetry run export`` writes ``model_card.md``
beside the exported model, with the export's parity numbers. Every number is read from the
run folder (summary.json, per_class.json, confusion_counts.json, config.yaml, the checkpoint's
normalisation); spread over seeds comes from :mod:`research.report.statistics`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from research.inference.model_file import RESIZE_RULE, ModelMetadata
from research.report.collect import RunRecord, load_run_record
from research.report.statistics import CI_METRICS, RunGroup, group_runs
from research.tracking.runs import RunFolderError, UnsafeCheckpointError, read_checkpoint

log = logging.getLogger(__name__)

CARD_METRICS = {
    "acc": "accuracy", "top2": "top-2 accuracy", "macro_f1": "macro-F1", "weighted_f1": "weighted F1",
    "loss": "loss (the training criterion: cross-entropy with the run's label smoothing and class weights)",
    "nll": "NLL (plain cross-entropy)", "ece": "ECE (expected calibration error, 15 bins)",
}
WEAKEST_CLASSES = 3
CONFUSED_PAIRS = 3
FACE_KEYS = ("scale_factor", "min_neighbors", "min_size", "margin", "pad", "upscale_to", "fallback")
INTENDED_USE = [
    "Research and education: comparing CNNs for facial-expression recognition, teaching the "
    "train / evaluate / report cycle.",
    "**Not for decisions about people** (hiring, grading, policing, health, security, credit, "
    "monitoring of employees or students). A facial expression is not an emotion: the model maps a "
    "face to one of 7 posed-expression labels and knows nothing about what a person feels.",
    "Scores are for frontal, well-lit, single faces similar to the training images; the Haar face "
    "detector misses profile, small, occluded and rotated faces, and accuracy on other ages, skin "
    "tones, cultures, cameras and spontaneous expressions has not been measured.",
]


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def _normalisation(record: RunRecord) -> tuple[list[float] | None, list[float] | None, str]:
    """mean/std of the run's eval transform: from config.yaml, else from the checkpoint."""
    config = record.config or {}
    if config.get("data.mean") is not None and config.get("data.std") is not None:
        return list(config["data.mean"]), list(config["data.std"]), "config data.mean/std"
    if record.path is not None:
        try:
            ckpt = read_checkpoint(record.path / "best.pt")
            return list(ckpt["mean"]), list(ckpt["std"]), "the model's own, stored in best.pt"
        except UnsafeCheckpointError:  # a crafted file is an error to act on, not a gap in the card
            raise
        except (RunFolderError, KeyError) as err:
            log.warning("%s: normalisation not read from best.pt (%s)", record.run_id, err)
    return None, None, "not recorded"


def _metrics(record: RunRecord, group: RunGroup | None) -> list[str]:
    repeated = group is not None and group.n > 1
    if repeated:
        assert group is not None
        seeds = ", ".join(str(r.seed) for r in group.runs)
        lines = [
            f"Validation metrics of the selected checkpoint (monitor `{record.monitor}`), over **{group.n} seeds** "
            f"({seeds}) of the same configuration: mean ± sample std (ddof 1); 95% CI: percentile bootstrap over "
            "the validation images (from the report's statistics). This run's own value is in the last column.",
            "",
            "| metric | mean ± std | 95% CI | this run |",
            "|---|---|---|---|",
        ]
        for key, name in CARD_METRICS.items():
            mean, std = group.mean(key), group.std(key)
            ci = group.ci(key) if key in CI_METRICS else None
            spread = "n/a" if mean is None else (f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}")
            interval = "n/a" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
            lines.append(f"| {name} | {spread} | {interval} | {_f(record.score(key))} |")
        return lines + [""]
    lines = [
        f"Validation metrics of the selected checkpoint (monitor `{record.monitor}`, epoch "
        f"{record.best_epoch if record.best_epoch is not None else '?'}). **One seed** "
        f"(seed {record.seed if record.seed is not None else '?'}): a single run, no spread over seeds; "
        "train several with `poetry run train --seeds 3` for mean ± std.",
        "",
        "| metric | value | 95% CI |",
        "|---|---|---|",
    ]
    for key, name in CARD_METRICS.items():
        ci = group.ci(key) if group is not None and key in CI_METRICS else None
        interval = "n/a" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}] (bootstrap over images)"
        lines.append(f"| {name} | {_f(record.score(key))} | {interval} |")
    return lines + [""]


def _data(record: RunRecord) -> list[str]:
    d = record.dataset
    kind = "SYNTHETIC: generated drawn faces" if d.synthetic else "real images"
    lines = [
        f"- dataset: **{d.name}** ({kind}), root `{d.root}`",
        f"- images: {d.train_images if d.train_images is not None else '?'} train / "
        f"{d.val_images if d.val_images is not None else '?'} validation",
    ]
    counts = d.class_counts or {}
    splits = [s for s in ("train", "validation", "val", "test") if s in counts]
    classes = list(record.class_names) or sorted({c for s in splits for c in counts[s]})
    if splits and classes:
        lines += ["", "| class | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
        for cls in classes:
            lines.append(f"| {cls} | " + " | ".join(str(counts[s].get(cls, 0)) for s in splits) + " |")
    if d.skipped_files:
        lines += ["", f"- {len(d.skipped_files)} unreadable file(s) left out of training"]
    return lines + [""]


def _preprocessing(record: RunRecord, metadata: ModelMetadata | None) -> list[str]:
    config = record.config or {}
    if metadata is not None:
        size, channels, mean, std, source = metadata.image_size, metadata.channels, list(metadata.mean), list(metadata.std), "export metadata"
        faces = dict(metadata.faces)
    else:
        size, channels = record.image_size or config.get("data.image_size"), record.channels or config.get("data.channels")
        mean, std, source = _normalisation(record)
        faces = {k: config[f"faces.{k}"] for k in FACE_KEYS if f"faces.{k}" in config}
    rule = RESIZE_RULE.replace("image_size", str(size) if size else "image_size")
    face_text = ", ".join(f"{k}={v}" for k, v in faces.items()) or "defaults"
    trained_on = config.get("data.face_crop", "none") or "none"
    if trained_on == "none":
        training = "none during training (the dataset's images as they are)"
    else:
        training = (f"`{trained_on}` during training (`data.face_crop`: every image cropped once when decoded, "
                    f"images without a face kept whole); score new photos with `--face {trained_on}` to match")
    return [
        f"- input: {size}x{size} px, {channels} channel(s) ({'grayscale' if channels == 1 else 'RGB'})",
        f"- normalisation: mean {_floats(mean)}, std {_floats(std)} ({source})",
        f"- resize and pad: {rule}",
        f"- face crop: {training}; for new photos "
        "`predict --face haar` crops the largest Haar-cascade face (square, with a margin) before the "
        f"transform above ({face_text}), `--face aligned` levels the eyes with dlib's 5 landmarks "
        "(the `align` extra), `--face raw` scores the whole photo",
        "",
    ]


def _training(record: RunRecord) -> list[str]:
    """The recipe as the run's config records it; keys older runs lack are left out."""
    c = record.config or {}
    if not c:
        return ["The run folder holds no config.yaml: the recipe is not recorded.", ""]
    lines = []
    if "optim.name" in c:
        schedule = f"{c.get('optim.scheduler', '?')} schedule"
        mult = c.get("optim.backbone_lr_mult", 1.0)
        decay = c.get("optim.layer_decay", 1.0)
        pretrained = not str(record.pretrained).startswith(("none", "?"))
        rates = f", backbone at {mult:g}x" if mult not in (None, 1.0) and pretrained else ""
        rates += f", layer-wise decay {decay:g} per layer group" if decay not in (None, 1.0) and pretrained else ""
        lines.append(f"- optimiser: {c['optim.name']}, lr {c.get('optim.lr', '?'):g}{rates}, weight decay "
                     f"{c.get('optim.weight_decay', '?')}, {schedule}, {c.get('train.epochs', '?')} epochs planned, "
                     f"batch {c.get('data.batch_size', '?')}")
    if "train.label_smoothing" in c:
        lines.append(f"- training criterion (`loss`): cross-entropy, label smoothing {c['train.label_smoothing']}, class weighting "
                     f"`{c.get('train.class_weighting', 'none')}`")
    if "augment.preset" in c:
        mixing = [f"{name} alpha {c[key]:g}" for name, key in (("mixup", "train.mixup_alpha"), ("CutMix", "train.cutmix_alpha"))
                  if c.get(key)]
        lines.append(f"- augmentation: `{c['augment.preset']}` preset (`research/data/augment.py`)"
                     + (f", batches mixed: {' or '.join(mixing)}" if mixing else ""))
    if c.get("model.drop_path"):
        lines.append(f"- stochastic depth: residual blocks dropped with rate up to {c['model.drop_path']:g} in training "
                     "(`model.drop_path`)")
    ema = c.get("train.ema_decay") or 0
    lines.append("- weights: " + (f"an exponential moving average of the training weights (decay {ema:g}), "
                                   "validated and saved as best.pt" if ema else "the training weights of the best epoch"))
    tta = c.get("train.tta") or "none"
    lines.append("- validation scores: " + ("mean of the image's and its mirror's probabilities (`train.tta=hflip`; "
                                             "`predict`/`evaluate --tta hflip` give the same)" if tta == "hflip" else "one view per image"))
    return lines + [""]


def _floats(values: Sequence[float] | None) -> str:
    return "not recorded" if values is None else "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


def _calibration(record: RunRecord) -> list[str]:
    ece, acc = record.score("ece"), record.score("acc")
    if ece is None:
        return ["ECE not recorded for this run.", ""]
    verdict = "well calibrated" if ece < 0.05 else "moderately calibrated" if ece < 0.15 else "poorly calibrated"
    return [
        f"ECE {ece:.3f} on the validation set (15 equal-width confidence bins; the average gap between the "
        f"top-1 confidence and the accuracy at that confidence): {verdict}. Accuracy {_f(acc)}. Treat the "
        "scores as rankings, not as probabilities, unless the ECE is small.",
        "",
    ]


def _weaknesses(record: RunRecord) -> list[str]:
    lines: list[str] = []
    classes = {k: v for k, v in (record.per_class or {}).items() if v.get("support", 0) > 0}
    if classes:
        weakest = sorted(classes.items(), key=lambda kv: (kv[1]["f1"], kv[0]))[:WEAKEST_CLASSES]
        lines += [
            "Weakest classes by validation F1 (support = validation images of the class):", "",
            "| class | F1 | precision | recall | support |", "|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {m['f1']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | {int(m['support'])} |"
            for name, m in weakest
        ]
        lines.append("")
    else:
        lines += ["Per-class metrics not recorded (per_class.json missing).", ""]
    if record.confusion:
        names, counts = record.confusion["class_names"], record.confusion["counts"]
        pairs = sorted(
            ((counts[i][j], i, j) for i in range(len(names)) for j in range(len(names)) if i != j and counts[i][j] > 0),
            key=lambda p: (-p[0], p[1], p[2]),
        )[:CONFUSED_PAIRS]
        if pairs:
            lines += ["Most confused pairs (from confusion_counts.json, validation):", ""]
            for count, i, j in pairs:
                support = sum(counts[i])
                lines.append(f"- true **{names[i]}** predicted as **{names[j]}**: {count} of {support} ({100 * count / support:.1f}%)")
        else:
            lines.append("No validation image was confused with another class.")
        lines.append("")
    else:
        lines += ["Confusion counts not recorded (confusion_counts.json missing).", ""]
    return lines


def _export(parity: Mapping[str, Any]) -> list[str]:
    lat = parity["latency_ms"]
    return [
        "## Export",
        "",
        f"- file: `{Path(parity['model']).name}` ({parity['format']}, {parity.get('runtime', '?')}), checkpoint {parity.get('checkpoint', '?')}",
        f"- parity with PyTorch on {parity['images']} images ({parity.get('images_from', '?')}): max |Δp| "
        f"{parity['max_abs_diff']:.2e} (tolerance {parity['tolerance']:.0e}), same winner on {parity['same_winners']} "
        f"of {parity['images']}: **{'passed' if parity['ok'] else 'FAILED'}**",
        f"- CPU latency, batch 1, median of {lat['repeats']} ({lat['threads']} thread(s)): PyTorch {lat['torch']:.2f} ms, "
        f"exported {lat['exported']:.2f} ms",
        "",
    ]


# Front matter: the Hugging Face model-card metadata (https://huggingface.co/docs/hub/model-cards), so a card
# published with the weights is indexed with its task, data and validation numbers.
CARD_LICENSE = "mit"  # the repository's license (pyproject.toml); the training images keep their own terms
FRONT_MATTER_METRICS = {"acc": ("accuracy", "accuracy"), "macro_f1": ("f1", "macro-F1"), "top2": ("top_k_accuracy", "top-2 accuracy")}


def front_matter(record: RunRecord) -> str:
    """The card's YAML front matter, written by ``huggingface_hub.ModelCardData``: license, tags, datasets, metrics
    and a ``model-index`` with this run's validation numbers (those of the selected checkpoint)."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset = record.dataset.name or "unknown"
    results = [
        EvalResult(
            task_type="image-classification", task_name="facial expression recognition (7 classes)",
            dataset_type=dataset, dataset_name=dataset, dataset_split="validation",
            metric_type=metric, metric_name=name, metric_value=float(value),
        )
        for key, (metric, name) in FRONT_MATTER_METRICS.items() if (value := record.score(key)) is not None
    ]
    tags = ["image-classification", "facial-expression-recognition", "pytorch", record.model.split("/")[0]]
    if record.dataset.synthetic:
        tags.append("synthetic-data")
    data = ModelCardData(
        license=CARD_LICENSE, library_name="pytorch", pipeline_tag="image-classification", tags=tags,
        datasets=[dataset], metrics=[metric for metric, _ in FRONT_MATTER_METRICS.values()], model_name=record.run_id,
        eval_results=results or None,
    )
    return f"---\n{data.to_yaml()}\n---\n\n"


def model_card(
    record: RunRecord,
    *,
    group: RunGroup | None = None,
    metadata: ModelMetadata | None = None,
    parity: Mapping[str, Any] | None = None,
) -> str:
    """The card's markdown. ``group``: the runs of the same configuration (spread over seeds)."""
    synthetic = record.dataset.synthetic
    lines = [front_matter(record) + f"# Model card: {record.run_id}", ""]
    if synthetic:
        lines += [
            "> **SYNTHETIC demo data.** This model was trained and validated on generated drawn faces; its "
            "numbers say nothing about real faces. Do not use it on photos of people except to try the tools.",
            "",
        ]
    lines += [
        "## Model", "",
        f"- architecture: `{record.model}`, pretrained: {record.pretrained}, mode: {record.mode}, "
        f"parameters: {record.params_total if record.params_total is not None else '?'}",
        f"- checkpoint: best of {record.epochs_run if record.epochs_run is not None else '?'} epoch(s) "
        f"(epoch {record.best_epoch if record.best_epoch is not None else '?'}, monitor `{record.monitor}`)",
        f"- classes ({len(record.class_names)}): {', '.join(record.class_names) or 'not recorded'}",
        f"- git commit: {record.git_commit or 'not recorded'}; created {record.created or '?'}",
        "",
        "## Data", "",
    ]
    lines += _data(record)
    lines += ["## Preprocessing", ""] + _preprocessing(record, metadata)
    lines += ["## Training", ""] + _training(record)
    lines += ["## Metrics", ""] + _metrics(record, group)
    lines += ["## Calibration", ""] + _calibration(record)
    lines += ["## Known weaknesses", ""] + _weaknesses(record)
    lines += ["## Intended use and limits", ""] + [f"- {item}" for item in INTENDED_USE]
    if synthetic:
        lines.append("- Trained on SYNTHETIC data: a demonstration of the pipeline, not a model of human expressions.")
    lines.append("")
    if parity is not None:
        lines += _export(parity)
    return "\n".join(lines).rstrip() + "\n"


def write_model_card(
    run_path: str | Path,
    out: str | Path,
    *,
    metadata: ModelMetadata | None = None,
    parity: Mapping[str, Any] | None = None,
) -> Path:
    """The card of one run folder (one seed: a group of its own) written to ``out``."""
    record = load_run_record(Path(run_path))
    group = group_runs([record])[0] if record.finished else None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(model_card(record, group=group, metadata=metadata, parity=parity))
    return out


def write_model_cards(runs: Sequence[RunRecord], folder: Path) -> dict[str, Path]:
    """Cards of the reported runs, ``folder/<key>.md`` (the key is the run id made file-safe);
    repeated runs of one configuration show the group's spread. Returns ``{key: path}``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for group in group_runs(runs):
        for record in group.runs:
            key = record.key or record.run_id
            path = folder / f"{key}.md"
            path.write_text(model_card(record, group=group))
            out[key] = path
    return out
