"""Exceptions raised by dpcache, each with a message a user can act on (one line, naming the file involved)."""

from __future__ import annotations

import os


class DPCacheError(ValueError):
    """Base class: bad input or a configuration that cannot work."""


class UsageError(DPCacheError):
    """A command-line request refused before any work starts (out of range, absurd, contradictory)."""


class InputFileError(DPCacheError):
    """A file the project reads is missing, unreadable, truncated or not what it should be; names the file."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)


class OutputPathError(DPCacheError):
    """An output path that cannot be written (a directory where a file is asked, unwritable, ...)."""

    def __init__(self, flag: str, path: str | os.PathLike[str], problem: str) -> None:
        super().__init__(f"{flag} {path}: {problem}")
        self.path = str(path)


class CostTensorError(DPCacheError):
    """A file or array that is not a valid cost tensor (wrong shape, NaN, pickle, not a tensor file)."""


class CostTensorNotFoundError(CostTensorError, FileNotFoundError):
    """No cost tensor file at the path given (nor a bundled tensor of that name)."""


class CostTensorMismatchError(DPCacheError):
    """A cost tensor whose metadata does not match the configuration it is used with."""


class UnreachablePlanError(DPCacheError):
    """No schedule with the requested budget satisfies the mandatory steps and the maximum jump."""


class ScheduleMismatchError(DPCacheError):
    """A pipeline call whose step count differs from the schedule's."""


def field_mismatches(found: object, expected: dict[str, object]) -> list[str]:
    """`name: expected X, found Y` for every given (not None) field of `expected` that `found` differs in."""
    return [
        f"{name}: expected {want!r}, found {getattr(found, name)!r}"
        for name, want in expected.items()
        if want is not None and getattr(found, name) != want
    ]
