"""kdtune's exceptions: one base class and a few subclasses, raised by library code.

Only the entry points (`kdtune.cli.run_cli`) turn them into a one-line message and exit code 2; any
other exception is a bug and keeps its traceback. Each subclass is also a `ValueError`, so code that
catches ``ValueError`` around a bad value keeps working.
"""

from __future__ import annotations

__all__ = ["KdtuneError", "DataError", "SpaceError", "UsageError", "TrialOutOfMemory"]


class KdtuneError(Exception):
    """Base of every error the user can fix: reported in one line, never with a traceback."""


class DataError(KdtuneError, ValueError):
    """A data problem: missing or unreadable file, malformed line, unknown format or columns, nothing left
    after filtering, an unusable cache folder."""


class SpaceError(KdtuneError, ValueError):
    """An invalid search space; the message names the offending key."""


class UsageError(KdtuneError, ValueError):
    """A command-line value that makes no sense, or a run directory that cannot be used."""


class TrialOutOfMemory(KdtuneError, MemoryError):
    """A trial ran out of (GPU) memory: that trial ends as an error, in one line naming its size, and the
    search goes on."""
