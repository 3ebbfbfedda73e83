"""Shared command-line plumbing: dataclass-driven arguments, data preparation, one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path

from kdtune.data import DEFAULT_CACHE_DIR, SPLIT_METHODS, Interactions, Split, load, split
from kdtune.errors import KdtuneError, UsageError

__all__ = ["UsageError", "DataArgs", "add_dataclass_args", "arg", "from_namespace", "prepare_data", "run_cli",
           "setup_logging"]

log = logging.getLogger("kdtune")


def arg(default, help: str, **kw):
    """A dataclass field carrying its command-line help (the field's one-line documentation)."""
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per field of ``cls``; type from the annotation, help from the field metadata."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        kw = {k: v for k, v in f.metadata.items() if k != "help"}
        help_text = f.metadata.get("help", "") + (f" (default: {f.default})" if f.default is not None else "")
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            continue
        # X | None -> X
        if isinstance(typ, types.UnionType) or typing.get_origin(typ) is typing.Union:
            typ = next(a for a in typing.get_args(typ) if a is not type(None))
        parser.add_argument(flag, type=kw.pop("type", typ), default=f.default, help=help_text, **kw)


def from_namespace(cls: type, ns: argparse.Namespace):
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass
class DataArgs:
    """Where the interactions come from and how they are split."""

    data: str = arg("synthetic", "'synthetic', 'synthetic:users=N,items=M', a file path, or a MovieLens name")
    format: str | None = arg(None, "file format when the extension does not say: movielens, citeulike, csv, tsv, parquet")
    columns: str | None = arg(None, "table columns as user=NAME,item=NAME[,rating=NAME][,timestamp=NAME] "
                              "(csv/tsv/parquet; roles not named are detected from common spellings)")
    min_rating: float | None = arg(None, "ratings (or counts) below this are dropped (explicit data -> "
                                   "implicit positives)")
    kcore: int = arg(0, "iteratively keep users and items with at least this many interactions (0 = off)")
    split: str = arg("random", "random (per user, 80/10/10) or temporal (leave-one-out by timestamp)",
                     choices=list(SPLIT_METHODS))
    k: int = arg(20, "K of Recall@K / NDCG@K")
    seed: int = arg(0, "seed of data generation, split, initialisation and sampling")
    cache_dir: str = arg(DEFAULT_CACHE_DIR, "where splits and teachers are cached")


def prepare_data(args: DataArgs) -> tuple[Interactions, Split]:
    """Load and split the data named by ``args``, checking that K fits the catalogue."""
    if args.k < 1:
        raise UsageError(f"--k must be >= 1 (got {args.k})")
    if args.kcore < 0:
        raise UsageError(f"--kcore must be >= 0 (got {args.kcore})")
    data = load(args.data, fmt=args.format, min_rating=args.min_rating, kcore=args.kcore, seed=args.seed,
                cache_dir=args.cache_dir, columns=args.columns)
    if args.k > data.n_items:
        raise UsageError(f"--k {args.k} is larger than the catalogue ({data.n_items} items)")
    parts = split(data, seed=args.seed, method=args.split, cache_dir=Path(args.cache_dir).expanduser() / "splits")
    log.info("%s", data.describe())
    log.info("split %s: train %d / valid %d / test %d", args.split, parts.train.nnz, parts.valid.nnz,
             parts.test.nnz)
    return data, parts


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
