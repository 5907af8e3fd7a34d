"""What a run needs from the machine, apart from the training loop: seeds, the device, CPU features,
latency. Training (:mod:`research.engine.trainer`) and inference (:mod:`research.inference`) both
use it; it imports neither.
"""

from __future__ import annotations

import copy
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cpu_ticks() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None where there is no /proc."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores_of_others(window_s: float = 0.3) -> float | None:
    """How many cores other processes keep busy, measured over ``window_s`` seconds: the machine's busy
    time (/proc/stat) minus this process's own CPU time; None where /proc/stat is missing."""
    before, own_before = _cpu_ticks(), _own_cpu_seconds()
    if before is None:
        return None
    time.sleep(window_s)
    after, own_after = _cpu_ticks(), _own_cpu_seconds()
    assert after is not None
    busy, total = after[0] - before[0], after[1] - before[1]
    if total <= 0:
        return 0.0
    cores = os.cpu_count() or 1
    busy_cores = busy / total * cores
    return max(0.0, busy_cores - (own_after - own_before) / window_s)


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str  # for the log: why this many


def choose_threads(requested: int = 0, *, processes: int = 1) -> ThreadChoice:
    """Torch CPU threads for this process. ``requested`` > 0 is taken as it is. ``0`` (auto): the cores
    this process may use (:func:`usable_cpus`, shared by ``processes`` local processes) less the cores
    other processes keep busy right now (:func:`busy_cores_of_others`), at least one. More threads than
    free cores make every step wait for the slowest thread: on a 2-core machine with one core busy, 2
    threads trained the demo 2.3x slower than 1 (issue 26, item 15)."""
    if requested > 0:
        return ThreadChoice(requested, "as configured")
    usable, processes = usable_cpus(), max(1, processes)
    cores = max(1, usable // processes)
    others = busy_cores_of_others()
    if others is None:
        return ThreadChoice(cores, f"{cores} usable core(s); other processes' load unknown")
    free = max(1, min(cores, int(usable - others + 0.25) // processes))
    return ThreadChoice(free, f"{cores} usable core(s), {others:.1f} busy with other processes")


def set_threads(requested: int = 0, *, processes: int = 1) -> ThreadChoice:
    """:func:`choose_threads` and ``torch.set_num_threads`` with it; returns the choice (logged by the caller)."""
    choice = choose_threads(requested, processes=processes)
    torch.set_num_threads(choice.threads)
    return choice


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

