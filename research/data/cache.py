"""Where the decoded images stay: memory, a memory-mapped file, or nowhere (streaming).

:func:`resolve_cache_mode` estimates the cache before anything is decoded (one full
``keep_size x keep_size x 3`` slot per image, an upper bound) and compares it with a
memory budget; :class:`MmapImages` is the on-disk store, its file reserved in full when it is
made (a disk that is too small is an error at start, never a bus error mid-epoch). Only numpy here,
so the config module can import the choices without importing torch.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from research.errors import UserError

log = logging.getLogger(__name__)

CACHE_MODES: tuple[str, ...] = ("auto", "memory", "mmap", "stream")
CACHE_ALIASES = {"true": "memory", "false": "stream"}  # the old boolean data.cache
ARRAY_OVERHEAD_BYTES = 128  # per cached image in memory mode: the ndarray object itself
DISK_HEADROOM = 1.1  # mmap needs the file size plus this margin free on the cache disk


class CacheSpaceError(UserError, OSError):
    """The memory-mapped image cache does not fit (or cannot be written) where ``data.cache_dir`` points."""


ALTERNATIVES = (
    "Set data.cache_dir to a folder on a disk with room, or use data.cache=stream (decode every epoch, no file) "
    "or data.cache=memory"
)


def _size(size: float, *, up: bool = True) -> str:
    """``size`` bytes for a message, in KiB under 1 MiB, else MiB: rounded up (what is needed) or down
    (what is free), so a need is never shown as 0."""
    unit, name = (2**10, "KiB") if size < 2**20 else (2**20, "MiB")
    value = size / unit
    return f"{math.ceil(value) if up else math.floor(value)} {name}"


def _where(cache_dir: str | Path | None) -> str:
    return f"data.cache_dir={cache_dir}" if cache_dir else f"the system temp dir {tempfile.gettempdir()} (data.cache_dir unset)"


def _reason(err: OSError) -> str:
    return os.strerror(err.errno) if err.errno else str(err)


def _remove_if_owner(folder: str, owner_pid: int) -> None:
    # DataLoader workers are forked copies of the dataset: only the process that made the file removes it.
    if os.getpid() == owner_pid:
        shutil.rmtree(folder, ignore_errors=True)


class MmapImages:
    """Shrunk images in a memory-mapped uint8 file: ``store[i] -> HxWx3 uint8`` (a copy).

    The file holds ``count`` slots of ``side x side x 3``; image ``i`` sits in the top-left
    corner of slot ``i`` and ``shapes[i]`` is its ``(h, w)``, so reading gives back exactly the
    array that was written (the same pixels the in-memory cache holds). The file lives in a
    fresh ``research-cache-*`` folder under ``folder`` (the system temp dir when None),
    removed when the store is freed or the process exits.
    """

    def __init__(self, count: int, side: int, *, folder: str | Path | None = None, name: str = "images") -> None:
        self.side = side
        try:
            if folder is not None:
                Path(folder).mkdir(parents=True, exist_ok=True)
            self.folder = tempfile.mkdtemp(prefix="research-cache-", dir=folder)
        except OSError as err:
            raise CacheSpaceError(f"cannot write the image cache in {_where(folder)}: {_reason(err)}. {ALTERNATIVES}") from None
        self._finalizer = weakref.finalize(self, _remove_if_owner, self.folder, os.getpid())
        self.path = os.path.join(self.folder, f"{name}.u8")
        self.shapes = np.zeros((count, 2), dtype=np.int32)
        self._allocate(count * side * side * 3)
        self._array: np.ndarray | None = self._open("r+")

    def _allocate(self, size: int) -> None:
        """Reserve the whole file on disk now: a disk that is too small fails here with a clear error,
        instead of a sparse file whose first write to a missing block kills the process (SIGBUS)."""
        try:
            with open(self.path, "wb") as fh:
                if size and hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fh.fileno(), 0, size)
                else:
                    fh.truncate(size)
        except OSError as err:
            self._finalizer()  # the folder and the partial file go at once
            raise CacheSpaceError(
                f"cannot write the image cache {self.path} ({_size(size)}) in {_where(Path(self.folder).parent)}: "
                f"{_reason(err)}. {ALTERNATIVES}"
            ) from None

    def _open(self, mode: str) -> np.ndarray:
        # A plain ndarray view of the map: slicing an np.memmap builds a memmap object each time (slower).
        return np.asarray(np.memmap(self.path, dtype=np.uint8, mode=mode, shape=(len(self.shapes), self.side, self.side, 3)))

    @property
    def array(self) -> np.ndarray:
        if self._array is None:  # unpickled in a spawned DataLoader worker: reopen read-only
            self._array = self._open("r")
        return self._array

    def write(self, index: int, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        if h > self.side or w > self.side:
            raise ValueError(f"image {index} is {h}x{w}, larger than the {self.side}px slot")
        self.array[index, :h, :w] = image
        self.shapes[index] = (h, w)

    def subset(self, indices: Sequence[int]) -> MmapView:
        return MmapView(self, np.asarray(indices, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> np.ndarray:
        h, w = self.shapes[index]
        return self.array[index, :h, :w].copy()

    def __getstate__(self) -> dict:
        # Pickling (spawned workers) sends the path, never the pixels.
        state = self.__dict__.copy()
        state["_array"] = None
        return state


class MmapView:
    """The readable images of a :class:`MmapImages` (bad files left out), re-indexed from 0."""

    def __init__(self, store: MmapImages, slots: np.ndarray) -> None:
        self.store = store
        self.slots = slots

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.store[int(self.slots[index])]


def default_cache_budget_mb() -> int:
    """A quarter of the machine's physical memory, in MiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4096
    return max(1, total // 4 // 2**20)


def estimate_cache_bytes(count: int, keep_size: int) -> int:
    """Upper bound of the cache of ``count`` images shrunk to ``keep_size``: one full square slot each."""
    return count * (keep_size * keep_size * 3 + ARRAY_OVERHEAD_BYTES)


def normalize_cache_mode(cache: bool | str) -> str:
    """``True``/``"true"`` -> memory, ``False``/``"false"`` -> stream; else one of :data:`CACHE_MODES`."""
    mode = str(cache).strip().lower()
    mode = CACHE_ALIASES.get(mode, mode)
    if mode not in CACHE_MODES:
        raise ValueError(f"data.cache={cache!r} is not one of {', '.join(CACHE_MODES)} (or true/false)")
    return mode


def choose_cache_mode(
    cache: bool | str, *, estimate_bytes: int, budget_bytes: int, disk_free_bytes: int | None,
    cache_dir: str | Path | None = None,
) -> tuple[str, str]:
    """The cache mode to use and why. ``auto``: memory if the estimate fits the budget, else a
    memory-mapped file if the cache disk has room for it, else streaming from the files."""
    mode = normalize_cache_mode(cache)
    fits_disk = disk_free_bytes is None or disk_free_bytes >= estimate_bytes * DISK_HEADROOM
    if mode == "memory" and estimate_bytes > budget_bytes:
        return mode, "asked for, over the budget: the run may run out of memory"
    if mode == "mmap" and not fits_disk:
        raise CacheSpaceError(
            f"data.cache=mmap needs {_size(estimate_bytes * DISK_HEADROOM)} free on the cache disk "
            f"({_where(cache_dir)}), only {_size(disk_free_bytes or 0, up=False)} are. {ALTERNATIVES}"
        )
    if mode != "auto":
        return mode, "asked for"
    if estimate_bytes <= budget_bytes:
        return "memory", "fits the budget"
    if fits_disk:
        return "mmap", "over the budget; the cache disk has room"
    return "stream", "over the budget and the cache disk is too small"


def resolve_cache_mode(
    cache: bool | str, *, count: int, keep_size: int | None, budget_mb: int = 0, cache_dir: str | Path | None = None
) -> str:
    """Estimate the cache of ``count`` images, pick memory, mmap or stream, and log both."""
    mode = normalize_cache_mode(cache)
    if keep_size is None:  # no fixed slot size: nothing to estimate or memory-map
        return "memory" if mode == "auto" else mode
    budget = (budget_mb or default_cache_budget_mb()) * 2**20
    estimate = estimate_cache_bytes(count, keep_size)
    disk = Path(cache_dir or tempfile.gettempdir()).expanduser()
    existing = next((p for p in (disk, *disk.parents) if p.is_dir()), None)
    free = shutil.disk_usage(existing).free if mode in ("auto", "mmap") and existing is not None else None
    chosen, why = choose_cache_mode(
        mode, estimate_bytes=estimate, budget_bytes=budget, disk_free_bytes=free, cache_dir=cache_dir
    )
    where = f" in {disk}" if chosen == "mmap" else ""
    (log.warning if "over the budget:" in why else log.info)(
        "image cache: %s%s (%s): %d images x %dx%dx3 bytes ~ %.1f MiB, budget %.0f MiB (data.cache_budget_mb)",
        chosen, where, why, count, keep_size, keep_size, estimate / 2**20, budget / 2**20,
    )
    return chosen
