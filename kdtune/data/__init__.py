"""Interaction data: the `Interactions` container, the synthetic generator, loaders and splits.

`load` is the single entry point (synthetic data, MovieLens by name, or a file in MovieLens, CiteULike,
CSV/TSV/Parquet format); `split` makes the seeded, cached train / valid / test split. One module per
concern: `interactions` (containers, fingerprints), `generator` (synthetic data), `formats` (loaders,
format inference, k-core, `load`), `columns` (which table column holds the user, item, rating and
timestamp), `splits` (splits and their cache), `download` (named datasets).
"""

from kdtune.data.columns import ROLES, SPELLINGS, parse_columns, resolve_columns
from kdtune.data.download import DEFAULT_CACHE_DIR, MOVIELENS_FILES, MOVIELENS_SHA256, fetch_movielens
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
from kdtune.data.splits import SPLIT_METHODS, split
from kdtune.errors import DataError

__all__ = [
    "DEFAULT_CACHE_DIR", "FORMATS", "MOVIELENS_FILES", "MOVIELENS_SHA256", "SPLIT_METHODS", "DataError",
    "Interactions", "Split", "fetch_movielens", "infer_format", "kcore_filter", "load", "load_citeulike",
    "load_movielens", "load_table", "split", "synthetic", "ROLES", "SPELLINGS", "parse_columns",
    "resolve_columns",
]
