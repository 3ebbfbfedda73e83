"""Item tables at a catalogue size, for timing indexes: a trained table's rows, then rows drawn like them.

An approximate index's speed and recall depend on how the items are spread (IVF's cells, HNSW's graph), so
a catalogue larger than the data's is filled with rows drawn from the trained table's distribution: each
extra row is a random trained row plus Gaussian noise of ``noise`` times each column's standard deviation
(its bias likewise), which keeps the table's clusters and popularity directions instead of flattening
them into one Gaussian. A table of another dim is the trained one projected on its leading principal
directions (a smaller dim) or padded with noise columns (a larger one).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

Tables = Callable[[int, int], tuple[np.ndarray, np.ndarray]]
"""``tables(dim, n_items) -> (items [n_items, dim] float32, bias [n_items] float32)``."""

EXTRA_NOISE = 0.25
"""Noise of an extra row, as a fraction of each column's standard deviation."""


def gaussian_tables(seed: int = 0) -> Tables:
    """Item tables of i.i.d. Gaussian entries (scale 0.1), bias scale 0.01: no structure for an index to use."""

    def tables(dim: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, dim, n_items])
        return (rng.standard_normal((n_items, dim), np.float32) * 0.1,
                rng.standard_normal(n_items, np.float32) * 0.01)

    return tables


def trained_tables(items: np.ndarray, bias: np.ndarray, seed: int = 0, noise: float = EXTRA_NOISE) -> Tables:
    """Tables of any dim and size drawn from one trained item table and its bias (see the module's text)."""
    items = np.asarray(items, np.float32)
    bias = np.asarray(bias, np.float32).reshape(-1)

    @functools.lru_cache(maxsize=1)  # the indexes of one dim are built one after another over the same table
    def tables(dim: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, dim, n_items])
        return extend(reshape_dim(items, dim, rng), bias, n_items, rng, noise)

    return tables


def reshape_dim(items: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``items`` on its ``dim`` leading principal directions (fewer columns) or padded with noise (more)."""
    n, d = items.shape
    if dim == d:
        return items
    if dim < d:
        centred = items - items.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        return np.ascontiguousarray(items @ vt[:dim].T, dtype=np.float32)
    pad = rng.standard_normal((n, dim - d)).astype(np.float32) * float(items.std())
    return np.ascontiguousarray(np.hstack([items, pad]))


def extend(items: np.ndarray, bias: np.ndarray, n_items: int, rng: np.random.Generator,
           noise: float = EXTRA_NOISE) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n_items`` rows of the table, then (if more are asked for) jittered copies of random rows."""
    n = items.shape[0]
    if n_items <= n:
        return items[:n_items].copy(), bias[:n_items].copy()
    pick = rng.integers(0, n, n_items - n)
    extra = items[pick] + rng.standard_normal((n_items - n, items.shape[1])).astype(np.float32) * (
        noise * items.std(0))
    extra_bias = bias[pick] + rng.standard_normal(n_items - n).astype(np.float32) * (noise * float(bias.std()))
    return (np.ascontiguousarray(np.vstack([items, extra]), dtype=np.float32),
            np.concatenate([bias, extra_bias]).astype(np.float32))
