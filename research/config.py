"""Typed configuration: dataclass schema, YAML presets and dotted command-line overrides.

``load_config("resnet18", ["optim.lr=3e-4", "--train.epochs=5"])`` merges, in order, the
schema defaults, the preset ``research/configs/resnet18.yaml`` (or any YAML file) and the
overrides (``key=value``, ``--key=value`` or ``--key value``: the forms ``wandb agent``
produces). An unknown key or a value of the wrong type is an error naming the key and
the nearest valid ones, raised before any work starts.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from omegaconf.nodes import StringNode

from research.data.augment import AUGMENT_PRESETS, AugmentError, augment_fields, resolve_augment
from research.data.cache import CACHE_ALIASES, CACHE_MODES, normalize_cache_mode
from research.data.classes import CANONICAL_CLASSES
from research.errors import UserError, check_writable
from research.faces.settings import FACE_CROP_CHOICES
from research.faces.settings import RANGES as FACE_RANGES

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    root: str = "demo"  # dataset folder with train/ and validation/, or "demo" (synthetic)
    image_size: int = 64  # model input side in pixels (images are resized + padded to a square)
    channels: int = 1  # 1 = grayscale input, 3 = RGB (pretrained backbones adapt to 1 as well)
    mean: list[float] | None = None  # None: the backbone's own (ImageNet) or 0.5 for scratch models
    std: list[float] | None = None
    batch_size: int = 64
    # DataLoader processes: auto = 0 on CPU (the fastest on 2 cores: augmentation and training share
    # them) and min(4, CPUs) on CUDA (so per-image augmentation does not starve the GPU); or a number.
    num_workers: Any = "auto"
    cache: str = "auto"  # auto | memory | mmap | stream (true/false = memory/stream): where decoded images stay
    cache_budget_mb: int = 0  # memory the image cache may use (auto picks mmap/stream above it); 0 = 1/4 of RAM
    cache_dir: str | None = None  # folder for the data.cache=mmap file (removed at exit); None = system temp dir
    val_fraction: float = 0.0  # > 0: carve a stratified validation split from train/ (datasets with no validation/)
    val_split_seed: int = 0  # seed of that split: the same images for every run, seed and sweep trial
    bad_files: str = "error"  # error | skip: what to do with files that cannot be decoded
    require_all_classes: bool = True
    sampler: str = "shuffle"  # shuffle | balanced (inverse-frequency sampling for imbalanced data)
    demo_scale: float = 1.0  # size multiplier of the synthetic demo set (data.root=demo)
    face_crop: str = "none"  # none | haar | aligned: crop faces once when images are decoded (no face: whole image)


# One schema for augmentation: ``augment.preset`` plus one optional key per magnitude of
# :class:`research.data.augment.AugmentParams` (documented there); a set magnitude overrides
# the preset's value, and sweeps search these keys.
AugmentConfig = make_dataclass(
    "AugmentConfig",
    [("preset", str, field(default="light"))]
    + [(name, Optional[float], field(default=None)) for name in augment_fields()],  # noqa: UP045 (OmegaConf needs Optional)
)


@dataclass
class ModelConfig:
    name: str = "scratch_cnn"  # a registry name (poetry run train --list-models) or timm/<name>
    pretrained: bool = False  # load pretrained weights (hub cache / download, or pretrained_file)
    pretrained_file: str | None = None  # local state_dict for offline machines
    init_from: str | None = None  # a run folder (its best.pt) or checkpoint of the same model: start from its weights, head included
    pretrained_fallback: bool = False  # if hub weights cannot be had, train from scratch (logged)
    mode: str = "finetune"  # finetune | frozen (feature extraction: only the new head trains)
    unfreeze_epoch: int = 0  # with mode=frozen: unfreeze the whole backbone from this epoch (0 = never)
    dropout: float = 0.2  # dropout before the classifier
    drop_path: float = 0.0  # stochastic depth (timm/<name> models' drop_path_rate): residual blocks skipped at random in training; 0 = off


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
    backbone_lr_mult: float = 1.0  # discriminative learning rates: the backbone trains at lr x this, the new head at lr
    layer_decay: float = 1.0  # layer-wise lr decay: each backbone layer group trains at this x the rate of the one above it; 1 = off


@dataclass
class TrainConfig:
    epochs: int = 10
    label_smoothing: float = 0.0
    class_weighting: str = "none"  # none | sqrt | balanced: class weights in the loss (inverse frequency, or its sqrt)
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    amp: bool = True  # mixed precision: float16/bfloat16 on CUDA, bfloat16 on CPUs whose oneDNN supports it
    channels_last: bool = True  # channels-last memory format (CPU and CUDA)
    early_stopping_patience: int = 0  # epochs without improvement of monitor; 0 = off
    monitor: str = "val/macro_f1"  # metric that picks best.pt and drives early stopping
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False  # torch deterministic algorithms (slower on CUDA)
    threads: int = 0  # torch CPU threads; 0 = auto: the cores other processes leave free (logged), at least 1
    tta: str = "none"  # none | hflip: validation and final evaluation score the mean of image and mirror probabilities
    ema_decay: float = 0.0  # > 0: validate, select and save an exponential moving average of the weights (e.g. 0.999); 0 = off
    mixup_alpha: float = 0.0  # > 0: mixup training batches, blend weight ~ Beta(alpha, alpha) (0.2-0.4 usual); 0 = off
    cutmix_alpha: float = 0.0  # > 0: CutMix training batches (1.0 usual); with mixup too, each batch picks one; 0 = off


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
    align_eye_distance: float = 0.32  # aligned crop: eye centres' distance, fraction of the crop side (smaller = more margin)
    align_eye_y: float = 0.4  # aligned crop: eyes' height below the top, fraction of the crop side
    align_upsample: int = 0  # aligned crop: dlib detector upsampling passes (1 finds ~40 px faces at ~4x the time)


# The W&B project of every run, sweep (the `project:` of sweeps/*.yaml, checked by tests/test_sweep.py) and report.
DEFAULT_PROJECT = "fer-research"


@dataclass
class WandbConfig:
    mode: str = "auto"  # auto | online | offline | disabled
    project: str = DEFAULT_PROJECT
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_model: bool = True  # upload best.pt as a model artifact
    dir: str | None = None  # where wandb/ run files go; default: the run folder
    init_timeout: float = 20.0  # seconds to wait for the W&B server before recording offline instead


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
    "data.cache": CACHE_MODES,
    "data.sampler": ("shuffle", "balanced"),
    "data.face_crop": FACE_CROP_CHOICES,
    "augment.preset": tuple(AUGMENT_PRESETS),
    "model.mode": ("finetune", "frozen"),
    "optim.name": ("adamw", "sgd"),
    "train.tta": ("none", "hflip"),
    "optim.scheduler": ("cosine", "step", "plateau", "none"),
    "train.class_weighting": ("none", "sqrt", "balanced"),
    "train.monitor": ("val/macro_f1", "val/acc", "val/top2", "val/loss", "val/weighted_f1"),
    "wandb.mode": ("auto", "online", "offline", "disabled"),
}


class ConfigError(UserError, ValueError):
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


def _section_keys(section: str) -> list[str]:
    """The keys of a config section (``optim`` -> ``optim.lr``, ...); empty when ``section`` is no section."""
    return [k for k in all_keys() if k.startswith(section + ".")]


def _not_a_section(source: str, section: str, value: Any) -> ConfigError:
    keys = _section_keys(section)
    return ConfigError(
        f"{source}: {section} is a section of settings ({', '.join(keys[:4])}, ...), not a value: got {value!r}. "
        f"Give its keys, e.g. {keys[0]}=... on the command line or `{section}:` with `  {keys[0].split('.')[-1]}: ...` "
        "indented below it in YAML"
    )


def _check_sections(loaded: DictConfig, source: str) -> None:
    """Every section given in a config file is a mapping (``optim: 5`` names the section, not "None")."""
    for key, value in loaded.items_ex(resolve=False):
        if _section_keys(str(key)) and value is not None and not isinstance(value, DictConfig):
            raise _not_a_section(source, str(key), value)


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
    if _section_keys(key):
        raise _not_a_section(f"override {item!r}", key, raw)
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
        message = (str(getattr(err, "msg", err)).splitlines() or [""])[0]
        if message in ("", "None"):  # some OmegaConf errors carry no message: say at least what failed
            message = f"{type(err).__name__} (the value does not fit the setting's type)"
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
            raise ConfigError(f"cannot read config file {path}: {' '.join(str(err).split())}") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(
                f"{path}: the top level must be a mapping of sections (data:, model:, optim:, train:, ...), "
                f"got a {type(loaded).__name__.removesuffix('Config').lower() or 'value'}"
            )
        _check_sections(loaded, f"config file {path}")
        cfg = _merge_checked(cfg, loaded, f"config file {path}")
    for item in parse_overrides(overrides):
        cfg = _override_node(cfg, item)
    # The boolean data.cache of older configs and run folders: true -> memory, false -> stream.
    cfg.data.cache = CACHE_ALIASES.get(str(cfg.data.cache).lower(), cfg.data.cache)
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


# key -> (check, allowed values in words); every numeric key of the schema has one.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.image_size": (lambda v: 16 <= v <= 1024, "an integer in [16, 1024]"),
    "data.channels": (lambda v: v in (1, 3), "1 (grayscale) or 3 (RGB)"),
    "data.batch_size": (lambda v: v >= 1, ">= 1"),
    "data.num_workers": (lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0),
                         "auto or an integer >= 0"),
    "data.cache_budget_mb": (lambda v: v >= 0, ">= 0 MiB (0 = a quarter of physical memory)"),
    "data.demo_scale": (lambda v: 0 < v <= 100, "a size multiplier in (0, 100]"),
    "data.val_fraction": (lambda v: 0 <= v <= 0.5, "a fraction of train/ in [0, 0.5] (0 = use the validation/ folder)"),
    "data.val_split_seed": (lambda v: v >= 0, ">= 0"),
    "model.unfreeze_epoch": (lambda v: v >= 0, ">= 0 (0 = never)"),
    "model.dropout": (lambda v: 0 <= v < 1, "a probability in [0, 1)"),
    "model.drop_path": (lambda v: 0 <= v < 1, "a probability in [0, 1) (0 = off; 0.1-0.2 are usual)"),
    "optim.lr": (lambda v: v > 0, "> 0"),
    "optim.weight_decay": (lambda v: v >= 0, ">= 0"),
    "optim.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "optim.min_lr_ratio": (lambda v: 0 <= v <= 1, "a fraction of optim.lr in [0, 1]"),
    "optim.step_size": (lambda v: v >= 1, ">= 1 epoch"),
    "optim.gamma": (lambda v: 0 < v <= 1, "a decay factor in (0, 1]"),
    "optim.backbone_lr_mult": (lambda v: 0 < v <= 1, "a fraction of optim.lr in (0, 1] (1 = one rate for all)"),
    "optim.layer_decay": (lambda v: 0 < v <= 1, "a factor per layer group in (0, 1] (1 = off; 0.7-0.9 are usual)"),
    "train.epochs": (lambda v: v >= 1, ">= 1"),
    "train.label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.grad_clip": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "train.ema_decay": (lambda v: 0 <= v < 1, "in [0, 1) (0 = off; 0.998-0.9995 are usual)"),
    "train.mixup_alpha": (lambda v: 0 <= v <= 10, "a Beta shape in [0, 10] (0 = off; 0.2-0.4 are usual)"),
    "train.cutmix_alpha": (lambda v: 0 <= v <= 10, "a Beta shape in [0, 10] (0 = off; 1.0 is usual)"),
    "train.early_stopping_patience": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "train.threads": (lambda v: v >= 0, ">= 0 (0 = auto: the cores other processes leave free)"),
    "run.seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    **{f"faces.{key}": check for key, check in FACE_RANGES.items()},  # the detectors check the same ranges
    "wandb.init_timeout": (lambda v: 1 <= v <= 600, "seconds in [1, 600]"),
}
NON_EMPTY = ("data.root", "run.dir", "wandb.project")


def validate(cfg: DictConfig) -> None:
    """Every choice, range and cross-key rule; the message names the key and what is allowed."""
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")
    for key, (ok, allowed) in RANGES.items():
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key}={value!r} is out of range: allowed {allowed}")
    for key in NON_EMPTY:
        if not str(OmegaConf.select(cfg, key) or "").strip():
            raise ConfigError(f"{key} is empty; give it a value")
    for name in ("mean", "std"):
        value = cfg.data[name]
        if value is not None and len(value) != cfg.data.channels:
            raise ConfigError(f"data.{name} needs {cfg.data.channels} values (data.channels), got {list(value)}")
    if cfg.data.std is not None and min(cfg.data.std) <= 0:
        raise ConfigError(f"data.std={list(cfg.data.std)} is out of range: every value must be > 0")
    try:
        augment_params(cfg)
    except AugmentError as err:
        raise ConfigError(str(err)) from None
    if cfg.run.name is not None and (not cfg.run.name.strip() or any(c in cfg.run.name for c in "/\\")):
        raise ConfigError(f"run.name={cfg.run.name!r} must be a folder name (no slashes); or leave it unset")
    _check_model_name(cfg.model.name, drop_path=cfg.model.drop_path)
    _check_device(cfg.train.device)
    if cfg.data.face_crop == "aligned":
        _check_align_extra("data.face_crop=aligned")


def augment_params(cfg: DictConfig):
    """The resolved :class:`~research.data.augment.AugmentParams` of ``cfg.augment``."""
    overrides = {k: v for k, v in OmegaConf.to_container(cfg.augment).items() if k != "preset"}
    return resolve_augment(cfg.augment.preset, **overrides)


def _check_model_name(name: str, *, drop_path: float = 0.0) -> None:
    from research.models import list_models
    from research.models.registry import TIMM_PREFIX

    if name.startswith(TIMM_PREFIX):
        import timm

        if not timm.is_model(name[len(TIMM_PREFIX) :]):
            raise ConfigError(f"model.name={name!r}: timm has no such model; list them with timm.list_models('*part*')")
        return
    if drop_path:
        raise ConfigError(
            f"model.drop_path={drop_path}: stochastic depth is available for {TIMM_PREFIX}<name> models only, "
            f"not {name}; set model.drop_path=0 or pick a timm model"
        )
    if name not in list_models():
        raise ConfigError(
            f"model.name={name!r} is not a registered model; known: {', '.join(list_models())}, or timm/<name>"
        )


def _check_align_extra(setting: str) -> None:
    from research.faces.align import AlignUnavailableError, check_available

    try:
        check_available()
    except AlignUnavailableError as err:
        raise ConfigError(f"{setting}: {err}") from None


def _check_device(name: str) -> None:
    import torch

    try:
        device = torch.device(name) if name != "auto" else None
    except RuntimeError:
        raise ConfigError(f"train.device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device is None or device.type == "cpu":
        return
    if device.type != "cuda":
        raise ConfigError(f"train.device={name!r}: only auto, cpu, cuda and cuda:N are supported")
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available here; use train.device=auto or cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device={name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")


def check_inputs(cfg: DictConfig) -> None:
    """The files and folders a run will read exist: checked before any folder is made or image decoded."""
    root = cfg.data.root
    if root != "demo":
        path = Path(root).expanduser()
        if path.is_file():
            raise ConfigError(
                f"data.root={root} is a file; pass the dataset folder (with train/ and validation/), "
                "or unpack the zip with `poetry run fetch-data --zip PATH`"
            )
        if not path.is_dir():
            raise ConfigError(
                f"data.root={root} does not exist. Run `poetry run fetch-data` or pass data.root=DIR "
                "(a folder with train/ and validation/ class folders), or data.root=demo."
            )
    if cfg.model.pretrained_file and not cfg.model.get("init_from") and not Path(cfg.model.pretrained_file).expanduser().is_file():
        raise ConfigError(f"model.pretrained_file={cfg.model.pretrained_file} not found; give the path of a state_dict file")
    if cfg.run.new_images and not Path(cfg.run.new_images).expanduser().is_dir():
        raise ConfigError(f"run.new_images={cfg.run.new_images} is not a folder of images")
    if cfg.model.mode == "frozen" and cfg.model.pretrained_fallback and not cfg.run.resume:
        raise ConfigError(
            "model.pretrained_fallback=true with model.mode=frozen: without the pretrained weights only the head would "
            "train, on a random frozen backbone. Set model.pretrained_fallback=false and provide the weights "
            "(model.pretrained_file=PATH, or `poetry run research fetch-weights --config PRESET` on a machine online), "
            "or use model.mode=finetune"
        )
    check_writable(cfg.run.resume or cfg.run.dir)  # what the run writes: its folder, and the image cache
    if cfg.data.cache_dir and normalize_cache_mode(cfg.data.cache) in ("auto", "mmap"):
        check_writable(cfg.data.cache_dir)
    init_checkpoint(cfg)


# A sweep compares trials: each one trains from the pretrained weights or fails, never from random weights
# in their place (the local runner adds this to every trial; `train` adds it under `wandb agent`).
SWEEP_TRIAL_OVERRIDES = ("model.pretrained_fallback=false",)


def init_checkpoint(cfg: DictConfig) -> tuple[Path, dict[str, Any]] | None:
    """``(path, checkpoint)`` of ``model.init_from`` (a run folder means its ``best.pt``), checked to hold
    the model this run builds (same ``model.name`` and ``data.channels``). None when the key is unset or
    the run is resumed: ``last.pt`` then holds the weights, and the source may have moved since."""
    source = cfg.model.get("init_from")
    if not source or cfg.run.get("resume"):
        return None
    from research.models.shipped import is_shipped_name, shipped_model
    from research.tracking.runs import CheckpointError

    path = shipped_model(source).checkpoint if is_shipped_name(source) else Path(source).expanduser()
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise ConfigError(
            f"model.init_from={source}: {path} not found; give a finished run folder (its best.pt is used), "
            "a best.pt / last.pt of this package, or a shipped model (fer2013)"
        )
    plain = ("a plain state_dict (ImageNet weights, say) goes to model.pretrained_file; model.init_from takes "
             "a run folder or a best.pt / last.pt written by this package")
    try:
        stat = path.stat()
        ckpt = _read_source_checkpoint(str(path), stat.st_mtime_ns, stat.st_size)
    except CheckpointError as err:
        reason = str(err)[len(str(path)) :].split(". ")[0]  # the sentence after the path, without the way out
        raise ConfigError(f"model.init_from={source}: {path}{reason}; {plain}") from None
    name = ckpt.get("model_name")
    saved = ckpt.get("config")
    data = saved.get("data") if isinstance(saved, dict) else None
    channels = data.get("channels") if isinstance(data, dict) else None
    if name is None or channels is None:
        raise ConfigError(f"model.init_from={source}: {path} records no model name or config; {plain}")
    if name != cfg.model.name or channels != cfg.data.channels:
        raise ConfigError(
            f"model.init_from={source} holds a {name} model on {channels}-channel input, but this run builds "
            f"{cfg.model.name} on {cfg.data.channels}-channel input; set model.name={name} data.channels={channels}"
        )
    if list(ckpt.get("class_names", CANONICAL_CLASSES)) != list(CANONICAL_CLASSES):
        raise ConfigError(
            f"model.init_from={source}: its head predicts {list(ckpt['class_names'])}, not this package's classes "
            f"{list(CANONICAL_CLASSES)}; start from a run of this version of the package"
        )
    return path, ckpt


@functools.lru_cache(maxsize=1)
def _read_source_checkpoint(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    """The ``model.init_from`` checkpoint, read once for the input check and the model build (and every
    seed of ``--seeds``); a rewritten file (other mtime or size) is read again. Callers only read it."""
    from research.tracking.runs import read_checkpoint

    return read_checkpoint(Path(path))


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """``{"optim.lr": 0.001, ...}``: the keys W&B and sweeps use, equal to the CLI keys."""
    return flatten_mapping(OmegaConf.to_container(cfg, resolve=True))


def flatten_mapping(nested: dict[str, Any]) -> dict[str, Any]:
    """A nested mapping (as config.yaml holds it) as dotted keys; dotted keys pass through."""
    flat: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(nested, "")
    return flat


def load_saved_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Re-load a run folder's config.yaml through the schema (plus overrides), validated and read-only."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: is this a run folder made by `poetry run train`?")
    return load_config(path, overrides)
