"""Item tables at a catalogue size: a trained table's rows, then rows drawn from its distribution.

A catalogue larger than the data's is what a served student meets in production, and both its speed (an
approximate index's cells and graph depend on how the items are spread) and its quality (more items
compete for a user's top-K) change with it. The rows beyond the data's catalogue are drawn from one
Gaussian over the augmented rows ``[q_i, b_i]`` with the trained table's mean and covariance (the bias's
mean, its standard deviation and its covariance with the vectors included): they have the table's scale,
popularity direction and correlations, yet none is a near-copy of a real item, so a real item keeps its
place in a user's top-K unless a drawn row genuinely outscores it, and exact recall falls with the
catalogue size the way it does when unrelated items are added. Drawn rows are never relevant to a user.
(Copies of random trained rows plus a little noise, the earlier draw, were near-copies of real items: at a
million items they crowded the real test items out of the exact top-K and made neighbourhoods tighter than
a real catalogue's, which flatters IVF and HNSW; BENCHMARKS.md, "Serving at the catalogue size".)
A table of another dim is the trained one projected on its leading principal directions (a smaller dim)
or padded with noise columns (a larger one).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

Tables = Callable[[int, int], tuple[np.ndarray, np.ndarray]]
"""``tables(dim, n_items) -> (items [n_items, dim] float32, bias [n_items] float32)``."""

DRAWN_ROWS = ("rows beyond the data's catalogue drawn from a Gaussian with the mean and covariance of the "
              "trained rows [item vector, item bias]; drawn rows are never relevant")
"""What the rows beyond the data's catalogue are, as a run's record and summary state it."""


def gaussian_tables(seed: int = 0) -> Tables:
    """Item tables of i.i.d. Gaussian entries (scale 0.1), bias scale 0.01: no structure for an index to use."""

    def tables(dim: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, dim, n_items])
        return (rng.standard_normal((n_items, dim), np.float32) * 0.1,
                rng.standard_normal(n_items, np.float32) * 0.01)

    return tables


def trained_tables(items: np.ndarray, bias: np.ndarray, seed: int = 0) -> Tables:
    """Tables of any dim and size drawn from one trained item table and its bias (see the module's text)."""
    items = np.asarray(items, np.float32)
    bias = np.asarray(bias, np.float32).reshape(-1)

    @functools.lru_cache(maxsize=1)  # the indexes of one dim are built one after another over the same table
    def tables(dim: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, dim, n_items])
        return extend(reshape_dim(items, dim, rng), bias, n_items, rng)

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


def extend(items: np.ndarray, bias: np.ndarray, n_items: int, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n_items`` rows of the table, then (if more are asked for) rows drawn by :func:`draw_rows`."""
    n = items.shape[0]
    if n_items <= n:
        return items[:n_items].copy(), bias[:n_items].copy()
    extra, extra_bias = draw_rows(items, bias, n_items - n, rng)
    return (np.ascontiguousarray(np.vstack([items, extra]), dtype=np.float32),
            np.concatenate([bias, extra_bias]).astype(np.float32))


def draw_rows(items: np.ndarray, bias: np.ndarray, n: int, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows ``(vectors [n, dim], bias [n])`` from the Gaussian of the augmented rows ``[q_i, b_i]``
    (their mean and covariance over the table), float32."""
    rows = np.hstack([np.asarray(items, np.float64), np.asarray(bias, np.float64).reshape(-1, 1)])
    mean, cov = rows.mean(0), np.cov(rows, rowvar=False)
    # A square root of the covariance by eigendecomposition: a singular one (an all-zero bias) is fine too.
    values, vectors = np.linalg.eigh(cov)
    root = (vectors * np.sqrt(np.clip(values, 0.0, None))).astype(np.float32)
    drawn = rng.standard_normal((n, rows.shape[1]), np.float32) @ root.T + mean.astype(np.float32)
    return np.ascontiguousarray(drawn[:, :-1]), np.ascontiguousarray(drawn[:, -1])


def with_drawn_rows(items: np.ndarray, bias: np.ndarray, n_items: int | None, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A trained table (all its rows) extended to ``n_items`` rows with drawn ones; unchanged when it has as
    many already (``None``: the data's catalogue). The same table, size and seed give the same rows."""
    items = np.asarray(items, np.float32)
    bias = np.asarray(bias, np.float32).reshape(-1)
    if n_items is None or n_items <= items.shape[0]:
        return items, bias
    return extend(items, bias, n_items, np.random.default_rng([seed, n_items]))
