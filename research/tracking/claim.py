"""One writer per folder: a training run claims its run folder, and ``predict`` its output folder,
for as long as it runs.

The claim is an exclusive ``flock`` on ``<folder>/.lock``, taken when the folder is made (or, on
resume, opened) and released when the work ends. The operating system drops the lock when the
process dies, even by SIGKILL, so a crashed run never blocks a retry; a stale ``.lock`` file
is simply locked again. A second process that wants a claimed folder stops with
:class:`FolderBusyError` (exit code 2) before it writes anything there. Linux and macOS (``fcntl``);
elsewhere claims are not taken.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from research.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


TRAINING = ("run folder", "training", "choose another run.name or run.dir")
PREDICT = ("output folder", "predict", "give another --out")


class FolderBusyError(UserError, FileExistsError):
    """Another process is writing into the folder right now (a training run, or predict)."""


def _busy(folder: Path, holder: str, purpose: tuple[str, str, str]) -> FolderBusyError:
    what, by, other = purpose
    return FolderBusyError(
        f"{what} {folder} is being written by another {by} ({holder or 'a running process'}); "
        f"wait for it to end, or {other}"
    )


def _holder(fd: int) -> str:
    """What the claiming process wrote into the lock file: ``pid N on HOST``."""
    with contextlib.suppress(OSError):
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    return ""


class FolderClaim:
    """The exclusive claim of one folder (see the module docstring); :meth:`release` ends it."""

    def __init__(self, folder: Path, fd: int | None, *, created: bool = False) -> None:
        self.folder, self._fd, self.created = Path(folder), fd, created

    @classmethod
    def acquire(cls, folder: str | Path, purpose: tuple[str, str, str] = TRAINING) -> FolderClaim:
        """Make ``folder`` (and its parents) if needed and claim it for ``purpose`` (:data:`TRAINING`,
        :data:`PREDICT`: what the busy message calls the folder, the other process and the way out).

        Raises:
            FolderBusyError: another live process holds the claim.
        """
        folder = Path(folder)
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return cls(folder, None, created=created)
        path = folder / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise _busy(folder, holder, purpose) from None
            # A releasing holder unlinks the file: a lock on that unlinked file claims nothing, so retry.
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        return cls(folder, fd, created=created)

    def release(self) -> None:
        """End the claim and remove the lock file (idempotent); a folder the claim made and nothing
        was written to is removed too, so a failed start leaves nothing behind."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            (self.folder / LOCK_NAME).unlink()
        os.close(self._fd)
        self._fd = None
        if self.created:
            with contextlib.suppress(OSError):  # not empty: the work wrote its files there
                self.folder.rmdir()


def check_unclaimed(folder: str | Path, purpose: tuple[str, str, str] = TRAINING) -> None:
    """Raise :class:`FolderBusyError` when a live process holds ``folder``'s claim (a quick early check;
    :meth:`FolderClaim.acquire` is the one that counts)."""
    path = Path(folder) / LOCK_NAME
    if fcntl is None or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(Path(folder), _holder(fd), purpose) from None
    finally:
        os.close(fd)
