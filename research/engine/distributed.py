"""Training in several processes (``torchrun``): the process group, rank 0's duties and epoch gathers.

:meth:`Distributed.from_env` reads torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``. With one
process (plain ``python -m research train``, or torchrun with one process) nothing is started and
every helper is a no-op that returns its input, so a single-process run computes exactly what it
did before this module existed.

With several processes each rank trains on its :class:`~torch.utils.data.DistributedSampler` shard
through :class:`~torch.nn.parallel.DistributedDataParallel`, and the logits of a whole epoch are
gathered from every rank (ordered by sample index, the sampler's padding left out) before any
metric is computed, so the metrics of an epoch are those of one process scoring the whole set.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class EpochShard:
    """This rank's samples of one epoch, in loader order: dataset ``indices`` (n,) and ``real`` (n,) bool,
    False for the samples :class:`DistributedSampler` repeats to give every rank as many as the others."""

    indices: np.ndarray
    real: np.ndarray


@dataclass(frozen=True)
class Distributed:
    """Where this process stands among ``world_size`` processes; one process when ``world_size`` is 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Distributed:
        """The torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); one process without it."""
        env = os.environ if environ is None else environ
        world_size = int(env.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        return cls(rank=int(env["RANK"]), world_size=world_size, local_rank=int(env.get("LOCAL_RANK", "0")))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run folder and talks to W&B."""
        return self.rank == 0

    # --- process group -----------------------------------------------------------------
    def start(self, device: torch.device) -> torch.device:
        """Join the process group (NCCL on CUDA, gloo on CPU); returns this rank's device (``cuda:LOCAL_RANK``)."""
        if not self.enabled:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        exit_with_parent()
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        log.info("rank %d of %d on %s (%s)", self.rank, self.world_size, device, dist.get_backend())
        return device

    def stop(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    # --- agreeing ----------------------------------------------------------------------
    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (batch-norm statistics) on every rank, e.g. for a model kept outside DDP."""
        if self.enabled:
            for buffer in module.buffers():
                dist.broadcast(buffer.data, src=0)

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only; every rank returns its result or raises its exception.

        Rank 0's failures (a run folder that exists, a full disk, Ctrl-C) thus end every rank with the
        same error instead of leaving the others waiting for a message that never comes.
        """
        if not self.enabled:
            return fn()
        if not self.is_main:
            ok, value = self.broadcast((True, None))
            if not ok:
                raise value
            return value
        try:
            value = fn()
        except BaseException as err:
            self.broadcast((False, err if _picklable(err) else RuntimeError(f"{type(err).__name__}: {err}")))
            raise
        return self.broadcast((True, value))[1]

    def all_true(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on every rank."""
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)], device=self._collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def _collective_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")

    # --- model and data ----------------------------------------------------------------
    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in :class:`DistributedDataParallel` (gradients averaged over ranks); itself in one process.

        Only the parameters that require gradients when wrapping are synchronised: wrap again after
        unfreezing a backbone.
        """
        if not self.enabled:
            return model
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def shard(self, loader: DataLoader) -> EpochShard | None:
        """The samples this rank sees in an epoch of ``loader`` (after ``set_epoch``); None in one process."""
        sampler = loader.sampler
        if not self.enabled or not isinstance(sampler, DistributedSampler):
            return None
        indices = np.fromiter(iter(sampler), dtype=np.int64)
        # DistributedSampler appends its padding to the end of the epoch's list and deals the list out
        # round-robin: this rank's k-th sample sits at position rank + k * world_size.
        positions = sampler.rank + sampler.num_replicas * np.arange(len(indices))
        return EpochShard(indices, positions < len(sampler.dataset))

    def gather_epoch(
        self, indices: np.ndarray, logits: np.ndarray, targets: np.ndarray, loss_sum: float, seen: int
    ) -> tuple[np.ndarray, np.ndarray, float, int]:
        """Every rank's ``(n, C)`` logits and ``(n,)`` targets of distinct samples, ordered by sample index,
        with the loss summed over all of them and their count; the same result on every rank."""
        if not self.enabled:
            return logits, targets, loss_sum, seen
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, (indices, logits, targets, loss_sum, seen))
        order = np.argsort(np.concatenate([p[0] for p in parts]), kind="stable")
        all_logits = np.concatenate([p[1] for p in parts])[order]
        all_targets = np.concatenate([p[2] for p in parts])[order]
        return all_logits, all_targets, float(sum(p[3] for p in parts)), int(sum(p[4] for p in parts))


PARENT_POLL_S = 1.0  # how often a torchrun worker checks that its launcher is alive
PARENT_GRACE_S = 15.0  # then how long it may take to stop like Ctrl-C before it is ended outright


def exit_with_parent(poll: float = PARENT_POLL_S, grace: float = PARENT_GRACE_S) -> threading.Thread:
    """End this torchrun worker when its launcher dies (``kill -9`` of torchrun would otherwise leave every
    worker training): a daemon thread notices the new parent, sends this process SIGTERM (which the CLI
    handles like Ctrl-C: the run is marked interrupted), and ends it outright if it still runs ``grace``
    seconds later (e.g. blocked in a collective). A launcher that stops normally ends its workers itself."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll)
        log.error("the torchrun launcher (pid %d) is gone; stopping this worker (pid %d)", parent, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(128 + signal.SIGTERM)

    thread = threading.Thread(target=watch, name="exit-with-launcher", daemon=True)
    thread.start()
    return thread


def _picklable(obj: object) -> bool:
    try:
        pickle.dumps(obj)
    except Exception:
        return False
    return True
