"""Config -> the model and its preprocessing: what training and inference both build.

A run's eval transform is built here for validation, ``evaluate``, ``predict`` and export alike, so
a photo goes through exactly what the validation images went through.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import albumentations as A
from omegaconf import DictConfig

from research.config import ConfigError, augment_params, init_checkpoint
from research.data.classes import CANONICAL_CLASSES
from research.data.transforms import build_eval_transform, build_train_transform
from research.models import create_model
from research.models.classifier import FERClassifier
from research.models.shipped import is_shipped_name

log = logging.getLogger(__name__)

Stats = tuple[tuple[float, ...], tuple[float, ...]]


def build_model(cfg: DictConfig, *, pretrained: bool = True) -> FERClassifier:
    """The run's model; ``pretrained=False`` skips loading weights (a checkpoint follows). With
    ``model.init_from`` the whole network, head included (the 7 classes are the same in every run),
    starts from that run's weights and normalisation instead of ``model.pretrained``'s; a resumed run
    skips that (its ``last.pt`` follows) and :func:`restore_run_source` restores what it recorded."""
    model_cfg = cfg.model
    init = init_checkpoint(cfg) if pretrained else None
    load_hub = pretrained and not model_cfg.get("init_from")
    if pretrained and not load_hub and (model_cfg.pretrained or model_cfg.pretrained_file):
        log.info("model.init_from is set: model.pretrained / model.pretrained_file are not loaded")
    try:
        model = create_model(
            model_cfg.name, len(CANONICAL_CLASSES),
            pretrained=model_cfg.pretrained and load_hub,
            pretrained_file=model_cfg.pretrained_file if load_hub else None,
            pretrained_fallback=model_cfg.pretrained_fallback, in_chans=cfg.data.channels, dropout=model_cfg.dropout,
            drop_path=model_cfg.get("drop_path", 0.0),
        )
    except TypeError as err:
        if "drop_path_rate" not in str(err):
            raise
        raise ConfigError(
            f"model.drop_path={model_cfg.drop_path}: {model_cfg.name} has no stochastic depth; set model.drop_path=0"
        ) from None
    if init is not None:
        path, ckpt = init
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise ConfigError(
                f"model.init_from={model_cfg.init_from}: its weights do not fit this {model_cfg.name} "
                f"({str(err).splitlines()[0][:160]}); start from a run of the same model"
            ) from None
        source = f"shipped:{model_cfg.init_from}" if is_shipped_name(model_cfg.init_from) else f"run:{path.parent.name}/{path.name}"
        restore_run_source(model, {**ckpt, "pretrained_source": source})
        log.info("model.init_from: weights and normalisation of %s (epoch %s; that run started from %s)",
                 path, ckpt.get("epoch", "?"), ckpt.get("pretrained_source", "?"))
        for key, value in (("mean", cfg.data.mean), ("std", cfg.data.std)):
            if value is not None and [round(float(v), 6) for v in value] != [round(v, 6) for v in getattr(model, key)]:
                log.warning("data.%s=%s differs from the %s the model.init_from run was trained with (%s); "
                            "leave data.%s unset to keep the source's", key, list(value), key, list(getattr(model, key)), key)
    if model_cfg.mode == "frozen":
        model.freeze_backbone()
    return model


def restore_run_source(model: FERClassifier, checkpoint: Mapping[str, Any]) -> None:
    """The normalisation and weight source a checkpoint recorded (those it lacks stay the model's): a
    resumed run continues with what it started with, whatever the hubs or a ``model.init_from``
    source give now; a ``model.init_from`` run starts with its source's normalisation."""
    model.mean = tuple(float(v) for v in checkpoint.get("mean", model.mean))
    model.std = tuple(float(v) for v in checkpoint.get("std", model.std))
    model.pretrained_source = checkpoint.get("pretrained_source", model.pretrained_source)


def normalization(cfg: DictConfig, model: FERClassifier) -> Stats:
    """``data.mean/std`` when set, else the model's own (ImageNet for pretrained backbones)."""
    mean = tuple(cfg.data.mean) if cfg.data.mean is not None else model.mean
    std = tuple(cfg.data.std) if cfg.data.std is not None else model.std
    return mean, std


def eval_transform(cfg: DictConfig, mean, std) -> A.Compose:
    """The deterministic preprocessing of a run: validation, evaluate and predict all use it."""
    return build_eval_transform(cfg.data.image_size, channels=cfg.data.channels, mean=mean, std=std)


def train_transform(cfg: DictConfig, mean, std) -> A.Compose:
    return build_train_transform(
        cfg.data.image_size, channels=cfg.data.channels, mean=mean, std=std, augment=augment_params(cfg),
        seed=cfg.run.seed,
    )
