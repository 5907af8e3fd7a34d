"""Config -> the trainer of a run: optimiser (weight decay, discriminative rates, layer decay), schedule,
loss and every ``train.*`` setting. Only training imports this module; inference never builds a trainer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from research.data.classes import CANONICAL_CLASSES
from research.engine.trainer import Trainer
from research.models.classifier import FERClassifier

log = logging.getLogger(__name__)


def build_optimizer(model: nn.Module, optim_cfg: DictConfig) -> torch.optim.Optimizer:
    """Weight decay on weights only (not on biases and norm parameters). With
    ``optim.backbone_lr_mult`` < 1 (discriminative learning rates) the pretrained backbone's groups
    start at ``lr * backbone_lr_mult`` and the new head's at ``lr``. With ``optim.layer_decay`` d < 1
    (layer-wise decay) the backbone's layer groups (:meth:`FERClassifier.backbone_layers`) step down
    from the output: the last one at ``lr * backbone_lr_mult``, the one below at ``d`` times that, the
    stem at ``d ** (L - 1)`` times it. The scheduler scales every group by the same factor. Each group is
    named for the history's ``lr/<name>`` columns: ``all`` (one rate), else ``head``, then ``backbone``
    or, with layer decay, ``backbone_<i>`` (``i`` counted from the stem, 0). The head's groups come
    first, so ``param_groups[0]`` carries the ``lr`` column."""
    mult = float(optim_cfg.get("backbone_lr_mult", 1.0))
    layer_decay = float(optim_cfg.get("layer_decay", 1.0))
    split = (mult != 1.0 or layer_decay != 1.0) and hasattr(model, "head_parameters")
    if not split:
        layers = [list(model.parameters())]
        rates, names = [optim_cfg.lr], ["all"]
    else:
        head_ids = {id(h) for h in model.head_parameters()}
        backbone = model.backbone_layers() if layer_decay != 1.0 else [[p for p in model.parameters() if id(p) not in head_ids]]
        layers = [model.head_parameters(), *reversed(backbone)]
        rates = [optim_cfg.lr] + [optim_cfg.lr * mult * layer_decay**depth for depth in range(len(backbone))]
        names = ["head", *(f"backbone_{len(backbone) - 1 - depth}" if layer_decay != 1.0 else "backbone" for depth in range(len(backbone)))]
        if layer_decay != 1.0:
            log.info("layer-wise lr decay %g over %d backbone layer groups: the last at %.2e, the stem at %.2e (head %.2e)",
                     layer_decay, len(backbone), rates[1], rates[-1], rates[0])
    groups = []
    for params_of_layer, lr, name in zip(layers, rates, names, strict=True):
        for decay in (True, False):
            params = [p for p in params_of_layer if (p.ndim > 1) == decay]
            if params:
                groups.append({"params": params, "weight_decay": optim_cfg.weight_decay if decay else 0.0, "lr": lr, "name": name})
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=optim_cfg.lr, momentum=optim_cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=optim_cfg.lr)


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim_cfg: DictConfig, *, epochs: int, steps_per_epoch: int, monitor: str
):
    """Returns (scheduler or None, interval "step" | "epoch")."""
    if optim_cfg.scheduler == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=optim_cfg.step_size, gamma=optim_cfg.gamma)
        return scheduler, "epoch"
    if optim_cfg.scheduler == "plateau":
        mode = "min" if monitor.endswith("loss") else "max"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=optim_cfg.gamma, patience=2), "epoch"
    total = max(1, epochs * steps_per_epoch)
    warmup = min(optim_cfg.warmup_epochs * steps_per_epoch, total - 1)
    floor, constant = optim_cfg.min_lr_ratio, optim_cfg.scheduler == "none"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if constant:
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))  # a float: checkpoints hold plain types

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "step"


def build_trainer(
    cfg: DictConfig, model: FERClassifier, *, class_counts: Mapping[str, int], steps_per_epoch: int,
    device: torch.device, **hooks: Any,
) -> Trainer:
    """The trainer of a run: the optimiser (:func:`optim_for`), its schedule over ``train.epochs`` x
    ``steps_per_epoch``, the loss and every ``train.*`` setting. ``hooks`` go to :class:`Trainer` as
    they are (``checkpoint_fn``, ``on_epoch_end``, ``distributed``, ``progress``)."""
    optimizer = build_optimizer(model, optim_for(cfg, model))
    scheduler, interval = build_scheduler(
        optimizer, cfg.optim, epochs=cfg.train.epochs, steps_per_epoch=steps_per_epoch, monitor=cfg.train.monitor
    )
    train = cfg.train
    return Trainer(
        model, optimizer=optimizer, loss_fn=build_loss(train, class_counts), device=device, epochs=train.epochs,
        scheduler=scheduler, scheduler_interval=interval, grad_clip=train.grad_clip, amp=train.amp,
        channels_last=train.channels_last, monitor=train.monitor, tta=train.tta, ema_decay=train.ema_decay,
        mixup_alpha=train.mixup_alpha, cutmix_alpha=train.cutmix_alpha, patience=train.early_stopping_patience,
        unfreeze_epoch=cfg.model.unfreeze_epoch if cfg.model.mode == "frozen" else 0, seed=cfg.run.seed, **hooks,
    )


def optim_for(cfg: DictConfig, model: FERClassifier) -> DictConfig:
    """``cfg.optim``, without the discriminative rates (``backbone_lr_mult``, ``layer_decay``) when the
    backbone is not pretrained: they protect pretrained features, and a randomly initialised backbone
    (e.g. the hub was unreachable and ``model.pretrained_fallback`` took over) needs the full rate."""
    split_rates = {k: cfg.optim[k] for k in ("backbone_lr_mult", "layer_decay") if cfg.optim.get(k, 1.0) != 1.0}
    if not (split_rates and model.pretrained_source.startswith("none")):
        return cfg.optim
    log.info("%s ignored: the backbone is not pretrained, so it trains at optim.lr",
             " and ".join(f"optim.{k}={v}" for k, v in split_rates.items()))
    return OmegaConf.merge(cfg.optim, {k: 1.0 for k in split_rates})


def build_loss(train_cfg: DictConfig, class_counts: dict[str, int]) -> nn.Module:
    """Cross-entropy, optionally class-weighted: ``balanced`` weights are N / (K n_c) (sklearn's
    "balanced"); ``sqrt`` uses their square root, which helps rare classes without letting a
    class of 15 images dominate the gradient (plain inverse frequency collapses predictions
    onto it on the course data). Weights are normalised to mean 1 over the present classes."""
    weight = None
    if train_cfg.class_weighting != "none":
        counts = torch.tensor([max(class_counts[c], 1) for c in CANONICAL_CLASSES], dtype=torch.float32)
        present = torch.tensor([class_counts[c] > 0 for c in CANONICAL_CLASSES], dtype=torch.float32)
        weight = present / counts
        if train_cfg.class_weighting == "sqrt":
            weight = weight.sqrt()
        weight = weight * present.sum() / weight.sum()
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=train_cfg.label_smoothing)
