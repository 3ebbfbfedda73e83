"""Serving latency of an MF architecture: a Faiss index of the item table searched for a batch of users.

What is timed is ``index.search(queries, k)``: the item table ``[q_i, b_i]`` in the architecture's index
(:mod:`kdtune.serving.index`; ``flat`` is exact float32 inner product), queried with ``[p_u, 1]``, on
Faiss's OpenMP threads. Latency depends on the architecture (``dim``, index) and on the catalog size, not
on trained values (an approximate index's also on how the items are spread, see
:mod:`kdtune.serving.catalog`), so a dim and a catalog size are enough: random tables are built. The
catalog size is a setting because at small catalogs (a few thousand items) the measured time is fixed
overhead (call, top-K heap), not work, while at ~1M items reading the item table dominates and latency
tracks ``dim``. Measure at the catalog size you will serve.

:func:`kdtune.serving.interleaved.profile_interleaved` times many architectures together, in interleaved
rounds: the figures a run uses. This module times one configuration at a time (``kdtune.compare``) and
holds what both share: an exact index's analytic cost and Faiss's thread count.
"""

from __future__ import annotations

import contextlib
import math
import operator
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kdtune.serving.catalog import gaussian_tables
from kdtune.serving.index import ELEMENT_BYTES, IndexSpec, augment_users, build_index, index_width

_FLOAT_BYTES = 4


@dataclass(frozen=True)
class LatencyResult:
    """Timings of one configuration (times are per batch, in milliseconds) and its analytic cost
    (:func:`analytic_cost`; ``None`` for an approximate index)."""

    median_ms: float
    p95_ms: float
    mean_ms: float
    runs: int
    batch_size: int
    k: int
    n_items: int
    dim: int
    index: str
    threads: int
    macs_per_query: int | None
    bytes_per_query: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def analytic_cost(dim: int, n_items: int, index: str = "flat") -> tuple[int | None, int | None]:
    """``(macs_per_query, bytes_per_query)`` of one user's search of an exact index over the full catalog.

    An exact index (``flat``, ``sq8``, ``fp16``, ``bf16``) scans every item: ``n_items * width``
    multiply-adds and the stored codes (``width`` elements of ``ELEMENT_BYTES`` per item, ``width`` =
    ``dim + 1`` with the bias, rounded up for the scalar quantisers) plus the float32 query. An IVF or HNSW
    search reads a data-dependent part of its index: ``(None, None)``.
    """
    spec = IndexSpec.parse(index)
    if not spec.exact:
        return None, None
    width = index_width(dim, spec)
    return n_items * width, n_items * width * ELEMENT_BYTES[spec.kind] + width * _FLOAT_BYTES


@contextlib.contextmanager
def faiss_threads(n: int) -> Iterator[int]:
    """Faiss's OpenMP threads fixed to ``n`` inside the block, restored after."""
    import faiss

    prev = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield n
    finally:
        faiss.omp_set_num_threads(prev)


def measure(
    model_or_dim: Any,
    n_items: int | None = None,
    k: int = 20,
    batch_size: int = 1,
    warmup: int = 20,
    runs: int = 200,
    threads: int | None = None,
    seed: int = 0,
    max_seconds: float | None = None,
    index: str = "flat",
) -> LatencyResult:
    """Time a search of ``index`` for ``batch_size`` users' top ``k``: warm-up, then ``runs`` timed runs.

    ``model_or_dim`` is an embedding size (random tables of ``n_items`` rows are built) or an ``MF``
    model, whose item table and biases are indexed (``n_items``, if given, must match its catalog).
    ``threads`` fixes Faiss's threads during the measurement (default: the current count); the previous
    count is restored afterwards. ``max_seconds`` caps the timed runs' total (at least 5 runs are kept);
    ``runs`` in the result is the number actually timed.
    """
    if batch_size < 1 or runs < 1 or warmup < 0:
        raise ValueError("batch_size and runs must be >= 1, warmup >= 0")
    items, bias, users = _tables(model_or_dim, n_items, batch_size, seed)
    n_items, dim = int(items.shape[0]), int(items.shape[1])
    if not 1 <= k <= n_items:
        raise ValueError(f"k must be in [1, n_items={n_items}], got {k}")
    built = build_index(index, items, bias, seed=seed)
    queries = augment_users(users, int(built.d))
    import faiss

    n_threads = faiss.omp_get_max_threads() if threads is None else int(threads)
    with faiss_threads(n_threads):
        times_ns = _timed_runs(lambda: built.search(queries, k), warmup, runs, max_seconds)
    ms = sorted(t / 1e6 for t in times_ns)
    macs, nbytes = analytic_cost(dim, n_items, index)
    return LatencyResult(
        median_ms=statistics.median(ms), p95_ms=ms[min(len(ms) - 1, math.ceil(0.95 * len(ms)) - 1)],
        mean_ms=statistics.fmean(ms), runs=len(ms), batch_size=batch_size, k=k, n_items=n_items, dim=dim,
        index=IndexSpec.parse(index).name, threads=n_threads, macs_per_query=macs, bytes_per_query=nbytes,
    )


def _tables(model_or_dim: Any, n_items: int | None, batch_size: int, seed: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(items [n, d], bias [n], users [batch_size, d])``: random tables of a dim, or a model's own."""
    rng = np.random.default_rng(seed)
    if not hasattr(model_or_dim, "item_emb"):
        dim = operator.index(model_or_dim)
        if n_items is None:
            raise ValueError("n_items is required when measuring a dim")
        if dim < 1 or n_items < 1:
            raise ValueError(f"dim and n_items must be >= 1, got {dim}, {n_items}")
        items, bias = gaussian_tables(seed)(dim, n_items)
        return items, bias, rng.standard_normal((batch_size, dim), np.float32) * 0.1
    items = model_or_dim.item_emb.weight.detach().float().cpu().numpy()
    bias = model_or_dim.item_bias.weight.detach().float().cpu().numpy().reshape(-1)
    if n_items is not None and n_items != items.shape[0]:
        raise ValueError(
            f"n_items={n_items} but the model has {items.shape[0]} items; measure(dim, n_items) for another catalog"
        )
    user_table = model_or_dim.user_emb.weight.detach().float().cpu().numpy()
    return items, bias, user_table[rng.integers(0, user_table.shape[0], batch_size)]


def _timed_runs(call: Callable[[], Any], warmup: int, runs: int, max_seconds: float | None) -> list[int]:
    """Nanoseconds of each of ``runs`` timed calls after ``warmup`` untimed ones, stopping once
    ``max_seconds`` of timed calls are spent (at least 5 are kept)."""
    times_ns: list[int] = []
    budget_ns = math.inf if max_seconds is None else max_seconds * 1e9
    spent_ns = 0
    for i in range(warmup + runs):
        t0 = time.perf_counter_ns()
        call()
        t1 = time.perf_counter_ns()
        if i >= warmup:
            times_ns.append(t1 - t0)
            spent_ns += t1 - t0
            # Big batches at big catalogs take seconds a run: stop at the time budget.
            if spent_ns > budget_ns and len(times_ns) >= 5:
                break
    return times_ns


_CACHE: dict[tuple, dict[str, Any]] = {}


def profile(
    dim: int,
    n_items: int,
    k: int = 20,
    batch_sizes: tuple[int, ...] = (1, 256),
    threads: int | None = None,
    runs: int = 200,
    warmup: int = 20,
    max_seconds: float | None = 2.0,
    index: str = "flat",
    **kw: Any,
) -> dict[str, Any]:
    """The latency figures of one architecture ``(dim, index)``, measured once per process per configuration.

    Returns flat keys: ``latency_ms`` and ``latency_p95_ms`` (one user, batch 1, always measured),
    for each other batch size B ``latency_bB_ms`` (median per batch) and ``latency_bB_per_user_us``,
    plus ``macs_per_query``, ``bytes_per_query``, ``threads`` and ``index``. Batches larger than 1 use
    ``max(10, runs // 10)`` timed runs, since each does B times the work; each batch size stops after
    ``max_seconds`` of timed runs (at least 5 runs). Repeated calls with the same settings return the
    same (cached) dict: do not mutate it. ``kw`` goes to ``measure`` (e.g. ``seed``).
    """
    import faiss

    n_threads = faiss.omp_get_max_threads() if threads is None else int(threads)
    sizes = tuple(sorted({1, *(int(b) for b in batch_sizes)}))
    index = IndexSpec.parse(index).name
    key = (dim, n_items, k, sizes, n_threads, runs, warmup, max_seconds, index, tuple(sorted(kw.items())))
    if key in _CACHE:
        return _CACHE[key]
    out: dict[str, Any] = {}
    for b in sizes:
        r = measure(dim, n_items, k=k, batch_size=b, warmup=warmup if b == 1 else max(2, warmup // 10),
                    runs=runs if b == 1 else max(10, runs // 10), threads=n_threads, max_seconds=max_seconds,
                    index=index, **kw)
        if b == 1:
            out.update(latency_ms=r.median_ms, latency_p95_ms=r.p95_ms, macs_per_query=r.macs_per_query,
                       bytes_per_query=r.bytes_per_query, threads=r.threads, index=r.index)
        else:
            out[f"latency_b{b}_ms"] = r.median_ms
            out[f"latency_b{b}_per_user_us"] = r.median_ms * 1e3 / b
    _CACHE[key] = out
    return out


def clear_cache() -> None:
    """Forget every cached ``profile`` result (for tests and re-measurements in isolation)."""
    _CACHE.clear()
