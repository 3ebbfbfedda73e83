"""Serving latency of an MF architecture: score the full catalog for a batch of users, take the top K.

What is timed is ``scores = user_vecs @ item_table.T + item_bias; torch.topk(scores, k)``. Latency
depends on the architecture (``dim``) and on the catalog size, not on trained values, so a dim and a
catalog size are enough: random tables are built. The catalog size is a setting because at small
catalogs (a few thousand items) the measured time is fixed overhead (kernel launches, ``topk``), not
work: ``dim`` 64 vs 8 then changes it ~2x at most, while at ~1M items reading the item table dominates
and latency tracks ``dim``. Measure at the catalog size you will serve.

:func:`kdtune.serving.interleaved.profile_interleaved` times many architectures ``(dim, precision)``
together, in interleaved rounds, with the serving kernels of :class:`kdtune.model.kernels.ItemIndex`: the
figures a run uses. This module times one configuration at a time (benchmarks, ``kdtune.compare``).
"""

from __future__ import annotations

import math
import operator
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from kdtune.model.kernels import ELEMENT_BYTES, check_precision

_FLOAT_BYTES = 4


@dataclass(frozen=True)
class LatencyResult:
    """Timings of one configuration (times are per batch, in milliseconds) and its analytic cost.

    ``macs_per_query`` and ``bytes_per_query`` are for one user: ``n_items * dim`` multiply-adds plus
    ``n_items`` bias adds; the item table and biases read (``n_items * (dim + 1) * 4`` bytes) plus the
    user vector. In a batch the table is read once for all users, so per-user bytes shrink with it.
    """

    median_ms: float
    p95_ms: float
    mean_ms: float
    runs: int
    batch_size: int
    k: int
    n_items: int
    dim: int
    threads: int
    device: str
    macs_per_query: int
    bytes_per_query: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def analytic_cost(dim: int, n_items: int, precision: str = "fp32") -> tuple[int, int]:
    """``(macs_per_query, bytes_per_query)`` of scoring one user against the full catalog.

    Bytes are those the serving kernel reads at ``precision``: the item table at that element size, the
    bias (float32, but 16-bit with 16-bit tables), int8's per-row float32 scales, and the user vector.
    """
    check_precision(precision)
    macs = n_items * dim + n_items
    bias_bytes = 2 if precision in ("bf16", "fp16") else _FLOAT_BYTES
    scale_bytes = _FLOAT_BYTES if precision == "int8" else 0
    nbytes = n_items * (dim * ELEMENT_BYTES[precision] + bias_bytes + scale_bytes) + dim * _FLOAT_BYTES
    return macs, nbytes


def measure(
    model_or_dim: Any,
    n_items: int | None = None,
    k: int = 20,
    batch_size: int = 1,
    warmup: int = 20,
    runs: int = 200,
    threads: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    max_seconds: float | None = None,
) -> LatencyResult:
    """Time full-catalog scoring + top-``k`` for ``batch_size`` users: warm-up, then ``runs`` timed runs.

    ``model_or_dim`` is an embedding size (random tables of ``n_items`` rows are built) or an ``MF``
    model, whose item table and biases are used (``n_items``, if given, must match its catalog).
    ``threads`` fixes ``torch.set_num_threads`` during the measurement (default: the current count);
    the previous count is restored afterwards. On CUDA each run is bracketed by synchronisations.
    ``max_seconds`` caps the timed runs' total (at least 5 runs are kept); ``runs`` in the result is the
    number actually timed.
    """
    if batch_size < 1 or runs < 1 or warmup < 0:
        raise ValueError("batch_size and runs must be >= 1, warmup >= 0")
    dev = torch.device(device)
    items, bias, users = _tables(model_or_dim, n_items, batch_size, seed)
    n_items, dim = int(items.shape[0]), int(items.shape[1])
    if not 1 <= k <= n_items:
        raise ValueError(f"k must be in [1, n_items={n_items}], got {k}")
    # The table stays [n_items, dim] row-major, as served; addmm takes the transposed view without a copy.
    items_t, bias, users = items.to(dev).t(), bias.to(dev), users.to(dev).contiguous()
    scores = torch.empty(batch_size, n_items, device=dev)

    def call() -> None:
        torch.addmm(bias, users, items_t, out=scores)
        torch.topk(scores, k, dim=1)

    prev_threads = torch.get_num_threads()
    n_threads = prev_threads if threads is None else int(threads)
    try:
        torch.set_num_threads(n_threads)
        times_ns = _timed_runs(call, dev, warmup, runs, max_seconds)
    finally:
        torch.set_num_threads(prev_threads)

    ms = sorted(t / 1e6 for t in times_ns)
    macs, nbytes = analytic_cost(dim, n_items)
    return LatencyResult(
        median_ms=statistics.median(ms),
        p95_ms=ms[min(len(ms) - 1, math.ceil(0.95 * len(ms)) - 1)],
        mean_ms=statistics.fmean(ms),
        runs=len(ms),
        batch_size=batch_size,
        k=k,
        n_items=n_items,
        dim=dim,
        threads=n_threads,
        device=str(dev),
        macs_per_query=macs,
        bytes_per_query=nbytes,
    )


def _tables(model_or_dim: Any, n_items: int | None, batch_size: int, seed: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(items [n, d], bias [n], users [batch_size, d])``: random tables of a dim, or a model's own."""
    gen = torch.Generator().manual_seed(seed)
    if not hasattr(model_or_dim, "item_emb"):
        dim = operator.index(model_or_dim)
        if n_items is None:
            raise ValueError("n_items is required when measuring a dim")
        if dim < 1 or n_items < 1:
            raise ValueError(f"dim and n_items must be >= 1, got {dim}, {n_items}")
        items = torch.randn(n_items, dim, generator=gen).mul_(0.1)
        bias = torch.randn(n_items, generator=gen).mul_(0.01)
        return items, bias, torch.randn(batch_size, dim, generator=gen).mul_(0.1)
    items = model_or_dim.item_emb.weight.detach().float().cpu()
    bias = model_or_dim.item_bias.weight.detach().float().cpu().reshape(-1)
    if n_items is not None and n_items != items.shape[0]:
        raise ValueError(
            f"n_items={n_items} but the model has {items.shape[0]} items; measure(dim, n_items) for another catalog"
        )
    user_table = model_or_dim.user_emb.weight.detach().float().cpu()
    return items, bias, user_table[torch.randint(user_table.shape[0], (batch_size,), generator=gen)]


def _timed_runs(call: Any, dev: torch.device, warmup: int, runs: int, max_seconds: float | None) -> list[int]:
    """Nanoseconds of each of ``runs`` timed calls after ``warmup`` untimed ones (CUDA synchronised around
    each), stopping once ``max_seconds`` of timed calls are spent (at least 5 are kept)."""
    cuda = dev.type == "cuda"
    times_ns: list[int] = []
    budget_ns = math.inf if max_seconds is None else max_seconds * 1e9
    spent_ns = 0
    with torch.inference_mode():
        for i in range(warmup + runs):
            if cuda:
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter_ns()
            call()
            if cuda:
                torch.cuda.synchronize(dev)
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
    device: str = "cpu",
    runs: int = 200,
    warmup: int = 20,
    max_seconds: float | None = 2.0,
    **kw: Any,
) -> dict[str, Any]:
    """The latency figures a trial reports, measured once per process per configuration.

    Returns flat keys: ``latency_ms`` and ``latency_p95_ms`` (one user, batch 1, always measured),
    for each other batch size B ``latency_bB_ms`` (median per batch) and ``latency_bB_per_user_us``,
    plus ``macs_per_query``, ``bytes_per_query``, ``threads`` and ``device``. Batches larger than 1 use
    ``max(10, runs // 10)`` timed runs, since each does B times the work; each batch size stops after
    ``max_seconds`` of timed runs (at least 5 runs). Repeated calls with the same settings return the
    same (cached) dict: do not mutate it. ``kw`` goes to ``measure`` (e.g. ``seed``).
    """
    n_threads = torch.get_num_threads() if threads is None else int(threads)
    sizes = tuple(sorted({1, *(int(b) for b in batch_sizes)}))
    key = (
        dim,
        n_items,
        k,
        sizes,
        n_threads,
        str(torch.device(device)),
        runs,
        warmup,
        max_seconds,
        tuple(sorted(kw.items())),
    )
    if key in _CACHE:
        return _CACHE[key]
    out: dict[str, Any] = {}
    for b in sizes:
        r = measure(
            dim,
            n_items,
            k=k,
            batch_size=b,
            warmup=warmup if b == 1 else max(2, warmup // 10),
            runs=runs if b == 1 else max(10, runs // 10),
            threads=n_threads,
            device=device,
            max_seconds=max_seconds,
            **kw,
        )
        if b == 1:
            out.update(
                latency_ms=r.median_ms,
                latency_p95_ms=r.p95_ms,
                macs_per_query=r.macs_per_query,
                bytes_per_query=r.bytes_per_query,
                threads=r.threads,
                device=r.device,
            )
        else:
            out[f"latency_b{b}_ms"] = r.median_ms
            out[f"latency_b{b}_per_user_us"] = r.median_ms * 1e3 / b
    _CACHE[key] = out
    return out


def clear_cache() -> None:
    """Forget every cached ``profile`` result (for tests and re-measurements in isolation)."""
    _CACHE.clear()
