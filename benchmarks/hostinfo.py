"""What the benchmarks say about the machine they ran on (imported by the scripts beside it)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it, else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_capability() -> str:
    """The instruction set PyTorch's CPU kernels use here (``AVX2``, ``AVX512``...): name it beside every
    CPU timing, since the same code runs several times faster on one than the other."""
    import torch

    return torch.backends.cpu.get_cpu_capability()
