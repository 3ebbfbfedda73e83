"""Interaction data: the `Interactions` container, the synthetic generator, loaders and splits.

`load` is the single entry point (synthetic data, MovieLens by name, or a file in MovieLens, CiteULike,
CSV/TSV/Parquet format); `split` makes the seeded, cached train / valid / test split. One module per
concern: `interactions` (containers, fingerprints), `generator` (synthetic data), `formats` (loaders,
format inference, k-core, `load`), `columns` (which table column holds the user, item, rating and
timestamp), `splits` (splits and their cache), `download` (named datasets), `sampler` (BPR triplets).
:func:`prepare` is what the entry points call: load and split the data a :class:`DataSettings` names.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kdtune.config import DEFAULT_CACHE_DIR, SPLIT_METHODS, DataSettings
from kdtune.data.columns import ROLES, SPELLINGS, parse_columns, resolve_columns
from kdtune.data.download import MOVIELENS_FILES, MOVIELENS_SHA256, fetch_movielens
from kdtune.data.formats import (
    FORMATS,
    infer_format,
    kcore_filter,
    load,
    load_citeulike,
    load_movielens,
    load_table,
)
from kdtune.data.generator import synthetic
from kdtune.data.interactions import Interactions, Split
from kdtune.data.splits import split
from kdtune.errors import DataError, UsageError

__all__ = [
    "DEFAULT_CACHE_DIR", "FORMATS", "MOVIELENS_FILES", "MOVIELENS_SHA256", "SPLIT_METHODS", "DataError",
    "Interactions", "Split", "fetch_movielens", "infer_format", "kcore_filter", "load", "load_citeulike",
    "load_movielens", "load_table", "split", "synthetic", "ROLES", "SPELLINGS", "parse_columns",
    "resolve_columns", "prepare",
]

log = logging.getLogger("kdtune")


def prepare(settings: DataSettings) -> tuple[Interactions, Split]:
    """Load and split the data named by ``settings``, checking that K fits the catalogue."""
    data = load(settings.data, fmt=settings.format, min_rating=settings.min_rating, kcore=settings.kcore,
                seed=settings.seed, cache_dir=settings.cache_dir, columns=settings.columns)
    if settings.k > data.n_items:
        raise UsageError(f"--k {settings.k} is larger than the catalogue ({data.n_items} items)")
    parts = split(data, seed=settings.seed, method=settings.split,
                  cache_dir=Path(settings.cache_dir).expanduser() / "splits")
    log.info("%s", data.describe())
    log.info("split %s: train %d / valid %d / test %d", settings.split, parts.train.nnz, parts.valid.nnz,
             parts.test.nnz)
    return data, parts
