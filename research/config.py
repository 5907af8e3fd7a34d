"""Typed configuration: dataclass schema, YAML presets and dotted command-line overrides.

``load_config("resnet18", ["optim.lr=3e-4", "--train.epochs=5"])`` merges, in order, the
schema defaults, the preset ``research/configs/resnet18.yaml`` (or any YAML file) and the
overrides (``key=value``, ``--key=value`` or ``--key value``: the forms ``wandb agent``
produces). An unknown key or a value of the wrong type is an error naming the key and
the nearest valid ones, raised before any work starts.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import StringNode

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    root: str = "demo"  # dataset folder with train/ and validation/, or "demo" (synthetic)
    image_size: int = 64  # model input side in pixels (images are resized + padded to a square)
    channels: int = 1  # 1 = grayscale input, 3 = RGB (pretrained backbones adapt to 1 as well)
    mean: list[float] | None = None  # None: the backbone's own (ImageNet) or 0.5 for scratch models
    std: list[float] | None = None
    batch_size: int = 64
    num_workers: int = 0  # DataLoader processes; 0 is fastest for cached small images on 2 cores
    cache: bool = True  # decode every image once into memory (shrunk to image_size)
    bad_files: str = "error"  # error | skip: what to do with files that cannot be decoded
    require_all_classes: bool = True
    sampler: str = "shuffle"  # shuffle | balanced (inverse-frequency sampling for imbalanced data)
    demo_scale: float = 1.0  # size multiplier of the synthetic demo set (data.root=demo)


@dataclass
class AugmentConfig:
    preset: str = "light"  # none | light | medium | strong
    # Each magnitude overrides the preset's value when set (sweeps search these keys).
    hflip_p: float | None = None
    rotate_limit: float | None = None
    shift_limit: float | None = None
    scale_limit: float | None = None
    affine_p: float | None = None
    brightness_limit: float | None = None
    contrast_limit: float | None = None
    brightness_contrast_p: float | None = None
    erasing_p: float | None = None
    erasing_max_area: float | None = None
    noise_blur_p: float | None = None


@dataclass
class ModelConfig:
    name: str = "scratch_cnn"  # a registry name (poetry run train --list-models) or timm/<name>
    pretrained: bool = False  # load pretrained weights (hub cache / download, or pretrained_file)
    pretrained_file: str | None = None  # local state_dict for offline machines
    pretrained_fallback: bool = False  # if hub weights cannot be had, train from scratch (logged)
    mode: str = "finetune"  # finetune | frozen (feature extraction: only the new head trains)
    unfreeze_epoch: int = 0  # with mode=frozen: unfreeze the whole backbone from this epoch (0 = never)
    dropout: float = 0.2  # dropout before the classifier


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9  # sgd only
    scheduler: str = "cosine"  # cosine | step | plateau | none
    warmup_epochs: int = 1  # linear warmup before cosine
    min_lr_ratio: float = 0.01  # cosine floor as a fraction of lr
    step_size: int = 10  # step scheduler: epochs between decays
    gamma: float = 0.1  # step/plateau decay factor


@dataclass
class TrainConfig:
    epochs: int = 10
    label_smoothing: float = 0.0
    class_weighting: str = "none"  # none | sqrt | balanced: class weights in the loss (inverse frequency, or its sqrt)
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    amp: bool = True  # mixed precision (CUDA only)
    channels_last: bool = True  # memory format (CUDA only)
    early_stopping_patience: int = 0  # epochs without improvement of monitor; 0 = off
    monitor: str = "val/macro_f1"  # metric that picks best.pt and drives early stopping
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False  # torch deterministic algorithms (slower on CUDA)
    threads: int = 0  # torch CPU threads; 0 = torch default


@dataclass
class RunConfig:
    dir: str = "runs"  # parent folder of run folders
    name: str | None = None  # run id; default <model>-<timestamp>
    seed: int = 42
    resume: str | None = None  # a run folder or its last.pt: continue that run
    new_images: str | None = None  # folder of new photos scored (raw + face crop) at the end


@dataclass
class FacesConfig:
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_size: int = 30  # smallest face side in pixels
    margin: float = 0.15  # extra border around the face, fraction of its side
    fallback: bool = True  # no face found: use the whole image (flagged) instead of skipping it
    pad: float = 0.25  # border added before detection (fraction of the longer side): finds tightly cropped faces
    upscale_to: int = 240  # small images are upscaled to this longer side before detection (0 = never)


@dataclass
class WandbConfig:
    mode: str = "auto"  # auto | online | offline | disabled
    project: str = "fer-research"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_model: bool = True  # upload best.pt as a model artifact
    dir: str | None = None  # where wandb/ run files go; default: the run folder


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    faces: FacesConfig = field(default_factory=FacesConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.bad_files": ("error", "skip"),
    "data.sampler": ("shuffle", "balanced"),
    "augment.preset": ("none", "light", "medium", "strong"),
    "model.mode": ("finetune", "frozen"),
    "optim.name": ("adamw", "sgd"),
    "optim.scheduler": ("cosine", "step", "plateau", "none"),
    "train.class_weighting": ("none", "sqrt", "balanced"),
    "train.monitor": ("val/macro_f1", "val/acc", "val/top2", "val/loss", "val/weighted_f1"),
    "wandb.mode": ("auto", "online", "offline", "disabled"),
}


class ConfigError(ValueError):
    """A bad preset, key or value; raised at start-up with the fix in the message."""


def all_keys(node: Any = None, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the schema, e.g. ``optim.lr``."""
    node = OmegaConf.structured(Config) if node is None else node
    keys = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            keys += all_keys(value, dotted + ".")
        else:
            keys.append(dotted)
    return keys


SYNONYMS = {
    "learning_rate": "lr", "lr0": "lr", "wd": "weight_decay", "num_epochs": "epochs", "n_epochs": "epochs",
    "max_epochs": "epochs", "bs": "batch_size", "batch": "batch_size", "img_size": "image_size", "size": "image_size",
    "arch": "name", "architecture": "name", "backbone": "name", "workers": "num_workers", "patience": "early_stopping_patience",
}


def _nearest(key: str) -> str:
    keys = all_keys()
    section, _, leaf = key.rpartition(".")
    synonym = f"{section}.{SYNONYMS[leaf]}" if leaf in SYNONYMS else None
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
    if synonym in keys:
        close = [synonym, *[k for k in close if k != synonym]][:3]
    section = key.split(".")[0]
    close = close or [k for k in keys if k.startswith(section + ".")][:6]
    return f"did you mean {', '.join(close)}?" if close else f"valid sections: {sorted({k.split('.')[0] for k in keys})}"


def resolve_preset(preset: str | Path) -> Path:
    """A preset name (``resnet18``) or a YAML path."""
    path = Path(preset)
    if path.suffix in {".yaml", ".yml"} and path.exists():
        return path
    candidate = PRESET_DIR / f"{path.stem if path.suffix in {'.yaml', '.yml'} else preset}.yaml"
    if candidate.exists():
        return candidate
    raise ConfigError(f"no config preset or file {preset!r}; presets: {', '.join(list_presets())}")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def parse_overrides(args: Sequence[str]) -> list[str]:
    """Normalise ``key=value``, ``--key=value`` and ``--key value`` into ``key=value``."""
    out: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i].lstrip("-") if items[i].startswith("--") else items[i]
        if "=" in arg:
            out.append(arg)
        elif items[i].startswith("--") and i + 1 < len(items):
            out.append(f"{arg}={items[i + 1]}")
            i += 1
        else:
            raise ConfigError(f"cannot read override {items[i]!r}: use key=value, e.g. optim.lr=3e-4")
        i += 1
    return out


def _override_node(cfg: DictConfig, item: str) -> DictConfig:
    """One ``key=value`` override. String settings keep the text as typed (YAML would turn
    ``run.name=off`` into False and ``data.root=2024`` into an int)."""
    key, _, raw = item.partition("=")
    if key not in all_keys():
        raise ConfigError(f"unknown config key {key!r}; {_nearest(key)}")
    section, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, section)._get_node(leaf) if section else cfg._get_node(leaf)
    if isinstance(node, StringNode) and raw not in ("null", "~"):
        return _merge_checked(cfg, OmegaConf.create(_nest(key, raw)), f"override {item!r}")
    return _merge_checked(cfg, OmegaConf.from_dotlist([item]), f"override {item!r}")


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cursor = out
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return out


def _merge_checked(base: DictConfig, other: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        message = str(getattr(err, "msg", err)).splitlines()[0]
        key = getattr(err, "full_key", None) or ""
        hint = f" ({_nearest(key)})" if "not in struct" in message or "Key '" in message else ""
        raise ConfigError(f"{source}: {key + ': ' if key else ''}{message}{hint}") from None


def load_config(preset: str | Path | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Schema defaults <- preset YAML <- overrides; validated and read-only."""
    cfg = OmegaConf.structured(Config)
    if preset is not None:
        path = resolve_preset(preset)
        try:
            loaded = OmegaConf.load(path)
        except Exception as err:
            raise ConfigError(f"cannot read config file {path}: {err}") from None
        cfg = _merge_checked(cfg, loaded, f"config file {path}")
    for item in parse_overrides(overrides):
        cfg = _override_node(cfg, item)
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def validate(cfg: DictConfig) -> None:
    """Range and choice checks the type system cannot express."""
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")
    checks = {
        "data.image_size": cfg.data.image_size >= 16,
        "data.channels": cfg.data.channels in (1, 3),
        "data.batch_size": cfg.data.batch_size >= 1,
        "data.num_workers": cfg.data.num_workers >= 0,
        "optim.lr": cfg.optim.lr > 0,
        "train.epochs": cfg.train.epochs >= 1,
        "train.label_smoothing": 0 <= cfg.train.label_smoothing < 1,
        "model.dropout": 0 <= cfg.model.dropout < 1,
    }
    for key, ok in checks.items():
        if not ok:
            raise ConfigError(f"{key}={OmegaConf.select(cfg, key)!r} is out of range")
    for name in ("mean", "std"):
        value = cfg.data[name]
        if value is not None and len(value) != cfg.data.channels:
            raise ConfigError(f"data.{name} needs {cfg.data.channels} values (data.channels), got {list(value)}")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """``{"optim.lr": 0.001, ...}``: the keys W&B and sweeps use, equal to the CLI keys."""
    container = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(container, "")
    return flat


def load_saved_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Re-load a run folder's config.yaml through the schema (plus overrides), validated and read-only."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: is this a run folder made by `poetry run train`?")
    return load_config(path, overrides)
