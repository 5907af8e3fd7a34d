"""The one base class of errors a user can fix.

A :class:`UserError` is caused by input or the environment, not by a bug: a file (missing,
damaged, unreadable), a key or value (config, sweep, command line), or the machine (a missing
extra, an unreachable service, a full disk). Its message names the file or key and says what to
do. Every component raises a subclass of it (``ConfigError``, ``DatasetLayoutError``,
``CheckpointError`` ...); the CLI catches exactly this class (and Ctrl-C), prints the message on
one line and exits with code 2. Anything else is a bug and keeps its traceback.

Subclasses usually also derive from the built-in exception that describes them
(``ValueError``, ``FileNotFoundError``, ``OSError``), so library callers can catch either.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


class UserError(Exception):
    """Bad input or environment, with the fix in the message (the CLI: one line, exit code 2).

    Raised in a DataLoader worker process, the error reaches the main process re-created by torch with
    its whole traceback as the message ("Caught ImageDecodeError in DataLoader worker process 0 ...");
    the original message is taken back out of it, so the user sees the same line as without workers.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (_unwrap_worker_message(args[0], type(self)),)
        super().__init__(*args)


WORKER_PREFIX = "Caught "
WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):"


def _unwrap_worker_message(message: str, cls: type) -> str:
    """The original message of an error torch re-raised from a DataLoader worker; others unchanged."""
    if not (message.startswith(WORKER_PREFIX) and WORKER_TRACEBACK in message):
        return message
    for name in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
        at = message.rfind("\n" + name)
        if at >= 0:
            worker = message[len(WORKER_PREFIX) + len(cls.__name__) + 1 : message.index(WORKER_TRACEBACK)].rstrip(".")
            return f"{message[at + 1 + len(name):].rstrip()} ({worker})"
    return message


class InputFileError(UserError, FileNotFoundError):
    """A file or folder the user named is missing or not what it should be."""


class OutputWriteError(UserError, OSError):
    """An output file could not be written (disk full, read-only folder); nothing half-written is left."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]" prefix
        return self.strerror or super().__str__()


# OS errors that only writing raises: the environment's, never a bug's.
WRITE_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT})


def cannot_write(path: str | Path, err: OSError) -> OutputWriteError:
    """The one message for an output that could not be written (disk full, read-only folder)."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    return OutputWriteError(
        err.errno, f"cannot write {path}: {reason}. Free disk space or make the folder writable (or choose "
        "another output folder), then resume or rerun (finished files are intact)"
    )


def check_writable(folder: str | Path) -> None:
    """Raise :class:`OutputWriteError` unless files can be written in ``folder`` (made later if missing:
    its nearest existing parent is checked); nothing is created."""
    folder = Path(folder).expanduser().absolute()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or (existing.is_dir() and os.access(existing, os.W_OK)):
        return
    if not existing.is_dir():
        code = errno.ENOTDIR
    else:
        code = errno.EROFS if os.statvfs(existing).f_flag & os.ST_RDONLY else errno.EACCES
    raise cannot_write(folder, OSError(code, os.strerror(code)))


class Interrupted(KeyboardInterrupt):
    """A termination signal (SIGTERM from ``kill``, ``timeout``, SLURM or Kubernetes; SIGHUP when the
    terminal closes) received by a command: handled exactly like Ctrl-C (the run is marked
    ``interrupted``, W&B closed, temporary files removed), then the process exits with 128 + the
    signal number (143 for SIGTERM), as a shell reports a process the signal ended."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(name)
        self.signum, self.name = signum, name

    def __reduce__(self) -> tuple[type, tuple[int, str]]:  # under torchrun rank 0 sends it to the others
        return type(self), (self.signum, self.name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def interrupt_exit_code(err: BaseException) -> int:
    """The exit code of a command ended by ``err``: 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
    return err.exit_code if isinstance(err, Interrupted) else 130


def interrupt_name(err: BaseException) -> str:
    """How the user stopped the command: ``Ctrl-C`` or the signal's name (``SIGTERM``)."""
    return err.name if isinstance(err, Interrupted) else "Ctrl-C"
