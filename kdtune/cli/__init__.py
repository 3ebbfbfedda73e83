"""Command-line entry points: argument parsing, checking every flag where it is parsed, one-line errors.

``python -m kdtune.search`` (:mod:`kdtune.cli.search`), ``python -m kdtune.export``
(:mod:`kdtune.cli.export`) and ``python -m kdtune.compare`` (:mod:`kdtune.cli.compare`). Flags come from
the settings dataclasses of :mod:`kdtune.config`; the library never imports this package.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from collections.abc import Callable

from kdtune.config import DataSettings
from kdtune.errors import KdtuneError, UsageError

__all__ = ["add_dataclass_args", "check_data", "from_namespace", "run_cli", "setup_logging"]

log = logging.getLogger("kdtune")


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per field of ``cls`` that has help; type from the annotation, help from the field
    metadata, followed by its default (once)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        kw = {k: v for k, v in f.metadata.items() if k != "help"}
        help_text = f.metadata["help"] + (f" (default: {f.default})" if f.default is not None else "")
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            continue
        # X | None -> X
        if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
            typ = next(a for a in typing.get_args(typ) if a is not type(None))
        parser.add_argument(flag, type=kw.pop("type", typ), default=f.default, help=help_text, **kw)


def from_namespace(cls: type, ns: argparse.Namespace):
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if hasattr(ns, f.name)})


def check_data(settings: DataSettings) -> None:
    """The data flags that make no sense whatever the data (the catalogue is checked when it is loaded)."""
    if settings.k < 1:
        raise UsageError(f"--k must be >= 1 (got {settings.k})")
    if settings.kcore < 0:
        raise UsageError(f"--kcore must be >= 0 (got {settings.kcore})")


def setup_logging(verbose: bool = False) -> None:
    """kdtune's own messages at INFO; other libraries' at WARNING (their INFO chatter hides ours)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``main``; a `KdtuneError` (the user's to fix) becomes one line on stderr and exit code 2.

    Anything else is a bug and keeps its traceback: library code turns a user's missing or unreadable
    file into a `DataError`/`UsageError` where it opens it, so a stray ``FileNotFoundError`` is not hidden.
    """
    try:
        return int(main(argv) or 0)
    except KdtuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
