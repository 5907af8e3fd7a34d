"""Config -> the run's images and loaders: decoding, caching, the validation split, workers, samplers."""

from __future__ import annotations

import os

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, DistributedSampler, WeightedRandomSampler

from research.config import ConfigError
from research.data.classes import CANONICAL_CLASSES
from research.data.datasets import DataBundle, load_datasets
from research.engine.runtime import seed_worker, usable_cpus
from research.faces.factory import face_crop_step

DISTRIBUTED_BALANCED = (
    "data.sampler=balanced is not available with several processes (torchrun); use data.sampler=shuffle "
    "with train.class_weighting=sqrt or balanced to weight rare classes instead"
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


def load_data(cfg: DictConfig, *, val_files: list[str] | None = None) -> DataBundle:
    """The run's train and validation images, decoded and cached as ``data.*`` says (transforms unset);
    ``val_files``: the validation split a run folder recorded (``data.val_fraction``)."""
    data = cfg.data
    return load_datasets(
        data.root, bad_files=data.bad_files, cache=data.cache, keep_size=data.image_size,
        cache_budget_mb=data.cache_budget_mb, cache_dir=data.cache_dir, require_all_classes=data.require_all_classes,
        workers=max(2, num_workers(data)), demo_scale=data.demo_scale, seed=cfg.run.seed,
        val_fraction=data.val_fraction, val_split_seed=data.val_split_seed, val_files=val_files,
        face_crop=face_crop_step(data.face_crop, cfg.faces),
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
