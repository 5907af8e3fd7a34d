"""What a run needs from the machine, apart from the training loop: seeds, the device, CPU features,
latency. Training (:mod:`research.engine.trainer`) and inference (:mod:`research.inference`) both
use it; it imports neither.
"""

from __future__ import annotations

import copy
import random
import sys
import time

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (CPU and CUDA); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy/python and the albumentations pipeline per worker."""
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info else None
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(worker_seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919) % 2**31


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an unavailable CUDA request is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but CUDA is not available here; use train.device=auto or cpu")
    return device


def is_interactive() -> bool:
    return sys.stderr.isatty()


def cpu_bf16_supported() -> bool:
    """True where oneDNN runs bfloat16 natively (AVX-512 BF16 / AMX, or AVX-512 core), so autocast pays off."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def latency_timings(model: nn.Module, input_shape: tuple[int, ...], *, repeats: int = 20) -> list[float]:
    """``repeats`` timed CPU forward passes of one image (batch 1, eval mode, after 3 warm-up calls), in ms."""
    cpu_model = copy.deepcopy(model).cpu().eval()
    x = torch.randn(1, *input_shape)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            start = time.perf_counter()
            cpu_model(x)
            if i >= 3:
                times.append((time.perf_counter() - start) * 1000)
    return times


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], *, repeats: int = 20) -> float:
    """Median CPU inference latency in milliseconds for one image (batch 1), eval mode."""
    return float(np.median(latency_timings(model, input_shape, repeats=repeats)))
