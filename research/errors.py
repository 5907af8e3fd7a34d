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


class UserError(Exception):
    """Bad input or environment, with the fix in the message (the CLI: one line, exit code 2)."""


class InputFileError(UserError, FileNotFoundError):
    """A file or folder the user named is missing or not what it should be."""
