"""Latency of many architectures timed together, in interleaved rounds: one figure per architecture.

Every consumer (search, export) uses the same measurement of the same architecture, so two students of
one architecture can never be told apart by measurement noise. Each call is a search of the
architecture's Faiss index (:mod:`kdtune.serving.index`; ``flat`` for exact float32 inner product), built
over the item table ``tables(dim, n_items)`` gives: latency depends on shapes and the index, not on trained
values, except that an approximate index's speed depends on how the items are spread, so a run passes
tables drawn like its trained ones.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from kdtune.serving.arch import Arch, arch_key, parse_arch
from kdtune.serving.catalog import Tables, gaussian_tables
from kdtune.serving.index import augment_users, build_index, index_bytes
from kdtune.serving.timing import analytic_cost, faiss_threads


def profile_interleaved(
    archs: Iterable[int | str | Sequence[Any]],
    n_items: int,
    k: int = 20,
    threads: int | None = 1,
    rounds: int = 7,
    runs: int = 50,
    batch_sizes: tuple[int, ...] = (1, 256),
    seed: int = 0,
    max_seconds: float = 3.0,
    warmup: int = 3,
    tables: Tables | None = None,
) -> dict[str, dict[str, Any]]:
    """Latency of every architecture, timed together in interleaved rounds; keyed by ``arch_key``.

    Each batch size gets ``max_seconds / len(batch_sizes)`` of timed work. After ``warmup`` calls per
    architecture (the fastest estimates its cost), ``rounds`` rounds visit every architecture once, in
    an order shuffled per round (seeded): a drift of the machine's speed then hits all architectures
    alike instead of the ones timed during a slow minute. Every visit gets an equal share of the
    budget: as many timed calls as fit in it, at most ``runs`` and at least one (fast architectures get
    more). A visit starts with one untimed call (the previous architecture evicted this one's table from
    cache) unless a call takes > 50 ms, where tables far exceed any cache. When one call per visit does
    not fit, fewer rounds are run: at least 3 at batch 1; at larger batches, if not one round fits, the
    estimating call (made in sequence) is the figure, with no spread. Each call searches the
    architecture's index (built once, over ``tables(dim, n_items)``, Gaussian by default) for the top
    ``k`` of a batch of random user vectors, the same ones for every index of a dim, on ``threads`` of
    Faiss's threads (``None``: the current count).

    Returns per architecture: ``dim``, ``index``, ``n_items``, ``k``, ``threads``, ``macs_per_query`` and
    ``bytes_per_query`` (``analytic_cost``: None for an approximate index), ``bytes`` (the serialized
    index), and, if 1 is among ``batch_sizes`` (the default; leave it out only to time big batches
    alone), at batch 1 ``latency_ms`` (median of the round medians), ``latency_spread_ms`` (interquartile
    range of the round medians; ``None`` with fewer than 2 rounds), ``latency_p95_ms`` (p95 of all timed
    batch-1 calls), ``latency_rounds`` and ``latency_runs`` (timed calls in all); for each other batch
    size B ``latency_bB_ms``, ``latency_bB_spread_ms``, ``latency_bB_per_user_us`` and ``latency_bB_rounds``.
    """
    parsed = list(dict.fromkeys(parse_arch(a) for a in archs))
    if not parsed:
        raise ValueError("no architecture to profile")
    if not 1 <= k <= n_items:
        raise ValueError(f"k must be in [1, n_items={n_items}], got {k}")
    if rounds < 1 or runs < 1 or warmup < 1:
        raise ValueError("rounds, runs and warmup must be >= 1")
    sizes = tuple(sorted({int(b) for b in batch_sizes}))
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch_sizes must be positive, got {batch_sizes}")
    tables = tables or gaussian_tables(seed)
    keys = [arch_key(*a) for a in parsed]
    indexes = {key: build_index(a.index, *tables(a.dim, n_items), seed=seed) for key, a in zip(keys, parsed, strict=True)}
    rng = np.random.default_rng(seed)
    users = {(a.dim, b): rng.standard_normal((b, a.dim), np.float32) * 0.1 for a in parsed for b in sizes}
    queries = {(key, b): augment_users(users[(a.dim, b)], int(indexes[key].d))
               for key, a in zip(keys, parsed, strict=True) for b in sizes}

    def call(key: str, b: int) -> float:
        t0 = time.perf_counter_ns()
        indexes[key].search(queries[(key, b)], k)
        return (time.perf_counter_ns() - t0) / 1e6

    import faiss

    n_threads = faiss.omp_get_max_threads() if threads is None else int(threads)
    order = random.Random(seed)
    out = {key: _record_of(a, indexes[key], n_items, k) for key, a in zip(keys, parsed, strict=True)}
    with faiss_threads(n_threads):
        for b in sizes:
            budget_ms = max_seconds / len(sizes) * 1e3
            medians, pooled, n_rounds = _rounds(call, keys, b, budget_ms, rounds, runs, warmup, order)
            _record(out, b, medians, pooled, n_rounds)
    for rec in out.values():
        rec["threads"] = n_threads
    return out


def _record_of(arch: Arch, index: Any, n_items: int, k: int) -> dict[str, Any]:
    """The fixed part of an architecture's record: its shape, its analytic cost (an exact index reads every
    row once; an IVF or HNSW search reads a data-dependent part of it, so its cost is None) and its bytes."""
    macs, nbytes = analytic_cost(arch.dim, n_items, arch.index)
    return {"dim": arch.dim, "index": arch.index, "n_items": n_items, "k": k, "macs_per_query": macs,
            "bytes_per_query": nbytes, "bytes": index_bytes(index)}


def _rounds(call: Callable[[str, int], float], keys: list[str], b: int, budget_ms: float, rounds: int, runs: int,
            warmup: int, order: random.Random) -> tuple[dict[str, list[float]], dict[str, list[float]], int]:
    """Interleaved rounds at batch ``b``: each round visits every architecture once, in a shuffled order.
    Returns each architecture's round medians, all its timed calls, and the number of rounds."""
    est = {key: min(call(key, b) for _ in range(warmup if b == 1 else 1)) for key in keys}
    affordable = budget_ms / sum(est.values())  # rounds of one call per architecture
    n_rounds = rounds if affordable >= rounds else max(3 if b == 1 else 0, int(affordable))
    # Each architecture gets an equal share of a round's time: fast ones take more calls.
    share_ms = budget_ms / max(1, n_rounds) / len(keys)
    per_visit = {key: max(1, min(runs, int(share_ms / max(est[key], 1e-6)))) for key in keys}
    medians: dict[str, list[float]] = {key: [] for key in keys}
    pooled: dict[str, list[float]] = {key: [] for key in keys}
    if n_rounds == 0:
        # Not even one round fits (big batches at big catalogs): the estimating call, made in sequence,
        # is the only measurement; its spread is unknown (None).
        for key in keys:
            medians[key].append(est[key])
            pooled[key].append(est[key])
        return medians, pooled, 1
    visits = list(keys)
    for _ in range(n_rounds):
        order.shuffle(visits)
        for key in visits:
            if est[key] < 50.0:
                call(key, b)
            times = [call(key, b) for _ in range(per_visit[key])]
            medians[key].append(statistics.median(times))
            pooled[key].extend(times)
    return medians, pooled, n_rounds


def _record(out: dict[str, dict[str, Any]], b: int, medians: dict[str, list[float]],
            pooled: dict[str, list[float]], n_rounds: int) -> None:
    """Batch ``b``'s figures into each architecture's record."""
    name = "latency" if b == 1 else f"latency_b{b}"
    for key, rec in out.items():
        rec[f"{name}_ms"] = statistics.median(medians[key])
        rec[f"{name}_spread_ms"] = _iqr(medians[key])
        rec[f"{name}_rounds"] = n_rounds
        if b == 1:
            ms = sorted(pooled[key])
            rec["latency_p95_ms"] = ms[min(len(ms) - 1, math.ceil(0.95 * len(ms)) - 1)]
            rec["latency_runs"] = len(ms)
        else:
            rec[f"{name}_per_user_us"] = rec[f"{name}_ms"] * 1e3 / b


def _iqr(values: list[float]) -> float | None:
    """Interquartile range (inclusive quantiles); ``None`` for fewer than 2 values."""
    if len(values) < 2:
        return None
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q3 - q1


def order_contradictions(profiles: dict[str, dict[str, Any]], batch: int = 1) -> list[str]:
    """Pairs whose measured latency order contradicts their analytic cost, one readable line each.

    Only pairs that share a dim or an index are compared (other pairs follow from those). ``a``
    contradicts ``b`` when ``a`` costs no more than ``b`` in both bytes and multiply-adds (less in one)
    yet measures slower by more than the two spreads together (a missing spread counts as 0). At
    small catalogs this is expected (fixed overhead and top-K dominate) and says the analytic cost is not
    a proxy there; at large ones it points at a slow index or at a measurement accident.
    """
    name = "latency" if batch == 1 else f"latency_b{batch}"
    lines = []
    costed = {key: rec for key, rec in profiles.items() if rec.get("macs_per_query") is not None}
    for ka, a in costed.items():
        for kb, b in costed.items():
            cheaper = (a["bytes_per_query"] <= b["bytes_per_query"] and a["macs_per_query"] <= b["macs_per_query"]
                       and (a["bytes_per_query"], a["macs_per_query"]) != (b["bytes_per_query"], b["macs_per_query"]))  # fmt: skip
            related = a["dim"] == b["dim"] or a["index"] == b["index"]
            if not (cheaper and related) or f"{name}_ms" not in a or f"{name}_ms" not in b:
                continue
            gap = a[f"{name}_ms"] - b[f"{name}_ms"]
            margin = (a.get(f"{name}_spread_ms") or 0.0) + (b.get(f"{name}_spread_ms") or 0.0)
            if gap > margin:
                lines.append(
                    f"{ka} measured {a[f'{name}_ms']:.4g} ms > {kb} {b[f'{name}_ms']:.4g} ms (batch {batch}, "
                    f"gap {gap:.3g} ms > spreads {margin:.3g} ms) though it reads "
                    f"{a['bytes_per_query'] / b['bytes_per_query']:.2f}x the bytes and does "
                    f"{a['macs_per_query'] / b['macs_per_query']:.2f}x the multiply-adds"
                )
    return lines
