"""Config -> components: the only code besides the CLI and ``config.py`` that reads the whole config.

Each builder maps settings to the plain, typed arguments of one component (a model, a
transform, loaders, an optimiser...); the components themselves never see ``cfg``. Training
(:mod:`research.train`) and inference (:mod:`research.inference`) build from here, so a run's
eval preprocessing is the same object in both.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

import albumentations as A
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, WeightedRandomSampler

from research.align import LandmarkAligner
from research.config import ConfigError, augment_params, init_checkpoint
from research.data.classes import CANONICAL_CLASSES
from research.data.datasets import DataBundle, load_datasets
from research.data.face_crop import FaceCropStep
from research.data.transforms import build_eval_transform, build_train_transform
from research.engine.trainer import Trainer, seed_worker
from research.faces import HaarFaceCropper
from research.models import create_model
from research.models.classifier import FERClassifier

log = logging.getLogger(__name__)

FACE_SETTINGS = ("scale_factor", "min_neighbors", "min_size", "margin", "pad", "upscale_to", "fallback")
# faces.<key> -> LandmarkAligner argument; pad, upscale_to and fallback are shared with the Haar cropper.
ALIGN_SETTINGS = {
    "align_eye_distance": "eye_distance", "align_eye_y": "eye_y", "align_upsample": "upsample",
    "pad": "pad", "upscale_to": "upscale_to", "fallback": "fallback",
}
Stats = tuple[tuple[float, ...], tuple[float, ...]]
DISTRIBUTED_BALANCED = (
    "data.sampler=balanced is not available with several processes (torchrun); use data.sampler=shuffle "
    "with train.class_weighting=sqrt or balanced to weight rare classes instead"
)


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
        restore_run_source(model, {**ckpt, "pretrained_source": f"run:{path.parent.name}/{path.name}"})
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


def num_workers(data_cfg: DictConfig, *, device: torch.device | None = None, processes: int = 1) -> int:
    """``data.num_workers`` as a number for a run on ``device`` (default: CUDA when present) with
    ``processes`` training processes on this machine. ``auto``: none on CPU, where worker processes
    only take cores from the model (benchmarks/README.md, "Data loading and the GPU"); on CUDA
    ``min(4, usable CPUs / processes)``, so decoding and augmentation overlap the GPU's work instead
    of starving it (2 on a 2-core notebook)."""
    value = data_cfg.num_workers
    if value != "auto":
        return int(value)
    if not _is_cuda(device):
        return 0
    return max(1, min(4, usable_cpus() // max(1, processes)))


def _is_cuda(device: torch.device | None) -> bool:
    return torch.cuda.is_available() if device is None else device.type == "cuda"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def load_data(cfg: DictConfig, *, val_files: list[str] | None = None) -> DataBundle:
    """The run's train and validation images, decoded and cached as ``data.*`` says (transforms unset);
    ``val_files``: the validation split a run folder recorded (``data.val_fraction``)."""
    data = cfg.data
    return load_datasets(
        data.root, bad_files=data.bad_files, cache=data.cache, keep_size=data.image_size,
        cache_budget_mb=data.cache_budget_mb, cache_dir=data.cache_dir, require_all_classes=data.require_all_classes,
        workers=max(2, num_workers(data)), demo_scale=data.demo_scale, seed=cfg.run.seed,
        val_fraction=data.val_fraction, val_split_seed=data.val_split_seed, val_files=val_files,
        face_crop=dataset_face_crop(cfg),
    )


def _loader_options(data_cfg: DictConfig, device: torch.device | None, processes: int = 1) -> dict:
    workers = num_workers(data_cfg, device=device, processes=processes)
    return dict(
        batch_size=data_cfg.batch_size, num_workers=workers, pin_memory=_is_cuda(device),
        worker_init_fn=seed_worker if workers else None, persistent_workers=False,
    )


def build_loaders(
    bundle: DataBundle, cfg: DictConfig, *, seed: int, rank: int = 0, world_size: int = 1,
    device: torch.device | None = None,
) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders for a run on ``device`` (default: CUDA when present); with
    ``world_size > 1`` each holds rank ``rank``'s shard of its set (a :class:`DistributedSampler`
    seeded with ``seed``, the trainer calls ``set_epoch``)."""
    data_cfg = cfg.data
    generator = torch.Generator().manual_seed(seed)
    # torchrun's processes on this machine share its CPUs between their loaders
    common = _loader_options(data_cfg, device, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    if world_size > 1:
        if data_cfg.sampler == "balanced":
            raise ConfigError(DISTRIBUTED_BALANCED)
        train_sampler = DistributedSampler(bundle.train, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        val_sampler = DistributedSampler(bundle.val, num_replicas=world_size, rank=rank, shuffle=False)
        return (
            DataLoader(bundle.train, sampler=train_sampler, generator=generator, **common),
            DataLoader(bundle.val, sampler=val_sampler, **common),
        )
    if data_cfg.sampler == "balanced":
        counts = np.bincount(bundle.train.targets, minlength=len(CANONICAL_CLASSES)).astype(float)
        weights = [1.0 / counts[t] for t in bundle.train.targets]
        sampler = WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=generator)
        train_loader = DataLoader(bundle.train, sampler=sampler, drop_last=False, **common)
    else:
        train_loader = DataLoader(bundle.train, shuffle=True, generator=generator, **common)
    return train_loader, DataLoader(bundle.val, shuffle=False, **common)


def build_eval_loader(dataset: Dataset, cfg: DictConfig, device: torch.device | None = None) -> DataLoader:
    """The whole of ``dataset`` in order, in one process (the final evaluation under torchrun)."""
    return DataLoader(dataset, shuffle=False, **_loader_options(cfg.data, device))


def build_optimizer(model: nn.Module, optim_cfg: DictConfig) -> torch.optim.Optimizer:
    """Weight decay on weights only (not on biases and norm parameters). With
    ``optim.backbone_lr_mult`` < 1 (discriminative learning rates) the pretrained backbone's groups
    start at ``lr * backbone_lr_mult`` and the new head's at ``lr``. With ``optim.layer_decay`` d < 1
    (layer-wise decay) the backbone's layer groups (:meth:`FERClassifier.backbone_layers`) step down
    from the output: the last one at ``lr * backbone_lr_mult``, the one below at ``d`` times that, the
    stem at ``d ** (L - 1)`` times it. The scheduler scales every group by the same factor. The head's
    groups come first, so ``param_groups[0]`` carries the logged lr."""
    mult = float(optim_cfg.get("backbone_lr_mult", 1.0))
    layer_decay = float(optim_cfg.get("layer_decay", 1.0))
    split = (mult != 1.0 or layer_decay != 1.0) and hasattr(model, "head_parameters")
    if not split:
        layers = [list(model.parameters())]
        rates = [optim_cfg.lr]
    else:
        head_ids = {id(h) for h in model.head_parameters()}
        backbone = model.backbone_layers() if layer_decay != 1.0 else [[p for p in model.parameters() if id(p) not in head_ids]]
        layers = [model.head_parameters(), *reversed(backbone)]
        rates = [optim_cfg.lr] + [optim_cfg.lr * mult * layer_decay**depth for depth in range(len(backbone))]
        if layer_decay != 1.0:
            log.info("layer-wise lr decay %g over %d backbone layer groups: the last at %.2e, the stem at %.2e (head %.2e)",
                     layer_decay, len(backbone), rates[1], rates[-1], rates[0])
    groups = []
    for params_of_layer, lr in zip(layers, rates, strict=True):
        for decay in (True, False):
            params = [p for p in params_of_layer if (p.ndim > 1) == decay]
            if params:
                groups.append({"params": params, "weight_decay": optim_cfg.weight_decay if decay else 0.0, "lr": lr})
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
        return floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * min(1.0, progress)))

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


def haar_cropper(faces: Mapping[str, Any] | None, *, fallback: bool | None = None) -> HaarFaceCropper:
    """The Haar cropper of ``faces`` settings as a run stores them (config ``faces``, or an exported
    model's metadata); missing settings take the cropper's defaults."""
    settings = {k: v for k, v in (faces or {}).items() if k in FACE_SETTINGS}
    if fallback is not None:
        settings["fallback"] = fallback
    return HaarFaceCropper(**settings)


def landmark_aligner(faces: Mapping[str, Any] | None, *, fallback: bool | None = None) -> LandmarkAligner:
    """The landmark aligner of ``faces`` settings (config ``faces``, or an exported model's metadata);
    missing settings take the aligner's defaults. Raises AlignUnavailableError without the extra."""
    settings = {ALIGN_SETTINGS[k]: v for k, v in (faces or {}).items() if k in ALIGN_SETTINGS}
    if fallback is not None:
        settings["fallback"] = fallback
    return LandmarkAligner(**settings)


def face_detector(mode: str, faces: Mapping[str, Any] | None, *, fallback: bool | None = None) -> HaarFaceCropper | LandmarkAligner:
    """The cropper of a face mode: ``haar`` or ``aligned``."""
    if mode == "haar":
        return haar_cropper(faces, fallback=fallback)
    if mode == "aligned":
        return landmark_aligner(faces, fallback=fallback)
    raise ValueError(f"face mode {mode!r} has no detector; use haar or aligned")


def dataset_face_crop(cfg: DictConfig) -> FaceCropStep | None:
    """``data.face_crop``: the crop applied once to every decoded training and validation image
    (always with the whole-image fallback), or ``None`` for ``none``."""
    if cfg.data.face_crop == "none":
        return None
    mode = cfg.data.face_crop
    return FaceCropStep(functools.partial(face_detector, mode, dict(cfg.faces), fallback=True), label=mode)
